"""What goes in and out of the notice endpoints."""

from __future__ import annotations

import hashlib
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StringConstraints,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from prefcenter.timestamps import Rfc3339DateTime

NOTICE_KEY_PATTERN = r"^[a-z0-9][a-z0-9-]{0,63}$"
# No `@`: `<key>@<version>` names a version unambiguously.
VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
NOTICE_REF_PATTERN = r"^[a-z0-9][a-z0-9-]{0,63}@[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
NoticeKey = Annotated[str, StringConstraints(pattern=NOTICE_KEY_PATTERN)]
VersionLabel = Annotated[str, StringConstraints(pattern=VERSION_PATTERN)]
# `<key>@<version>`, as a consent change names the version the person saw.
NoticeRef = Annotated[str, StringConstraints(pattern=NOTICE_REF_PATTERN)]
# No control characters but TAB, CR and LF: NUL cannot be stored in PostgreSQL text.
_PRINTABLE = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"
# As _PRINTABLE, with at least one character that is not a space (a pattern, not stripping,
# so that the schema says what is accepted).
_SAYS_SOMETHING = (
    r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*[^\s\x00-\x1f\x7f][^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"
)
_ONE_LINE_SAYS_SOMETHING = r"^[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f][^\x00-\x1f\x7f]*$"


class NoticeKind(StrEnum):
    """Persisted: values are only ever added."""

    PRIVACY_POLICY = "privacy_policy"
    TERMS = "terms"
    TOPIC_WORDING = "topic_wording"
    SHARING = "sharing"  # a statement about sharing with a third party
    OWNERSHIP_CHANGE = "ownership_change"  # a merger or acquisition: its mail lists choices


class RunDelivery(StrEnum):
    """Who sends a material version's notices. Persisted: values are only ever added."""

    SERVICE = "service"  # the service's outbox mails them (the default)
    EXPORT = "export"  # the team takes the run as CSV and sends them itself
    WEBHOOKS = "webhooks"  # one `notice.recipient` webhook per recipient; the team sends


class DeliveryStatus(StrEnum):
    """A recipient of a run the team sends itself. Persisted: values are only ever added."""

    QUEUED = "queued"  # not marked yet
    SENT = "sent"
    FAILED = "failed"
    BOUNCED = "bounced"


class NoticeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[
        str,
        StringConstraints(min_length=1, max_length=200, pattern=_ONE_LINE_SAYS_SOMETHING),
    ]
    kind: NoticeKind


class NoticeOut(BaseModel):
    key: str
    name: str
    kind: NoticeKind
    created_at: datetime
    updated_at: datetime


class NoticePut(BaseModel):
    """The notice after a PUT, and whether the PUT created it (201) or updated it (200)."""

    notice: NoticeOut
    created: bool = Field(default=False, exclude=True)


class NoticeList(BaseModel):
    notices: list[NoticeOut]


# No control character and no white space, the characters named one by one: `\s` means other
# things to the validator (Rust's regex: Unicode White_Space, U+0085 included) and to a client's
# JSON Schema engine (ECMAScript: U+FEFF included, U+0085 not).
_URL = (
    r"^https?://[^\x00-\x20\x7f-\x9f\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f"
    r"\u3000\ufeff]+$"
)


class NoticeVersionIn(BaseModel):
    # The text, its URL, or both: said in the schema too, so clients and fuzzers know it.
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"anyOf": [{"required": ["text"]}, {"required": ["url"]}]}
    )

    version: VersionLabel
    language: Annotated[str, StringConstraints(pattern=r"^[a-z]{2,3}(-[A-Za-z0-9]{1,8}){0,3}$")]
    url: Annotated[str, StringConstraints(max_length=2000, pattern=_URL)] | SkipJsonSchema[None] = (
        None
    )
    text: (
        Annotated[str, StringConstraints(max_length=1_000_000, pattern=_PRINTABLE)]
        | SkipJsonSchema[None]
    ) = None
    sha256: Annotated[str, StringConstraints(to_lower=True, pattern=r"^[0-9a-fA-F]{64}$")] = Field(
        description="SHA-256 of the text (UTF-8), hex; checked when `text` is given."
    )
    effective_at: Rfc3339DateTime
    material: StrictBool
    summary: Annotated[
        str,
        StringConstraints(min_length=1, max_length=2000, pattern=_SAYS_SOMETHING),
    ] = Field(description="What changed, in a few sentences: the notice mail carries it.")
    reason: (
        Annotated[
            str,
            StringConstraints(min_length=1, max_length=2000, pattern=_SAYS_SOMETHING),
        ]
        | SkipJsonSchema[None]
    ) = Field(
        default=None,
        description="Why it takes effect sooner than the notice period allows (recorded).",
    )

    delivery: RunDelivery = Field(
        default=RunDelivery.SERVICE,
        description="Who sends a material version's notices: `service` (its own mails), or "
        "the team itself from `export` (CSV) or `webhooks` (`notice.recipient`), marking each "
        "delivery through `POST …/notification/deliveries`.",
    )

    @model_validator(mode="after")
    def _text_or_url(self) -> NoticeVersionIn:
        if self.text is None and self.url is None:
            raise ValueError("give the text, its url, or both")
        return self

    def text_digest(self) -> str | None:
        """The SHA-256 of the text given, when it is not the one the request says."""
        if self.text is None:
            return None
        digest = hashlib.sha256(self.text.encode()).hexdigest()
        return None if digest == self.sha256 else digest


class NoticeVersionOut(BaseModel):
    notice: str
    version: str
    language: str
    url: str | None
    text: str | None
    sha256: str
    effective_at: datetime
    material: bool
    summary: str
    reason: str | None
    published_at: datetime
    event_id: str
    delivery: RunDelivery


class NoticeVersionList(BaseModel):
    versions: list[NoticeVersionOut] = Field(description="Newest effective_at first.")


class NotificationOut(BaseModel):
    """Where the notice mails of a version stand, counted from the outbox."""

    queued: int = Field(description="Waiting to be sent, or being retried.")
    sent: int = Field(description="Handed to the mail transport.")
    failed: int = Field(description="Given up (refused for good, or every retry used up).")
    bounced: int = Field(description="Sent, and the address has bounced since.")
    skipped: int = Field(description="Not sent: the contact was erased after it was queued.")


# A contact's public id, as links and the API show it.
_CONTACT_ID = r"^[A-Za-z0-9_-]{1,32}$"
MAX_MARKS = 1000


class DeliveryMark(BaseModel):
    model_config = ConfigDict(extra="forbid")

    contact_id: Annotated[str, StringConstraints(pattern=_CONTACT_ID)]
    status: Literal[DeliveryStatus.SENT, DeliveryStatus.FAILED, DeliveryStatus.BOUNCED]
    detail: (
        Annotated[str, StringConstraints(min_length=1, max_length=500, pattern=_PRINTABLE)]
        | SkipJsonSchema[None]
    ) = Field(default=None, description="What the team's sender said (recorded).")


class DeliveryMarks(BaseModel):
    model_config = ConfigDict(extra="forbid")

    deliveries: list[DeliveryMark] = Field(min_length=1, max_length=MAX_MARKS)


class DeliveryMarked(BaseModel):
    contact_id: str
    status: DeliveryStatus
    changed: bool
    event_id: str | None = Field(description="The audit event of this mark; null if unchanged.")


class DeliveryRefused(BaseModel):
    problem: dict[str, Any]


class DeliveryResults(BaseModel):
    """One outcome per mark, in request order."""

    results: list[DeliveryMarked | DeliveryRefused]
