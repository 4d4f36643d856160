"""The outbox's order per key (a webhook endpoint and a contact), on both engines: the oldest
unfinished message of a key is the only one a worker may claim, so a delivery being retried
holds back the next of its contact and endpoint, and nothing else; several workers at once
never deliver a key's messages out of order."""

from __future__ import annotations

import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlmodel import col, select

from prefcenter.db import Database
from prefcenter.outbox import service as outbox
from prefcenter.outbox.models import OutboxMessage
from prefcenter.outbox.schemas import Attempted, AttemptOutcome, Claimed, OutboxKind

START = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
LEASE = timedelta(minutes=5)
WEBHOOK = (OutboxKind.WEBHOOK,)


def queue(database: Database, keys: list[str], *, at: datetime = START) -> list[int]:
    """A webhook message per key, in this order; their ids."""
    with database.transaction(write=True) as session:
        rows = [
            OutboxMessage(
                kind=OutboxKind.WEBHOOK.value,
                message_id=f"msg_{key}_{number}_{at.timestamp()}",
                payload={},
                status="queued",
                created_at=at,
                due_at=at,
                ordering_key=key,
            )
            for number, key in enumerate(keys)
        ]
        session.add_all(rows)
        session.flush()
        return [row.id for row in rows if row.id is not None]


def claim(
    database: Database,
    now: datetime,
    *,
    name: str = "w",
    limit: int = 50,
    lease: timedelta = LEASE,
) -> list[Claimed]:
    with database.transaction(write=True) as session:
        return outbox.claim_due(
            session, kinds=WEBHOOK, now=now, limit=limit, claim=name, lease=lease
        )


def record(
    database: Database,
    claimed: list[Claimed],
    outcomes: dict[int, AttemptOutcome],
    at: datetime,
    *,
    name: str = "w",
) -> None:
    with database.transaction(write=True) as session:
        outbox.record_attempts(
            session,
            [Attempted(c, outcomes[c.id], at, at) for c in claimed],
            claim=name,
            worker=name,
            draw=lambda: 0.5,
        )


def row(database: Database, message: int) -> OutboxMessage:
    with database.transaction(write=False) as session:
        found = session.get(OutboxMessage, message)
        assert found is not None
        return found


class TestHeldBack:
    def test_a_retried_delivery_holds_back_the_next_of_its_contact_and_endpoint_only(
        self, database: Database
    ) -> None:
        ada_1, ada_2, bob_1, ada_other_endpoint = queue(
            database, ["1:ada", "1:ada", "1:bob", "2:ada"]
        )
        first = claim(database, START)
        assert {c.id for c in first} == {ada_1, bob_1, ada_other_endpoint}
        # While ada's first is claimed (being sent), her second waits too.
        assert claim(database, START, name="other") == []

        outcomes = {ada_1: AttemptOutcome.RETRY, bob_1: AttemptOutcome.SENT}
        outcomes[ada_other_endpoint] = AttemptOutcome.SENT
        record(database, first, outcomes, START)
        retry_at = row(database, ada_1).due_at
        assert retry_at > START
        # Due long ago, but behind a delivery of the same contact and endpoint being retried.
        assert claim(database, retry_at - timedelta(seconds=1)) == []
        assert row(database, ada_2).due_at == retry_at  # held back to its time

        # Others' deliveries, queued meanwhile, go at once; ada's own on another endpoint too.
        bob_2, ada_other_2, ada_3 = queue(
            database, ["1:bob", "2:ada", "1:ada"], at=START + timedelta(seconds=1)
        )
        now = START + timedelta(seconds=2)
        assert {c.id for c in claim(database, now)} == {bob_2, ada_other_2}

        retried = claim(database, retry_at)
        assert [c.id for c in retried] == [ada_1]
        record(database, retried, {ada_1: AttemptOutcome.SENT}, retry_at)
        second = claim(database, retry_at)
        assert [c.id for c in second] == [ada_2]  # not ada_3: one at a time, in order
        record(database, second, {ada_2: AttemptOutcome.SENT}, retry_at)
        assert [c.id for c in claim(database, retry_at)] == [ada_3]

    def test_a_delivery_given_up_lets_the_next_one_go(self, database: Database) -> None:
        ada_1, ada_2 = queue(database, ["1:ada", "1:ada"])
        first = claim(database, START)
        record(database, first, {ada_1: AttemptOutcome.FAILED}, START)
        assert [c.id for c in claim(database, START)] == [ada_2]


# --- several workers at once ---------------------------------------------------------------


class SteppingClock:
    """Each reading is ten minutes after the last: retries fall due within a few rounds."""

    def __init__(self) -> None:
        self._now = START
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            self._now += timedelta(minutes=10)
            return self._now


@dataclass(frozen=True, slots=True)
class Try:
    key: str
    message: int
    outcome: AttemptOutcome


def run_worker(
    database: Database,
    name: str,
    clock: Callable[[], datetime],
    log: list[Try],
    lock: threading.Lock,
    keys: dict[int, str],
    seed: int,
) -> None:
    """Claim, "send" (note each try in the shared log, in the order they happen), fail some
    with a temporary error, record; until nothing is left queued."""
    draw = random.Random(seed)
    idle = 0
    while idle < 20:
        # No claim runs out on this clock: each message is tried by one worker at a time.
        claimed = claim(database, clock(), name=name, limit=8, lease=timedelta(days=3650))
        if not claimed:
            idle += 1
            time.sleep(0.01)
            continue
        idle = 0
        outcomes: dict[int, AttemptOutcome] = {}
        for message in claimed:
            fails = message.attempts < 2 and draw.random() < 0.3
            outcome = AttemptOutcome.RETRY if fails else AttemptOutcome.SENT
            outcomes[message.id] = outcome
            with lock:
                log.append(Try(keys[message.id], message.id, outcome))
        record(database, claimed, outcomes, clock(), name=name)


class TestConcurrentWorkers:
    def test_several_workers_never_deliver_a_key_out_of_order(self, database: Database) -> None:
        keys_in_order = [
            f"{endpoint}:contact-{contact}"
            for _ in range(6)
            for contact in range(12)
            for endpoint in (1, 2)
        ]
        ids = queue(database, keys_in_order)
        keys = dict(zip(ids, keys_in_order, strict=True))
        clock = SteppingClock()
        log: list[Try] = []
        lock = threading.Lock()
        workers = [
            threading.Thread(target=run_worker, args=(database, f"w{n}", clock, log, lock, keys, n))
            for n in range(4)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(120)
        assert not any(worker.is_alive() for worker in workers)

        with database.transaction(write=False) as session:
            statuses = set(session.exec(select(col(OutboxMessage.status))))
        assert statuses == {"sent"}
        assert any(t.outcome is AttemptOutcome.RETRY for t in log)  # the order was tested
        delivered: dict[str, list[int]] = defaultdict(list)
        for attempt in log:
            mine = [i for i, k in keys.items() if k == attempt.key and i < attempt.message]
            # Every earlier message of the key was delivered before this one was tried.
            assert set(mine) <= set(delivered[attempt.key]), attempt
            if attempt.outcome is AttemptOutcome.SENT:
                delivered[attempt.key].append(attempt.message)
        for key, sent in delivered.items():
            assert sent == sorted(sent) == sorted(i for i, k in keys.items() if k == key)
