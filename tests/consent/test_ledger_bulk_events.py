"""consent.ledger.bulk_events: an import's events, built from a template, are byte for byte the
events `change_event` makes and `prepare_event` prepares (no database)."""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from prefcenter.audit.canonical import encode_document
from prefcenter.audit.keys import AuditKeys
from prefcenter.audit.prepared import PreparedEvent, prepare_event
from prefcenter.consent.ledger.bulk_events import BulkEvents
from prefcenter.consent.ledger.changes import ChangeRecord, change_event
from prefcenter.consent.rules import (
    ActorKind,
    CurrentState,
    RequestedChange,
    Status,
    decide_change,
)
from prefcenter.settings import Settings

NOW = datetime(2026, 12, 6, 12, 0, 0, 123456, tzinfo=UTC)
KEYS = AuditKeys.from_settings(
    Settings(
        _env_file=None,
        database_url="sqlite://",
        signing_keys="t1:test-signing-secret-0123456789abcdefghij",
        audit_key="test-audit-key-0123456789abcdefghijklmnop",
    )
)
BASE = {"import": 'crm "export" ü', "file": "people\n.csv", "sha256": "ab" * 32, "format": "csv"}


def _as_values(item: PreparedEvent) -> dict[str, Any]:
    values = asdict(item)
    values["parts"] = (item.parts.head, item.parts.tail)
    return values


def _both(
    record: ChangeRecord,
    current: CurrentState | None,
    requested: RequestedChange,
    added: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, Any]]:
    decision = decide_change(current, requested, now=NOW)
    address = "ada@example.com"
    slow = prepare_event(
        KEYS,
        change_event(
            event_id="e-1",
            contact_id="pub_Id-1",
            address=address,
            topic_key="newsletter",
            requested=requested,
            record=ChangeRecord(
                actor=record.actor,
                source=record.source,
                evidence={**record.evidence, **added},
                context=record.context,
            ),
            decision=decision,
        ),
    )
    events = BulkEvents(KEYS, topic_key="newsletter", record=record, actor_kind=requested.actor)
    fast = events.event(
        event_id="e-1",
        contact_id="pub_Id-1",
        address_hash=KEYS.address_hash(address),
        requested=requested,
        decision=decision,
        added=added,
    )
    # An import makes the document before deciding (imports.prepare): the same event, also
    # when the change is clamped and its document must hold the time it claimed.
    made_before = events.event(
        event_id="e-1",
        contact_id="pub_Id-1",
        address_hash=KEYS.address_hash(address),
        requested=requested,
        decision=decision,
        added=added,
        document=events.document(added),
    )
    assert _as_values(made_before) == _as_values(fast)
    return _as_values(fast), _as_values(slow)


@pytest.mark.parametrize("status", [Status.SUBSCRIBED, Status.UNSUBSCRIBED])
@pytest.mark.parametrize(
    "current",
    [
        None,
        CurrentState(Status.SUBSCRIBED, NOW - timedelta(days=1), by_recipient=False),
        CurrentState(Status.UNSUBSCRIBED, NOW - timedelta(days=1), by_recipient=False),
        CurrentState(Status.SUBSCRIBED, NOW + timedelta(days=1), by_recipient=False),
    ],
    ids=["new", "was-subscribed", "was-unsubscribed", "newer-stored"],
)
@pytest.mark.parametrize("future", [False, True], ids=["past", "clamped"])
def test_the_template_writes_what_the_write_model_writes(
    status: Status, current: CurrentState | None, future: bool
) -> None:
    at = NOW + timedelta(hours=1) if future else NOW - timedelta(hours=2, microseconds=7)
    requested = RequestedChange(status, at, ActorKind.ADMIN, "import")
    record = ChangeRecord(
        actor='cli:ü "x"', source="import", evidence=BASE, context={"ip": "10.0.0.1"}
    )

    fast, slow = _both(record, current, requested, {"line": 7, "row_evidence": "form\t“v2”"})

    assert fast == slow


def test_a_document_that_is_not_plain_is_written_the_reference_way() -> None:
    requested = RequestedChange(Status.SUBSCRIBED, NOW, ActorKind.ADMIN, "import")
    record = ChangeRecord(actor="cli:x", source="import", evidence={**BASE, "ratio": 0.1})

    fast, slow = _both(record, None, requested, {"line": 3})

    assert fast == slow


def test_free_text_is_refused() -> None:
    with pytest.raises(ValueError, match="free text"):
        BulkEvents(
            KEYS,
            topic_key="t",
            record=ChangeRecord(actor="a", source="import", reason="a phone number"),
            actor_kind=ActorKind.ADMIN,
        )


@pytest.mark.parametrize(
    "evidence",
    [BASE, {**BASE, "note": "100% 9007199254740991"}, {**BASE, "line": 1}, {}],
    ids=["import", "marker-in-evidence", "own-line", "none"],
)
@pytest.mark.parametrize("line", [0, 2, 1_000_001, 2**53 - 1, -5])
def test_a_document_of_a_line_alone_is_the_reference_document(
    evidence: dict[str, Any], line: int
) -> None:
    # An import's documents add only their line: made from a template, they are the bytes
    # (and digest) `encode_document` writes.
    record = ChangeRecord(actor="cli:x", source="import", evidence=evidence, context={"ip": "1"})
    events = BulkEvents(KEYS, topic_key="newsletter", record=record, actor_kind=ActorKind.ADMIN)

    document, digest = events.document({"line": line})

    reference = encode_document({"actor_kind": "admin", "ip": "1"}, {**evidence, "line": line})
    assert reference is not None
    assert (document, digest) == (reference, KEYS.evidence_digest(reference))
