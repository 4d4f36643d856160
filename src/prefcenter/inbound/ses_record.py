"""Owns recording one SES bounce or complaint on PostgreSQL in two statements on the driver's
cursor, in autocommit mode, without the ORM (the SNS lane, inbound.ses_lane): the common case
of an SES notification, one recipient.

1. `_READ`: the contact at the address (not erased, its address not among the erased ones),
   its bounce row and its suppression, and whether the notification's receipt was claimed
   before (then it is a duplicate, answered as such).
2. Python decides with the functions every writer decides with: a bounce as
   bounces.service.decide_report, a complaint as consent.ledger.orm.apply_change does
   (contact-wide opt-out, source `complaint`, by the person: an API client cannot undo it).
3. One statement claims the receipt, locks the contact (still at that address, not erased),
   writes the row only if it is still as read in 1 (compare-and-set; a bounce that changes
   no row checks it under a share lock), appends the audit event (the head lock last:
   audit.service.guarded_append_pg) and queues the webhook deliveries some enabled endpoint
   wants (webhooks.queue.guarded_queue_pg): `contact.bounced` when the address became
   bounced; for a complaint `consent.changed` (and `contact.suppressed`) and
   `contact.complained`. Receipt, state, event and deliveries commit together or not at all:
   a receipt claimed without its event (the row moved on since 1, the contact was erased)
   fails the statement on purpose (a division by zero), which rolls it all back.

None means nothing was written: the app's path (inbound.receive.record_ses) records the
notification instead, under its locks. That is also the answer for an unknown or erased
address (that path claims the receipt and counts it), a superseded complaint, and anything
that moved on between 1 and 3.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prefcenter.audit.keys import AuditKeys
from prefcenter.audit.schemas import NewEvent, new_event_id
from prefcenter.audit.service import guarded_append_pg
from prefcenter.bounces.rules import BounceKind
from prefcenter.bounces.schemas import BouncedContact, BounceReport
from prefcenter.bounces.service import (
    BOUNCE_COLUMNS,
    StoredBounce,
    decide_report,
    soft_bounce_policy,
)
from prefcenter.consent.ledger.changes import (
    ChangeRecord,
    change_event,
    counted_source,
    decide_global_change,
    suppression_change,
)
from prefcenter.consent.ledger.lane import guarded_suppression_write
from prefcenter.consent.ledger.state import stored_suppression_state
from prefcenter.consent.rules import ActorKind, Outcome, RequestedChange, Status
from prefcenter.driver import DriverCursor
from prefcenter.inbound.events import Action, InboundEvent, normalised_address
from prefcenter.inbound.schemas import InboundReport
from prefcenter.inbound.service import COMPLAINT_SOURCE
from prefcenter.metrics import count_consent_change
from prefcenter.settings import Settings
from prefcenter.webhooks.queue import guarded_queue_pg
from prefcenter.webhooks.rules import EventType, types_of_event

# What this path records; every other action goes the app's way.
ACTIONS = frozenset({Action.HARD_BOUNCE, Action.SOFT_BOUNCE, Action.COMPLAINT})
_BOUNCE_KINDS = {Action.HARD_BOUNCE: BounceKind.HARD, Action.SOFT_BOUNCE: BounceKind.SOFT}
# PostgreSQL's division_by_zero: the statement's own refusal to keep a receipt without its event.
_ABORTED = "22012"
_RECORDED = InboundReport(events=1, recorded=1, duplicates=0, ignored=0, unknown_addresses=0)
_DUPLICATE = InboundReport(events=1, recorded=0, duplicates=1, ignored=0, unknown_addresses=0)

_READ = """
SELECT c.id, c.public_id, c.address,
    EXISTS (SELECT FROM erased_address AS e WHERE e.address_hash = %(address_hash)s),
    EXISTS (SELECT FROM inbound_receipt AS r WHERE r.key = %(key)s),
    b.bounced, b.occurred_at, b.since, b.source, b.event_id, b.lifted_at, b.soft_bounces,
    p.suppressed, p.occurred_at, p.by_recipient
FROM (VALUES (1)) AS one (n)
LEFT JOIN contact AS c ON c.address = %(address)s AND c.erased_at IS NULL
LEFT JOIN bounce AS b ON b.contact_id = c.id
LEFT JOIN suppression AS p ON p.contact_id = c.id
"""


@dataclass(frozen=True, slots=True)
class _Found:
    contact: BouncedContact
    bounce: StoredBounce | None
    suppression: tuple[bool, datetime, bool] | None  # suppressed, occurred_at, by_recipient


def _read(
    cursor: DriverCursor, *, address: str, address_hash: str, key: str
) -> _Found | bool | None:
    """The contact and its rows; True if the receipt was claimed before; None when no contact
    may be recorded for (none at the address, or its address erased)."""
    cursor.execute(_READ, {"address": address, "address_hash": address_hash, "key": key})
    row = cursor.fetchone()
    assert row is not None  # one row, whatever matched
    if row[4]:
        return True
    if row[0] is None or row[3]:
        return None
    bounce = None if row[5] is None else StoredBounce.from_driver_row(row[5:12])
    suppression = None if row[12] is None else (row[12], row[13].astimezone(UTC), row[14])
    return _Found(BouncedContact(row[0], row[1], row[2]), bounce, suppression)


_BOUNCE_INSERT = f"""written AS (
    INSERT INTO bounce (contact_id, {", ".join(BOUNCE_COLUMNS)})
    SELECT %(w_contact)s, {", ".join(f"%(w_{c})s" for c in BOUNCE_COLUMNS)}
    WHERE EXISTS (SELECT 1 FROM locked)
    ON CONFLICT DO NOTHING
    RETURNING 1
)"""  # noqa: S608  (bounces.service's column names; every value is a parameter)
# The row still as read: every column (lifted_at may be NULL).
_BOUNCE_AS_READ = f"""contact_id = %(w_contact)s
    AND ({", ".join(BOUNCE_COLUMNS)}) IS NOT DISTINCT FROM
        (%(x_bounced)s::boolean, %(x_occurred_at)s::timestamptz, %(x_since)s::timestamptz,
        %(x_source)s::text, %(x_event_id)s::text, %(x_lifted_at)s::timestamptz,
        %(x_soft_bounces)s::text)
    AND EXISTS (SELECT 1 FROM locked)"""  # noqa: S608  (the same column names)
_BOUNCE_UPDATE = f"""written AS (
    UPDATE bounce SET {", ".join(f"{c} = %(w_{c})s" for c in BOUNCE_COLUMNS)}
    WHERE {_BOUNCE_AS_READ}
    RETURNING 1
)"""  # noqa: S608  (bounces.service's column names; every value is a parameter)
# A bounce that changes no row (bounced already, or dated before a lift): its event is
# appended only while the row is as read, held so until COMMIT.
_BOUNCE_KEPT = f"""written AS (
    SELECT 1 FROM bounce WHERE {_BOUNCE_AS_READ} FOR SHARE
)"""  # noqa: S608


def _statement(written: str, append_ctes: str, hooks: str) -> str:
    """Claim, lock, write, append, queue; the division fails the statement if the receipt was
    claimed but the event not appended (see the module)."""
    return f"""WITH claimed AS (
    INSERT INTO inbound_receipt (key, provider, received_at)
    VALUES (%(r_key)s, %(r_provider)s, %(r_now)s)
    ON CONFLICT (key) DO NOTHING
    RETURNING 1
), locked AS (
    SELECT c.id FROM contact AS c
    WHERE c.id = %(w_contact)s AND c.address = %(w_address)s AND c.erased_at IS NULL
        AND EXISTS (SELECT 1 FROM claimed)
        AND NOT EXISTS (SELECT 1 FROM erased_address AS e WHERE e.address_hash = %(r_hash)s)
    FOR UPDATE OF c
), {written}, {append_ctes}{hooks}SELECT (SELECT seq FROM moved),
    CASE WHEN EXISTS (SELECT 1 FROM claimed) THEN 1 / (SELECT count(*) FROM moved) END
"""  # noqa: S608  (built from this module's and the callees' constants)


@dataclass(frozen=True, slots=True)
class _Write:
    written: str
    params: dict[str, Any]
    event: NewEvent
    announced: tuple[EventType, ...]


def _bounce_write(
    found: _Found, event: InboundEvent, *, settings: Settings, now: datetime
) -> _Write | None:
    report = BounceReport(
        contact=found.contact,
        kind=_BOUNCE_KINDS[event.action],
        occurred_at=event.occurred_at,
        actor=f"esp:{event.provider.value}",
        source=event.provider.value,
        evidence=event.evidence,
    )
    decided = decide_report(found.bounce, report, policy=soft_bounce_policy(settings), now=now)
    params: dict[str, Any] = {}
    if found.bounce is not None:
        params.update((f"x_{c}", getattr(found.bounce, c)) for c in BOUNCE_COLUMNS)
    if decided.row is not None:
        params.update((f"w_{c}", getattr(decided.row, c)) for c in BOUNCE_COLUMNS)
        written = _BOUNCE_INSERT if found.bounce is None else _BOUNCE_UPDATE
    elif found.bounce is not None:
        written = _BOUNCE_KEPT
    else:
        return None  # no row, none to write: not a decision the rules make
    announced = (EventType.CONTACT_BOUNCED,) if decided.decision.became_bounced else ()
    return _Write(written, params, decided.event, announced)


def _complaint_requested(event: InboundEvent) -> tuple[RequestedChange, ChangeRecord]:
    """The complaint's change and record, as inbound.service gives them to apply_change."""
    requested = RequestedChange(
        status=Status.UNSUBSCRIBED,
        occurred_at=event.occurred_at,
        actor=ActorKind.RECIPIENT,
        source=COMPLAINT_SOURCE,
        with_evidence=bool(event.evidence),
    )
    record = ChangeRecord(
        actor=f"esp:{event.provider.value}",
        source=COMPLAINT_SOURCE,
        evidence=event.evidence,
        context={"channel": "esp_webhook"},
    )
    return requested, record


def _complaint_write(found: _Found, event: InboundEvent, *, now: datetime) -> _Write | None:
    requested, record = _complaint_requested(event)
    current = None if found.suppression is None else stored_suppression_state(*found.suppression)
    decision = decide_global_change(current, requested, now=now)
    if decision.outcome is Outcome.SUPERSEDED:
        return None  # rare (clocks apart): the locking path records it
    was = None if found.suppression is None else found.suppression[0]
    values = suppression_change(decision, requested, now=now, was_suppressed=was)
    written, params = guarded_suppression_write(found.suppression, values)
    change = change_event(
        event_id=new_event_id(),
        contact_id=found.contact.public_id,
        address=found.contact.address,
        topic_key=None,
        requested=requested,
        record=record,
        decision=decision,
    )
    announced = (
        *types_of_event(change.kind.value, outcome=change.outcome, to_status=change.to_status),
        EventType.CONTACT_COMPLAINED,
    )
    return _Write(written, params, change, announced)


def record_on_cursor(
    cursor: DriverCursor,
    event: InboundEvent,
    *,
    settings: Settings,
    keys: AuditKeys,
    now: datetime,
) -> InboundReport | None:
    """Record one SES bounce or complaint (`ACTIONS`) and commit it; its report, or None when
    nothing was written and the app's path must record it (see the module)."""
    assert event.action in ACTIONS
    address = normalised_address(event.address)
    if address is None:
        return None
    address_hash = keys.address_hash(address)
    found = _read(cursor, address=address, address_hash=address_hash, key=event.receipt_key)
    if found is True:
        return _DUPLICATE
    if not isinstance(found, _Found):
        return None
    if event.action is Action.COMPLAINT:
        write = _complaint_write(found, event, now=now)
    else:
        write = _bounce_write(found, event, settings=settings, now=now)
    if write is None:
        return None
    params: dict[str, Any] = {
        **write.params,
        "r_key": event.receipt_key,
        "r_provider": event.provider.value,
        "r_now": now,
        "r_hash": address_hash,
        "w_contact": found.contact.id,
        "w_address": found.contact.address,
    }
    append_ctes, event_params = guarded_append_pg(
        keys, write.event, only_if="EXISTS (SELECT 1 FROM written)"
    )
    params.update(event_params)
    hooks = ""
    if write.announced:
        hooks, hook_params = guarded_queue_pg(
            event_id=write.event.id,
            contact_id=found.contact.public_id,
            types=write.announced,
            now=now,
            only_if="EXISTS (SELECT 1 FROM moved)",
        )
        params.update(hook_params)
    try:
        cursor.execute(_statement(write.written, append_ctes, hooks), params)
    except Exception as exc:
        if getattr(exc, "sqlstate", None) == _ABORTED:
            return None  # rolled back whole: the app's path records it
        raise
    row = cursor.fetchone()
    if row is None or row[0] is None:
        return _DUPLICATE  # claimed by a delivery of the same message that committed first
    if event.action is Action.COMPLAINT:
        requested, _ = _complaint_requested(event)
        count_consent_change(None, source=counted_source(requested), outcome=write.event.outcome)
    return _RECORDED
