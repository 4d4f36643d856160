"""Webhook benchmark on PostgreSQL: deliveries/s by W `prefcenter worker` processes to a
local receiver, against a floor measured in the same run (the same number of POSTs by bare
httpx loops, in as many processes, to the same receiver); then commit-to-delivery latency
while changes arrive at a steady rate.

    .venv/bin/python bench/webhooks.py                      # 20,000 deliveries, 2 workers
    .venv/bin/python bench/webhooks.py --deliveries 40000 --rate 500 --duration 20

1. Throughput: an endpoint subscribed to consent.changed; an import of N new addresses
   queues N deliveries (set-based, one per event); then W workers start and the clock runs
   until every one is recorded sent. What a worker does per delivery and the floor does not:
   claim it (`FOR UPDATE SKIP LOCKED`, in order per contact), read its audit event and the
   endpoint's secret, build and sign the body, POST it through the checked transport, and
   record the attempt. Goal: ≥ 2,000/s with 2 workers, at ≥ 0.5× the floor.
2. Latency: RATE consent changes per second (one-click opt-outs of the imported contacts,
   through the unsubscribe lane's statements, from a pool of threads) for DURATION seconds
   while the workers run; the receiver takes `arrival - body timestamp` (the event's
   `recorded_at`, stamped just before the change commits). Goal: p99 ≤ 1 s at 500/s.

The workers poll every PREFCENTER_OUTBOX_POLL_SECONDS when idle (--poll, 0.05 s here; the
default of 1 s bounds the latency of a quiet service by about that). Creates its own database
(`prefcenter_bench_hooks_…`, dropped at the end unless --keep-db).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
from sqlalchemy import make_url, text

from prefcenter import migrations
from prefcenter.apikeys.schemas import Caller, Scope
from prefcenter.audit.keys import AuditKeys
from prefcenter.consent.ledger.changes import ChangeRecord
from prefcenter.consent.ledger.lane import read_optout_state, write_optout
from prefcenter.consent.rules import Status
from prefcenter.db import Database, utcnow
from prefcenter.imports.service import ImportRequest, file_sha256, run_import
from prefcenter.preference_center.service import Channel, recipient_change
from prefcenter.settings import Settings
from prefcenter.topics.schemas import ConsentModel, TopicIn, TopicKind
from prefcenter.topics.service import put_topic
from prefcenter.webhooks import service as webhooks
from prefcenter.webhooks.addresses import system_resolve
from prefcenter.webhooks.schemas import WebhookIn, WebhookPatch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from outbox_workers import start_workers, stop_workers, timed_in_processes
from webhook_sink import sink

ADMIN_URL = os.environ.get(
    "PREFCENTER_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
SIGNING_KEYS = "b1:bench-signing-secret-0123456789abcdef"
AUDIT_KEY = "bench-audit-key-0123456789abcdefghijklmnop"
TOPIC = "newsletter"
GOAL_RATE = 2000.0
GOAL_RATIO = 0.5
GOAL_P99_S = 1.0
CALLER = Caller(key_id=0, name="bench", scopes=frozenset({Scope.ADMIN}))
ACTOR = webhooks.Actor(name="bench", channel="bench")


@contextmanager
def bench_database(keep: bool) -> Iterator[str]:
    admin_url = make_url(ADMIN_URL)
    name = f"prefcenter_bench_hooks_{uuid.uuid4().hex[:8]}"
    admin_dsn = admin_url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        if not keep:
            with psycopg.connect(admin_dsn, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- the floor: bare httpx POST loops --------------------------------------------------------


def _body(n: int) -> bytes:
    """About the size of a consent.changed delivery."""
    stamp = datetime.now(UTC).isoformat(timespec="microseconds")[:-6] + "Z"
    return (
        f'{{"type":"consent.changed","timestamp":"2000-01-01T00:00:00.000000Z","data":{{'
        f'"id":"{uuid.uuid4()}","seq":{n},"kind":"consent_change","contact_id":"'
        f'{uuid.uuid4().hex[:22]}","topic":"newsletter","from_status":null,"to_status":'
        f'"subscribed","outcome":"applied","occurred_at":"{stamp}","recorded_at":"{stamp}",'
        f'"actor":"cli:bench","source":"import","campaign_id":null,"reason":null}}}}'
    ).encode()


async def _bare(url: str, count: int, concurrency: int) -> None:
    bodies = [_body(n) for n in range(count)]
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=15, trust_env=False) as client:
        queue = iter(bodies)

        async def loop() -> None:
            for body in queue:
                headers = {
                    "content-type": "application/json",
                    "webhook-id": "msg_floor",
                    "webhook-timestamp": "0",
                    "webhook-signature": "v1,floor",
                }
                response = await client.post(url, content=body, headers=headers)
                response.raise_for_status()

        await asyncio.gather(*(loop() for _ in range(concurrency)))


def _bare_process(url: str, count: int, concurrency: int, start: Any, done: Any) -> None:
    start.wait()
    asyncio.run(_bare(url, count, concurrency))
    done.set()


def floor(url: str, count: int, processes: int, concurrency: int) -> float:
    """`count` POSTs by `processes` processes of `concurrency` httpx loops: seconds."""
    return timed_in_processes(_bare_process, (url, count // processes, concurrency), processes)


def counts(database: Database) -> dict[str, int]:
    with database.transaction(write=False) as session:
        rows = session.execute(
            text(
                "SELECT status, count(*) FROM outbox_message WHERE kind = 'webhook' GROUP BY status"
            )
        ).all()
    return {str(status): int(count) for status, count in rows}


def cpu_of(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


# --- the run -------------------------------------------------------------------------------


def seed(database: Database, count: int) -> None:
    """`count` new addresses subscribed by one import: one delivery each."""
    data = "email,status\n" + "".join(f"p{n}@bench.example,subscribed\n" for n in range(count))
    binary = io.BytesIO(data.encode())
    run_import(
        database,
        binary,
        ImportRequest(topic=TOPIC, name="bench", actor="cli:bench", file_name="bench.csv"),
        sha256=file_sha256(binary),
    )


def public_ids(database: Database, count: int) -> list[str]:
    with database.transaction(write=False) as session:
        return [
            str(row[0])
            for row in session.execute(
                text("SELECT public_id FROM contact ORDER BY id LIMIT :n"), {"n": count}
            )
        ]


def changes_at(database: Database, settings: Settings, rate: float, duration: float) -> int:
    """`rate` one-click opt-outs per second (the unsubscribe lane's two statements, the second
    writing state, audit event and delivery at once) for `duration` seconds, of contacts the
    import subscribed, from a pool of threads; returns how many were written."""
    keys = AuditKeys.from_settings(settings)
    contacts = public_ids(database, int(rate * duration))
    made = 0
    lock = threading.Lock()
    channel = Channel.ONE_CLICK
    record = ChangeRecord(
        actor="recipient", source=channel.value, evidence={"channel": channel.value}
    )

    def one(public_id: str) -> None:
        nonlocal made
        now = datetime.now(UTC)
        requested = recipient_change(Status.UNSUBSCRIBED, channel, now)

        def work(cursor: Any) -> bool:
            state = read_optout_state(cursor, public_id=public_id, topic_key=TOPIC)
            assert state is not None
            written = write_optout(
                cursor, state, requested=requested, record=record, keys=keys, now=now
            )
            return written is not None

        if database.on_connection(work):
            with lock:
                made += 1

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=8) as pool:
        for n, public_id in enumerate(contacts):
            wait = started + n / rate - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            pool.submit(one, public_id)
    return made


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deliveries", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--sinks", type=int, default=2, help="receiver processes")
    parser.add_argument("--concurrency", type=int, default=8, help="floor loops per process")
    parser.add_argument("--rate", type=float, default=500.0, help="changes/s in the latency run")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of the latency run")
    parser.add_argument("--poll", type=float, default=0.05, help="PREFCENTER_OUTBOX_POLL_SECONDS")
    parser.add_argument("--keep-db", action="store_true")
    args = parser.parse_args()

    with (
        tempfile.TemporaryDirectory() as tmp,
        bench_database(args.keep_db) as url,
    ):
        work = Path(tmp)
        settings = Settings(
            _env_file=None,
            database_url=url,
            signing_keys=SIGNING_KEYS,
            audit_key=AUDIT_KEY,
            mail_url="off",
            webhooks_allow_private=True,
        )
        migrations.upgrade(settings)
        database = Database(settings)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFCENTER_")}
        env.update(
            PREFCENTER_DATABASE_URL=url,
            PREFCENTER_SIGNING_KEYS=SIGNING_KEYS,
            PREFCENTER_AUDIT_KEY=AUDIT_KEY,
            PREFCENTER_MAIL_URL="off",
            PREFCENTER_WEBHOOKS_ALLOW_PRIVATE="true",
            PREFCENTER_OUTBOX_POLL_SECONDS=str(args.poll),
            PREFCENTER_LOG_LEVEL="info",  # the workers say when they are up
        )
        try:
            with sink(args.sinks, work / "a") as first:
                with database.transaction(write=True) as session:
                    put_topic(
                        session,
                        TOPIC,
                        TopicIn(
                            name="Newsletter", kind=TopicKind.MARKETING, consent=ConsentModel.OPT_IN
                        ),
                        caller=CALLER,
                        now=utcnow(),
                    )
                    endpoint = webhooks.create_endpoint(
                        session,
                        WebhookIn.model_validate({"url": first.url, "events": ["consent.changed"]}),
                        settings=settings,
                        resolve=system_resolve,
                        actor=ACTOR,
                        now=utcnow(),
                    )
                started = time.perf_counter()
                seed(database, args.deliveries)
                queued = counts(database).get("queued", 0)
                print(
                    f"queued {queued:,} deliveries (an import of {args.deliveries:,} addresses) "
                    f"in {time.perf_counter() - started:.1f} s"
                )
                floor_s = floor(first.url, args.deliveries, args.workers, args.concurrency)
                floor_rate = args.deliveries / floor_s
                print(
                    f"floor: bare httpx, {args.workers} processes × {args.concurrency} loops: "
                    f"{floor_rate:,.0f} POSTs/s"
                )
                before = first.received
                workers = start_workers(env, args.workers, work)
                pids = [w.pid for w in workers]
                cpu0 = cpu_of(pids)
                started = time.perf_counter()
                while counts(database).get("sent", 0) < queued:
                    if time.perf_counter() - started > 600:
                        raise SystemExit(f"not delivered within 10 minutes: {counts(database)}")
                    time.sleep(0.02)
                elapsed = time.perf_counter() - started
                cpu = cpu_of(pids) - cpu0
                rate = queued / elapsed
                print(
                    f"prefcenter: {args.workers} workers: {rate:,.0f} deliveries/s "
                    f"({first.received - before:,} received; worker CPU {cpu:.1f} s "
                    f"= {1000 * cpu / queued:.2f} ms per delivery)"
                )
            with sink(args.sinks, work / "b") as second:
                with database.transaction(write=True) as session:
                    webhooks.update_endpoint(
                        session,
                        endpoint.id,
                        WebhookPatch(url=second.url),
                        settings=settings,
                        resolve=system_resolve,
                        actor=ACTOR,
                        now=utcnow(),
                    )
                time.sleep(2 * args.poll + 0.2)
                started = time.perf_counter()
                made = changes_at(database, settings, args.rate, args.duration)
                achieved = made / (time.perf_counter() - started)
                deadline = time.monotonic() + 60
                while second.received < made and time.monotonic() < deadline:
                    time.sleep(0.05)
            latencies = second.latencies()
            stop_workers(workers)
        finally:
            database.dispose()

    p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    print(
        f"latency: {made:,} changes at {achieved:,.0f}/s (asked {args.rate:,.0f}/s); "
        f"{len(latencies):,} delivered; commit to delivery p50 {1000 * p50:.0f} ms, "
        f"p99 {1000 * p99:.0f} ms, max {1000 * max(latencies):.0f} ms, "
        f"mean {1000 * statistics.fmean(latencies):.0f} ms"
    )
    ratio = rate / floor_rate
    print("\n| what | goal | measured | floor | ratio | met |")
    print("|---|---|---|---|---|---|")
    print(
        f"| deliveries/s, {args.workers} workers | ≥ {GOAL_RATE:,.0f}/s at ≥ {GOAL_RATIO}× floor "
        f"| {rate:,.0f} | {floor_rate:,.0f} | {ratio:.2f} | "
        f"{'met' if rate >= GOAL_RATE and ratio >= GOAL_RATIO else 'NOT met'} |"
    )
    print(
        f"| commit-to-delivery p99 at {achieved:,.0f} changes/s | ≤ {GOAL_P99_S * 1000:.0f} ms "
        f"| {1000 * p99:.0f} ms | - | - | {'met' if p99 <= GOAL_P99_S else 'NOT met'} |"
    )


if __name__ == "__main__":
    main()
