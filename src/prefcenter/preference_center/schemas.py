"""What the recipient pages show: plain values for the templates."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True, slots=True)
class TopicChoice:
    key: str
    name: str
    description: str | None
    on: bool
    pending: bool
    # A sharing topic's party ("Sharing with others"); None for a marketing topic.
    third_party: str | None = None
    # Subscribed under a notice version a material one replaced: the box shows off (nothing
    # is sent until the person ticks it again), and the page names the notice in force.
    reconsent: NoticeAsking | None = None


@dataclass(frozen=True, slots=True)
class NoticeAsking:
    """The notice whose new version asks for a topic's consent again, as the page names it."""

    name: str
    version: str
    url: str | None


@dataclass(frozen=True, slots=True)
class PolicyInForce:
    """The privacy policy version in force, as the page names it."""

    version: str
    effective_at: datetime
    url: str | None


@dataclass(frozen=True, slots=True)
class PreferencesView:
    masked_address: str
    suppressed: bool
    topics: list[TopicChoice]
    # Sharing topics, apart: not mail, so no marketing opt-out turns them off or hides them.
    sharing: list[TopicChoice] = field(default_factory=list)
    pending_topics: list[str] = field(default_factory=list)
    # Asked for on the page but left as they were: turning them on reverses the person's own
    # opt-out (or lifts "unsubscribe from all"), which needs proof of the mailbox first.
    refused_topics: list[str] = field(default_factory=list)
    # "Unsubscribe from all" asked to be lifted: a mail with the link that does it is on its way.
    confirm_all_by_mail: bool = False
    # The privacy policy version in force now; None: no privacy policy has one.
    privacy_policy: PolicyInForce | None = None

    @property
    def reconsent_topics(self) -> list[str]:
        return [t.name for t in (*self.topics, *self.sharing) if t.reconsent is not None]


@dataclass(frozen=True, slots=True)
class LinkView:
    """The unsubscribe or confirmation page for one token."""

    masked_address: str
    topic_name: str | None  # None: all marketing
    # A sharing topic's party: the page asks about sharing with them, not about mail.
    third_party: str | None = None
