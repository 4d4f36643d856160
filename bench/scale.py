"""Benchmark: how prefcenter's writes scale with server processes on one PostgreSQL (issue 14),
where the time goes, and which resource is the limit; the bare durable-insert floor
(bench/floor_app.py) measured in the same run with the same worker count, load generator and
connections.

    .venv/bin/python bench/scale.py                         # W = 1, 2, 4; 5 s per figure
    .venv/bin/python bench/scale.py --workers 1 2 4 8 --duration 10 --clients 16

Per worker count W:
  1. `prefcenter serve --workers W --no-worker --no-migrate` on one throwaway PostgreSQL
     database (`prefcenter_bench_…`, dropped at the end);
  2. the one-click: CLIENTS connections (wrk, bench/tokens.lua) POST RFC 8058 opt-outs, each to
     a fresh /u/{token} of a subscribed contact;
  3. the API write mix: CLIENTS connections (wrk, bench/api.lua) POST /v1/consents, a new
     address each (a contact, its subscription, its audit event, durable);
  4. the floor: one durable INSERT per POST under the same uvicorn, W and load.
During each run PostgreSQL's sessions of the database are sampled (pg_stat_activity, every
SAMPLE_S): how many are on CPU, waiting for the audit head row's lock, for the WAL flush of a
commit, or for anything else, on average. With the CPU time of the server processes, of
PostgreSQL and of wrk over the run, that says where the time goes, and which resource is the
limit (see `verdict`). Needs `wrk`.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

sys.path.insert(0, str(Path(__file__).resolve().parent))
import api
import one_click
from one_click import (
    AUDIT_KEY,
    HOST,
    NCPU,
    SIGNING_KEYS,
    Load,
    Server,
    Target,
    cpu_seconds,
    free_port,
    housekeeping,
    load_note,
    mint,
    seed_subscriptions,
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
SAMPLE_S = 0.02
# A machine this busy (all CPUs, every process) has no CPU left to give: more workers cannot help.
CPU_BOUND_PCT = 85.0
# The audit head held (or queued for) this share of the time: the serial limit.
HEAD_BOUND_SHARE = 0.6
# One wait class holding this share of the client connections on average is the bottleneck.
WAIT_BOUND_SHARE = 0.25
# What a sampled session is doing: on CPU, waiting for the audit head row, for a commit's WAL
# flush, for another lock, or something else.
_SAMPLE = text(
    """SELECT pid, CASE
        WHEN wait_event_type IS NULL THEN 'cpu'
        WHEN wait_event_type = 'Lock' AND query ILIKE '%audit_head%' THEN 'head_lock'
        WHEN wait_event_type = 'Lock' THEN 'other_lock'
        WHEN wait_event IN ('WALSync', 'WALWrite', 'WALInsert', 'WalSync', 'WalWrite')
            THEN 'wal_flush'
        WHEN wait_event_type = 'Client' THEN 'client'
        ELSE 'other' END
    FROM pg_stat_activity
    WHERE datname = current_database() AND state = 'active' AND pid <> pg_backend_pid()"""
)
STATES = ("cpu", "head_lock", "wal_flush", "other_lock", "other")


# --- sampling PostgreSQL's sessions -------------------------------------------------------------


@dataclass
class Sessions:
    """Sessions of the database by state, summed over the samples taken."""

    samples: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    # Samples with at least one session waiting for the audit head: the head was held (by a
    # transaction between its append and its commit) and had a queue.
    head_queued: int = 0
    # The database's backends seen active: their CPU is PostgreSQL's share of the run (not
    # the other databases' of a shared server).
    pids: set[int] = field(default_factory=set)

    @property
    def head_queued_share(self) -> float:
        return self.head_queued / self.samples if self.samples else 0.0

    def average(self, state: str) -> float:
        """Sessions in `state` at any moment, on average."""
        return self.counts[state] / self.samples if self.samples else 0.0


@contextmanager
def sampling(target: Target) -> Iterator[Sessions]:
    """Samples pg_stat_activity every SAMPLE_S in a thread until the block ends."""
    found = Sessions()
    stop = threading.Event()
    engine = create_engine(target.url, poolclass=NullPool, isolation_level="AUTOCOMMIT")

    def sample() -> None:
        with engine.connect() as connection:
            while not stop.is_set():
                rows = connection.execute(_SAMPLE).all()
                states = [str(state) for _, state in rows]
                found.samples += 1
                found.counts.update(states)
                found.pids.update(int(pid) for pid, _ in rows)
                found.head_queued += "head_lock" in states
                stop.wait(SAMPLE_S)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield found
    finally:
        stop.set()
        thread.join()
        engine.dispose()


# --- one measurement --------------------------------------------------------------------------


@dataclass
class Figure:
    path: str
    workers: int
    load: Load
    sessions: Sessions

    def busy_pct(self, cpu_s: float) -> float:
        """CPU seconds as a share of the machine's capacity over the run."""
        return 100.0 * cpu_s / max(1e-9, self.load.seconds * NCPU)

    @property
    def others_pct(self) -> float:
        """The machine's busy share used by processes outside the run (other work)."""
        load = self.load
        ours = self.busy_pct(load.server_cpu_s + load.postgres_cpu_s + load.client_cpu_s)
        return max(0.0, load.machine_busy_pct - ours)

    @property
    def flush_ms(self) -> float:
        """A commit's wait for its WAL flush, on average (sessions waiting × time / commits)."""
        waited_s = self.sessions.average("wal_flush") * self.load.seconds
        return 1000 * waited_s / max(1, self.load.requests)

    @property
    def head_held_share(self) -> float:
        """A lower bound of the share of the time the audit head was held: each change of a
        path that appends holds it at least through its commit's WAL flush (0 for the floor)."""
        if not self.sessions.counts["head_lock"] and self.path.startswith("floor"):
            return 0.0
        return self.load.rps * self.flush_ms / 1000

    @property
    def head_wait_ms(self) -> float:
        """Time a request spent waiting for the audit head's lock, on average (sessions
        waiting × run time / requests)."""
        waited_s = self.sessions.average("head_lock") * self.load.seconds
        return 1000 * waited_s / max(1, self.load.requests)

    def where(self) -> str:
        load, sessions = self.load, self.sessions
        per_request = 1000 / max(1, load.requests)
        return (
            f"    CPU per request: server {load.server_cpu_s * per_request:.2f} ms, PostgreSQL "
            f"{load.postgres_cpu_s * per_request:.2f} ms | machine {load.machine_busy_pct:.0f}% "
            f"busy: server {self.busy_pct(load.server_cpu_s):.0f}%, PostgreSQL "
            f"{self.busy_pct(load.postgres_cpu_s):.0f}%, "
            f"wrk {self.busy_pct(load.client_cpu_s):.0f}%, other processes {self.others_pct:.0f}%"
            f"\n    PostgreSQL sessions on average ({sessions.samples} samples): "
            + ", ".join(f"{state} {sessions.average(state):.2f}" for state in STATES)
            + f"\n    audit head: lock wait {self.head_wait_ms:.2f} ms per request, queued in "
            f"{sessions.head_queued_share:.0%} of the samples, held >= {self.head_held_share:.0%} "
            f"of the time | WAL flush {self.flush_ms:.2f} ms per request"
        )


def verdict(figure: Figure) -> str:
    """The resource that limits this run, from what was measured.

    The audit head first: every change holds it from its append through its commit's WAL
    flush, one change at a time, so `req/s × flush time` is a lower bound of the share of the
    time it is held. Held most of the time, or with a queue in most samples, it is the limit
    whatever the CPU does: more workers only lengthen its queue. Else the CPU when the machine
    has none left (naming who uses it), else the wait that holds the most connections."""
    load, sessions = figure.load, figure.sessions
    clients = max(1, load.clients)
    head = sessions.average("head_lock") / clients
    flush = sessions.average("wal_flush") / clients
    held = figure.head_held_share
    if held >= HEAD_BOUND_SHARE or sessions.head_queued_share >= HEAD_BOUND_SHARE:
        return (
            f"the audit head row (held >= {held:.0%} of the time, each change through a "
            f"{figure.flush_ms:.1f} ms WAL flush; queued in {sessions.head_queued_share:.0%} "
            "of the samples)"
        )
    if load.machine_busy_pct >= CPU_BOUND_PCT:
        users = {
            "the server processes": figure.busy_pct(load.server_cpu_s),
            "PostgreSQL": figure.busy_pct(load.postgres_cpu_s),
            "the load generator": figure.busy_pct(load.client_cpu_s),
            "other processes (not this run: re-run on a quiet machine)": figure.others_pct,
        }
        first = max(users, key=lambda k: users[k])
        return f"CPU ({load.machine_busy_pct:.0f}% busy; most: {first}, {users[first]:.0f}%)"
    if flush >= WAIT_BOUND_SHARE and flush >= head:
        return f"the WAL flush ({flush:.0%} of the connections wait for a commit's fsync)"
    if head >= WAIT_BOUND_SHARE:
        return f"the audit head row ({head:.0%} of the connections wait for its lock)"
    return "none saturated: more connections (clients) would go faster"


def _backend_cpu(pids: set[int]) -> dict[int, float]:
    return {pid: cpu_seconds([pid]) for pid in pids}


def _backends(target: Target) -> set[int]:
    with target.engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid()"
            )
        ).scalars()
        return {int(pid) for pid in rows}


def measure(
    path: str, workers: int, target: Target, run: Callable[[], Load], report: list[Figure]
) -> Figure:
    housekeeping(target)
    before = _backend_cpu(_backends(target))
    with sampling(target) as sessions:
        load = run()
    after = _backend_cpu(set(before) | sessions.pids)
    # Only this database's backends (a backend born during the run: all its CPU), where
    # one_click.run_load counts every `postgres` process of the machine.
    load.postgres_cpu_s = sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())
    figure = Figure(path, workers, load, sessions)
    print(load.line())
    print(figure.where())
    print(f"    limit: {verdict(figure)}")
    report.append(figure)
    return figure


# --- the rounds -------------------------------------------------------------------------------


def prepare(target: Target) -> tuple[dict[str, str], str]:
    """Migrate, then an API key (links, consent writes) and the topic through the services."""
    settings = Settings(
        _env_file=None, database_url=target.url, signing_keys=SIGNING_KEYS, audit_key=AUDIT_KEY
    )
    migrations.upgrade(settings)
    database = Database(settings)
    try:
        with database.transaction(write=True) as session:
            scopes = [Scope.LINKS, Scope.CONSENT_WRITE, Scope.CONSENT_READ]
            issued = create_api_key(session, name="bench", scopes=scopes)
            caller = Caller(key_id=issued.info.id, name="bench", scopes=frozenset(scopes))
            put_topic(
                session,
                TOPIC,
                TopicIn(name="Newsletter", kind=TopicKind.MARKETING, consent=ConsentModel.OPT_IN),
                caller=caller,
                now=utcnow(),
            )
    finally:
        database.dispose()
    return {"Authorization": f"Bearer {issued.secret}"}, issued.secret


def prefcenter_round(
    args: argparse.Namespace,
    target: Target,
    headers: dict[str, str],
    key: str,
    workers: int,
    work: Path,
    report: list[Figure],
) -> None:
    port = free_port()
    command = [sys.executable, "-m", "prefcenter", "serve", "--host", HOST, "--port", str(port)]
    command += ["--workers", str(workers), "--no-migrate", "--no-worker"]
    server = start_server(
        f"prefcenter-w{workers}", command, server_env(target, port), port, workers, work
    )
    try:
        tag = secrets.token_hex(3)
        warm = mint(server, headers, f"w{workers}warm{tag}", int(args.max_rate * args.warmup))
        fresh = mint(server, headers, f"w{workers}run{tag}", int(args.max_rate * args.duration))
        seed_subscriptions(target)
        clicks = {"clients": args.clients, "generator": "wrk", "work_dir": work}
        one_click.run_load(
            server, label="warm-up", tokens=warm, mode="post", duration=args.warmup, **clicks
        )
        measure(
            "one-click",
            workers,
            target,
            lambda: one_click.run_load(
                server,
                label=f"one-click POST, W={workers}",
                tokens=fresh,
                mode="post",
                duration=args.duration,
                **clicks,
            ),
            report,
        )
        writes = _api_writes(server, key, args, work)
        writes(label="warm-up", duration=args.warmup)
        measure(
            "POST /v1/consents",
            workers,
            target,
            lambda: writes(label=f"POST /v1/consents, W={workers}", duration=args.duration),
            report,
        )
    finally:
        server.stop()


def _api_writes(
    server: Server, key: str, args: argparse.Namespace, work: Path
) -> Callable[..., Load]:
    def run(*, label: str, duration: float) -> Load:
        return api.run_api_load(
            server,
            label=label,
            mode="consent",
            key=key,
            contacts=1,
            clients=args.clients,
            duration=duration,
            work_dir=work,
        )

    return run


def floor_round(
    args: argparse.Namespace, target: Target, workers: int, work: Path, report: list[Figure]
) -> None:
    import floor_app  # noqa: PLC0415

    floor_app.create_schema(target.libpq_url)
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "--app-dir", str(BENCH_DIR), "floor_app:app"]
    command += ["--host", HOST, "--port", str(port), "--workers", str(workers)]
    command += ["--log-level", "warning", "--no-server-header", "--no-proxy-headers"]
    env = server_env(target, port)
    env["FLOOR_DATABASE_URL"] = target.libpq_url
    server = start_server(f"floor-w{workers}", command, env, port, workers, work)
    try:
        tokens = [f"floor.{i}.{secrets.token_urlsafe(30)}" for i in range(50_000)]
        load = {"clients": args.clients, "generator": "wrk", "work_dir": work}
        one_click.run_load(
            server, label="warm-up", tokens=tokens, mode="post", duration=args.warmup, **load
        )
        measure(
            "floor: 1 durable INSERT",
            workers,
            target,
            lambda: one_click.run_load(
                server,
                label=f"floor POST (1 durable INSERT), W={workers}",
                tokens=tokens,
                mode="post",
                duration=args.duration,
                **load,
            ),
            report,
        )
    finally:
        server.stop()


def head_ceiling(report: list[Figure]) -> None:
    """What one audit chain allows at most: each change holds the head from its append through
    its commit's WAL flush, so the changes pass it one at a time, and `1 / flush time` bounds
    them however many workers there are (a batch passes it once for many changes)."""
    for f in report:
        if f.path.startswith("floor") or f.flush_ms <= 0:
            continue
        print(
            f"  {f.path}, W={f.workers}: {f.load.rps:,.0f}/s, the head held >= "
            f"{f.head_held_share:.0%} of the time; with its {f.flush_ms:.2f} ms commit flush "
            f"one chain passes at most ~{1000 / f.flush_ms:,.0f} single-change transactions/s"
        )


def summary(report: list[Figure]) -> None:
    print("\nSummary (req/s; × W=1: against the same path with one process; floor: the same W)")
    header = (
        f"| {'path':<24} | W | {'req/s':>7} | {'× W=1':>5} | {'floor':>7} | {'ratio':>5} | "
        f"{'p99 ms':>6} | {'srv ms':>6} | {'pg ms':>5} | {'head ms':>7} | limit"
    )
    print(header)
    print("|" + "|".join("-" * len(c) for c in header.split("|")[1:]) + "|")
    single = {f.path: f.load.rps for f in report if f.workers == min(g.workers for g in report)}
    floors = {f.workers: f.load.rps for f in report if f.path.startswith("floor")}
    for f in report:
        load = f.load
        floor = floors.get(f.workers)
        ratio = f"{load.rps / floor:.2f}" if floor else "-"
        per = 1000 / max(1, load.requests)
        print(
            f"| {f.path:<24} | {f.workers} | {load.rps:>7,.0f} | "
            f"{load.rps / max(1e-9, single.get(f.path, load.rps)):>5.2f} | "
            f"{floor or 0:>7,.0f} | {ratio:>5} | {load.ms('p99'):>6.1f} | "
            f"{load.server_cpu_s * per:>6.2f} | {load.postgres_cpu_s * per:>5.2f} | "
            f"{f.head_wait_ms:>7.2f} | {verdict(f)}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--clients", type=int, default=8, help="connections of every load")
    parser.add_argument(
        "--max-rate", type=float, default=2500.0, help="tokens minted per second of one-click"
    )
    parser.add_argument("--no-floor", action="store_true")
    parser.add_argument(
        "--pg-admin-url",
        default=os.environ.get(
            "PREFCENTER_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
        ),
    )
    parser.add_argument("--keep-db", action="store_true")
    args = parser.parse_args()
    args.sqlite = False  # one PostgreSQL is the point (one_click.throwaway_database reads it)
    loadavg, busy = load_note()
    print(
        f"prefcenter scale bench, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {NCPU} CPUs, "
        f"PostgreSQL, wrk, {args.clients} connections, {args.duration:g} s per figure"
    )
    print(
        f"machine before start: load average {loadavg:.2f}, CPU busy {busy:.0f}% over 2 s"
        f"{'  <-- BUSY: figures will be low, re-run when quiet' if busy > 25 else ''}"
    )
    report: list[Figure] = []
    with tempfile.TemporaryDirectory(prefix="prefcenter-bench-") as tmp:
        work = Path(tmp)
        with throwaway_database(args, work) as target:
            headers, key = prepare(target)
            for workers in args.workers:
                print(f"\n== W = {workers} server processes ==")
                prefcenter_round(args, target, headers, key, workers, work, report)
                if not args.no_floor:
                    floor_round(args, target, workers, work, report)
    summary(report)
    print("\nThe single audit chain's ceiling")
    head_ceiling(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
