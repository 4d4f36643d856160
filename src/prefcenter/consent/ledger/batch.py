"""Owns writing many consent changes in one transaction, set-based: one statement per step
whatever the batch size (create the contacts, lock them, read their state, write the rows),
with each change decided in Python under the same rules as one by one (ledger.changes).

Changes are decided in the order given, each against the state the earlier ones left: a later
change of the same contact sees the earlier (its subscription, and its contact-wide opt-out).
Each change is taken at its own instant (`BatchChange.at`, increasing), as if they had arrived
one by one: a change whose caller gave no time is then newer than an earlier one, so the
ordering rule keeps request order instead of its tie going to the opt-out.

A change the rules refuse gets its problem and writes nothing; the others are written. Locks
are taken as everywhere else: contacts in id order (as imports do), the audit head last, at
COMMIT (audit.service).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime

from sqlmodel import Session

from prefcenter.audit.keys import AuditKeys
from prefcenter.audit.prepared import PreparedEvent
from prefcenter.audit.schemas import new_event_ids
from prefcenter.audit.service import append_prepared
from prefcenter.consent.contact_creation import InsertedContacts, inserting_contacts
from prefcenter.consent.erased import AddressErased
from prefcenter.consent.ledger.batch_events import BatchEvents
from prefcenter.consent.ledger.batch_rows import (
    BatchRows,
    LockedContact,
    SentLock,
    StoredRows,
    lock_contacts,
    read_subscriptions,
    read_suppressions,
    writing_rows,
)
from prefcenter.consent.ledger.changes import (
    BoundNotice,
    ChangeRecord,
    counted_source,
    decide_global_change,
    decide_topic_change,
    given_under,
    subscription_change,
    suppression_change,
)
from prefcenter.consent.ledger.notices import bound_notice
from prefcenter.consent.ledger.sql import postgres_session
from prefcenter.consent.ledger.state import subscription_row_state, suppression_row_state
from prefcenter.consent.rules import Decision, Outcome, RequestedChange
from prefcenter.contacts.addresses import Address
from prefcenter.metrics import count_consent_change
from prefcenter.problems import Problem
from prefcenter.topics.models import Topic
from prefcenter.topics.schemas import TopicKind
from prefcenter.webhooks.queue import queue_change_deliveries
from prefcenter.webhooks.queue_bulk import SentQuestion, ask_subscribed_any, subscribed_any
from prefcenter.webhooks.rules import EventType, types_of_event


@dataclass(frozen=True, slots=True)
class BatchChange:
    """One change of a batch, checked and ready to decide (its topic exists)."""

    address: Address
    topic: Topic | None  # None: all marketing
    requested: RequestedChange
    record: ChangeRecord
    # When the change is taken (its "now"): later than the batch's earlier changes.
    at: datetime


@dataclass(frozen=True, slots=True)
class BatchWritten:
    contact_id: str  # the contact's public id
    decision: Decision
    event_id: str
    # The event that set the subscription's current status (a pending one's confirmation link
    # names it); None for a contact-wide change.
    subscription_event_id: str | None
    event_kind: str
    to_status: str | None


@dataclass(slots=True)
class BatchContacts:
    """A batch's addresses, each contact inserted unless it exists or was erased."""

    given: dict[str, str]  # each normalised address's form as first given
    address_hashes: dict[str, str]  # each normalised address's keyed hash, made once
    contacts: InsertedContacts
    # On PostgreSQL, once the block is over: the contacts locked and their rows read, for
    # the topics named (`inserting_batch_contacts`); None: `apply_changes` reads them.
    rows: BatchRows | None = None
    topic_ids: frozenset[int] = frozenset()


@contextmanager
def inserting_batch_contacts(
    session: Session,
    keys: AuditKeys,
    addresses: Sequence[Address],
    *,
    now: datetime,
    topic_ids: set[int] | None = None,
) -> Iterator[BatchContacts]:
    """The contacts of a batch's addresses inserted, on PostgreSQL while the block runs (the
    caller makes its changes meanwhile: contact_creation.inserting_contacts). Given
    `topic_ids` (those of all the changes to come), PostgreSQL also locks the contacts
    meanwhile, in the same pipeline, then reads their subscriptions to those topics and their
    contact-wide opt-outs in one more round trip (batch_rows.SentLock): two waits after the
    block where there were four round trips."""
    given: dict[str, str] = {}
    for address in addresses:
        given.setdefault(address.normalised, address.given)
    # Each address's keyed hash, made once: for the erased check and the events.
    address_hashes = {address: keys.address_hash(address) for address in given}
    sent: SentLock | None = None
    with inserting_contacts(session, given, address_hashes=address_hashes, now=now) as contacts:
        if topic_ids is not None and given and postgres_session(session):
            sent = SentLock.send(session.connection(), sorted(given))
        batch = BatchContacts(given=given, address_hashes=address_hashes, contacts=contacts)
        try:
            yield batch
        except BaseException:
            if sent is not None:
                sent.close()
            raise
    if sent is not None and topic_ids is not None:
        batch.rows = sent.rows(session.connection(), erased=contacts.erased, topic_ids=topic_ids)
        batch.topic_ids = frozenset(topic_ids)


def apply_changes(
    session: Session,
    keys: AuditKeys,
    changes: Sequence[BatchChange],
    *,
    now: datetime,
    inserted: BatchContacts | None = None,
) -> list[BatchWritten | Problem]:
    """Decide and write `changes` in order, with an audit event each; per change what it did,
    or the problem that refused it (an erased address, the guard, a missing reason).
    `inserted`: the changes' contacts inserted already (`inserting_batch_contacts`), or None
    to insert them first."""
    if inserted is None:
        with inserting_batch_contacts(
            session, keys, [change.address for change in changes], now=now
        ) as inserted_here:
            pass
        inserted = inserted_here
    given = inserted.given
    address_hashes = inserted.address_hashes
    if any(change.address.normalised not in given for change in changes):
        raise ValueError("a change's address was not among the contacts inserted")
    # Each topic's row read once (ORM attributes), not once a change.
    named = {id(c.topic): c.topic for c in changes if c.topic is not None}
    rows = _batch_rows(session, inserted, {t.id for t in named.values() if t.id is not None})
    contacts, subscriptions, suppressions = rows.contacts, rows.subscriptions, rows.suppressions
    # The notices the batch's topics are bound to, read once each (re-consent).
    topics = {topic.key: topic for topic in named.values()}
    bound = {key: bound_notice(session, topic.notice_key) for key, topic in topics.items()}
    terms = {
        at: _TopicTerms(
            id=topic.id, key=topic.key, kind=TopicKind(topic.kind), bound=bound[topic.key]
        )
        for at, topic in named.items()
    }
    results: list[BatchWritten | Problem | _Decided] = []
    for change, event_id in zip(changes, new_event_ids(len(changes)), strict=True):
        contact = contacts.get(change.address.normalised)
        if contact is None:
            results.append(_erased())
            continue
        try:
            decided = _decide_one(
                event_id,
                contact,
                change,
                None if change.topic is None else terms[id(change.topic)],
                subscriptions,
                suppressions,
                now=change.at,
            )
        except Problem as refused:
            results.append(refused)
            continue
        results.append(decided)
    events: list[PreparedEvent] = []
    counted: Counter[tuple[str, str]] = Counter()
    question: SentQuestion | None = None
    # The rows are written first; on PostgreSQL without waiting, while the events are made,
    # and whether an endpoint wants their webhooks asked in the same pipeline.
    with writing_rows(session, subscriptions, suppressions) as pipelined:
        if changes:
            builder = BatchEvents(keys, actor=changes[0].record.actor)
            for index, result in enumerate(results):
                if not isinstance(result, _Decided):
                    continue
                written, event = _event_of(builder, result, address_hashes[result.contact.address])
                results[index] = written
                events.append(event)
                counted[counted_source(result.requested), written.decision.outcome.value] += 1
        if pipelined:
            question = ask_subscribed_any(session, _event_types(results))
    append_prepared(session, events)
    for (source, outcome), count in counted.items():
        count_consent_change(session, source=source, outcome=outcome, count=count)
    answers = [r for r in results if not isinstance(r, _Decided)]
    assert len(answers) == len(results)
    if changes:
        wanted = (
            question.answer()
            if question is not None
            else subscribed_any(session, _event_types(answers))
        )
        if wanted:
            _queue_deliveries(answers, session=session, now=changes[0].at)
    return answers


def _batch_rows(session: Session, inserted: BatchContacts, topic_ids: set[int]) -> BatchRows:
    """The batch's contacts locked and their rows as stored (for the changes' `topic_ids`):
    those read while the contacts were inserted, or read now."""
    if inserted.rows is not None:
        if not topic_ids <= inserted.topic_ids:
            raise ValueError("a change's topic was not among those read")
        return inserted.rows
    erased = inserted.contacts.erased
    contacts = lock_contacts(session, [a for a in inserted.given if a not in erased])
    ids = [c.id for c in contacts.values()]
    return BatchRows(
        contacts=contacts,
        subscriptions=read_subscriptions(session, ids, topic_ids),
        suppressions=read_suppressions(session, ids),
    )


@dataclass(frozen=True, slots=True)
class _TopicTerms:
    """What deciding a change reads of its topic."""

    id: int | None
    key: str
    kind: TopicKind
    bound: BoundNotice | None  # the notice it is bound to, with its versions


@dataclass(frozen=True, slots=True)
class _Decided:
    """A change decided and its rows set, its event yet to be made."""

    event_id: str
    contact: LockedContact
    topic_key: str | None
    requested: RequestedChange
    record: ChangeRecord
    decision: Decision
    subscription_event_id: str | None


def _decide_one(
    event_id: str,
    contact: LockedContact,
    change: BatchChange,
    topic: _TopicTerms | None,
    subscriptions: StoredRows,
    suppressions: StoredRows,
    *,
    now: datetime,
) -> _Decided:
    """One change against the batch's rows, as ledger.orm.apply_change does it against the
    database's; raises the rules' problems before anything is changed. `topic`: the terms of
    the change's topic (None: a contact-wide change)."""
    requested = change.requested
    record = change.record
    if requested.with_evidence != bool(record.evidence):
        requested = replace(requested, with_evidence=bool(record.evidence))
    contact_id = contact.id
    suppression = suppressions.by_key.get((contact_id,))
    subscription_event_id: str | None = None
    if topic is None:
        decision = decide_global_change(suppression_row_state(suppression), requested, now=now)
        if decision.outcome is not Outcome.SUPERSEDED:
            was = None if suppression is None else suppression["suppressed"]
            values = suppression_change(decision, requested, now=now, was_suppressed=was)
            values["contact_id"] = contact_id
            suppressions.set((contact_id,), values)
    else:
        key = (contact_id, topic.id)
        row = subscriptions.by_key.get(key)
        decision = decide_topic_change(
            subscription_row_state(row),
            suppression_row_state(suppression),
            topic_kind=topic.kind,
            requested=requested,
            now=now,
        )
        if decision.outcome is not Outcome.SUPERSEDED:
            given = given_under(
                decision,
                requested,
                record,
                bound=topic.bound,
                stored=None if row is None else row["notice_version_id"],
            )
            decision, record = given.decision, given.record
            values = subscription_change(decision, requested, now=now, event_id=event_id)
            values.update(given.values)
            values["contact_id"] = contact_id
            values["topic_id"] = topic.id
            row = subscriptions.set(key, values)
        subscription_event_id = None if row is None else row["event_id"]
    return _Decided(
        event_id=event_id,
        contact=contact,
        topic_key=None if topic is None else topic.key,
        requested=requested,
        record=record,
        decision=decision,
        subscription_event_id=subscription_event_id,
    )


def _event_of(
    events: BatchEvents, decided: _Decided, address_hash: str
) -> tuple[BatchWritten, PreparedEvent]:
    """The decided change's audit event, and what it did."""
    event = events.event(
        event_id=decided.event_id,
        contact_id=decided.contact.public_id,
        address_hash=address_hash,
        topic_key=decided.topic_key,
        requested=decided.requested,
        record=decided.record,
        decision=decided.decision,
    )
    written = BatchWritten(
        contact_id=decided.contact.public_id,
        decision=decided.decision,
        event_id=decided.event_id,
        subscription_event_id=decided.subscription_event_id,
        event_kind=event.row["kind"],
        to_status=event.row["to_status"],
    )
    return written, event


def _erased() -> AddressErased:
    return AddressErased(
        "This address was erased at the person's request and stays suppressed for good; "
        "nothing was recorded.",
        errors=[{"field": "email", "detail": "was erased"}],
    )


def _event_types(results: Sequence[object]) -> set[EventType]:
    """The webhook types of the batch's events; those of each kind of event once, not of each
    event."""
    written = [r for r in results if isinstance(r, BatchWritten)]
    kinds = {(r.event_kind, r.decision.outcome.value, r.to_status) for r in written}
    return {
        t
        for kind, outcome, to_status in kinds
        for t in types_of_event(kind, outcome=outcome, to_status=to_status)
    }


def _queue_deliveries(
    results: list[BatchWritten | Problem], *, session: Session, now: datetime
) -> None:
    """The webhook deliveries of the batch's events, in order, once an endpoint wants one of
    their types (one query for them all, `_event_types`; the usual case for a sync is
    none)."""
    for r in results:
        if not isinstance(r, BatchWritten):
            continue
        queue_change_deliveries(
            session,
            event_id=r.event_id,
            kind=r.event_kind,
            outcome=r.decision.outcome.value,
            to_status=r.to_status,
            contact_id=r.contact_id,
            now=now,
        )
