"""Owns the one rule that says whether an address may be mailed about a topic, and why.

Pure: plain values in, an answer out. The read side (SQL) gathers the values; this decides.
Fail safe: anything unknown answers "not allowed".
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from prefcenter.consent.rules import Status
from prefcenter.topics.schemas import ConsentModel, TopicKind


class Reason(StrEnum):
    """Persisted in exports and integrations: values are only ever added."""

    SUBSCRIBED = "subscribed"
    OPT_OUT_DEFAULT = "opt_out_default"
    TRANSACTIONAL = "transactional"
    UNSUBSCRIBED = "unsubscribed"
    NOT_SUBSCRIBED = "not_subscribed"
    PENDING = "pending"
    SUPPRESSED = "suppressed"
    BOUNCED = "bounced"  # the address hard-bounced: no mail of any kind
    # Subscribed under a notice version that a material one has replaced since.
    RECONSENT_REQUIRED = "reconsent_required"
    UNKNOWN_TOPIC = "unknown_topic"
    INVALID_EMAIL = "invalid_email"


@dataclass(frozen=True, slots=True)
class Eligibility:
    allowed: bool
    reason: Reason


@dataclass(frozen=True, slots=True)
class TopicModel:
    kind: TopicKind
    consent: ConsentModel


def decide_eligibility(
    topic: TopicModel,
    *,
    erased: bool,
    suppressed: bool,
    subscription: Status | None,
    bounced: bool = False,
    reconsent: bool = False,
) -> Eligibility:
    """In order: erasure blocks everything; a bounce blocks every kind of mail (the address
    does not take any; transactional mail included); transactional mail ignores marketing
    opt-outs;
    a contact-wide opt-out blocks every marketing topic (opt-out topics included); then the
    topic's own state; with none, the topic's consent model decides.

    A sharing topic ("may we share this person's data with this party") is not mail: only
    erasure and the person's consent to it decide. A bounce says nothing about that consent,
    and an opt-out from all marketing is about mail, not about sharing (the person may keep
    or withdraw each sharing consent on its own); no consent is never allowed (always opt-in).

    `reconsent`: the subscription was given under a version of the topic's notice that a
    material version has replaced (notices.rules.Reconsent). A subscription then no longer
    allows until it is given again; it changes nothing else (an opt-out stays an opt-out, and
    transactional mail was never a matter of subscription).
    """
    if erased:
        return Eligibility(allowed=False, reason=Reason.SUPPRESSED)
    if topic.kind is TopicKind.SHARING:
        return _decide_sharing(subscription, reconsent=reconsent)
    if bounced:
        return Eligibility(allowed=False, reason=Reason.BOUNCED)
    if topic.kind is TopicKind.TRANSACTIONAL:
        return Eligibility(allowed=True, reason=Reason.TRANSACTIONAL)
    if suppressed:
        return Eligibility(allowed=False, reason=Reason.SUPPRESSED)
    if subscription is Status.UNSUBSCRIBED:
        return Eligibility(allowed=False, reason=Reason.UNSUBSCRIBED)
    if subscription is Status.PENDING:
        return Eligibility(allowed=False, reason=Reason.PENDING)
    if subscription is Status.SUBSCRIBED:
        return RECONSENT_REQUIRED if reconsent else SUBSCRIBED
    if topic.consent is ConsentModel.OPT_OUT:
        return Eligibility(allowed=True, reason=Reason.OPT_OUT_DEFAULT)
    return Eligibility(allowed=False, reason=Reason.NOT_SUBSCRIBED)


def _decide_sharing(subscription: Status | None, *, reconsent: bool) -> Eligibility:
    if subscription is Status.SUBSCRIBED:
        return RECONSENT_REQUIRED if reconsent else SUBSCRIBED
    if subscription is Status.UNSUBSCRIBED:
        return Eligibility(allowed=False, reason=Reason.UNSUBSCRIBED)
    if subscription is Status.PENDING:
        return Eligibility(allowed=False, reason=Reason.PENDING)
    return Eligibility(allowed=False, reason=Reason.NOT_SUBSCRIBED)


SUBSCRIBED = Eligibility(allowed=True, reason=Reason.SUBSCRIBED)
RECONSENT_REQUIRED = Eligibility(allowed=False, reason=Reason.RECONSENT_REQUIRED)
UNKNOWN_TOPIC = Eligibility(allowed=False, reason=Reason.UNKNOWN_TOPIC)
INVALID_EMAIL = Eligibility(allowed=False, reason=Reason.INVALID_EMAIL)
