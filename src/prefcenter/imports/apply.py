"""Owns applying one batch of an import: decide every row in file order against the state the
rows before it left, then write through the ledger's write model (consent.ledger): the
subscriptions as ledger.changes makes their values, by ledger.bulk's set-based statements, and
one audit event per applied row as ledger.changes makes every consent change's."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlmodel import Session

from prefcenter.audit.keys import AuditKeys
from prefcenter.audit.prepared import PreparedEvent
from prefcenter.audit.service import append_prepared
from prefcenter.consent.ledger import bulk, bulk_subscriptions
from prefcenter.consent.ledger.bulk_events import BulkEvents
from prefcenter.consent.ledger.changes import ChangeRecord, subscription_change
from prefcenter.consent.rules import Decision, Outcome, RequestedChange, Status
from prefcenter.contacts.service import mask_address
from prefcenter.db import settings_of_session, utcnow
from prefcenter.imports.prepare import PreparedBatch, evidence_added
from prefcenter.imports.rules import (
    IMPORT_ACTOR,
    IMPORT_SOURCE,
    NEW_CONTACT,
    ContactState,
    RowDecision,
    RowOutcome,
    decide_row,
    requested_change,
    state_after,
)
from prefcenter.imports.schemas import CountWithSample
from prefcenter.metrics import count_consent_change
from prefcenter.topics.schemas import TopicKind
from prefcenter.webhooks.queue_bulk import queue_many_deliveries
from prefcenter.webhooks.rules import EventType


@dataclass(frozen=True, slots=True)
class ImportTopic:
    id: int
    key: str
    kind: TopicKind


@dataclass(frozen=True, slots=True)
class BatchContext:
    """What every batch of one import shares."""

    topic: ImportTopic
    actor: str  # who runs it: the API key, or `cli:<os user>`
    # The import's name, file, checksum and format, in each event's evidence.
    evidence: dict[str, Any]
    # What the service observed about the request (client address, user agent), for events.
    context: dict[str, Any]
    started: datetime  # a row without a time is taken at the import's start
    dry_run: bool
    # The import holds the import lock for its whole run (imports.pipeline): its batches
    # do not take it.
    import_locked: bool = False


@dataclass(slots=True)
class Tally:
    """One batch's counts, merged into the report only if the batch commits."""

    subscribed: int = 0
    unsubscribed: int = 0
    unchanged: int = 0
    duplicates: int = 0
    superseded: CountWithSample = field(default_factory=CountWithSample)
    refused_reversal: CountWithSample = field(default_factory=CountWithSample)
    refused_erased: CountWithSample = field(default_factory=CountWithSample)
    refused_no_evidence: CountWithSample = field(default_factory=CountWithSample)
    invalid: CountWithSample = field(default_factory=CountWithSample)

    @property
    def applied(self) -> int:
        return self.subscribed + self.unsubscribed


def batch_events(keys: AuditKeys, shared: BatchContext) -> BulkEvents:
    """The maker of the events of an import's batches (and of their evidence documents)."""
    return BulkEvents(
        keys,
        topic_key=shared.topic.key,
        record=ChangeRecord(
            actor=shared.actor,
            source=IMPORT_SOURCE,
            evidence=shared.evidence,
            context=shared.context,
        ),
        actor_kind=IMPORT_ACTOR,
    )


def apply_batch(session: Session, batch: PreparedBatch, shared: BatchContext, tally: Tally) -> None:
    """Decide every row of the batch in file order against the state the rows before it
    left, then write the final subscriptions and one audit event per applied row."""
    now = utcnow()
    keys = AuditKeys.from_settings(settings_of_session(session))
    topic = shared.topic
    for broken in batch.broken:
        tally.invalid.add(broken.line, masked_cell(broken.email), broken.problem)
    hashes = batch.hashes
    staged = bulk.stage_batch(
        session,
        batch.addresses,
        topic_id=topic.id,
        write=not shared.dry_run,
        now=now,
        import_locked=shared.import_locked,
    )
    states: dict[str, ContactState] = {}
    writes: dict[int, dict[str, Any]] = {}
    # Each applied row (its index among the good rows), with what its event is made of.
    applied: list[tuple[int, bulk.StoredContact, RequestedChange, Decision]] = []
    seen: set[str] = set()
    decided_for: dict[tuple[ContactState, Status, datetime, bool], _Decided] = {}
    for index, row in enumerate(batch.good):
        address = row.address.normalised
        if address in seen:
            tally.duplicates += 1
        seen.add(address)
        contact = staged.contacts.get(address)
        state = states.get(address) or _state_of(contact, erased=address in staged.erased)
        occurred_at = row.occurred_at or shared.started
        # The rules are pure functions of these: many rows (a file without times, contacts
        # without a subscription) share one decision, made once.
        key = (state, row.status, occurred_at, row.evidence is not None)
        known = decided_for.get(key)
        if known is None:
            known = _decide(state, row.status, occurred_at, topic.kind, now, with_evidence=key[3])
            decided_for[key] = known
        decided, requested, after = known
        _count(tally, row.line, address, decided.outcome)
        if not decided.applied or decided.decision is None:
            continue
        states[address] = after
        if shared.dry_run:
            continue
        assert contact is not None
        values = subscription_change(
            decided.decision, requested, now=now, event_id=batch.event_ids[index]
        )
        writes[contact.id] = {**values, "contact_id": contact.id, "topic_id": topic.id}
        applied.append((index, contact, requested, decided.decision))
    if shared.dry_run:
        return
    events = batch_events(keys, shared)
    # The events are made while the server merges the subscriptions.
    with bulk_subscriptions.subscriptions_written(session, list(writes.values())):
        appended: list[PreparedEvent] = []
        for index, contact, requested, decision in applied:
            row = batch.good[index]
            appended.append(
                events.event(
                    event_id=batch.event_ids[index],
                    contact_id=contact.public_id,
                    address_hash=hashes[row.address.normalised],
                    requested=requested,
                    decision=decision,
                    added=evidence_added(row),
                    document=batch.documents[index],
                )
            )
    append_prepared(session, appended)
    if appended:
        count_consent_change(
            session, source=IMPORT_SOURCE, outcome=Outcome.APPLIED.value, count=len(appended)
        )
    # (event id, contact id), in the order appended
    deliveries = [(batch.event_ids[index], contact.public_id) for index, contact, _, _ in applied]
    queue_many_deliveries(session, deliveries, event_type=EventType.CONSENT_CHANGED, now=now)


# A row's decision, its requested change, and the contact's state after it.
_Decided = tuple[RowDecision, RequestedChange, ContactState]


def _decide(
    state: ContactState,
    status: Status,
    occurred_at: datetime,
    topic_kind: TopicKind,
    now: datetime,
    *,
    with_evidence: bool,
) -> _Decided:
    decided = decide_row(
        state, status, occurred_at, topic_kind=topic_kind, now=now, with_evidence=with_evidence
    )
    return decided, requested_change(status, occurred_at), state_after(state, decided)


def _state_of(contact: bulk.StoredContact | None, *, erased: bool) -> ContactState:
    if erased:
        return ContactState(erased=True, suppression=None, subscription=None)
    if contact is None or (
        not contact.erased and contact.suppression is None and contact.subscription is None
    ):
        return NEW_CONTACT  # one object: the decisions' keys compare by identity first
    return ContactState(
        erased=contact.erased, suppression=contact.suppression, subscription=contact.subscription
    )


def masked_cell(text: str) -> str:
    return mask_address(text) if "@" in text else (text[:1] + "•••" if text else "")


def _count(tally: Tally, line: int, address: str, outcome: RowOutcome) -> None:
    match outcome:
        case RowOutcome.SUBSCRIBED:
            tally.subscribed += 1
        case RowOutcome.UNSUBSCRIBED:
            tally.unsubscribed += 1
        case RowOutcome.UNCHANGED:
            tally.unchanged += 1
        case RowOutcome.SUPERSEDED:
            tally.superseded.add(line, mask_address(address))
        case RowOutcome.REFUSED_REVERSAL:
            tally.refused_reversal.add(line, mask_address(address))
        case RowOutcome.REFUSED_ERASED:
            tally.refused_erased.add(line, mask_address(address))
        case RowOutcome.REFUSED_NO_EVIDENCE:
            tally.refused_no_evidence.add(line, mask_address(address))
