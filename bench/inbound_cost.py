"""What one event coming in costs the server, in-process (no sockets, no HTTP): SQL statements
and CPU time per SendGrid event and per SNS notification, on PostgreSQL (or SQLite).

    .venv/bin/python bench/inbound_cost.py                      # PostgreSQL
    .venv/bin/python bench/inbound_cost.py --sqlite
    .venv/bin/python bench/inbound_cost.py --profile 25         # plus cProfile's top 25

Calls the use cases the routes call (`inbound.receive.receive_sendgrid`, `receive_ses`, the
signature checks included), and on PostgreSQL what the SNS lane calls (`receive.read_ses` on
the cached certificate, then `inbound.ses_record.record_on_cursor` on a pooled connection;
"SNS lane", statements counted on the driver's cursor), on a throwaway database seeded as
bench/inbound.py seeds it, with the same event mix, and prints per event: statements (round
trips), CPU µs of this process (`time.process_time`, which a loaded machine inflates less than
wall time) over the first half of the deliveries, and the Python function calls cProfile
counts over the second half (an instruction count that does not depend on the load). Then the
same deliveries again: duplicates. Asserts no time. `PYTHONPATH=<an older checkout>/src`
measures that one (without the lane).
"""

from __future__ import annotations

import argparse
import base64
import cProfile
import json
import os
import pstats
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import one_click as oc
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import event

import inbound as ib
from prefcenter.audit.keys import AuditKeys
from prefcenter.db import Database
from prefcenter.driver import DriverCursor
from prefcenter.inbound import receive, ses_record
from prefcenter.settings import Settings


class _CountingCursor:
    """A driver cursor that counts its statements (the lane's bypass SQLAlchemy's events)."""

    executed = 0

    def __init__(self, cursor: DriverCursor) -> None:
        self._cursor = cursor

    def execute(self, sql: str, parameters: Any = None, /) -> Any:
        _CountingCursor.executed += 1
        return self._cursor.execute(sql, parameters)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)


def _measure(
    label: str,
    database: Database,
    calls: list[Callable[[], Any]],
    per_call: int,
    profile: int,
) -> None:
    """The first half of `calls` plain (statements, CPU, wall), the second under cProfile
    (Python function calls, and with `profile` its top functions and statements)."""
    half = len(calls) // 2
    statements = 0
    shapes: Counter[str] = Counter()

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        nonlocal statements
        statements += 1
        shapes[" ".join(statement.split())[:70]] += 1

    event.listen(database.engine, "before_cursor_execute", count)
    on_driver = _CountingCursor.executed
    cpu = time.process_time()
    wall = time.perf_counter()
    for call in calls[:half]:
        call()
    wall = time.perf_counter() - wall
    cpu = time.process_time() - cpu
    event.remove(database.engine, "before_cursor_execute", count)
    statements += _CountingCursor.executed - on_driver
    profiler = cProfile.Profile()
    profiler.enable()
    for call in calls[half:]:
        call()
    profiler.disable()
    stats = pstats.Stats(profiler)
    function_calls: int = stats.total_calls  # type: ignore[attr-defined]
    events = half * per_call
    print(
        f"{label}: {events:,} events in {half} deliveries: {statements / events:.3f} "
        f"statements/event, {1e6 * cpu / events:,.0f} µs CPU/event, "
        f"{events / wall:,.0f} events/s (wall); profiled, {(len(calls) - half) * per_call:,} "
        f"more: {function_calls / ((len(calls) - half) * per_call):,.0f} Python calls/event"
    )
    if profile:
        for shape, n in shapes.most_common(12):
            print(f"  {n / half:7.2f} per delivery  {shape}")
        stats.sort_stats(os.environ.get("BENCH_SORT", "tottime")).print_stats(profile)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--contacts", type=int, default=20_000)
    parser.add_argument("--batches", type=int, default=10, help="SendGrid deliveries")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--notifications", type=int, default=1000, help="SNS deliveries")
    parser.add_argument("--mix", choices=sorted(ib.MIXES), default="realistic")
    parser.add_argument("--sqlite", action="store_true")
    parser.add_argument("--profile", type=int, default=0, help="print cProfile's top N")
    parser.add_argument(
        "--pg-admin-url",
        default=os.environ.get(
            "PREFCENTER_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
        ),
    )
    parser.add_argument("--keep-db", action="store_true")
    args = parser.parse_args()
    rng = random.Random(20261202)
    sendgrid_key = ec.generate_private_key(ec.SECP256R1())
    public = base64.b64encode(
        sendgrid_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    ).decode()
    rsa_key, certificate = ib.sns_signer()
    with (
        tempfile.TemporaryDirectory(prefix="prefcenter-inbound-cost-") as tmp,
        oc.throwaway_database(args, Path(tmp)) as target,
    ):
        oc.prepare(target)
        if target.is_sqlite:
            addresses = _seed_sqlite(target, args.contacts)
        else:
            addresses = ib.seed(target, args.contacts)
        settings = Settings(
            _env_file=None,
            database_url=target.url,
            signing_keys=oc.SIGNING_KEYS,
            audit_key=oc.AUDIT_KEY,
            sendgrid_public_key=public,
            sendgrid_group_topics=f"1:{oc.TOPIC}",
            ses_topic_arns=ib.TOPIC_ARN,
        )
        database = Database(settings)
        keys = AuditKeys.from_settings(settings)
        ring = settings.signing_key_ring()
        state = receive.InboundState.from_settings(
            settings, fetch=lambda _url: certificate, confirm=lambda _url: None
        )
        batches = ib.sendgrid_batches(
            addresses, args.batches, args.batch_size, ib.MIXES[args.mix], rng
        )
        signed: list[tuple[bytes, str, str]] = []
        for batch in batches:
            body = json.dumps(batch).encode()
            stamp = str(int(time.time()))
            signature = sendgrid_key.sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256()))
            signed.append((body, base64.b64encode(signature).decode(), stamp))

        def sendgrid_call(body: bytes, signature: str, stamp: str) -> Callable[[], Any]:
            return lambda: receive.receive_sendgrid(
                database,
                state,
                body,
                signature=signature,
                timestamp=stamp,
                keys=keys,
                now=datetime.now(UTC),
            )

        calls = [sendgrid_call(*s) for s in signed]
        _measure("SendGrid", database, calls, args.batch_size, args.profile)
        _measure("SendGrid again (duplicates)", database, calls, args.batch_size, 0)

        notifications = ib.sns_notifications(rsa_key, addresses, args.notifications, rng)

        def ses_call(body: bytes) -> Callable[[], Any]:
            return lambda: receive.receive_ses(
                database, state, body, ring=ring, keys=keys, now=datetime.now(UTC)
            )

        calls = [ses_call(b) for b in notifications]
        calls[0]()  # the certificate, once
        _measure("SNS", database, calls[1:], 1, args.profile)
        _measure("SNS again (duplicates)", database, calls[1:], 1, 0)
        if not target.is_sqlite:
            lane = ib.sns_notifications(rsa_key, addresses, args.notifications, rng)
            calls = [_lane_call(database, state, b, settings=settings, keys=keys) for b in lane]
            _measure("SNS lane", database, calls, 1, args.profile)
            _measure("SNS lane again (duplicates)", database, calls, 1, 0)
        database.engine.dispose()
    return 0


def _lane_call(
    database: Database,
    state: receive.InboundState,
    body: bytes,
    *,
    settings: Settings,
    keys: AuditKeys,
) -> Callable[[], Any]:
    """What inbound.ses_lane does with one notification once its body is read (on
    PostgreSQL, the certificate cached): verify and read it, then record it on a connection."""

    def call() -> Any:
        now = datetime.now(UTC)
        delivery = receive.read_ses(state, body, now=now, fetch=False)
        if (answer := receive.answer_at_once(delivery)) is not None:
            return answer
        assert isinstance(delivery.notification, list)
        (found,) = delivery.notification
        answer = database.on_connection(
            lambda cursor: ses_record.record_on_cursor(
                _CountingCursor(cursor),
                found,
                settings=settings,
                keys=keys,
                now=now,
            )
        )
        assert answer is not None, "the lane gave way"
        return answer

    return call


def _seed_sqlite(target: oc.Target, contacts: int) -> list[str]:
    addresses = [f"user{n}@bench.example.com" for n in range(contacts)]
    now = datetime.now(UTC).replace(tzinfo=None).isoformat(sep=" ")
    raw = target.engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.executemany(
            "INSERT INTO contact (public_id, address, address_display, created_at) "
            "VALUES (?, ?, ?, ?)",
            [(f"p{n:011d}", a, a, now) for n, a in enumerate(addresses)],
        )
        cursor.execute(
            "INSERT INTO subscription (contact_id, topic_id, status, occurred_at, since, "
            "source, by_recipient, event_id) SELECT c.id, t.id, 'subscribed', "
            "'2015-01-01 00:00:00', ?, 'import', 0, 'seed' FROM contact c, topic t",
            (now,),
        )
        raw.commit()
    finally:
        raw.close()
    return addresses


if __name__ == "__main__":
    sys.exit(main())
