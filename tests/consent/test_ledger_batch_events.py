"""consent.ledger.batch_events: a batch's events, built straight from its changes and with
documents reused, are byte for byte the events `change_event` makes and `prepare_event`
prepares (no database)."""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from prefcenter.audit.keys import AuditKeys
from prefcenter.audit.prepared import PreparedEvent, prepare_event
from prefcenter.consent.ledger.batch_events import BatchEvents
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
ACTOR = 'api:ü "sync"'
CONTEXT = {"client_ip": "10.0.0.1", "user_agent": "crm/1 ü", "idempotency_key": "k-1"}
ADDRESS = "ada@example.com"


def _as_values(item: PreparedEvent) -> dict[str, Any]:
    values = asdict(item)
    values["parts"] = (item.parts.head, item.parts.tail)
    return values


def _slow(
    topic: str | None,
    record: ChangeRecord,
    current: CurrentState | None,
    requested: RequestedChange,
    event_id: str,
) -> dict[str, Any]:
    decision = decide_change(current, requested, now=NOW)
    return _as_values(
        prepare_event(
            KEYS,
            change_event(
                event_id=event_id,
                contact_id="pub_Id-1",
                address=ADDRESS,
                topic_key=topic,
                requested=requested,
                record=record,
                decision=decision,
            ),
        )
    )


def _fast(
    events: BatchEvents,
    topic: str | None,
    record: ChangeRecord,
    current: CurrentState | None,
    requested: RequestedChange,
    event_id: str,
) -> dict[str, Any]:
    return _as_values(
        events.event(
            event_id=event_id,
            contact_id="pub_Id-1",
            address_hash=KEYS.address_hash(ADDRESS),
            topic_key=topic,
            requested=requested,
            record=record,
            decision=decide_change(current, requested, now=NOW),
        )
    )


@pytest.mark.parametrize("topic", ["newsletter", None], ids=["topic", "contact-wide"])
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
def test_the_batch_writes_what_the_write_model_writes(
    topic: str | None, status: Status, current: CurrentState | None, future: bool
) -> None:
    at = NOW + timedelta(hours=1) if future else NOW - timedelta(hours=2, microseconds=7)
    requested = RequestedChange(status, at, ActorKind.ADMIN, "crm-sync", reason="asked")
    plain = ChangeRecord(actor=ACTOR, source="crm-sync", context=CONTEXT)
    free_text = ChangeRecord(
        actor=ACTOR,
        source="crm.sync:2",
        campaign_id="spring ü",
        reason="asked by phone",
        evidence={"form": "v2", "n": 3},
        context={**CONTEXT, "notice": "privacy@v3"},
    )
    events = BatchEvents(KEYS, actor=ACTOR)
    # Each a few times over: the second of each reuses its document.
    for number, record in enumerate([plain, free_text, plain, free_text, plain]):
        event_id = f"e-{number}"

        assert _fast(events, topic, record, current, requested, event_id) == _slow(
            topic, record, current, requested, event_id
        )


def test_a_pending_subscription_names_who_was_handed_its_link() -> None:
    requested = RequestedChange(
        Status.SUBSCRIBED, NOW, ActorKind.API_CLIENT, "api", double_opt_in=True
    )
    record = ChangeRecord(actor=ACTOR, source="api", context=CONTEXT, confirm_link_to=ACTOR)
    events = BatchEvents(KEYS, actor=ACTOR)
    pending = CurrentState(Status.PENDING, NOW - timedelta(days=1), by_recipient=False)
    for current in (None, pending, None):
        assert _fast(events, "news", record, current, requested, "e-1") == _slow(
            "news", record, current, requested, "e-1"
        )


def test_one_record_context_under_each_actor_kind_and_a_clamped_time() -> None:
    """Documents found by the record's context (shared by a batch's records) still say who
    acted and the time a clamped change claimed."""
    record = ChangeRecord(actor=ACTOR, source="api", context=CONTEXT)
    events = BatchEvents(KEYS, actor=ACTOR)
    for actor, claimed in (
        (ActorKind.API_CLIENT, NOW),
        (ActorKind.ADMIN, NOW),
        (ActorKind.API_CLIENT, NOW + timedelta(hours=1)),
        (ActorKind.ADMIN, NOW),
        (ActorKind.API_CLIENT, NOW),
    ):
        requested = RequestedChange(Status.SUBSCRIBED, claimed, actor, "api")
        assert _fast(events, "t", record, None, requested, "e-1") == _slow(
            "t", record, None, requested, "e-1"
        )


def test_documents_that_are_not_plain_are_written_the_reference_way() -> None:
    requested = RequestedChange(Status.SUBSCRIBED, NOW, ActorKind.API_CLIENT, "api")
    events = BatchEvents(KEYS, actor=ACTOR)
    for evidence in ({"ratio": 0.1}, {"ratio": 0.25}, {"ratio": 0.1}):
        record = ChangeRecord(actor=ACTOR, source="api", evidence=evidence, context=CONTEXT)

        assert _fast(events, "t", record, None, requested, "e-1") == _slow(
            "t", record, None, requested, "e-1"
        )


def test_changes_each_of_its_own_source() -> None:
    requested = RequestedChange(Status.SUBSCRIBED, NOW, ActorKind.API_CLIENT, "api")
    events = BatchEvents(KEYS, actor=ACTOR)
    for number in range(40):
        record = ChangeRecord(actor=ACTOR, source=f"src-{number}", context=CONTEXT)

        assert _fast(events, "t", record, None, requested, "e-1") == _slow(
            "t", record, None, requested, "e-1"
        )


def test_another_actor_is_refused() -> None:
    requested = RequestedChange(Status.SUBSCRIBED, NOW, ActorKind.API_CLIENT, "api")
    with pytest.raises(ValueError, match="its actor"):
        _fast(
            BatchEvents(KEYS, actor=ACTOR),
            "t",
            ChangeRecord(actor="api:other", source="api"),
            None,
            requested,
            "e-1",
        )
