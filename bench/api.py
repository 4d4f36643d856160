"""Benchmark: the JSON API integrators call all day (issue 14), against the bare FastAPI +
psycopg floor (bench/floor_app.py) measured in the same run, with the same uvicorn, worker
count, connections and load generator (wrk).

    .venv/bin/python bench/api.py                       # 20k contacts, --workers 2, 10 s each
    .venv/bin/python bench/api.py --duration 20 --contacts 20000
    .venv/bin/python bench/api.py --sqlite --paths consent   # SQLite: consents ≥ 500/s

What it does:
  1. a throwaway PostgreSQL database `prefcenter_bench_…` (dropped at the end; `--keep-db`
     keeps it), migrated; CONTACTS contacts seeded by COPY (`c{i}@bench.example.com`), each
     subscribed to the marketing topic `newsletter`; an API key with consent:read and
     consent:write;
  2. `prefcenter serve --workers W --no-worker --no-migrate`, then with CLIENTS connections
     (wrk, bench/api.lua), each after a warm-up:
     - lookup: `POST /v1/contacts/lookup` of one random seeded address per request;
     - lookup batch: the same with 1,000 random addresses per request (addresses/s);
     - consent: `POST /v1/consents`, a new address per request subscribed to the topic
       (a new contact, its subscription and its audit event, durable);
     then every acknowledged consent is checked: as many `consent_change` events as 200s,
     the audit seq gap-free;
  3. the floor under the same uvicorn and W: GET = one indexed `SELECT` (through bench/api.lua
     like the lookups: the same wrk threads and connections, the same timing), POST = one
     durable `INSERT` (synchronous_commit=on);
Then a table: goal, measured, floor, ratio, met. Needs `wrk` (apt-get install -y wrk).

`--sqlite`: the same paths against a SQLite file (the embedded default, WAL,
synchronous=FULL); goal for consents ≥ 500/s. Its floor is the same durable write done raw:
CLIENTS threads of the sqlite3 module, each `INSERT` + `COMMIT` of one row on a file of the same
directory with the same pragmas, for the same duration (no HTTP: the bare database's rate).

Latency (bench/api.lua) is timed per request by the script, from just before the request is
written to its answer: the percentiles of the requests made. wrk's own percentiles, corrected
for coordinated omission, are printed beside them (`wrk's p99`): with 8 connections in a closed
loop they turn one stall of a server process into hundreds of samples (see bench/api.lua).
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import secrets
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import closing
from pathlib import Path

import psycopg
from sqlalchemy import make_url, text

sys.path.insert(0, str(Path(__file__).resolve().parent))
import one_click
from one_click import (
    AUDIT_KEY,
    HOST,
    NCPU,
    SIGNING_KEYS,
    Load,
    Target,
    cpu_seconds,
    free_port,
    housekeeping,
    load_note,
    machine_ticks,
    postgres_pids,
    server_env,
    start_server,
    throwaway_database,
)

from prefcenter import migrations
from prefcenter.apikeys.schemas import Caller, Scope
from prefcenter.apikeys.service import create_api_key
from prefcenter.db import Database, utcnow
from prefcenter.settings import Settings
from prefcenter.topics.schemas import ConsentModel, TopicIn, TopicKind
from prefcenter.topics.service import put_topic

BENCH_DIR = Path(__file__).resolve().parent
TOPIC = "newsletter"
GOAL_LOOKUP_RPS = 2000.0
GOAL_LOOKUP_P99_MS = 10.0
GOAL_LOOKUP_RATIO = 0.5
GOAL_BATCH_ADDRESSES = 50_000.0
GOAL_CONSENT_RPS = 1000.0
GOAL_CONSENT_P99_MS = 20.0
GOAL_CONSENT_RATIO = 0.4
GOAL_SQLITE_CONSENT_RPS = 500.0


def prepare(target: Target, contacts: int) -> str:
    """Migrate, the topic and an API key through the services, then the contacts and their
    subscriptions by COPY. Returns the key's secret."""
    settings = Settings(
        _env_file=None, database_url=target.url, signing_keys=SIGNING_KEYS, audit_key=AUDIT_KEY
    )
    migrations.upgrade(settings)
    database = Database(settings)
    try:
        with database.transaction(write=True) as session:
            issued = create_api_key(
                session, name="bench", scopes=[Scope.CONSENT_READ, Scope.CONSENT_WRITE]
            )
            caller = Caller(
                key_id=issued.info.id, name="bench", scopes=frozenset(issued.info.scopes)
            )
            put_topic(
                session,
                TOPIC,
                TopicIn(name="Newsletter", kind=TopicKind.MARKETING, consent=ConsentModel.OPT_IN),
                caller=caller,
                now=utcnow(),
            )
    finally:
        database.dispose()
    if target.is_sqlite:
        seed_contacts_sqlite(target, contacts)
    else:
        with psycopg.connect(target.libpq_url) as conn, conn.cursor() as cur:
            buffer = io.StringIO()
            for i in range(contacts):
                address = f"c{i}@bench.example.com"
                buffer.write(f"{secrets.token_urlsafe(12)}\t{address}\t{address}\t2024-01-01\n")
            with cur.copy(
                "COPY contact (public_id, address, address_display, created_at) FROM STDIN"
            ) as copy:
                copy.write(buffer.getvalue())
    seeded_at = "2020-01-01 00:00:00" + ("" if target.is_sqlite else "+00")
    with target.engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO subscription (contact_id, topic_id, status, occurred_at, since, "
                "source, by_recipient, event_id) "
                "SELECT c.id, t.id, 'subscribed', :at, :at, 'bench_seed', false, 'seed' "
                "FROM contact c, topic t WHERE t.key = :topic"
            ),
            {"at": seeded_at, "topic": TOPIC},
        )
    housekeeping(target)
    return issued.secret


def seed_contacts_sqlite(target: Target, contacts: int) -> None:
    """The contacts of `prepare`, on SQLite (no COPY there): one executemany."""
    with target.engine.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO contact (public_id, address, address_display, created_at) "
            "VALUES (?, ?, ?, '2024-01-01 00:00:00')",
            [
                (secrets.token_urlsafe(12), address, address)
                for address in (f"c{i}@bench.example.com" for i in range(contacts))
            ],
        )


def sqlite_floor(target: Target, *, clients: int, duration: float) -> Load:
    """CLIENTS threads of the sqlite3 module, each committing one `INSERT` at a time (taking
    turns on a lock), for DURATION seconds, on a file beside the benchmark's with prefcenter's
    pragmas: the bare durable write of one consent, without HTTP, the app or the audit chain."""
    path = Path(make_url(target.url).database or "").with_name("floor.db")
    with closing(sqlite3.connect(path)) as setup:
        setup.execute("PRAGMA journal_mode=WAL")
        setup.execute("CREATE TABLE IF NOT EXISTS floor_row (id INTEGER PRIMARY KEY, token TEXT)")
        setup.commit()
    deadline = time.monotonic() + duration
    latencies: list[list[float]] = [[] for _ in range(clients)]
    writer = threading.Lock()

    def client(slot: int) -> None:
        with closing(sqlite3.connect(path, timeout=10, isolation_level=None)) as conn:
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=5000")
            mine = latencies[slot]
            while (start := time.monotonic()) < deadline:
                # Queued on a lock, not at SQLite's busy handler (which sleeps), as
                # prefcenter's writers in one process are.
                with writer:
                    conn.execute("BEGIN IMMEDIATE")
                    conn.execute(
                        "INSERT INTO floor_row (token) VALUES (?)", (secrets.token_hex(16),)
                    )
                    conn.execute("COMMIT")
                mine.append(time.monotonic() - start)

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(slot,)) for slot in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.monotonic() - started
    every = sorted(value for mine in latencies for value in mine)

    def at(share: float) -> float:
        return every[min(len(every) - 1, int(share * len(every)))] * 1e6 if every else 0.0

    return Load(
        label="floor (sqlite3 INSERT + COMMIT)",
        mode="post",
        clients=clients,
        generator="threads",
        requests=len(every),
        seconds=seconds,
        non_200=0,
        errors={},
        latency_us={
            "p50": at(0.50),
            "p90": at(0.90),
            "p95": at(0.95),
            "p99": at(0.99),
            "max": at(1.0),
        },
        replays=0,
        acked=[],
        client_cpu_s=0.0,
        server_cpu_s=0.0,
        postgres_cpu_s=0.0,
        machine_busy_pct=0.0,
    )


def run_api_load(
    server: one_click.Server,
    *,
    label: str,
    mode: str,
    key: str,
    contacts: int,
    clients: int,
    duration: float,
    work_dir: Path,
    sqlite: bool = False,
) -> Load:
    """One wrk run of bench/api.lua, measured like one_click.run_load (PostgreSQL's CPU
    unless `sqlite`)."""
    out = work_dir / f"load-{uuid.uuid4().hex[:8]}.json"
    command = [
        "wrk",
        f"-t{clients}",
        f"-c{clients}",
        f"-d{max(1, round(duration))}s",
        "--timeout",
        "10s",
        "-s",
        str(BENCH_DIR / "api.lua"),
        server.base_url,
        "--",
        mode,
        key,
        str(contacts),
        str(clients),
        str(out),
        secrets.token_hex(4),
    ]
    server_pids = server.pids()
    pg_pids = [] if sqlite else postgres_pids()
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_before, pg_before = cpu_seconds(server_pids), cpu_seconds(pg_pids)
    busy_before, total_before = machine_ticks()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, timeout=duration + 120)
    busy_after, total_after = machine_ticks()
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    figures = json.loads(out.read_text())
    return Load(
        extra={"wrk_latency_us": figures["wrk_latency_us"]},
        label=label,
        mode=mode,
        clients=clients,
        generator="wrk",
        requests=int(figures["requests"]),
        seconds=figures["duration_us"] / 1e6,
        non_200=int(figures["non_200"]),
        errors={k: int(v) for k, v in figures["errors"].items() if k != "status"},
        latency_us={k: float(v) for k, v in figures["latency_us"].items()},
        replays=0,
        acked=[],
        client_cpu_s=(children_after.ru_utime + children_after.ru_stime)
        - (children_before.ru_utime + children_before.ru_stime),
        server_cpu_s=cpu_seconds(server_pids) - server_before,
        postgres_cpu_s=cpu_seconds(pg_pids) - pg_before,
        machine_busy_pct=100.0 * (busy_after - busy_before) / max(1, total_after - total_before),
    )


def cpu_ms(load: Load) -> float:
    return 1000 * load.server_cpu_s / max(1, load.requests)


def print_load(load: Load) -> None:
    """The load's line (with wrk's corrected p99 beside the timed one) and the server's CPU."""
    print(load.line())
    print(f"    server CPU per request: {cpu_ms(load):.2f} ms")


def audit_counts(target: Target) -> tuple[int, int, int, int]:
    """(events, lowest seq, highest seq, head seq)."""
    with target.engine.connect() as connection:
        row = connection.execute(
            text(
                "SELECT count(*), min(seq), max(seq), (SELECT seq FROM audit_head) FROM audit_event"
            )
        ).one()
    return int(row[0]), int(row[1] or 0), int(row[2] or 0), int(row[3])


def consent_events(target: Target) -> int:
    with target.engine.connect() as connection:
        return int(
            connection.execute(
                text("SELECT count(*) FROM audit_event WHERE kind = 'consent_change'")
            ).scalar_one()
        )


def settled_consent_events(target: Target, *, quiet_s: float = 0.5) -> int:
    """`consent_events`, once it has not changed for `quiet_s` (at most 30 s)."""
    deadline = time.monotonic() + 30
    count = consent_events(target)
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        again = consent_events(target)
        if again == count:
            break
        count = again
    return count


def bench_prefcenter(
    args: argparse.Namespace, target: Target, key: str, work: Path
) -> dict[str, Load | str]:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "prefcenter",
        "serve",
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        str(args.workers),
        "--no-migrate",
        "--no-worker",
    ]
    server = start_server(
        f"prefcenter-api-w{args.workers}",
        command,
        server_env(target, port),
        port,
        args.workers,
        work,
    )
    load = {
        "key": key,
        "contacts": args.contacts,
        "clients": args.clients,
        "work_dir": work,
        "sqlite": target.is_sqlite,
    }
    results: dict[str, Load | str] = {}
    try:
        for mode, label in (
            ("lookup", "lookup, 1 address"),
            ("lookup-batch", "lookup, 1,000 addresses"),
            ("consent", "POST /v1/consents"),
        ):
            if mode not in args.paths:
                continue
            run_api_load(server, label="warm-up", mode=mode, duration=args.warmup, **load)
            housekeeping(target)
            # The warm-up's last requests may still be committing (SQLite's writers queue on
            # its one write lock): count once the events stop moving.
            before = settled_consent_events(target)
            measured = run_api_load(server, label=label, mode=mode, duration=args.duration, **load)
            print_load(measured)
            results[mode] = measured
            if mode == "consent":
                written = consent_events(target) - before
                count, low, high, head = audit_counts(target)
                gap_free = count == high - low + 1 and high == head
                # wrk stops counting at the deadline: up to one answer per connection is
                # written but not counted
                acked = measured.requests - measured.non_200
                ok = acked <= written <= acked + args.clients and gap_free
                results["check"] = (
                    f"{'OK' if ok else 'FAILED'}: {written:,} consent_change events for "
                    f"{measured.requests - measured.non_200:,} 200s; audit seq "
                    f"{'gap-free' if gap_free else 'HAS GAPS'} ({low}..{high}, head {head})"
                )
                print(f"    durability check: {results['check']}")
    finally:
        server.stop()
    return results


def bench_floor(args: argparse.Namespace, target: Target, work: Path) -> tuple[Load, Load]:
    import floor_app  # noqa: PLC0415

    floor_app.create_schema(target.libpq_url)
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "--app-dir",
        str(BENCH_DIR),
        "floor_app:app",
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        str(args.workers),
        "--log-level",
        "warning",
        "--no-server-header",
        "--no-proxy-headers",
    ]
    env = server_env(target, port)
    env["FLOOR_DATABASE_URL"] = target.libpq_url
    server = start_server(f"floor-w{args.workers}", command, env, port, args.workers, work)
    try:
        tokens = [f"floor.{i}.{secrets.token_urlsafe(30)}" for i in range(100_000)]
        load = {"clients": args.clients, "generator": "wrk", "work_dir": work}
        one_click.run_load(
            server, label="warm-up", tokens=tokens, mode="post", duration=args.warmup, **load
        )
        housekeeping(target)
        # The lookups' load generator, threads and timing (bench/api.lua).
        api_load = {"key": "-", "contacts": 1, "clients": args.clients, "work_dir": work}
        run_api_load(server, label="warm-up", mode="floor-get", duration=args.warmup, **api_load)
        get = run_api_load(
            server,
            label="floor GET (1 SELECT)",
            mode="floor-get",
            duration=args.duration,
            **api_load,
        )
        print_load(get)
        post = one_click.run_load(
            server,
            label="floor POST (1 durable INSERT)",
            tokens=tokens[20_000:],
            mode="post",
            duration=args.duration,
            **load,
        )
        print(post.line())
        print(f"    server CPU per request: {cpu_ms(post):.2f} ms")
        return get, post
    finally:
        server.stop()


def _row(goal: str, measured: str, floor: str, ratio: float | None, met: bool) -> str:
    ratio_text = f"{ratio:.2f}" if ratio is not None else "-"
    return f"| {goal} | {measured} | {floor} | {ratio_text} | {'met' if met else 'NOT met'} |"


def summary(results: dict[str, Load | str], floor_get: Load, floor_post: Load) -> bool:
    rows = [
        "| goal | measured | floor, same run | ratio | |",
        "| --- | --- | --- | --- | --- |",
    ]
    ok = True
    lookup = results.get("lookup")
    if isinstance(lookup, Load):
        lookup_ratio = lookup.rps / floor_get.rps
        ok = ok and lookup.error_count == 0
        rows.append(
            _row(
                "lookup ≥ 2,000/s, p99 ≤ 10 ms, ≥ 0.5× floor",
                f"{lookup.rps:,.0f}/s, p99 {lookup.ms('p99'):.1f} ms",
                f"1 SELECT: {floor_get.rps:,.0f}/s, p99 {floor_get.ms('p99'):.1f} ms",
                lookup_ratio,
                lookup.rps >= GOAL_LOOKUP_RPS
                and lookup.ms("p99") <= GOAL_LOOKUP_P99_MS
                and lookup_ratio >= GOAL_LOOKUP_RATIO,
            )
        )
    batch = results.get("lookup-batch")
    if isinstance(batch, Load):
        rows.append(
            _row(
                "lookup of 1,000 ≥ 50,000 addresses/s",
                f"{batch.rps * 1000:,.0f} addresses/s ({batch.rps:,.1f} req/s)",
                "-",
                None,
                batch.rps * 1000 >= GOAL_BATCH_ADDRESSES,
            )
        )
    consent = results.get("consent")
    if isinstance(consent, Load):
        consent_ratio = consent.rps / floor_post.rps
        check = results.get("check", "")
        ok = ok and consent.error_count == 0 and isinstance(check, str) and check.startswith("OK")
        rows.append(
            _row(
                "consents ≥ 1,000/s, p99 ≤ 20 ms, ≥ 0.4× floor",
                f"{consent.rps:,.0f}/s, p99 {consent.ms('p99'):.1f} ms",
                f"1 durable INSERT: {floor_post.rps:,.0f}/s, p99 {floor_post.ms('p99'):.1f} ms",
                consent_ratio,
                consent.rps >= GOAL_CONSENT_RPS
                and consent.ms("p99") <= GOAL_CONSENT_P99_MS
                and consent_ratio >= GOAL_CONSENT_RATIO,
            )
        )
    print("\n".join(rows))
    return ok


def sqlite_summary(results: dict[str, Load | str], floor_post: Load) -> bool:
    """SQLite's table: the consents' goal (≥ 500/s) against the raw sqlite3 floor; the
    lookups measured, with no goal of their own on SQLite."""
    rows = ["| path | goal | measured | floor, same run | ratio | |", "| --- " * 6 + "|"]
    ok = True
    for mode, label in (("lookup", "lookup, 1 address"), ("lookup-batch", "lookup of 1,000")):
        load = results.get(mode)
        if isinstance(load, Load):
            ok = ok and load.error_count == 0
            rows.append(
                f"| {label} | - | {load.rps:,.0f}/s, p99 {load.ms('p99'):.1f} ms | - | - | |"
            )
    consent = results.get("consent")
    if isinstance(consent, Load):
        check = results.get("check", "")
        ok = ok and consent.error_count == 0 and isinstance(check, str) and check.startswith("OK")
        ratio = consent.rps / floor_post.rps if floor_post.rps else 0.0
        met = consent.rps >= GOAL_SQLITE_CONSENT_RPS
        rows.append(
            f"| POST /v1/consents | ≥ 500/s | {consent.rps:,.0f}/s, p99 {consent.ms('p99'):.1f} ms "
            f"| sqlite3 INSERT + COMMIT, {floor_post.clients} threads: {floor_post.rps:,.0f}/s, "
            f"p99 {floor_post.ms('p99'):.1f} ms | {ratio:.2f} | {'met' if met else 'NOT met'} |"
        )
    print("\n".join(rows))
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sqlite", action="store_true", help="SQLite instead of PostgreSQL")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--contacts", type=int, default=20_000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument(
        "--paths",
        nargs="+",
        choices=("lookup", "lookup-batch", "consent"),
        default=["lookup", "lookup-batch", "consent"],
    )
    parser.add_argument("--no-floor", action="store_true")
    parser.add_argument("--keep-db", action="store_true")
    parser.add_argument(
        "--pg-admin-url",
        default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
    )
    args = parser.parse_args()
    load, busy = load_note()
    print(f"machine: load average {load:.1f}, {busy:.0f}% of {NCPU} CPUs busy before the start")
    with tempfile.TemporaryDirectory() as tmp, throwaway_database(args, Path(tmp)) as target:
        started = time.monotonic()
        key = prepare(target, args.contacts)
        print(f"seeded {args.contacts:,} contacts in {time.monotonic() - started:.1f} s")
        results = bench_prefcenter(args, target, key, Path(tmp))
        if args.no_floor:
            return 0
        if target.is_sqlite:
            floor_post = sqlite_floor(target, clients=args.clients, duration=args.duration)
            print(floor_post.line())
            return 0 if sqlite_summary(results, floor_post) else 1
        floor_get, floor_post = bench_floor(args, target, Path(tmp))
        return 0 if summary(results, floor_get, floor_post) else 1


if __name__ == "__main__":
    sys.exit(main())
