"""Audit chain figures (issue 5, "Performance"): verifying 1M events on PostgreSQL and SQLite
against a floor measured in the same run, and what the hash costs a single-event append.

    .venv/bin/python bench/audit_verify.py                      # both engines, 1M events
    .venv/bin/python bench/audit_verify.py --engines sqlite --events 200000
    .venv/bin/python bench/audit_verify.py --append 2000        # append cost only (N txns)
    .venv/bin/python bench/audit_verify.py --engines postgresql --append 0 \
        --keep-database bench_audit_1m --repeat 3                # seed once, verify 3 times

`--keep-database NAME` keeps the seeded database (PostgreSQL: a database of that name; SQLite:
a file of that name in the temporary directory's parent) and reuses it on the next run when its
head is at `--events`: iterating on the verifier need not reseed a million events each time.
Drop it by hand (`DROP DATABASE NAME`, or delete the file) when done.

Verify: a fresh, migrated database is seeded with N chained events (each with a contact,
an address hash, an evidence document and a campaign id, like a one-click from a campaign's
link), then `verify_chain` runs
over it. The floor is the least any verifier must do: PostgreSQL, `COPY` the stored canonical
bytes out (psycopg, binary) and SHA-256-chain them in Python; SQLite, read them with sqlite3
and chain them. Goals: ≤ 5 s per 1M events on each engine.

Append: N transactions of one event each through `Database.transaction` + `append_event`,
once with the chain (the service as it is) and once with the plain gap-free sequence alone
(the seq, the row and its evidence in the fewest statements — on PostgreSQL one, like the
chained append — but no canonical bytes, no hash, no head hash); goal: ≤ 10% extra.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import create_engine, insert, make_url, text
from sqlalchemy import event as sa_event
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session as OrmSession

from prefcenter import migrations
from prefcenter.audit import service
from prefcenter.audit.canonical import (
    CANONICAL_KEYS,
    GENESIS_HASH,
    chain_hash,
    encode_document,
    encode_event,
    format_time,
)
from prefcenter.audit.keys import AuditKeys
from prefcenter.audit.schemas import EventKind, NewEvent
from prefcenter.audit.verify import verify_chain
from prefcenter.db import Database, utcnow
from prefcenter.settings import Settings
from prefcenter.sqlite_times import sqlite_time

PG_ADMIN_URL = os.environ.get(
    "PREFCENTER_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
SIGNING_KEYS = "bench1:" + "b" * 32
AUDIT_KEY = "a" * 48
CAMPAIGN: str | None = "spring-2026"  # None: events without free text
SEED_BATCH = 50_000


def bench_settings(url: str) -> Settings:
    return Settings(
        _env_file=None, database_url=url, signing_keys=SIGNING_KEYS, audit_key=AUDIT_KEY
    )


@contextmanager
def kept_database(engine: str, name: str, count: int) -> Iterator[Settings]:
    """The database `name`, kept after the run; seeded with `count` events unless its head
    is at `count` already (then reused as it is)."""
    if engine == "sqlite":
        path = Path(tempfile.gettempdir()) / f"{name}.db"
        settings = bench_settings(f"sqlite:///{path}")
        exists = path.exists()
    else:
        admin_url = make_url(PG_ADMIN_URL)
        settings = bench_settings(
            admin_url.set(database=name).render_as_string(hide_password=False)
        )
        admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            exists = (
                connection.execute(
                    text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}
                ).first()
                is not None
            )
            if not exists:
                connection.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
    if exists and _head_seq(settings) == count:
        print(f"[{engine}] reusing {name} ({count:,} events)")
        yield settings
        return
    if exists:
        raise SystemExit(f"{name} exists but its head is not at {count:,} events: drop it first")
    migrations.upgrade(settings)
    t0 = time.perf_counter()
    seed(settings, count)
    print(f"[{engine}] seeded {count:,} events in {time.perf_counter() - t0:.1f} s into {name}")
    yield settings


def _head_seq(settings: Settings) -> int | None:
    database = Database(settings)
    try:
        with database.transaction(write=False) as session:
            seq = session.execute(text("SELECT seq FROM audit_head WHERE id = 1")).scalar()
    except DBAPIError:  # not migrated: not ours to reuse
        return None
    finally:
        database.dispose()
    return None if seq is None else int(seq)


@contextmanager
def fresh_database(engine: str, tmp: Path) -> Iterator[Settings]:
    if engine == "sqlite":
        tmp.mkdir(parents=True, exist_ok=True)
        settings = bench_settings(f"sqlite:///{tmp / 'audit.db'}")
        migrations.upgrade(settings)
        yield settings
        return
    admin_url = make_url(PG_ADMIN_URL)
    name = f"prefcenter_bench_audit_{uuid.uuid4().hex[:8]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        settings = bench_settings(
            admin_url.set(database=name).render_as_string(hide_password=False)
        )
        migrations.upgrade(settings)
        yield settings
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def seed(settings: Settings, count: int) -> None:
    """Write `count` chained events straight into the tables (set-based, not through the
    service: this is the data, not what is measured)."""
    keys = AuditKeys.from_settings(settings)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    prev = GENESIS_HASH
    database = Database(settings)
    try:
        for first in range(1, count + 1, SEED_BATCH):
            events: list[dict[str, Any]] = []
            documents: list[dict[str, Any]] = []
            free_texts: list[dict[str, Any]] = []
            for seq in range(first, min(first + SEED_BATCH, count + 1)):
                contact = f"c{seq % 50_000:015d}"
                when = start + timedelta(milliseconds=seq)
                document = encode_document(
                    {"client_ip": "192.0.2.7", "user_agent": "bench"}, {"form": "signup-v3"}
                )
                assert document is not None
                row: dict[str, Any] = {
                    "id": str(uuid.UUID(int=seq)),
                    "kind": EventKind.CONSENT_CHANGE.value,
                    "contact_id": contact,
                    "topic": "newsletter",
                    "from_status": None,
                    "to_status": "subscribed" if seq % 2 else "unsubscribed",
                    "outcome": "applied",
                    "actor": "api_key:1:bench",
                    "source": "api",
                    "campaign_id_digest": keys.free_text_digest("campaign_id", CAMPAIGN),
                    "reason_digest": None,
                    "address_hash": keys.address_hash(f"{contact}@example.com"),
                    "evidence_digest": keys.evidence_digest(document),
                }
                values = {
                    **row,
                    "seq": seq,
                    "recorded_at": format_time(when),
                    "occurred_at": format_time(when),
                }
                canonical = encode_event(values)
                prev = chain_hash(prev, canonical)
                events.append(
                    {
                        **row,
                        "seq": seq,
                        "recorded_at": when,
                        "occurred_at": when,
                        "canonical": canonical,
                        "hash": prev.hex(),
                    }
                )
                documents.append({"seq": seq, "document": document})
                if CAMPAIGN is not None:
                    free_texts.append({"seq": seq, "campaign_id": CAMPAIGN, "reason": None})
            _bulk_insert(database, events, documents, free_texts)
        with database.transaction(write=True) as session:
            session.execute(
                text("UPDATE audit_head SET seq = :seq, hash = :hash WHERE id = 1"),
                {"seq": count, "hash": prev.hex()},
            )
            if not settings.is_sqlite:
                session.execute(text("ANALYZE audit_event"))
                session.execute(text("ANALYZE audit_evidence"))
                session.execute(text("ANALYZE audit_free_text"))
    finally:
        database.dispose()


# Every stored column of an event: the canonical keys, then what was hashed and the hash.
_EVENT_COLUMNS = (*CANONICAL_KEYS, "canonical", "hash")


def _bulk_insert(
    database: Database,
    events: list[dict[str, Any]],
    documents: list[dict[str, Any]],
    free_texts: list[dict[str, Any]],
) -> None:
    """PostgreSQL: COPY; SQLite: executemany."""
    with database.transaction(write=True) as session:
        if database.settings.is_sqlite:
            session.execute(insert(service._EVENTS), events)
            session.execute(insert(service._EVIDENCE), documents)
            if free_texts:
                session.execute(insert(service._FREE_TEXT), free_texts)
            return
        cursor = session.connection().connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        with cursor.copy(f"COPY audit_event ({', '.join(_EVENT_COLUMNS)}) FROM STDIN") as copy:
            for row in events:
                copy.write_row([row[c] for c in _EVENT_COLUMNS])
        with cursor.copy("COPY audit_evidence (seq, document) FROM STDIN") as copy:
            for doc in documents:
                copy.write_row((doc["seq"], doc["document"]))
        with cursor.copy("COPY audit_free_text (seq, campaign_id, reason) FROM STDIN") as copy:
            for row in free_texts:
                copy.write_row((row["seq"], row["campaign_id"], row["reason"]))


def floor(settings: Settings) -> float:
    """Seconds to read every stored canonical event and SHA-256-chain them, nothing else."""
    started = time.perf_counter()
    prev = GENESIS_HASH
    sha256 = hashlib.sha256
    if settings.is_sqlite:
        path = settings.sqlite_path()
        assert path is not None
        lite = sqlite3.connect(path)
        try:
            for (canonical,) in lite.execute("SELECT canonical FROM audit_event ORDER BY seq"):
                prev = sha256(prev + canonical).digest()
        finally:
            lite.close()
    else:
        url = make_url(settings.database_url).set(drivername="postgresql")
        with (
            psycopg.connect(url.render_as_string(hide_password=False)) as connection,
            connection.cursor() as cursor,
            cursor.copy(
                "COPY (SELECT canonical FROM audit_event ORDER BY seq) TO STDOUT (FORMAT BINARY)"
            ) as copy,
        ):
            copy.set_types(["bytea"])
            for (canonical,) in copy.rows():
                prev = sha256(prev + canonical).digest()
    return time.perf_counter() - started


def measure_verify(
    engine: str, count: int, tmp: Path, *, keep: str | None = None, repeat: int = 1
) -> None:
    if keep is not None:
        database_of = kept_database(engine, keep, count)
    else:
        database_of = fresh_database(engine, tmp)
    with database_of as settings:
        if keep is None:
            t0 = time.perf_counter()
            seed(settings, count)
            print(f"[{engine}] seeded {count:,} events in {time.perf_counter() - t0:.1f} s")
        for _ in range(repeat):
            _verify_once(engine, settings, count)


def _verify_once(engine: str, settings: Settings, count: int) -> None:
    database = Database(settings)
    keys = AuditKeys.from_settings(settings)
    try:
        floor_s = floor(settings)
        time.sleep(0.5)  # the floor's connection closed: let it be reaped before counting
        ended0 = _ended_backends_cpu(settings)
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        result = verify_chain(database, keys)
        verify_s = time.perf_counter() - t0
        cpu_s = time.process_time() - cpu0
        server_s = _backends_cpu(database)
        if ended0 is not None:
            time.sleep(0.5)  # the verification's own connections closed: let them be reaped
            ended = _ended_backends_cpu(settings)
            if ended is not None:
                server_s += f" + {ended - ended0:.2f} s in backends and workers that ended"
    finally:
        database.dispose()
    assert result.ok, result
    assert result.checked == count, result
    print(
        f"[{engine}] verify {count:,} events: {verify_s:.2f} s "
        f"({count / verify_s:,.0f} events/s; goal ≤ 5 s per 1M; verifier CPU {cpu_s:.2f} s, "
        f"server CPU {server_s}); "
        f"floor {floor_s:.2f} s ({count / floor_s:,.0f} events/s); "
        f"ratio {verify_s / floor_s:.2f}x; load {os.getloadavg()[0]:.2f}"
    )


def _backends_cpu(database: Database) -> str:
    """CPU seconds of the PostgreSQL backends the verification's pool holds (each opened by
    it, so all theirs is its), read from /proc: the server on this machine only, and without
    parallel workers (run with PGOPTIONS='-c max_parallel_workers_per_gather=0' to have them
    all counted). SQLite: none."""
    if database.settings.is_sqlite:
        return "none"
    url = make_url(database.settings.database_url).set(drivername="postgresql")
    with psycopg.connect(url.render_as_string(hide_password=False)) as connection:
        pids = [
            pid
            for (pid,) in connection.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
            )
        ]
    seconds = 0.0
    try:
        for pid in pids:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            seconds += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return "n/a"
    return f"{seconds:.2f} s in {len(pids)} backends"


def _ended_backends_cpu(settings: Settings) -> float | None:
    """CPU seconds of every PostgreSQL process that has ended and been reaped so far (the
    postmaster's children's time, /proc): the verification's own connections, closed when it
    ends, and parallel workers, which `_backends_cpu` cannot see. Any other client's ended
    backends count too: compare runs on a quiet server. SQLite: None."""
    if settings.is_sqlite:
        return None
    url = make_url(settings.database_url).set(drivername="postgresql")
    with psycopg.connect(url.render_as_string(hide_password=False)) as connection:
        row = connection.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    try:
        parent = Path(f"/proc/{row[0]}/stat").read_text().rsplit(")", 1)[1].split()[1]
        fields = Path(f"/proc/{parent}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


# --- the append path, with and without the hash ----------------------------------------------


_PLAIN_ONE_PG = """
WITH moved AS (
    UPDATE audit_head SET seq = seq + 1 WHERE id = 1 RETURNING seq, clock_timestamp() AS at
), event AS (
    INSERT INTO audit_event (seq, id, kind, recorded_at, occurred_at, contact_id, topic,
        to_status, outcome, actor, source, canonical, hash)
    SELECT seq, %(id)s, %(kind)s, at, %(occurred_at)s, %(contact_id)s, %(topic)s,
        %(to_status)s, %(outcome)s, %(actor)s, %(source)s, '', '' FROM moved
)
INSERT INTO audit_evidence (seq, document) SELECT seq, %(document)s FROM moved
"""


def _write_plain(session: OrmSession) -> None:
    """The append without the chain: the gap-free seq, the row and its evidence document
    (before the chain it was a column of the row), in the fewest statements (PostgreSQL: one),
    no canonical bytes, no hash, no head hash."""
    pending: list[NewEvent] = session.info.pop(service._PENDING, [])
    if not pending:
        return
    documents = [encode_document(new.context, new.evidence) for new in pending]
    session.flush()
    postgres = session.get_bind().dialect.name == "postgresql"
    if postgres and len(pending) == 1:
        new = pending[0]
        session.connection().exec_driver_sql(
            _PLAIN_ONE_PG,
            {
                "id": new.id,
                "kind": new.kind.value,
                "occurred_at": new.occurred_at,
                "contact_id": new.contact_id,
                "topic": new.topic,
                "to_status": new.to_status,
                "outcome": new.outcome,
                "actor": new.actor,
                "source": new.source,
                "document": documents[0],
            },
        )
        return
    if not postgres:
        _write_plain_sqlite(session, pending, documents)
        return
    head = session.execute(service._take_seqs(len(pending), postgres=postgres)).one()
    recorded_at = head[2]
    seq = head[0] - len(pending)
    rows = []
    evidence = []
    for new, document in zip(pending, documents, strict=True):
        seq += 1
        rows.append(
            {
                "seq": seq,
                "id": new.id,
                "kind": new.kind.value,
                "recorded_at": recorded_at,
                "occurred_at": new.occurred_at,
                "contact_id": new.contact_id,
                "topic": new.topic,
                "outcome": new.outcome,
                "actor": new.actor,
                "source": new.source,
                "canonical": b"",
                "hash": "",
            }
        )
        if document is not None:
            evidence.append({"seq": seq, "document": document})
    session.execute(insert(service._EVENTS), rows)
    if evidence:
        session.execute(insert(service._EVIDENCE), evidence)


def _write_plain_sqlite(
    session: OrmSession, pending: list[NewEvent], documents: list[bytes | None]
) -> None:
    """SQLite, through the driver as the chained append does: seq, rows, evidence."""
    dbapi = session.connection().connection.dbapi_connection
    assert dbapi is not None
    cursor = dbapi.cursor()
    try:
        (seq,) = cursor.execute(
            "UPDATE audit_head SET seq = seq + ? WHERE id = 1 RETURNING seq", (len(pending),)
        ).fetchone()
        seq -= len(pending)
        now = sqlite_time(format_time(utcnow()))
        rows = []
        evidence = []
        for new, document in zip(pending, documents, strict=True):
            seq += 1
            rows.append(
                (
                    seq,
                    new.id,
                    new.kind.value,
                    now,
                    sqlite_time(format_time(new.occurred_at)),
                    new.contact_id,
                    new.topic,
                    new.outcome,
                    new.actor,
                    new.source,
                    b"",
                    "",
                )
            )
            if document is not None:
                evidence.append((seq, document))
        cursor.executemany(
            "INSERT INTO audit_event (seq, id, kind, recorded_at, occurred_at, contact_id, "
            "topic, outcome, actor, source, canonical, hash) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        if evidence:
            cursor.executemany("INSERT INTO audit_evidence (seq, document) VALUES (?, ?)", evidence)
    finally:
        cursor.close()


def _append_run(database: Database, count: int) -> float:
    started = time.perf_counter()
    for i in range(count):
        with database.transaction(write=True) as session:
            service.append_event(
                session,
                NewEvent(
                    kind=EventKind.CONSENT_CHANGE,
                    occurred_at=utcnow(),
                    actor="api_key:1:bench",
                    source="one_click",
                    outcome="applied",
                    contact_id=f"c{i:015d}",
                    topic="newsletter",
                    to_status="unsubscribed",
                    address=f"person{i}@example.com",
                    context={"client_ip": "192.0.2.7", "user_agent": "bench"},
                ),
            )
    return time.perf_counter() - started


def measure_append(engine: str, count: int, tmp: Path, rounds: int) -> None:
    """Alternate chained and plain runs (`rounds` each) on one database; best of each."""
    with fresh_database(engine, tmp) as settings:
        database = Database(settings)
        try:
            _append_run(database, min(count, 200))  # warm up pool, caches, JIT-free paths
            chained: list[float] = []
            plain: list[float] = []
            for _ in range(rounds):
                chained.append(_append_run(database, count))
                sa_event.remove(OrmSession, "before_commit", service._write_pending)
                sa_event.listen(OrmSession, "before_commit", _write_plain)
                try:
                    plain.append(_append_run(database, count))
                finally:
                    sa_event.remove(OrmSession, "before_commit", _write_plain)
                    sa_event.listen(OrmSession, "before_commit", service._write_pending)
        finally:
            database.dispose()
    best_chained, best_plain = min(chained), min(plain)
    print(
        f"[{engine}] append, {count:,} single-event transactions (best of {rounds}): "
        f"chained {best_chained / count * 1e6:,.0f} µs/txn, plain seq "
        f"{best_plain / count * 1e6:,.0f} µs/txn: the hash costs "
        f"{(best_chained / best_plain - 1) * 100:+.1f}% (goal ≤ 10%)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", nargs="+", default=["postgresql", "sqlite"])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--append", type=int, default=2000, help="transactions per append run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-verify", action="store_true")
    parser.add_argument(
        "--keep-database",
        metavar="NAME",
        help="seed this database once and keep it; reused when its head is at --events",
    )
    parser.add_argument("--repeat", type=int, default=1, help="verify runs (each with its floor)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="prefcenter-audit-bench-") as tmp:
        for engine in args.engines:
            if not args.no_verify:
                measure_verify(
                    engine,
                    args.events,
                    Path(tmp) / f"{engine}-verify",
                    keep=args.keep_database,
                    repeat=args.repeat,
                )
            if args.append:
                measure_append(engine, args.append, Path(tmp) / f"{engine}-append", args.rounds)


if __name__ == "__main__":
    main()
