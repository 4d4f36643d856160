"""What goes in and out of the topic endpoints."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StringConstraints

from prefcenter.notices.schemas import NoticeKey

TOPIC_KEY_PATTERN = r"^[a-z0-9][a-z0-9-]{0,63}$"
TopicKey = Annotated[str, StringConstraints(pattern=TOPIC_KEY_PATTERN)]
# No control characters but TAB, CR and LF: NUL cannot be stored in PostgreSQL text.
_PRINTABLE_PATTERN = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"


class TopicKind(StrEnum):
    MARKETING = "marketing"
    TRANSACTIONAL = "transactional"  # never blocked by unsubscribes, only by hard suppression
    # Not mail: sharing the person's data with `third_party`; always opt-in (topics.rules).
    SHARING = "sharing"


class ConsentModel(StrEnum):
    OPT_IN = "opt_in"  # nobody may be mailed until they subscribe
    OPT_OUT = "opt_out"  # anyone may be mailed until they unsubscribe


class TopicIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[
        str,
        StringConstraints(
            strip_whitespace=True, min_length=1, max_length=200, pattern=_PRINTABLE_PATTERN
        ),
    ]
    description: (
        Annotated[str, StringConstraints(max_length=2000, pattern=_PRINTABLE_PATTERN)] | None
    ) = None
    kind: TopicKind
    consent: ConsentModel
    # Strict: the document says boolean, so 0 or "yes" is refused rather than guessed at.
    double_opt_in: StrictBool = False
    # Required for a `sharing` topic, refused on any other (topics.rules.check_topic_spec).
    third_party: (
        Annotated[
            str,
            StringConstraints(
                strip_whitespace=True, min_length=1, max_length=200, pattern=_PRINTABLE_PATTERN
            ),
        ]
        | None
    ) = None
    # The notice the topic is bound to (its key): a material version of it asks everyone
    # subscribed under an older version to consent again (eligibility `reconsent_required`).
    notice: NoticeKey | None = None


class TopicOut(BaseModel):
    key: str
    name: str
    description: str | None
    kind: TopicKind
    consent: ConsentModel
    double_opt_in: bool
    third_party: str | None = None
    notice: str | None = None
    created_at: datetime
    updated_at: datetime


class TopicPut(BaseModel):
    """The topic after a PUT, and whether the PUT created it (201) or updated it (200)."""

    topic: TopicOut
    created: bool = Field(default=False, exclude=True)


class TopicList(BaseModel):
    topics: list[TopicOut]
