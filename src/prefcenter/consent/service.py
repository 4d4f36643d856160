"""Use cases that change consent: one change, under the ordering rule and the guard, with its
audit event, in the caller's transaction."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlmodel import Session

from prefcenter.apikeys.schemas import Caller
from prefcenter.audit.context import RequestContext
from prefcenter.audit.keys import AuditKeys
from prefcenter.confirmations import CONFIRM_BY_MAIL, PendingConfirmation, send_confirmation
from prefcenter.consent.contact_creation import lock_new_contact
from prefcenter.consent.ledger.changes import ChangeRecord
from prefcenter.consent.ledger.orm import apply_change
from prefcenter.consent.rules import ActorKind, RequestedChange, Status
from prefcenter.consent.schemas import ConsentChangeIn, ConsentChangeOut, RequestedStatus
from prefcenter.mail.config import mail_config
from prefcenter.notices.service import NoticeChecks
from prefcenter.settings import Settings, SigningKey
from prefcenter.topics.errors import UnknownTopic
from prefcenter.topics.models import Topic
from prefcenter.topics.service import find_topic


def record_change(
    session: Session,
    change: ConsentChangeIn,
    *,
    caller: Caller,
    request: RequestContext,
    settings: Settings,
    ring: tuple[SigningKey, ...],
    keys: AuditKeys,
    now: datetime,
) -> ConsentChangeOut:
    """Record a consent change from an API client. On a double opt-in topic a subscription is
    left `pending`: with mail on, the confirmation mail is queued in this transaction; with it
    off, the answer carries the confirmation link for the caller to mail. An erased address is
    refused (consent.erased): recording anything would store it again. `now`: the clock,
    read once the transaction is open (an earlier reading could order this change before one
    committed while it waited)."""
    topic: Topic | None = None
    if change.topic is not None:
        topic = find_topic(session, change.topic)
        if topic is None:
            raise UnknownTopic(
                f"There is no topic {change.topic!r}; create it with PUT /v1/topics/{{key}}.",
                errors=[{"field": "topic", "detail": "unknown topic"}],
            )
    notice = (
        NoticeChecks(session).check(change.notice, occurred_at=min(change.occurred_at or now, now))
        if change.notice is not None
        else None
    )
    contact = lock_new_contact(session, keys, change.email, now=now)
    applied = apply_change(
        session,
        contact=contact,
        topic=topic,
        requested=requested_change(change, topic, caller=caller, now=now),
        record=api_change_record(
            change, caller=caller, request=request, settings=settings, notice=notice
        ),
        now=now,
    )
    link: str | None = None
    if topic is not None and applied.decision.status is Status.PENDING and applied.subscription:
        link = send_confirmation(
            session,
            settings,
            ring,
            pending_confirmation(change, contact.public_id, topic, applied.subscription.event_id),
            now=now,
        )
    return ConsentChangeOut(
        contact_id=contact.public_id,
        email=change.email.given,
        topic=topic.key if topic else None,
        status=applied.decision.status,
        changed=applied.decision.changed,
        outcome=applied.decision.outcome,
        event_id=applied.event_id,
        confirm_url=link,
    )


class TopicTerms(Protocol):
    """What a change reads of its topic: a `Topic` row, or the lane's plain read of one
    (consent.ledger.api_lane.TopicRow), which costs no ORM object."""

    @property
    def key(self) -> str: ...

    @property
    def double_opt_in(self) -> bool: ...


def requested_change(
    change: ConsentChangeIn, topic: TopicTerms | None, *, caller: Caller, now: datetime
) -> RequestedChange:
    """An API client's change in the rules' terms (an `admin` key acts as an admin)."""
    return ApiRequests.of(caller).requested(
        change, double_opt_in=topic.double_opt_in if topic is not None else False, now=now
    )


_STATUS_OF = {requested: Status(requested.value) for requested in RequestedStatus}


@dataclass(frozen=True, slots=True)
class ApiRequests:
    """`requested_change` for every change of one request: the caller's kind worked out once
    (a batch's thousand changes share the caller)."""

    actor: ActorKind

    @classmethod
    def of(cls, caller: Caller) -> ApiRequests:
        return cls(ActorKind.ADMIN if caller.is_admin else ActorKind.API_CLIENT)

    def requested(
        self, change: ConsentChangeIn, *, double_opt_in: bool, now: datetime
    ) -> RequestedChange:
        """The change in the rules' terms; `double_opt_in`: its topic's (False for none)."""
        return RequestedChange(
            status=_STATUS_OF[change.status],
            occurred_at=change.occurred_at or now,
            actor=self.actor,
            source=change.source,
            reason=change.reason,
            double_opt_in=double_opt_in,
        )


def api_change_record(
    change: ConsentChangeIn,
    *,
    caller: Caller,
    request: RequestContext,
    settings: Settings,
    notice: str | None = None,
    mail_on: bool | None = None,
) -> ChangeRecord:
    """What an API client's change puts in its audit event; `notice`: the version it names,
    checked (notices.service.NoticeChecks). `mail_on`: whether the service sends mail itself,
    if the caller knows (`ApiRecords.of`)."""
    return ApiRecords.of(caller=caller, request=request, settings=settings, mail_on=mail_on).record(
        change, notice=notice
    )


@dataclass(frozen=True, slots=True)
class ApiRecords:
    """What every change of one request by an API client puts in its audit event, read once
    (a batch's thousand changes share the caller, the request and the settings)."""

    actor: str
    context: dict[str, Any]  # the request's evidence; never changed in place
    confirm_link_to: str

    @classmethod
    def of(
        cls,
        *,
        caller: Caller,
        request: RequestContext,
        settings: Settings,
        mail_on: bool | None = None,
    ) -> ApiRecords:
        """`mail_on`: whether the service sends mail itself (`mail_config`), when the caller
        has it already (it costs some 50 µs to work out: consent.change_lane asks it once)."""
        if mail_on is None:
            mail_on = mail_config(settings) is not None
        return cls(
            actor=caller.actor,
            context=request.as_evidence(),
            confirm_link_to=CONFIRM_BY_MAIL if mail_on else caller.actor,
        )

    def record(self, change: ConsentChangeIn, *, notice: str | None = None) -> ChangeRecord:
        """The change's record (`api_change_record`)."""
        return ChangeRecord(
            actor=self.actor,
            source=change.source,
            campaign_id=change.campaign_id,
            reason=change.reason,
            evidence=change.evidence,
            context=self.context if notice is None else {**self.context, "notice": notice},
            confirm_link_to=self.confirm_link_to,
        )


def pending_confirmation(
    change: ConsentChangeIn, contact_id: str, topic: TopicTerms, pending_event: str
) -> PendingConfirmation:
    """What the confirmation of the subscription that `pending_event` left pending names."""
    return PendingConfirmation(
        contact_id=contact_id,
        topic=topic.key,
        pending_event=pending_event,
        campaign_id=change.campaign_id,
        language=change.language or "en",
    )
