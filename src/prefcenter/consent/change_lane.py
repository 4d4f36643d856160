"""Owns the lane of `POST /v1/consents` on PostgreSQL: an API client's change in one read and
one guarded statement on a pooled connection, in one worker-thread hand-off and without the
ORM (consent.ledger.api_lane), decided by the same rules and written with the same row values,
audit event, webhook deliveries, Idempotency-Key record and metrics as consent.service's
locking path.

It answers the common case and leaves everything else to that path (`record_change` returns
None, having written nothing): SQLite; a change that names a notice version, or of a topic
bound to a notice (the version it is given under is notices' to decide); an unknown topic or an
erased address; a change the rules refuse or find superseded; a pending subscription
while the service mails confirmations itself; a subscription to a marketing topic of a contact
that exists already (see consent.ledger.api_lane); and whatever moved on between the read and
the write. A stored answer under the caller's Idempotency-Key is answered from the read, as
idempotency.IdempotentCall does.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from datetime import datetime

from fastapi import Response

from prefcenter.apikeys.schemas import Caller
from prefcenter.audit.context import RequestContext
from prefcenter.audit.keys import AuditKeys
from prefcenter.audit.schemas import new_event_id
from prefcenter.confirmations import confirm_link
from prefcenter.consent.ledger.api_lane import (
    AnswerToKeep,
    ApiChangeState,
    NewContact,
    read_api_state,
    write_api_change,
)
from prefcenter.consent.ledger.changes import (
    change_event,
    counted_source,
    decide_global_change,
    decide_topic_change,
    needs_suppression,
    subscription_change,
    suppression_change,
)
from prefcenter.consent.rules import Decision, Outcome, RequestedChange, Status
from prefcenter.consent.schemas import ConsentChangeIn, ConsentChangeOut
from prefcenter.consent.service import api_change_record, pending_confirmation, requested_change
from prefcenter.contacts.service import new_public_id
from prefcenter.db import Database, utcnow
from prefcenter.driver import DriverCursor
from prefcenter.idempotency import IdempotentCall, StoredAnswer
from prefcenter.mail.config import mail_config
from prefcenter.metrics import count_consent_change
from prefcenter.problems import Problem
from prefcenter.settings import Settings, SigningKey
from prefcenter.topics.models import Topic
from prefcenter.topics.schemas import TopicKind


async def record_change(
    database: Database,
    change: ConsentChangeIn,
    *,
    caller: Caller,
    idempotency: IdempotentCall,
    response: Response,
    request: RequestContext,
    ring: tuple[SigningKey, ...],
    keys: AuditKeys,
) -> ConsentChangeOut | None:
    """The change recorded and committed, with its answer (stored under the Idempotency-Key,
    if any); or the stored answer to a retry; or None, nothing written: take the locking path
    (consent.service.record_change)."""
    settings = database.settings
    if settings.is_sqlite or change.notice is not None:
        return None
    now = utcnow()
    written = await database.run_write_on_connection(
        lambda cursor: _record(
            cursor,
            change,
            caller=caller,
            idempotency=idempotency,
            request=request,
            settings=settings,
            ring=ring,
            keys=keys,
            now=now,
        )
    )
    if isinstance(written, StoredAnswer):
        # Outside the connection's work: a refused retry is a problem (422), and a raise
        # there would cost the pooled connection.
        return idempotency.replay(written, response=response, model=ConsentChangeOut)
    return written


def _record(
    cursor: DriverCursor,
    change: ConsentChangeIn,
    *,
    caller: Caller,
    idempotency: IdempotentCall,
    request: RequestContext,
    settings: Settings,
    ring: tuple[SigningKey, ...],
    keys: AuditKeys,
    now: datetime,
) -> ConsentChangeOut | StoredAnswer | None:
    address = change.email
    address_hash = keys.address_hash(address.normalised)
    state = read_api_state(
        cursor,
        topic_key=change.topic,
        address=address.normalised,
        address_hash=address_hash,
        owner=caller.owner,
        idempotency_key=idempotency.key,
    )
    if idempotency.key is not None and state.stored_answer is not None:
        return state.stored_answer
    if state.address_erased or (change.topic is not None and state.topic is None):
        return None  # the locking path's problem (address-erased, unknown topic)
    if state.topic is not None and state.topic.notice_key is not None:
        return None  # given under a notice version: consent.ledger.changes.given_under
    topic = None if state.topic is None else Topic(**asdict(state.topic))
    record = api_change_record(change, caller=caller, request=request, settings=settings)
    requested = replace(
        requested_change(change, topic, caller=caller, now=now),
        with_evidence=bool(record.evidence),
    )
    decision = _decide(state, topic, requested, now=now)
    if decision is None or decision.outcome is Outcome.SUPERSEDED:
        return None
    pending = topic is not None and decision.status is Status.PENDING
    if pending and mail_config(settings) is not None:
        return None  # the confirmation mail is queued through the session
    public_id = state.public_id or new_public_id()
    event_id = new_event_id()
    if topic is not None:
        values = subscription_change(decision, requested, now=now, event_id=event_id)
    else:
        was = None if state.suppression is None else state.suppression[0]
        values = suppression_change(decision, requested, now=now, was_suppressed=was)
    event = change_event(
        event_id=event_id,
        contact_id=public_id,
        address=address.normalised,
        topic_key=None if topic is None else topic.key,
        requested=requested,
        record=record,
        decision=decision,
    )
    link: str | None = None
    if pending:
        assert topic is not None
        # The event that made it pending: this one, or the one before an unchanged repeat.
        pending_event = values.get("event_id")
        if pending_event is None:
            assert state.subscription is not None
            pending_event = state.subscription[3]
        link = confirm_link(
            settings.base_url,
            ring,
            pending_confirmation(change, public_id, topic, pending_event),
            now=now,
        )
    answer = ConsentChangeOut(
        contact_id=public_id,
        email=address.given,
        topic=None if topic is None else topic.key,
        status=decision.status,
        changed=decision.changed,
        outcome=decision.outcome,
        event_id=event_id,
        confirm_url=link,
    )
    kept = None
    if idempotency.key is not None:
        kept = AnswerToKeep(
            owner=caller.owner,
            key=idempotency.key,
            request_hash=idempotency.request_hash,
            status_code=200,
            body=answer.model_dump_json(),
            created_at=now,
        )
    new_contact = None
    if state.contact_row_id is None:
        new_contact = NewContact(
            public_id=public_id,
            address=address.normalised,
            address_display=address.given,
            address_hash=address_hash,
            created_at=now,
        )
    if not write_api_change(
        cursor,
        state,
        values=values,
        new_contact=new_contact,
        event=event,
        keys=keys,
        answer=kept,
        now=now,
    ):
        return None
    # Committed already: one statement in autocommit.
    count_consent_change(None, source=counted_source(requested), outcome=decision.outcome.value)
    return answer


def _decide(
    state: ApiChangeState, topic: Topic | None, requested: RequestedChange, *, now: datetime
) -> Decision | None:
    """The decision, as the locking path (ledger.orm) makes it; None where the lane cannot
    guard what it read (a contact's opt-out of all marketing, see consent.ledger.api_lane)
    or the rules refuse the change (the locking path refuses it the same way)."""
    try:
        if topic is None:
            return decide_global_change(state.suppression_state, requested, now=now)
        suppression = None
        if needs_suppression(topic.kind, requested):
            if state.contact_row_id is not None:
                return None
            suppression = state.suppression_state  # None: a new contact has none
        return decide_topic_change(
            state.subscription_state,
            suppression,
            topic_kind=TopicKind(topic.kind),
            requested=requested,
            now=now,
        )
    except Problem:
        return None
