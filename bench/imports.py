"""Import benchmark (issues 4, 14): a CSV of ROWS rows merged into CONTACTS existing contacts
on PostgreSQL, through the import service (the code `prefcenter import` runs), against a floor
measured in the same run that does the same writes raw: `COPY` of the file into a staging
table, one `INSERT … ON CONFLICT` merge each into `contact` and `subscription`, and a binary
`COPY` of one event per row (and its evidence document) into the events table with every index
it has (rolled back afterwards).

    .venv/bin/python bench/imports.py                          # 1M rows into 5M contacts
    .venv/bin/python bench/imports.py --contacts 1000000 --rows 100000

Half the rows are known addresses, half new; 10% are opt-outs. Creates its own database
`prefcenter_bench_imports_…` and drops it at the end (`--keep-db` keeps it). `--reuse-seed`
keeps the freshly seeded database as a template (`prefcenter_bench_imports_seed_<contacts>`,
at the migrations' head) and, when it is there already, copies it instead of seeding again
(`--drop-seed` drops it). Goals: ≤ 20 s for 1M rows into 5M contacts, and ≤ 1.5× the floor.
"""

from __future__ import annotations

import argparse
import io
import os
import secrets
import struct
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from alembic.script import ScriptDirectory
from sqlalchemy import make_url

from prefcenter import migrations
from prefcenter.db import Database
from prefcenter.imports.service import ImportRequest, file_sha256, run_import
from prefcenter.migrations import alembic_config
from prefcenter.settings import Settings

ADMIN_URL = os.environ.get(
    "PREFCENTER_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
GOAL_S = 20.0
GOAL_RATIO = 1.5


def seed(dsn: str, contacts: int) -> None:
    """Contacts c0…c{n-1}@example.com and one marketing opt-in topic, by COPY."""
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO topic (key, name, kind, consent, double_opt_in, created_at, updated_at) "
            "VALUES ('newsletter', 'Newsletter', 'marketing', 'opt_in', false, now(), now())"
        )
        with cur.copy(
            "COPY contact (public_id, address, address_display, created_at) FROM STDIN"
        ) as copy:
            buffer = io.StringIO()
            for i in range(contacts):
                address = f"c{i}@example.com"
                buffer.write(
                    f"{secrets.token_urlsafe(12)}\t{address}\t{address}\t2024-01-01 00:00:00+00\n"
                )
                if i % 100_000 == 99_999:
                    copy.write(buffer.getvalue())
                    buffer = io.StringIO()
            copy.write(buffer.getvalue())
        cur.execute("ANALYZE contact")


def write_file(path: Path, rows: int, contacts: int) -> None:
    with path.open("w", encoding="utf-8") as out:
        out.write("email,status\n")
        for i in range(rows):
            address = f"c{(i * 7919) % contacts}@example.com" if i % 2 == 0 else f"n{i}@example.com"
            out.write(f"{address},{'unsubscribed' if i % 10 == 0 else 'subscribed'}\n")


_EVENT_COLUMNS = (
    "seq, recorded_at, canonical, hash, id, kind, occurred_at, contact_id, topic, from_status, "
    "to_status, outcome, actor, source, campaign_id_digest, reason_digest, address_hash, "
    "evidence_digest"
)
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


def _binary_field(value: bytes | None) -> bytes:
    return b"\xff\xff\xff\xff" if value is None else struct.pack("!i", len(value)) + value


def write_event_payloads(events: Path, documents: Path, count: int) -> None:
    """`COPY … (FORMAT BINARY)` payloads of `count` events and their evidence documents,
    shaped and sized as an import's (a canonical object of about 500 bytes, a document of
    about 200), written before the floor's clock starts: the floor pays for the server's work
    and the transfer, not for building rows in Python."""
    header = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
    now = datetime.now(UTC)
    micros = struct.pack("!q", (now - _PG_EPOCH) // timedelta(microseconds=1))
    sha = secrets.token_hex(32)
    with events.open("wb") as out, documents.open("wb") as docs:
        out.write(header)
        docs.write(header)
        for seq in range(1, count + 1):
            event_id = str(uuid.uuid4()).encode()
            contact_id = secrets.token_urlsafe(12).encode()
            address_hash = secrets.token_hex(32).encode()
            digest = secrets.token_hex(32).encode()
            canonical = (
                b'{"actor":"cli:bench","address_hash":"%s","campaign_id_digest":null,'
                b'"contact_id":"%s","evidence_digest":"%s","from_status":null,"id":"%s",'
                b'"kind":"consent_change","occurred_at":"%s","outcome":"applied",'
                b'"reason_digest":null,"recorded_at":"%s","seq":%d,"source":"import",'
                b'"to_status":"subscribed","topic":"newsletter","v":2}'
            ) % (address_hash, contact_id, digest, event_id, b"x" * 27, b"x" * 27, seq)
            fields = (
                struct.pack("!q", seq),
                micros,
                canonical,
                secrets.token_hex(32).encode(),
                event_id,
                b"consent_change",
                micros,
                contact_id,
                b"newsletter",
                None,
                b"subscribed",
                b"applied",
                b"cli:bench",
                b"import",
                None,
                None,
                address_hash,
                digest,
            )
            out.write(struct.pack("!h", len(fields)) + b"".join(map(_binary_field, fields)))
            document = (
                b'{"context":{"actor_kind":"admin"},"evidence":{"file":"import.csv",'
                b'"format":"csv","import":"bench","line":%d,"sha256":"%s"}}'
            ) % (seq + 1, sha.encode())
            docs.write(
                struct.pack("!h", 2)
                + _binary_field(struct.pack("!q", seq))
                + _binary_field(document)
            )
        out.write(b"\xff\xff")
        docs.write(b"\xff\xff")


def _copy_file(cur: psycopg.Cursor[Any], statement: str, path: Path) -> None:
    with path.open("rb") as source, cur.copy(statement) as copy:
        while chunk := source.read(1 << 20):
            copy.write(chunk)


def backend_cpu(pids: list[int]) -> float | None:
    """CPU seconds the server's backend processes used so far (user + system, from
    /proc): a figure the other engineers' load changes far less than wall time. None when
    the server runs elsewhere."""
    total = 0.0
    try:
        for pid in pids:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return None
    return total


def database_backends(dsn: str) -> list[int]:
    """The backends connected to the benchmark's database, but the one asking."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()"
        ).fetchall()
    return [pid for (pid,) in rows]


def floor(dsn: str, path: Path, events: Path, documents: Path) -> tuple[float, float | None]:
    """The same writes done raw, in one transaction (rolled back afterwards): `COPY` of the
    file into a staging table, one merge each into `contact` and `subscription`, and a binary
    `COPY` of one event per row into `audit_event` (with every index it has) and of its
    evidence document into `audit_evidence`. Returns the wall time and the server's CPU."""
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        pid = conn.info.backend_pid
        cpu = backend_cpu([pid])
        started = time.perf_counter()
        cur.execute("CREATE TEMP TABLE f (email text, status text) ON COMMIT DROP")
        _copy_file(cur, "COPY f FROM STDIN (FORMAT csv, HEADER true)", path)
        cur.execute(
            "INSERT INTO contact (public_id, address, address_display, created_at) "
            "SELECT md5(email), lower(email), email, now() FROM f "
            "ON CONFLICT (address) DO NOTHING"
        )
        cur.execute(
            "INSERT INTO subscription (contact_id, topic_id, status, occurred_at, since, source, "
            "by_recipient, event_id) "
            "SELECT DISTINCT ON (c.id) c.id, 1, f.status, now(), now(), 'import', false, "
            "md5(f.email) "
            "FROM f JOIN contact c ON c.address = lower(f.email) "
            "ON CONFLICT (contact_id, topic_id) DO UPDATE SET status = excluded.status"
        )
        _copy_file(cur, f"COPY audit_event ({_EVENT_COLUMNS}) FROM STDIN (FORMAT BINARY)", events)
        _copy_file(cur, "COPY audit_evidence (seq, document) FROM STDIN (FORMAT BINARY)", documents)
        elapsed = time.perf_counter() - started
        after = backend_cpu([pid])
        conn.rollback()
    return elapsed, None if cpu is None or after is None else after - cpu


def settle(dsn: str) -> None:
    """Before the floor and again before the import, outside both clocks: each meets the
    tables it writes without dead rows and starts without the writes before it pending."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM contact, subscription, audit_event, audit_evidence")
        conn.execute("CHECKPOINT")


def explain_statements(dsn: str, name: str) -> None:
    """The connections opened from now on log every statement (its duration) and its plan,
    with the rows and buffers each node saw."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for setting, value in (
            ("session_preload_libraries", "auto_explain"),
            ("log_min_duration_statement", "0"),
            ("auto_explain.log_min_duration", "0"),
            ("auto_explain.log_analyze", "on"),
            ("auto_explain.log_buffers", "on"),
            ("auto_explain.log_timing", "off"),
        ):
            conn.execute(f"ALTER DATABASE \"{name}\" SET {setting} = '{value}'")


def seed_template_name(contacts: int) -> str:
    """The seeded template's name: the contacts it holds and the migration it was made at
    (a template of another schema is never reused)."""
    head = ScriptDirectory.from_config(alembic_config(Settings(_env_file=None))).get_current_head()
    return f"prefcenter_bench_imports_seed_{contacts}_{(head or 'none').split('_')[0]}"


def database_exists(admin_dsn: str, name: str) -> bool:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
    return found is not None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=5_000_000)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=10_000)
    parser.add_argument("--keep-db", action="store_true")
    parser.add_argument("--reuse-seed", action="store_true")
    parser.add_argument("--drop-seed", action="store_true")
    parser.add_argument(
        "--explain",
        action="store_true",
        help="log each of the import's statements with its duration and plan (auto_explain, "
        "ANALYZE and BUFFERS, no timing) in the server's log",
    )
    args = parser.parse_args()

    admin_url = make_url(ADMIN_URL)
    name = f"prefcenter_bench_imports_{uuid.uuid4().hex[:8]}"
    admin_dsn = admin_url.set(drivername="postgresql").render_as_string(hide_password=False)
    template = seed_template_name(args.contacts)
    if args.drop_seed:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{template}"')
        return
    seeded = args.reuse_seed and database_exists(admin_dsn, template)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        if seeded:
            started = time.perf_counter()
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}" STRATEGY file_copy')
            print(f"copied the seeded {template} in {time.perf_counter() - started:.1f} s")
        else:
            conn.execute(f'CREATE DATABASE "{name}"')
    url = admin_url.set(database=name)
    dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
    settings = Settings(
        _env_file=None,
        database_url=url.render_as_string(hide_password=False),
        signing_keys="b1:bench-signing-secret-0123456789abcdefghij",
        audit_key="bench-audit-key-0123456789abcdefghijklmnop",
    )
    try:
        if not seeded:
            migrations.upgrade(settings)
            started = time.perf_counter()
            seed(dsn, args.contacts)
            print(f"seeded {args.contacts:,} contacts in {time.perf_counter() - started:.1f} s")
            if args.reuse_seed:
                with psycopg.connect(admin_dsn, autocommit=True) as conn:
                    conn.execute(
                        f'CREATE DATABASE "{template}" TEMPLATE "{name}" STRATEGY file_copy'
                    )
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "import.csv"
            write_file(path, args.rows, args.contacts)
            size_mb = path.stat().st_size / 1e6
            print(f"file: {args.rows:,} rows, {size_mb:.1f} MB")
            events, documents = Path(tmp) / "events.bin", Path(tmp) / "documents.bin"
            write_event_payloads(events, documents, args.rows)
            settle(dsn)
            floor_s, floor_cpu = floor(dsn, path, events, documents)
            # The floor's rolled-back rows (dead contacts, subscriptions, events and their
            # index entries) would otherwise be the import's to step over.
            settle(dsn)
            print(
                f"floor (COPY + 2 merges + COPY of {args.rows:,} events and documents, "
                f"rolled back): {floor_s:.2f} s"
            )
            if args.explain:
                explain_statements(dsn, name)
            idle = set(database_backends(dsn))
            database = Database(settings)
            try:
                with path.open("rb") as binary:
                    started = time.perf_counter()
                    client_started = time.process_time()
                    sha256 = file_sha256(binary)
                    report = run_import(
                        database,
                        binary,
                        ImportRequest(
                            topic="newsletter",
                            name="bench",
                            actor="cli:bench",
                            file_name=path.name,
                            batch_size=args.batch_size,
                        ),
                        sha256=sha256,
                    )
                    import_s = time.perf_counter() - started
                    client_cpu = time.process_time() - client_started
                # The import's own connections (opened by it, still pooled): their whole CPU.
                import_cpu = backend_cpu([p for p in database_backends(dsn) if p not in idle])
            finally:
                database.dispose()
        applied = report.applied.subscribed + report.applied.unsubscribed
        print(
            f"import: {import_s:.2f} s = {args.rows / import_s:,.0f} rows/s; applied {applied:,}, "
            f"unchanged {report.unchanged:,}, refused {report.refused_reversal.count:,}, "
            f"complete {report.complete}, {len(report.batches)} batches"
        )
        ratio = import_s / floor_s
        print(
            f"ratio to floor: {ratio:.2f}× (goal ≤ {GOAL_RATIO}×: "
            f"{'met' if ratio <= GOAL_RATIO else 'NOT met'})"
        )
        if import_cpu is not None and floor_cpu:
            print(
                f"server CPU: floor {floor_cpu:.2f} s, import {import_cpu:.2f} s "
                f"({import_cpu / floor_cpu:.2f}×); the import's own process: {client_cpu:.2f} s"
            )
        scaled = import_s * 1_000_000 / args.rows
        print(
            f"goal: 1M rows into 5M contacts ≤ {GOAL_S:.0f} s; this run scaled to 1M rows: "
            f"{scaled:.1f} s ({'met' if scaled <= GOAL_S else 'NOT met'})"
        )
    finally:
        if not args.keep_db:
            with psycopg.connect(admin_dsn, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
