"""Benchmark: eligibility and the marketing exports at ten-million scale (issue 4), against a real
`prefcenter serve`, each figure beside a raw floor measured in the same run.

    .venv/bin/python bench/eligibility.py            # PostgreSQL, 5M contacts, 1M addresses
    .venv/bin/python bench/eligibility.py --big      # also 10M addresses, RSS sampled
    .venv/bin/python bench/eligibility.py --sqlite   # SQLite
    .venv/bin/python bench/eligibility.py --contacts 1000000 --addresses 200000   # quick
    .venv/bin/python bench/eligibility.py --keep-db               # seed once ...
    .venv/bin/python bench/eligibility.py --reuse-db NAME         # ... and reuse it
    .venv/bin/python bench/eligibility.py --reuse-db NAME --only suppressions   # one part
    .venv/bin/python bench/eligibility.py --reuse-db NAME --only-calls   # step 6 alone, with
                                          # a 10,000-line file (= --only eligibility otherwise)

Reference data (seeded here by SQL, straight into the tables migrations built): N contacts
(`user{i}@example{i % 100}.com`), three topics — `newsletter` (marketing, opt-in: a row per
contact, 10% `unsubscribed`), `offers` (marketing, opt-out: 10% `unsubscribed` rows) and
`product` (marketing, opt-in, like `newsletter`) — and 5% of contacts globally suppressed.

Measured, each `--repeat` times:
  1. floor: the address file `COPY`d into a temp table and one join answering every line in
     input order (PostgreSQL: psycopg COPY in and `COPY (…) TO STDOUT` out; SQLite: the sqlite3
     module, executemany into a temp table and one join);
  2. `POST /v1/eligibility/stream?topic=newsletter` with the same file (90% known addresses in
     random order, 9% unknown, 1% invalid, every 50th upper-cased), uploaded and read back with
     httpx while the server's RSS is sampled every 100 ms; the answer's rows and `allowed`
     count are checked against the floor's;
  3. `--big`: the same with 10M addresses (floor too);
  4. `GET /v1/suppressions` with 1M suppressed (rows added for the measurement, removed after),
     beside its floor: the same rows by one `COPY … TO STDOUT (FORMAT csv)` read through psql;
  5. `GET /v1/topics/offers/audience` (every contact neither opted out nor suppressed);
  6. `POST /v1/eligibility` with 10,000 addresses, `--calls` times one after another: p50/p99,
     and the CPU time per call of the server and of its PostgreSQL backends (`--only-calls`:
     this alone, steps 1-5 skipped).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.pool import NullPool

sys.path.insert(0, str(Path(__file__).resolve().parent))
from one_click import (
    HOST,
    SIGNING_KEYS,
    Server,
    cpu_seconds,
    free_port,
    load_note,
    server_env,
    start_server,
)

from prefcenter import migrations
from prefcenter.apikeys.schemas import Scope
from prefcenter.apikeys.service import create_api_key
from prefcenter.db import Database
from prefcenter.settings import Settings
from prefcenter.topics.schemas import ConsentModel, TopicKind

NCPU = os.cpu_count() or 1
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
TOPICS = (
    ("newsletter", ConsentModel.OPT_IN),
    ("offers", ConsentModel.OPT_OUT),
    ("product", ConsentModel.OPT_IN),
)
STREAM_TOPIC = "newsletter"
AUDIENCE_TOPIC = "offers"
SEEDED_AT = "2020-01-01 00:00:00"
EXTRA_SUPPRESSION_SOURCE = "bench_extra"

# Goals from issue 4, at the reference scale (5M contacts, 1M / 10M addresses, 1M suppressed).
REFERENCE_CONTACTS = 5_000_000
GOAL_STREAM_PG_S = 4.0  # 1M addresses
GOAL_STREAM_PG_FLOOR_RATIO = 2.0
GOAL_BIG_PG_S = 40.0  # 10M addresses
GOAL_BIG_RSS_MB = 300.0
GOAL_STREAM_SQLITE_S = 8.0  # 1M addresses
GOAL_SUPPRESSIONS_S = 1.5  # 1M rows
GOAL_AUDIENCE_S = 6.0  # 5M contacts
GOAL_ELIGIBILITY_P99_MS = 150.0
SUPPRESSED_FOR_EXPORT = 1_000_000
# What `--only` may pick (all by default): 1-3, 4, 5 and 6 of the list above.
PARTS = ("stream", "suppressions", "audience", "eligibility")
AUDIT_KEY = "a" * 48


# --- the database --------------------------------------------------------------------------


@dataclass
class Target:
    url: str
    is_sqlite: bool
    name: str

    @property
    def libpq_url(self) -> str:
        return make_url(self.url).set(drivername="postgresql").render_as_string(hide_password=False)

    @property
    def sqlite_file(self) -> str:
        return self.url.removeprefix("sqlite:///")


@contextmanager
def bench_database(args: argparse.Namespace, work: Path) -> Iterator[tuple[Target, bool]]:
    """The database and whether it still needs seeding; dropped at the end unless kept/reused."""
    if args.sqlite:
        if args.reuse_db:
            path = Path(args.reuse_db)
            yield Target(f"sqlite:///{path}", is_sqlite=True, name=str(path)), not path.exists()
            return
        keep_dir = Path(tempfile.mkdtemp(prefix="prefcenter-bench-")) if args.keep_db else work
        path = keep_dir / "bench.db"
        yield Target(f"sqlite:///{path}", is_sqlite=True, name=str(path)), True
        if args.keep_db:
            print(f"kept database {path} (--reuse-db {path})")
        return
    admin_url = make_url(args.pg_admin_url)
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    name = args.reuse_db or f"prefcenter_bench_{uuid.uuid4().hex[:10]}"
    with admin.connect() as connection:
        exists = connection.execute(
            text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}
        ).first()
        if not exists:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = admin_url.set(database=name).render_as_string(hide_password=False)
    try:
        yield Target(url, is_sqlite=False, name=name), not exists
    finally:
        if args.keep_db or args.reuse_db:
            print(f"kept database {name} (--reuse-db {name})")
        else:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def prepare(target: Target) -> dict[str, str]:
    """Migrate; the topics by SQL (once: no audit events, which the bench does not read) and a
    fresh API key through its service."""
    settings = Settings(
        _env_file=None, database_url=target.url, signing_keys=SIGNING_KEYS, audit_key=AUDIT_KEY
    )
    migrations.upgrade(settings)
    database = Database(settings)
    try:
        with database.transaction(write=True) as session:
            issued = create_api_key(
                session, name="bench", scopes=[Scope.ELIGIBILITY, Scope.CONSENT_READ]
            )
            for key, consent in TOPICS:
                session.execute(
                    text(
                        "INSERT INTO topic (key, name, kind, consent, double_opt_in, created_at, "
                        "updated_at) SELECT :key, :name, :kind, :consent, false, :at, :at "
                        "WHERE NOT EXISTS (SELECT 1 FROM topic WHERE key = :same)"
                    ),
                    {
                        "key": key,
                        "same": key,
                        "name": key.title(),
                        "kind": TopicKind.MARKETING.value,
                        "consent": consent.value,
                        "at": datetime(2020, 1, 1, tzinfo=UTC),
                    },
                )
    finally:
        database.dispose()
    return {"Authorization": f"Bearer {issued.secret}"}


def address(i: int) -> str:
    return f"user{i}@example{i % 100}.com"


# Which rows exist, as SQL over the series `g` (the same on both engines): 10% of each topic's
# rows `unsubscribed` (a different 10% per topic), 5% of contacts suppressed.
_UNSUBSCRIBED = "((g * 7 + t.id * 3) % 10 = 0)"
_SUPPRESSED = "(g % 20 = 3)"


def _seed_statements(contacts: int, series: str, at: str, public_id: str) -> list[str]:
    opt_in = ", ".join(f"'{k}'" for k, c in TOPICS if c is ConsentModel.OPT_IN)
    opt_out = ", ".join(f"'{k}'" for k, c in TOPICS if c is ConsentModel.OPT_OUT)
    address_sql = "'user' || g || '@example' || (g % 100) || '.com'"
    subscription_columns = (
        "INSERT INTO subscription (contact_id, topic_id, status, occurred_at, since, source, "
        "by_recipient, event_id) "
    )
    return [
        f"INSERT INTO contact (id, public_id, address, address_display, created_at) "
        f"SELECT g, {public_id}, {address_sql}, {address_sql}, {at} FROM {series}",
        subscription_columns + f"SELECT g, t.id, CASE WHEN {_UNSUBSCRIBED} THEN 'unsubscribed' "
        f"ELSE 'subscribed' END, {at}, {at}, 'bench_seed', false, 'seed' "
        f"FROM {series} CROSS JOIN topic t WHERE t.key IN ({opt_in})",
        subscription_columns + f"SELECT g, t.id, 'unsubscribed', {at}, {at}, 'bench_seed', "
        f"false, 'seed' FROM {series} CROSS JOIN topic t WHERE t.key IN ({opt_out}) "
        f"AND {_UNSUBSCRIBED}",
        f"INSERT INTO suppression (contact_id, suppressed, occurred_at, since, source, "
        f"by_recipient) SELECT g, true, {at}, {at}, 'bench_seed', false FROM {series} "
        f"WHERE {_SUPPRESSED}",
    ]


def seed_postgres(target: Target, contacts: int) -> None:
    """Constraints and secondary indexes dropped, the rows inserted by SQL, then all rebuilt
    exactly as they were (their definitions read back from the catalogue)."""
    tables = ("contact", "subscription", "suppression")
    with psycopg.connect(target.libpq_url, autocommit=True) as connection:
        connection.execute("SET maintenance_work_mem = '512MB'")
        connection.execute("SET synchronous_commit = off")
        constraints = connection.execute(
            "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid), contype "
            "FROM pg_constraint WHERE conrelid::regclass::text = ANY(%s) AND contype IN ('u', 'f')",
            (list(tables),),
        ).fetchall()
        indexes = connection.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = ANY(%s) AND indexname "
            "NOT IN (SELECT conname FROM pg_constraint)",
            (list(tables),),
        ).fetchall()
        for table, name, _, _kind in sorted(constraints, key=lambda c: c[3] != "f"):
            connection.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
        for name, _ in indexes:
            connection.execute(f'DROP INDEX "{name}"')
        at = f"'{SEEDED_AT}+00'::timestamptz"
        series = f"generate_series(1, {contacts}) g"
        for statement in _seed_statements(contacts, series, at, "md5(g::text)"):
            started = time.monotonic()
            connection.execute(statement)
            print(f"  seeded in {time.monotonic() - started:.1f} s: {statement[:60]}…")
        connection.execute(
            "SELECT setval(pg_get_serial_sequence('contact', 'id'), %s)", (contacts,)
        )
        started = time.monotonic()
        for table, name, definition, _ in sorted(constraints, key=lambda c: c[3] == "f"):
            connection.execute(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}')
        for _, definition in indexes:
            connection.execute(definition)
        print(f"  constraints and indexes rebuilt in {time.monotonic() - started:.1f} s")
        started = time.monotonic()
        connection.execute("VACUUM (ANALYZE)")
        connection.execute("CHECKPOINT")
        print(f"  VACUUM ANALYZE + CHECKPOINT in {time.monotonic() - started:.1f} s")


def seed_sqlite(target: Target, contacts: int) -> None:
    connection = sqlite3.connect(target.sqlite_file, isolation_level=None)
    try:
        connection.execute("PRAGMA synchronous=OFF")
        connection.execute("PRAGMA cache_size=-500000")
        series = (
            f"(WITH RECURSIVE s(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM s "
            f"WHERE g < {contacts}) SELECT g FROM s)"
        )
        at = f"'{SEEDED_AT}.000000'"
        connection.execute("BEGIN")
        for statement in _seed_statements(contacts, series, at, "lower(hex(randomblob(16)))"):
            started = time.monotonic()
            connection.execute(statement.replace(f"FROM {series}", f"FROM {series} AS q"))
            print(f"  seeded in {time.monotonic() - started:.1f} s: {statement[:60]}…")
        connection.execute("COMMIT")
        connection.execute("ANALYZE")
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        connection.close()


def count_rows(target: Target) -> dict[str, int]:
    engine = create_engine(target.url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            return {
                table: int(connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())
                for table in ("contact", "subscription", "suppression")
            }
    finally:
        engine.dispose()


@contextmanager
def extra_suppressions(target: Target, wanted: int) -> Iterator[int]:
    """Suppress more contacts (never-suppressed ones) until `wanted` are, for the export
    measurement; removed afterwards. Yields how many are suppressed."""
    engine = create_engine(target.url, poolclass=NullPool)
    at = f"'{SEEDED_AT}" + ("'" if target.is_sqlite else "+00'")
    try:
        with engine.begin() as connection:
            have = int(connection.execute(text("SELECT count(*) FROM suppression")).scalar_one())
            if have < wanted:
                connection.execute(
                    text(
                        "INSERT INTO suppression (contact_id, suppressed, occurred_at, since, "
                        f"source, by_recipient) SELECT c.id, true, {at}, {at}, :source, false "
                        "FROM contact c WHERE NOT EXISTS (SELECT 1 FROM suppression s WHERE "
                        "s.contact_id = c.id) ORDER BY c.id LIMIT :n"
                    ),
                    {"source": EXTRA_SUPPRESSION_SOURCE, "n": wanted - have},
                )
            total = int(connection.execute(text("SELECT count(*) FROM suppression")).scalar_one())
        housekeeping(target)
        yield total
    finally:
        with engine.begin() as connection:
            connection.execute(
                text("DELETE FROM suppression WHERE source = :source"),
                {"source": EXTRA_SUPPRESSION_SOURCE},
            )
        engine.dispose()


def housekeeping(target: Target) -> None:
    if target.is_sqlite:
        with sqlite3.connect(target.sqlite_file) as connection:
            connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return
    with psycopg.connect(target.libpq_url, autocommit=True) as connection:
        connection.execute("VACUUM (ANALYZE) suppression")
        connection.execute("CHECKPOINT")


# --- the address files ---------------------------------------------------------------------


@dataclass
class AddressFile:
    path: Path
    lines: int
    invalid: int


def write_addresses(path: Path, count: int, contacts: int, seed: int) -> AddressFile:
    """90% known contacts in random order, 9% unknown, 1% invalid; every 50th upper-cased."""
    rng = random.Random(seed)
    invalid = 0
    with path.open("w", encoding="ascii", newline="\n") as out:
        batch: list[str] = []
        for n in range(count):
            roll = rng.random()
            if roll < 0.90:
                line = address(rng.randint(1, contacts))
            elif roll < 0.99:
                line = f"nobody{n}@example{n % 100}.org"
            else:
                line = f"not an address {n}"
                invalid += 1
            batch.append(line.upper() if n % 50 == 0 else line)
            if len(batch) == 100_000:
                out.write("\n".join(batch) + "\n")
                batch = []
        if batch:
            out.write("\n".join(batch) + "\n")
    return AddressFile(path, count, invalid)


def file_chunks(path: Path, size: int = 256 * 1024) -> Iterator[bytes]:
    with path.open("rb") as source:
        while block := source.read(size):
            yield block


# --- the floor -----------------------------------------------------------------------------

_FLOOR_ANSWER = (
    "CASE WHEN p.contact_id IS NOT NULL THEN 'false,suppressed' "
    "WHEN s.status = 'unsubscribed' THEN 'false,unsubscribed' "
    "WHEN s.status = 'pending' THEN 'false,pending' "
    "WHEN s.status = 'subscribed' THEN 'true,subscribed' "
    "ELSE 'false,not_subscribed' END"
)


@dataclass
class Answer:
    seconds: float
    rows: int
    allowed: int
    peak_rss_mb: float | None = None
    base_rss_mb: float | None = None
    # CPU seconds spent meanwhile by the server's processes and by PostgreSQL (all of it): on
    # a shared machine the steadier figure.
    server_cpu_s: float | None = None
    postgres_cpu_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def floor_postgres(target: Target, addresses: AddressFile) -> Answer:
    """psycopg: COPY the file into a temp table, one join, the answer COPYd out in order."""
    with psycopg.connect(target.libpq_url) as connection:
        topic_id = connection.execute(
            "SELECT id FROM topic WHERE key = %s", (STREAM_TOPIC,)
        ).fetchone()
        assert topic_id is not None
        (backend,) = connection.execute("SELECT pg_backend_pid()").fetchone() or (0,)
        pg_before = cpu_seconds([backend])
        started = time.monotonic()
        connection.execute(
            "CREATE TEMP TABLE floor_in (n bigint GENERATED ALWAYS AS IDENTITY, line text)"
        )
        with connection.cursor().copy("COPY floor_in (line) FROM STDIN") as copy:
            for block in file_chunks(addresses.path):
                copy.write(block)
        rows = allowed = 0
        query = (
            f"COPY (SELECT f.line, {_FLOOR_ANSWER} FROM floor_in f "
            "LEFT JOIN contact c ON c.address = lower(f.line) "
            f"LEFT JOIN subscription s ON s.contact_id = c.id AND s.topic_id = {topic_id[0]} "
            "LEFT JOIN suppression p ON p.contact_id = c.id AND p.suppressed "
            "ORDER BY f.n) TO STDOUT"
        )
        with connection.cursor().copy(query) as copy:
            for data in copy:
                rows += 1
                allowed += bytes(data).count(b"\ttrue,")
        seconds = time.monotonic() - started
        pg_cpu = cpu_seconds([backend]) - pg_before
        connection.rollback()
    return Answer(seconds, rows, allowed, postgres_cpu_s=pg_cpu)


# The suppressions' export done raw: the same rows (address, reason, time; opt-outs and
# bounces in contact order) written by PostgreSQL's own CSV `COPY` and read by psql, the
# client that adds nothing per row, into a pipe read here in large blocks.
_FLOOR_SUPPRESSIONS = (
    "COPY (SELECT address, reason, since FROM ("
    "SELECT s.contact_id, 0 AS rank, coalesce(c.address_display, c.address) AS address, "
    "'unsubscribed_all' AS reason, s.since FROM suppression s "
    "JOIN contact c ON c.id = s.contact_id WHERE s.suppressed "
    "UNION ALL SELECT b.contact_id, 1, coalesce(c.address_display, c.address), 'bounced', "
    "b.since FROM bounce b JOIN contact c ON c.id = b.contact_id WHERE b.bounced"
    ") AS rows ORDER BY contact_id, rank) TO STDOUT (FORMAT csv, HEADER)"
)


def floor_suppressions(target: Target) -> Answer:
    """psql: the suppressions' CSV by one `COPY … TO STDOUT`, read from psql's stdout."""
    started = time.monotonic()
    psql = subprocess.Popen(
        [
            "psql",
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            target.libpq_url,
            "-c",
            "SET TIME ZONE 'UTC'",
            "-c",
            _FLOOR_SUPPRESSIONS,
        ],
        stdout=subprocess.PIPE,
    )
    assert psql.stdout is not None
    rows = 0
    while block := psql.stdout.read(1 << 20):
        rows += block.count(b"\n")
    if psql.wait() != 0:
        raise RuntimeError(f"psql failed ({psql.returncode})")
    return Answer(time.monotonic() - started, rows - 1, 0)


def floor_sqlite(target: Target, addresses: AddressFile) -> Answer:
    """sqlite3: executemany into a temp table, one join, every row fetched in order."""
    connection = sqlite3.connect(target.sqlite_file)
    try:
        topic_id = connection.execute(
            "SELECT id FROM topic WHERE key = ?", (STREAM_TOPIC,)
        ).fetchone()[0]
        started = time.monotonic()
        connection.execute("CREATE TEMP TABLE floor_in (n INTEGER PRIMARY KEY, line TEXT)")
        with addresses.path.open(encoding="ascii") as source:
            connection.executemany(
                "INSERT INTO floor_in (line) VALUES (?)", ((line.rstrip("\n"),) for line in source)
            )
        rows = allowed = 0
        cursor = connection.execute(
            f"SELECT f.line, {_FLOOR_ANSWER} FROM floor_in f "
            "LEFT JOIN contact c ON c.address = lower(f.line) "
            f"LEFT JOIN subscription s ON s.contact_id = c.id AND s.topic_id = {topic_id} "
            "LEFT JOIN suppression p ON p.contact_id = c.id AND p.suppressed "
            "ORDER BY f.n"
        )
        while batch := cursor.fetchmany(10_000):
            rows += len(batch)
            allowed += sum(1 for _, answer in batch if answer.startswith("true"))
        seconds = time.monotonic() - started
        connection.rollback()
    finally:
        connection.close()
    return Answer(seconds, rows, allowed)


# --- over HTTP -----------------------------------------------------------------------------


def rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total * PAGE_SIZE / 2**20


class RssSampler:
    """The server's RSS (all its processes) every 100 ms, on a thread, until stopped."""

    def __init__(self, server: Server) -> None:
        self.pids = server.pids()
        self.base = rss_mb(self.pids)
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.peak = max(self.peak, rss_mb(self.pids))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb(self.pids))


def database_backends(target: Target) -> list[int]:
    """The PostgreSQL backends connected to the bench database (the server's pool), not those
    of other databases on a shared server."""
    if target.is_sqlite:
        return []
    with psycopg.connect(target.libpq_url) as connection:
        rows = connection.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()"
        ).fetchall()
    return [int(pid) for (pid,) in rows]


class CpuMeter:
    """CPU seconds used by the server's processes and by the PostgreSQL backends serving the
    bench database during the block (backends opened meanwhile are missed: the pool keeps its
    connections, so after a first request there are none)."""

    def __init__(self, server: Server, target: Target) -> None:
        self.server_pids = server.pids()
        self.postgres_pids = database_backends(target)
        self.server_s = self.postgres_s = 0.0

    def __enter__(self) -> CpuMeter:
        self._server0 = cpu_seconds(self.server_pids)
        self._postgres0 = cpu_seconds(self.postgres_pids)
        return self

    def __exit__(self, *_: object) -> None:
        self.server_s = cpu_seconds(self.server_pids) - self._server0
        self.postgres_s = cpu_seconds(self.postgres_pids) - self._postgres0


def stream_answer(
    server: Server, target: Target, headers: dict[str, str], addresses: AddressFile
) -> Answer:
    """Upload and download at the same time, as a mailer would: the answer streams while the
    body is still being sent. (httpx sends the whole body before reading anything; against a
    server that answers as it reads, both sides then wait on full socket buffers.)"""
    port = int(server.base_url.rsplit(":", 1)[1])
    size = addresses.path.stat().st_size
    head = (
        f"POST /v1/eligibility/stream?topic={STREAM_TOPIC} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
        + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        + f"Content-Type: text/plain\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n"
    ).encode()
    rows = allowed = 0
    with (
        RssSampler(server) as rss,
        CpuMeter(server, target) as cpu,
        socket.create_connection((HOST, port)) as sock,
    ):
        started = time.monotonic()

        def send() -> None:
            sock.sendall(head)
            with addresses.path.open("rb") as source:
                sock.sendfile(source)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        reader = sock.makefile("rb", buffering=1 << 20)
        status = reader.readline()
        response_headers = {}
        while (line := reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            response_headers[name.strip().lower()] = value.strip()
        if b" 200 " not in status:
            raise RuntimeError(f"stream answered {status!r}: {reader.read(2000)!r}")
        if response_headers.get("transfer-encoding") != "chunked":
            raise RuntimeError(f"expected a chunked answer, got {response_headers}")
        tail = b""
        while True:
            length = int(reader.readline().split(b";")[0], 16)
            if length == 0:
                break
            # Whole lines only: a block may end inside `,true,`.
            tail += reader.read(length)
            reader.readline()
            cut = tail.rfind(b"\n") + 1
            lines, tail = tail[:cut], tail[cut:]
            rows += lines.count(b"\n")
            allowed += lines.count(b",true,")
        seconds = time.monotonic() - started
        sender.join()
    return Answer(
        seconds,
        rows - 1,
        allowed,
        peak_rss_mb=rss.peak,
        base_rss_mb=rss.base,
        server_cpu_s=cpu.server_s,
        postgres_cpu_s=cpu.postgres_s,
    )


def download(server: Server, target: Target, headers: dict[str, str], path: str) -> Answer:
    rows = 0
    with (
        httpx.Client(base_url=server.base_url, headers=headers, timeout=None) as client,
        CpuMeter(server, target) as cpu,
    ):
        started = time.monotonic()
        with client.stream("GET", path) as response:
            response.raise_for_status()
            for block in response.iter_raw():
                rows += block.count(b"\n")
        seconds = time.monotonic() - started
    return Answer(seconds, rows - 1, 0, server_cpu_s=cpu.server_s, postgres_cpu_s=cpu.postgres_s)


CALLS_SAMPLE = 10_000
WARM_UP_CALLS = 3


def eligibility_calls(
    server: Server, target: Target, headers: dict[str, str], addresses: AddressFile, calls: int
) -> dict[str, float]:
    """Latencies of `calls` calls (after a few that warm the caches), and the CPU time per call
    of the server and of the PostgreSQL backends of the bench database (the steadier figures
    on a shared machine)."""
    with addresses.path.open(encoding="ascii") as source:
        sample = [next(source).rstrip("\n") for _ in range(min(CALLS_SAMPLE, addresses.lines))]
    bodies = [
        json.dumps({"topic": STREAM_TOPIC, "emails": random.Random(n).sample(sample, len(sample))})
        for n in range(calls + WARM_UP_CALLS)
    ]
    latencies: list[float] = []
    json_headers = {**headers, "Content-Type": "application/json"}
    with httpx.Client(base_url=server.base_url, headers=json_headers, timeout=60) as client:
        for body in bodies[:WARM_UP_CALLS]:
            client.post("/v1/eligibility", content=body).raise_for_status()
        with CpuMeter(server, target) as cpu:
            for body in bodies[WARM_UP_CALLS:]:
                started = time.perf_counter()
                response = client.post("/v1/eligibility", content=body)
                elapsed = time.perf_counter() - started
                response.raise_for_status()
                latencies.append(elapsed * 1000)
    latencies.sort()
    return {
        "calls": len(latencies),
        "p50_ms": statistics.median(latencies),
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "max_ms": latencies[-1],
        "server_cpu_ms": cpu.server_s * 1000 / len(latencies),
        "postgres_cpu_ms": cpu.postgres_s * 1000 / len(latencies),
    }


def start_prefcenter(target: Target, work: Path) -> Server:
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
        "1",
        "--no-migrate",
    ]
    env = server_env(target, port)  # type: ignore[arg-type]
    env["PREFCENTER_AUDIT_KEY"] = AUDIT_KEY
    return start_server("prefcenter", command, env, port, 1, work)


# --- the run -------------------------------------------------------------------------------


@dataclass
class Figure:
    what: str
    goal: str
    measured: str
    floor: str
    ratio: str
    met: str


def _met(ok: bool | None) -> str:
    return "" if ok is None else ("met" if ok else "NOT met")


def stream_and_exports(
    args: argparse.Namespace,
    target: Target,
    server: Server,
    headers: dict[str, str],
    files: dict[str, AddressFile],
    counts: dict[str, int],
    figures: list[Figure],
    record: dict[str, Any],
    parts: set[str],
) -> None:
    """Steps 1-5: the streams beside their floors, the suppressions and the audience export
    (those of them in `parts`)."""
    floor = floor_sqlite if target.is_sqlite else floor_postgres

    for label, addresses in files.items() if "stream" in parts else ():
        scale = addresses.lines / 1_000_000
        goal_s = (
            (GOAL_STREAM_SQLITE_S if target.is_sqlite else GOAL_STREAM_PG_S) * scale
            if label == "stream"
            else GOAL_BIG_PG_S * scale / 10
        )
        for attempt in range(args.repeat):
            floor_answer = floor(target, addresses)
            print(
                f"floor, {addresses.lines:,} addresses: {floor_answer.seconds:.2f} s "
                f"({floor_answer.rows:,} rows, {floor_answer.allowed:,} allowed)"
                + (
                    ""
                    if floor_answer.postgres_cpu_s is None
                    else f"; CPU s: its backend {floor_answer.postgres_cpu_s:.1f} "
                    "(parallel workers not counted)"
                )
            )
            answer = stream_answer(server, target, headers, addresses)
            ratio = answer.seconds / floor_answer.seconds
            same = answer.rows == addresses.lines and answer.allowed == floor_answer.allowed
            print(
                f"stream, {addresses.lines:,} addresses: {answer.seconds:.2f} s "
                f"({addresses.lines / answer.seconds:,.0f}/s; {answer.rows:,} rows, "
                f"{answer.allowed:,} allowed: {'same as' if same else 'DIFFERENT FROM'} "
                f"the floor), {ratio:.2f}× the floor; server RSS {answer.base_rss_mb:.0f} "
                f"MB before, peak {answer.peak_rss_mb:.0f} MB; CPU s: server "
                f"{answer.server_cpu_s:.1f}, postgres {answer.postgres_cpu_s:.1f}"
            )
            ok: bool | None = answer.seconds <= goal_s and same
            if not target.is_sqlite and label == "stream":
                ok = ok and ratio <= GOAL_STREAM_PG_FLOOR_RATIO
            figures.append(
                Figure(
                    f"stream {addresses.lines / 1e6:g}M addr. (#{attempt + 1})",
                    f"≤ {goal_s:g} s"
                    + ("" if target.is_sqlite or label != "stream" else " & ≤ 2×"),
                    f"{answer.seconds:.2f} s",
                    f"{floor_answer.seconds:.2f} s",
                    f"{ratio:.2f}",
                    _met(ok),
                )
            )
            if label == "big":
                peak = answer.peak_rss_mb or 0.0
                figures.append(
                    Figure(
                        f"stream {addresses.lines / 1e6:g}M peak RSS (#{attempt + 1})",
                        f"≤ {GOAL_BIG_RSS_MB:g} MB",
                        f"{peak:.0f} MB",
                        "-",
                        "-",
                        _met(peak <= GOAL_BIG_RSS_MB),
                    )
                )
            record.setdefault(label, []).append(
                {"floor": vars(floor_answer), "server": vars(answer), "ratio": ratio}
            )
    suppressed = min(SUPPRESSED_FOR_EXPORT, counts["contact"])
    with extra_suppressions(target, suppressed if "suppressions" in parts else 0) as n:
        goal_s = GOAL_SUPPRESSIONS_S * n / SUPPRESSED_FOR_EXPORT
        for attempt in range(args.repeat if "suppressions" in parts else 0):
            supp_floor = None if target.is_sqlite else floor_suppressions(target)
            if supp_floor is not None:
                print(
                    f"floor, suppressions: {supp_floor.seconds:.2f} s "
                    f"({supp_floor.rows:,} rows; psql, one COPY … TO STDOUT (FORMAT csv))"
                )
            answer = download(server, target, headers, "/v1/suppressions")
            print(
                f"suppressions ({n:,} suppressed): {answer.seconds:.2f} s, "
                f"{answer.rows:,} rows ({answer.rows / answer.seconds:,.0f}/s); CPU s: "
                f"server {answer.server_cpu_s:.1f}, postgres {answer.postgres_cpu_s:.1f}"
                + (
                    ""
                    if supp_floor is None
                    else f"; {answer.seconds / supp_floor.seconds:.2f}× the floor"
                )
            )
            figures.append(
                Figure(
                    f"suppressions {n / 1e6:g}M (#{attempt + 1})",
                    f"≤ {goal_s:g} s",
                    f"{answer.seconds:.2f} s",
                    "-" if supp_floor is None else f"{supp_floor.seconds:.2f} s",
                    "-" if supp_floor is None else f"{answer.seconds / supp_floor.seconds:.2f}",
                    _met(answer.seconds <= goal_s if not target.is_sqlite else None),
                )
            )
            record.setdefault("suppressions", []).append(
                {**vars(answer), "floor": None if supp_floor is None else vars(supp_floor)}
            )
    goal_s = GOAL_AUDIENCE_S * counts["contact"] / REFERENCE_CONTACTS
    for attempt in range(args.repeat if "audience" in parts else 0):
        answer = download(server, target, headers, f"/v1/topics/{AUDIENCE_TOPIC}/audience")
        print(
            f"audience of {AUDIENCE_TOPIC} ({counts['contact']:,} contacts): "
            f"{answer.seconds:.2f} s, {answer.rows:,} rows "
            f"({answer.rows / answer.seconds:,.0f}/s); CPU s: server "
            f"{answer.server_cpu_s:.1f}, postgres {answer.postgres_cpu_s:.1f}"
        )
        figures.append(
            Figure(
                f"audience {counts['contact'] / 1e6:g}M (#{attempt + 1})",
                f"≤ {goal_s:g} s",
                f"{answer.seconds:.2f} s",
                "-",
                "-",
                _met(answer.seconds <= goal_s if not target.is_sqlite else None),
            )
        )
        record.setdefault("audience", []).append(vars(answer))


def run(args: argparse.Namespace, work: Path) -> tuple[list[Figure], dict[str, Any]]:
    figures: list[Figure] = []
    record: dict[str, Any] = {"scale": {"contacts": args.contacts, "addresses": args.addresses}}
    reference = args.contacts == REFERENCE_CONTACTS
    parts = {"eligibility"} if args.only_calls else set(args.only or PARTS)
    with bench_database(args, work) as (target, fresh):
        print(f"database: {target.name}")
        headers = prepare(target)
        if fresh:
            started = time.monotonic()
            (seed_sqlite if target.is_sqlite else seed_postgres)(target, args.contacts)
            print(f"seeded {args.contacts:,} contacts in {time.monotonic() - started:.1f} s")
        counts = count_rows(target)
        print(f"rows: {counts}")
        record["rows"] = counts
        started = time.monotonic()
        files: dict[str, AddressFile] = {}
        if {"stream", "eligibility"} & parts:
            # The calls alone take the file's first lines only, the same whatever its length.
            alone = parts == {"eligibility"}
            lines = min(args.addresses, CALLS_SAMPLE) if alone else args.addresses
            files["stream"] = write_addresses(work / "addresses.txt", lines, counts["contact"], 1)
        if args.big and "stream" in parts:
            files["big"] = write_addresses(
                work / "addresses-big.txt", args.big_addresses, counts["contact"], 2
            )
        print(f"address files written in {time.monotonic() - started:.1f} s")
        server = start_prefcenter(target, work)
        try:
            stream_and_exports(args, target, server, headers, files, counts, figures, record, parts)
            for attempt in range(args.repeat if "eligibility" in parts else 0):
                calls = eligibility_calls(server, target, headers, files["stream"], args.calls)
                print(
                    f"POST /v1/eligibility × {calls['calls']:.0f} (10,000 addresses each): "
                    f"p50 {calls['p50_ms']:.0f} ms, p99 {calls['p99_ms']:.0f} ms, "
                    f"max {calls['max_ms']:.0f} ms; CPU ms per call: server "
                    f"{calls['server_cpu_ms']:.0f}, postgres {calls['postgres_cpu_ms']:.0f}"
                )
                figures.append(
                    Figure(
                        f"POST /v1/eligibility 10k p99 (#{attempt + 1})",
                        f"≤ {GOAL_ELIGIBILITY_P99_MS:g} ms",
                        f"{calls['p99_ms']:.0f} ms",
                        "-",
                        "-",
                        _met(calls["p99_ms"] <= GOAL_ELIGIBILITY_P99_MS),
                    )
                )
                record.setdefault("eligibility", []).append(calls)
        finally:
            server.stop()
    if not reference:
        print("\n(not the reference scale: goals are scaled linearly, for orientation only)")
    return figures, record


def summary(figures: list[Figure]) -> None:
    print("\nSummary")
    widths = (36, 16, 10, 10, 6, 7)
    heads = ("what", "goal", "measured", "floor", "ratio", "met")

    def line(cells: tuple[str, ...]) -> str:
        return "| " + " | ".join(f"{c:<{w}}" for c, w in zip(cells, widths, strict=True)) + " |"

    print(line(heads))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for f in figures:
        print(line((f.what, f.goal, f.measured, f.floor, f.ratio, f.met)))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sqlite", action="store_true", help="SQLite instead of PostgreSQL")
    parser.add_argument("--contacts", type=int, default=REFERENCE_CONTACTS)
    parser.add_argument("--addresses", type=int, default=1_000_000)
    parser.add_argument("--big", action="store_true", help="also stream --big-addresses")
    parser.add_argument("--big-addresses", type=int, default=10_000_000)
    parser.add_argument("--calls", type=int, default=100, help="POST /v1/eligibility calls")
    parser.add_argument("--repeat", type=int, default=1, help="times each measurement is run")
    parser.add_argument(
        "--only-calls", action="store_true", help="only the POST /v1/eligibility calls (step 6)"
    )
    parser.add_argument(
        "--pg-admin-url",
        default=os.environ.get(
            "PREFCENTER_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
        ),
    )
    parser.add_argument("--keep-db", action="store_true", help="keep the seeded database")
    parser.add_argument(
        "--reuse-db", help="a database kept by --keep-db (PostgreSQL: its name; SQLite: its path)"
    )
    parser.add_argument(
        "--only", action="append", choices=PARTS, help="run only this part (may be repeated)"
    )
    parser.add_argument("--json", type=Path, help="also write all figures here")
    args = parser.parse_args()
    loadavg, busy = load_note()
    print(
        f"prefcenter eligibility bench, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {NCPU} CPUs, "
        f"{'SQLite' if args.sqlite else 'PostgreSQL'}; scale: {args.contacts:,} contacts, "
        f"{args.addresses:,} addresses" + (f", {args.big_addresses:,} (--big)" if args.big else "")
    )
    print(
        f"machine before start: load average {loadavg:.2f}, CPU busy {busy:.0f}% "
        f"over 2 s{'  <-- BUSY: figures will be low, re-run when quiet' if busy > 25 else ''}"
    )
    with tempfile.TemporaryDirectory(prefix="prefcenter-bench-") as tmp:
        figures, record = run(args, Path(tmp))
    summary(figures)
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")
    if args.json:
        record["figures"] = [vars(f) for f in figures]
        args.json.write_text(json.dumps(record, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
