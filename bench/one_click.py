"""Benchmark: RFC 8058 one-click opt-outs and a scanner storm against a real `prefcenter serve`,
with a bare FastAPI + psycopg insert app as the floor, measured in the same run.

    .venv/bin/python bench/one_click.py                    # PostgreSQL, --workers 2 and 4
    .venv/bin/python bench/one_click.py --workers 2 --duration 20
    .venv/bin/python bench/one_click.py --sqlite           # the same on SQLite, no goal/floor
    .venv/bin/python bench/one_click.py --webhook          # with an endpoint for consent.changed

What it does, per worker count W:
  1. a throwaway database (PostgreSQL: `prefcenter_bench_…`, dropped at the end; SQLite: a
     file in a temp dir), migrated with prefcenter.migrations.upgrade; an API key and a topic
     created directly through the services;
  2. `prefcenter serve --workers W --no-migrate`; tokens minted through POST /v1/links/batch
     (one fresh contact per token) and each contact subscribed to the topic (seeded by SQL);
  3. one-click: CLIENTS connections each POST `List-Unsubscribe=One-Click` (form-urlencoded)
     to a fresh /u/{token} per request for DURATION seconds after a warm-up; then every
     acknowledged (200) opt-out is checked in the database (subscription `unsubscribed`, its
     `one_click` audit event), and the audit `seq` for gap-freedom;
  4. scanner storm: SCAN_CLIENTS connections GET random /u/{token} pages; the write counts
     (events, subscriptions, suppressions, contacts, audit head, a digest of all
     subscriptions) before and after must be equal;
  5. the floor (bench/floor_app.py) under the same uvicorn, worker count and load generator.
Then a summary table: goal, measured, floor, ratio, met.

The load generator is `wrk` with bench/tokens.lua when installed, else bench/pyload.py; its
CPU time is printed beside the server's and PostgreSQL's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine, create_engine, make_url, text
from sqlalchemy.pool import NullPool

from prefcenter import migrations
from prefcenter.apikeys.schemas import Caller, Scope
from prefcenter.apikeys.service import create_api_key
from prefcenter.db import Database, utcnow
from prefcenter.settings import Settings
from prefcenter.topics.schemas import ConsentModel, TopicIn, TopicKind
from prefcenter.topics.service import put_topic
from prefcenter.webhooks.addresses import system_resolve
from prefcenter.webhooks.rules import EventType
from prefcenter.webhooks.schemas import WebhookIn
from prefcenter.webhooks.service import Actor, create_endpoint

sys.path.insert(0, str(Path(__file__).resolve().parent))
from webhook_sink import sink as webhook_sink

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
HOST = "127.0.0.1"
SIGNING_KEYS = "bench1:" + "b" * 32
AUDIT_KEY = "bench-audit-key-" + "a" * 32
TOPIC = "newsletter"
BATCH = 10_000
CLK_TCK = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1

GOAL_ONE_CLICK_RPS = 1000.0
GOAL_ONE_CLICK_P99_MS = 15.0
GOAL_SCAN_RPS = 3000.0


# --- processes and CPU ------------------------------------------------------------------


def _proc_stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may contain spaces: split after its closing parenthesis
    return raw[raw.rindex(")") + 2 :].split()


def descendants(pid: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _proc_stat(int(entry.name))
            if stat is not None:
                parents[int(entry.name)] = int(stat[1])
    found, frontier = [], [pid]
    while frontier:
        current = frontier.pop()
        children = [p for p, ppid in parents.items() if ppid == current]
        found.extend(children)
        frontier.extend(children)
    return found


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        stat = _proc_stat(pid)
        if stat is not None:
            total += int(stat[11]) + int(stat[12])  # utime, stime
    return total / CLK_TCK


def postgres_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with suppress(OSError):
                if (entry / "comm").read_text().strip() == "postgres":
                    pids.append(int(entry.name))
    return pids


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
    return port


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path
    workers: int

    def pids(self) -> list[int]:
        """The supervisor and its workers (with one worker uvicorn serves in the supervisor)."""
        return [self.process.pid, *descendants(self.process.pid)]

    def workers_up(self) -> bool:
        return self.workers == 1 or len(descendants(self.process.pid)) >= self.workers

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)  # our own group only
                self.process.wait(timeout=10)


def start_server(
    name: str, command: list[str], env: dict[str, str], port: int, workers: int, log_dir: Path
) -> Server:
    log_path = log_dir / f"{name}-{port}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=log_dir,
            start_new_session=True,
        )
    server = Server(name, process, f"http://{HOST}:{port}", log_path, workers)
    try:
        _wait_ready(server)
    except BaseException:
        server.stop()
        raise
    return server


def _wait_ready(server: Server, timeout_s: float = 90.0) -> None:
    """Until /readyz answers and all W workers are up and idle (their start-up CPU burst over)."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=server.base_url, timeout=2.0) as client:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                raise RuntimeError(f"{server.name} exited; log:\n{server.log_path.read_text()}")
            with suppress(httpx.TransportError):
                if client.get("/readyz").status_code == 200:
                    break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"{server.name} not ready; log:\n{server.log_path.read_text()}")
        while time.monotonic() < deadline:
            pids = server.pids()
            before = cpu_seconds(pids)
            time.sleep(0.3)
            if server.workers_up() and cpu_seconds(pids) - before < 0.02:
                return
        raise RuntimeError(f"{server.name} workers did not settle; log:\n{server.log_path}")


# --- load -------------------------------------------------------------------------------


@dataclass
class Load:
    label: str
    mode: str
    clients: int
    generator: str
    requests: int
    seconds: float
    non_200: int
    errors: dict[str, int]
    latency_us: dict[str, float]
    replays: int
    acked: list[str]
    client_cpu_s: float
    server_cpu_s: float
    postgres_cpu_s: float
    machine_busy_pct: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def ms(self, key: str) -> float:
        return self.latency_us[key] / 1000

    @property
    def error_count(self) -> int:
        e = self.errors
        return (
            self.non_200
            + e.get("connect", 0)
            + e.get("read", 0)
            + e.get("write", 0)
            + e.get("timeout", 0)
        )

    def line(self) -> str:
        return (
            f"  {self.label}: {self.rps:,.0f} req/s over {self.seconds:.1f} s "
            f"({self.requests:,} requests, {self.clients} clients) | latency ms "
            f"p50 {self.ms('p50'):.2f} p95 {self.ms('p95'):.2f} p99 {self.ms('p99'):.2f} "
            f"max {self.ms('max'):.1f} | errors {self.error_count} "
            f"(non-200 {self.non_200}, socket {self.errors})"
            + (f" | REPLAYED {self.replays} tokens (ran out)" if self.replays else "")
            + (
                f"\n    wrk's p99, corrected for coordinated omission: "
                f"{self.extra['wrk_latency_us']['p99'] / 1000:.1f} ms (the p99 above is of the "
                "requests made, each timed by the wrk script)"
                if "wrk_latency_us" in self.extra
                else ""
            )
            + f"\n    CPU s: server {self.server_cpu_s:.1f}, postgres {self.postgres_cpu_s:.1f}, "
            f"load generator ({self.generator}) {self.client_cpu_s:.1f}; machine busy "
            f"{self.machine_busy_pct:.0f}% of {NCPU} CPUs"
        )


def run_load(
    server: Server,
    *,
    label: str,
    tokens: list[str],
    mode: str,
    clients: int,
    duration: float,
    generator: str,
    work_dir: Path,
) -> Load:
    tokens_path = work_dir / f"tokens-{uuid.uuid4().hex[:8]}.txt"
    tokens_path.write_text("".join(t + "\n" for t in tokens))
    out = work_dir / f"load-{uuid.uuid4().hex[:8]}.json"
    if generator == "wrk":
        threads = clients if mode == "post" else min(clients, NCPU)
        command = [
            "wrk",
            f"-t{threads}",
            f"-c{clients}",
            f"-d{max(1, round(duration))}s",  # whole seconds only
            "--timeout",
            "10s",
            "-s",
            str(BENCH_DIR / "tokens.lua"),
            server.base_url,
            "--",
            str(tokens_path),
            mode,
            str(threads),
            str(out),
        ]
    else:
        command = [
            sys.executable,
            str(BENCH_DIR / "pyload.py"),
            "--url",
            server.base_url,
            "--tokens",
            str(tokens_path),
            "--mode",
            mode,
            "--connections",
            str(clients),
            "--duration",
            str(duration),
            "--out",
            str(out),
        ]
    server_pids = server.pids()
    pg_pids = postgres_pids()
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_before, pg_before = cpu_seconds(server_pids), cpu_seconds(pg_pids)
    busy_before, total_before = machine_ticks()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, timeout=duration + 120)
    busy_after, total_after = machine_ticks()
    server_cpu = cpu_seconds(server_pids) - server_before
    pg_cpu = cpu_seconds(pg_pids) - pg_before
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_cpu = (children_after.ru_utime + children_after.ru_stime) - (
        children_before.ru_utime + children_before.ru_stime
    )
    figures = json.loads(out.read_text())
    acked_path = out.with_name(out.name + ".acked")
    acked = acked_path.read_text().split() if acked_path.exists() else []
    return Load(
        label=label,
        mode=mode,
        clients=clients,
        generator=generator,
        requests=int(figures["requests"]),
        seconds=figures["duration_us"] / 1e6,
        non_200=int(figures["non_200"]),
        errors={k: int(v) for k, v in figures["errors"].items() if k != "status"},
        latency_us={k: float(v) for k, v in figures["latency_us"].items()},
        replays=int(figures.get("replays", 0)),
        acked=acked,
        client_cpu_s=client_cpu,
        server_cpu_s=server_cpu,
        postgres_cpu_s=pg_cpu,
        machine_busy_pct=100.0 * (busy_after - busy_before) / max(1, total_after - total_before),
        extra={"wrk_latency_us": figures["wrk_latency_us"]} if figures.get("timed") else {},
    )


# --- database set-up and checks ---------------------------------------------------------


@dataclass
class Target:
    """The database under test: its URL for prefcenter and a plain engine for the checks."""

    url: str
    engine: Engine
    is_sqlite: bool

    @property
    def libpq_url(self) -> str:
        return make_url(self.url).set(drivername="postgresql").render_as_string(hide_password=False)


@contextmanager
def throwaway_database(args: argparse.Namespace, work_dir: Path) -> Iterator[Target]:
    if args.sqlite:
        url = f"sqlite:///{work_dir / 'bench.db'}"
        engine = create_engine(url, poolclass=NullPool)
        try:
            yield Target(url, engine, is_sqlite=True)
        finally:
            engine.dispose()
        return
    admin_url = make_url(args.pg_admin_url)
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    name = f"prefcenter_bench_{uuid.uuid4().hex[:10]}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = admin_url.set(database=name).render_as_string(hide_password=False)
    engine = create_engine(url, poolclass=NullPool)
    try:
        yield Target(url, engine, is_sqlite=False)
    finally:
        engine.dispose()
        if args.keep_db:
            print(f"kept database {name}")
        else:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def prepare(target: Target, webhook_url: str | None = None) -> dict[str, str]:
    """Migrate, then an API key (links) and the topic, straight through the services; with
    `webhook_url`, a webhook endpoint subscribed to consent.changed, so that every opt-out
    writes its outbox row in its own statement (and serve's worker delivers it)."""
    settings = Settings(
        _env_file=None, database_url=target.url, signing_keys=SIGNING_KEYS, audit_key=AUDIT_KEY
    )
    migrations.upgrade(settings)
    database = Database(settings)
    try:
        with database.transaction(write=True) as session:
            issued = create_api_key(session, name="bench", scopes=[Scope.LINKS])
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
            if webhook_url is not None:
                create_endpoint(
                    session,
                    WebhookIn(url=webhook_url, events=[EventType.CONSENT_CHANGED]),
                    settings=settings.model_copy(update={"webhooks_allow_private": True}),
                    resolve=system_resolve,
                    actor=Actor(name="bench", channel="bench"),
                    now=utcnow(),
                )
    finally:
        database.dispose()
    return {"Authorization": f"Bearer {issued.secret}"}


def mint(server: Server, headers: dict[str, str], prefix: str, count: int) -> list[str]:
    """`count` tokens for new contacts via POST /v1/links/batch, then subscribe the contacts
    (seeded by SQL: the opt-out then really changes a row)."""
    tokens: list[str] = []
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=300) as client:
        for start in range(0, count, BATCH):
            items = [
                {"email": f"{prefix}.{i}@bench.example.com", "topic": TOPIC, "campaign_id": "b1"}
                for i in range(start, min(count, start + BATCH))
            ]
            answer = client.post("/v1/links/batch", json={"items": items})
            answer.raise_for_status()
            tokens.extend(
                item["unsubscribe_url"].rsplit("/u/", 1)[1] for item in answer.json()["items"]
            )
    return tokens


def seed_subscriptions(target: Target) -> None:
    seeded_at = "2020-01-01 00:00:00" + ("" if target.is_sqlite else "+00")
    with target.engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO subscription (contact_id, topic_id, status, occurred_at, since, "
                "source, by_recipient, event_id) "
                "SELECT c.id, t.id, 'subscribed', :at, :at, 'bench_seed', false, 'seed' "
                "FROM contact c, topic t WHERE t.key = :topic AND NOT EXISTS "
                "(SELECT 1 FROM subscription s WHERE s.contact_id = c.id AND s.topic_id = t.id)"
            ),
            {"at": seeded_at, "topic": TOPIC},
        )
    housekeeping(target)


def housekeeping(target: Target) -> None:
    """Statistics fresh and a checkpoint done, so neither lands in the middle of a run."""
    if target.is_sqlite:
        with target.engine.connect() as connection:
            connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        return
    with target.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.exec_driver_sql("VACUUM ANALYZE")
        connection.exec_driver_sql("CHECKPOINT")


def contact_ids(target: Target, tokens: list[str]) -> list[str]:
    """The contact ids inside the tokens (payload = base64url JSON with `c`)."""
    import base64  # noqa: PLC0415

    ids = []
    for token in tokens:
        payload = token.split(".")[2]
        ids.append(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["c"])
    return ids


def verify_opt_outs(target: Target, acked: list[str]) -> tuple[bool, str]:
    """Every acknowledged opt-out is in the database with its audit event; `seq` gap-free."""
    wanted = set(contact_ids(target, acked))
    with target.engine.connect() as connection:
        unsubscribed = {
            row[0]
            for row in connection.execute(
                text(
                    "SELECT c.public_id FROM subscription s JOIN contact c ON c.id = s.contact_id "
                    "JOIN topic t ON t.id = s.topic_id WHERE t.key = :topic "
                    "AND s.status = 'unsubscribed'"
                ),
                {"topic": TOPIC},
            )
        }
        evidenced = {
            row[0]
            for row in connection.execute(
                text(
                    "SELECT contact_id FROM audit_event WHERE source = 'one_click' "
                    "AND to_status = 'unsubscribed' AND topic = :topic"
                ),
                {"topic": TOPIC},
            )
        }
        count, low, high = connection.execute(
            text("SELECT count(*), min(seq), max(seq) FROM audit_event")
        ).one()
        head = connection.execute(text("SELECT seq FROM audit_head WHERE id = 1")).scalar_one()
    missing_state = wanted - unsubscribed
    missing_event = wanted - evidenced
    gap_free = low == 1 and high == count == head
    ok = not missing_state and not missing_event and gap_free
    return ok, (
        f"{len(wanted) - len(missing_state):,}/{len(wanted):,} acknowledged opt-outs are "
        f"`unsubscribed` in the database, {len(wanted) - len(missing_event):,}/{len(wanted):,} "
        f"have their one_click audit event; audit seq 1..{high} over {count:,} events, head "
        f"{head}: {'gap-free' if gap_free else 'NOT GAP-FREE'}"
    )


def write_snapshot(target: Target) -> dict[str, Any]:
    """Everything a GET could have written, counted (and all subscriptions digested)."""
    with target.engine.connect() as connection:
        snap: dict[str, Any] = {
            table: connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
            for table in ("audit_event", "subscription", "suppression", "contact")
        }
        snap["audit_head_seq"] = connection.execute(
            text("SELECT seq FROM audit_head WHERE id = 1")
        ).scalar_one()
        digest = hashlib.sha256()
        for row in connection.execute(
            text(
                "SELECT contact_id, topic_id, status, occurred_at, since, source, event_id "
                "FROM subscription ORDER BY contact_id, topic_id"
            )
        ):
            digest.update(repr(tuple(row)).encode())
        snap["subscription_digest"] = digest.hexdigest()[:16]
    return snap


# --- the run ----------------------------------------------------------------------------


def server_env(target: Target, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFCENTER_", "FLOOR_"))}
    env.update(
        PREFCENTER_DATABASE_URL=target.url,
        PREFCENTER_SIGNING_KEYS=SIGNING_KEYS,
        PREFCENTER_AUDIT_KEY=AUDIT_KEY,
        PREFCENTER_BASE_URL=f"http://{HOST}:{port}",
        # no access log line per request (the floor runs with the same level)
        PREFCENTER_LOG_LEVEL=os.environ.get("BENCH_LOG_LEVEL", "warning"),
        # --webhook: the endpoint is a receiver on this machine
        PREFCENTER_WEBHOOKS_ALLOW_PRIVATE="true",
    )
    # connections (and so session slots) per worker, for prefcenter and the floor alike
    pool = os.environ.get("BENCH_POOL_SIZE")
    if pool:
        env["PREFCENTER_DB_POOL_SIZE"] = env["FLOOR_POOL_SIZE"] = pool
    return env


@dataclass
class Round:
    workers: int
    one_click: Load
    verified: bool
    verification: str
    scan: Load
    writes_before: dict[str, Any]
    writes_after: dict[str, Any]
    floor_post: Load | None = None
    floor_get: Load | None = None


def bench_prefcenter(
    args: argparse.Namespace, target: Target, headers: dict[str, str], workers: int, work: Path
) -> tuple[Load, bool, str, Load, dict[str, Any], dict[str, Any]]:
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
        str(workers),
        "--no-migrate",
        # --webhook measures the opt-outs with their outbox rows; delivering them is
        # bench/webhooks.py's, with workers of their own
        *(["--no-worker"] if args.webhook else []),
    ]
    server = start_server(
        f"prefcenter-w{workers}", command, server_env(target, port), port, workers, work
    )
    try:
        need = int(args.max_rate * args.duration)
        warm_need = int(args.max_rate * args.warmup)
        started = time.monotonic()
        tag = secrets.token_hex(3)
        warm = mint(server, headers, f"w{workers}warm{tag}", warm_need)
        fresh = mint(server, headers, f"w{workers}run{tag}", need)
        scan_tokens = mint(server, headers, f"w{workers}scan{tag}", args.scan_tokens)
        seed_subscriptions(target)
        print(
            f"  minted {len(warm) + len(fresh) + len(scan_tokens):,} tokens via "
            f"POST /v1/links/batch in {time.monotonic() - started:.1f} s"
        )
        load = {"clients": args.clients, "generator": args.generator, "work_dir": work}
        run_load(server, label="warm-up", tokens=warm, mode="post", duration=args.warmup, **load)
        housekeeping(target)
        one_click = run_load(
            server,
            label=f"one-click POST, W={workers}",
            tokens=fresh,
            mode="post",
            duration=args.duration,
            **load,
        )
        print(one_click.line())
        verified, verification = verify_opt_outs(target, one_click.acked)
        print(f"    durability check: {'OK' if verified else 'FAILED'}: {verification}")
        scan_pool = scan_tokens + one_click.acked[: args.scan_tokens]
        scan_load = {**load, "clients": args.scan_clients}
        run_load(server, label="warm-up", tokens=scan_pool, mode="get", duration=2, **scan_load)
        before = write_snapshot(target)
        scan = run_load(
            server,
            label=f"scanner GET, W={workers}",
            tokens=scan_pool,
            mode="get",
            duration=args.duration,
            **scan_load,
        )
        after = write_snapshot(target)
        print(scan.line())
        same = before == after
        print(
            f"    writes during the storm: {'NONE' if same else 'CHANGED'} "
            f"(before {before}, after {after})"
        )
        return one_click, verified, verification, scan, before, after
    finally:
        server.stop()


def bench_floor(
    args: argparse.Namespace, target: Target, workers: int, work: Path
) -> tuple[Load, Load]:
    sys.path.insert(0, str(BENCH_DIR))
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
        str(workers),
        "--log-level",
        os.environ.get("BENCH_LOG_LEVEL", "warning"),
        "--no-server-header",
        "--no-proxy-headers",
    ]
    env = server_env(target, port)
    env["FLOOR_DATABASE_URL"] = target.libpq_url
    server = start_server(f"floor-w{workers}", command, env, port, workers, work)
    try:
        tokens = [f"floor.{workers}.{i}.{secrets.token_urlsafe(60)}" for i in range(20_000)]
        load = {"clients": args.clients, "generator": args.generator, "work_dir": work}
        run_load(server, label="warm-up", tokens=tokens, mode="post", duration=args.warmup, **load)
        housekeeping(target)
        post = run_load(
            server,
            label=f"floor POST (1 INSERT), W={workers}",
            tokens=tokens,
            mode="post",
            duration=args.duration,
            **load,
        )
        print(post.line())
        get = run_load(
            server,
            label=f"floor GET (1 SELECT), W={workers}",
            tokens=tokens,
            mode="get",
            duration=args.duration,
            **{**load, "clients": args.scan_clients},
        )
        print(get.line())
        return post, get
    finally:
        server.stop()


def load_note(seconds: float = 2.0) -> tuple[float, float]:
    busy0, total0 = machine_ticks()
    time.sleep(seconds)
    busy1, total1 = machine_ticks()
    return os.getloadavg()[0], 100.0 * (busy1 - busy0) / max(1, total1 - total0)


def summary(rounds: list[Round], sqlite: bool) -> None:
    print("\nSummary")
    header = f"| {'what':<34} | {'W':>1} | {'goal':>10} | {'measured':>10} | {'floor':>10} | "
    header += f"{'ratio':>6} | {'met':<7} |"
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")

    def row(what: str, w: int, goal: str, measured: str, floor: str, ratio: str, met: str) -> None:
        print(
            f"| {what:<34} | {w:>1} | {goal:>10} | {measured:>10} | {floor:>10} | {ratio:>6} | "
            f"{met:<7} |"
        )

    for r in rounds:
        fp, fg = r.floor_post, r.floor_get
        oc, sc = r.one_click, r.scan
        goal = "" if sqlite else "≥ 1,000/s"
        met = "" if sqlite else ("met" if oc.rps >= GOAL_ONE_CLICK_RPS else "NOT met")
        row(
            "one-click opt-outs/s (8 clients)",
            r.workers,
            goal,
            f"{oc.rps:,.0f}",
            f"{fp.rps:,.0f}" if fp else "-",
            f"{oc.rps / fp.rps:.2f}" if fp and fp.rps else "-",
            met,
        )
        row(
            "one-click p99 latency",
            r.workers,
            "" if sqlite else "≤ 15 ms",
            f"{oc.ms('p99'):.1f} ms",
            f"{fp.ms('p99'):.1f} ms" if fp else "-",
            f"{oc.ms('p99') / fp.ms('p99'):.2f}" if fp and fp.ms("p99") else "-",
            "" if sqlite else ("met" if oc.ms("p99") <= GOAL_ONE_CLICK_P99_MS else "NOT met"),
        )
        row(
            "one-click errors / durable",
            r.workers,
            "0 / all",
            f"{oc.error_count} / {'all' if r.verified else 'NO'}",
            "-",
            "-",
            "met" if r.verified and oc.error_count == 0 else "NOT met",
        )
        row(
            f"scanner GET pages/s ({sc.clients} clients)",
            r.workers,
            "" if sqlite else "≥ 3,000/s",
            f"{sc.rps:,.0f}",
            f"{fg.rps:,.0f}" if fg else "-",
            f"{sc.rps / fg.rps:.2f}" if fg and fg.rps else "-",
            "" if sqlite else ("met" if sc.rps >= GOAL_SCAN_RPS else "NOT met"),
        )
        row(
            "scanner p99 latency",
            r.workers,
            "",
            f"{sc.ms('p99'):.1f} ms",
            f"{fg.ms('p99'):.1f} ms" if fg else "-",
            "-",
            "",
        )
        same = r.writes_before == r.writes_after
        row(
            "scanner writes",
            r.workers,
            "0",
            "0" if same else "CHANGED",
            "-",
            "-",
            "met" if same and sc.error_count == 0 else "NOT met",
        )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--clients", type=int, default=8, help="one-click connections")
    parser.add_argument("--scan-clients", type=int, default=16, help="scanner connections")
    parser.add_argument("--scan-tokens", type=int, default=10_000)
    parser.add_argument(
        "--max-rate", type=float, default=3000.0, help="tokens minted per second of one-click"
    )
    parser.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--sqlite", action="store_true", help="SQLite instead of PostgreSQL")
    parser.add_argument("--no-floor", action="store_true")
    parser.add_argument(
        "--pg-admin-url",
        default=os.environ.get(
            "PREFCENTER_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
        ),
    )
    parser.add_argument("--keep-db", action="store_true")
    parser.add_argument(
        "--webhook",
        action="store_true",
        help="a webhook endpoint for consent.changed (a local receiver): each opt-out writes "
        "its outbox row in its statement (serve --no-worker: they are not delivered meanwhile)",
    )
    parser.add_argument("--json", type=Path, help="also write all figures here")
    args = parser.parse_args()
    if args.loadgen == "auto":
        args.generator = "wrk" if shutil.which("wrk") else "python"
    else:
        args.generator = args.loadgen
    loadavg, busy = load_note()
    print(
        f"prefcenter bench, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {NCPU} CPUs, "
        f"{'SQLite' if args.sqlite else 'PostgreSQL'}, load generator: {args.generator}"
    )
    print(
        f"machine before start: load average {loadavg:.2f}, CPU busy {busy:.0f}% "
        f"over 2 s{'  <-- BUSY: figures will be low, re-run when quiet' if busy > 25 else ''}"
    )
    rounds: list[Round] = []
    with tempfile.TemporaryDirectory(prefix="prefcenter-bench-") as tmp:
        work = Path(tmp)
        with (
            throwaway_database(args, work) as target,
            webhook_sink(1, work / "sink") if args.webhook else nullcontext() as receiver,
        ):
            headers = prepare(target, receiver.url if receiver is not None else None)
            for workers in args.workers:
                print(f"\n== W = {workers} worker processes ==")
                oc, verified, verification, scan, before, after = bench_prefcenter(
                    args, target, headers, workers, work
                )
                current = Round(workers, oc, verified, verification, scan, before, after)
                if not args.sqlite and not args.no_floor:
                    current.floor_post, current.floor_get = bench_floor(args, target, workers, work)
                rounds.append(current)
            if receiver is not None:
                with target.engine.connect() as connection:
                    queued = connection.execute(
                        text("SELECT count(*) FROM outbox_message WHERE kind = 'webhook'")
                    ).scalar_one()
                print(
                    f"\nwebhook deliveries written with the opt-outs: {queued:,}; "
                    f"received by the endpoint: {receiver.received:,}"
                )
    summary(rounds, args.sqlite)
    loadavg_end = os.getloadavg()[0]
    print(f"\nload average at the end: {loadavg_end:.2f}")
    if args.json:
        args.json.write_text(
            json.dumps(
                [
                    {
                        "workers": r.workers,
                        **{
                            name: {**vars(load), "acked": len(load.acked), "rps": load.rps}
                            for name, load in (
                                ("one_click", r.one_click),
                                ("scan", r.scan),
                                ("floor_post", r.floor_post),
                                ("floor_get", r.floor_get),
                            )
                            if load is not None
                        },
                        "verified": r.verified,
                        "writes_before": r.writes_before,
                        "writes_after": r.writes_after,
                    }
                    for r in rounds
                ],
                indent=2,
                default=str,
            )
        )
    ok = all(r.verified and r.writes_before == r.writes_after for r in rounds)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
