"""Benchmark: `POST /v1/consents/batch` on PostgreSQL (issue 14, goal ≥ 20,000 changes/s),
against a floor measured in the same run: the same rows and audit events written raw.

    .venv/bin/python bench/consents_batch.py                       # 30 batches of 1,000
    .venv/bin/python bench/consents_batch.py --batches 10 --contacts 20000

What it does:
  1. a throwaway database `prefcenter_bench_batch_…` (dropped at the end; `--keep-db` keeps
     it), migrated; CONTACTS contacts seeded by COPY, a marketing topic, an API key;
  2. BATCHES batches of 1,000 changes through the app in-process (FastAPI's ASGI app, frozen
     for the garbage collector as a worker process freezes it, driven by its TestClient: JSON
     in and out, the key check, the Idempotency-Key, one transaction per
     batch with its 1,000 audit events): half known contacts, half new; topic and
     contact-wide changes; a tenth opt-outs. Prints changes/s and the p50/max batch time;
  3. the floor: per batch, in one transaction on psycopg, the same number of contacts upserted
     (executemany), subscriptions upserted (executemany) and audit events written by binary
     COPY with their seq, hash and canonical bytes stubbed; rolled back. Prints changes/s.
Then the ratio. No HTTP server and no network: it measures the service and the database.
"""

from __future__ import annotations

import argparse
import gc
import io
import os
import secrets
import statistics
import time
import uuid
from datetime import UTC, datetime

import psycopg
from fastapi.testclient import TestClient
from sqlalchemy import make_url

from prefcenter import migrations
from prefcenter.apikeys.schemas import Scope
from prefcenter.apikeys.service import create_api_key
from prefcenter.app import create_app
from prefcenter.db import Database
from prefcenter.settings import Settings

ADMIN_URL = os.environ.get(
    "PREFCENTER_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
GOAL = 20_000
BATCH = 1000


def seed(dsn: str, contacts: int) -> None:
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO topic (key, name, kind, consent, double_opt_in, created_at, updated_at) "
            "VALUES ('newsletter', 'Newsletter', 'marketing', 'opt_in', false, now(), now())"
        )
        buffer = io.StringIO()
        for i in range(contacts):
            address = f"c{i}@example.com"
            buffer.write(f"{secrets.token_urlsafe(12)}\t{address}\t{address}\t2024-01-01\n")
        with cur.copy(
            "COPY contact (public_id, address, address_display, created_at) FROM STDIN"
        ) as copy:
            copy.write(buffer.getvalue())
        cur.execute("ANALYZE contact")


def batch_body(number: int, contacts: int) -> dict[str, object]:
    changes: list[dict[str, object]] = []
    for i in range(BATCH):
        known = i % 2 == 0
        address = (
            f"c{(number * BATCH + i) % contacts}@example.com" if known else f"n{number}-{i}@ex.com"
        )
        change: dict[str, object] = {
            "email": address,
            "status": "unsubscribed" if i % 10 == 0 else "subscribed",
            "source": "crm-sync",
        }
        if i % 5 != 0:
            change["topic"] = "newsletter"
        changes.append(change)
    return {"changes": changes}


def measure_service(settings: Settings, batches: int, contacts: int) -> list[float]:
    database = Database(settings)
    try:
        with database.transaction(write=True) as session:
            issued = create_api_key(session, name="bench", scopes=[Scope.CONSENT_WRITE])
    finally:
        database.dispose()
    headers = {"Authorization": f"Bearer {issued.secret}"}
    bodies = [batch_body(n, contacts) for n in range(batches + 1)]
    times: list[float] = []
    app = create_app(settings)
    # As a worker process starts (app.app_from_environment): what it built is frozen, so that
    # the collector's full collections do not walk it during requests.
    gc.collect()
    gc.freeze()
    with TestClient(app) as client:
        for number, body in enumerate(bodies):
            started = time.perf_counter()
            response = client.post(
                "/v1/consents/batch",
                headers={**headers, "Idempotency-Key": f"bench-{number}"},
                json=body,
            )
            elapsed = time.perf_counter() - started
            assert response.status_code == 200, response.text
            results = response.json()["results"]
            assert not [r for r in results if "problem" in r], "a change was refused"
            if number:  # the first one warms up
                times.append(elapsed)
    return times


def measure_floor(dsn: str, batches: int) -> list[float]:
    """The same writes raw: contacts, subscriptions, events; each batch rolled back."""
    now = datetime.now(UTC)
    times: list[float] = []
    with psycopg.connect(dsn) as conn:
        topic_id = conn.execute("SELECT id FROM topic WHERE key = 'newsletter'").fetchone()
        assert topic_id is not None
        for number in range(batches):
            addresses = [f"f{number}-{i}@ex.com" for i in range(BATCH)]
            started = time.perf_counter()
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO contact (public_id, address, address_display, created_at) "
                    "VALUES (%s, %s, %s, %s) ON CONFLICT (address) DO NOTHING",
                    [(uuid.uuid4().hex, a, a, now) for a in addresses],
                )
                cur.execute(
                    "SELECT id FROM contact WHERE address = ANY(%s) ORDER BY id FOR UPDATE",
                    (addresses,),
                )
                ids = [row[0] for row in cur.fetchall()]
                cur.executemany(
                    "INSERT INTO subscription (contact_id, topic_id, status, occurred_at, since, "
                    "source, by_recipient, event_id) VALUES (%s, %s, 'subscribed', %s, %s, "
                    "'crm-sync', false, %s) ON CONFLICT (contact_id, topic_id) DO UPDATE SET "
                    "status = excluded.status, occurred_at = excluded.occurred_at",
                    [(i, topic_id[0], now, now, uuid.uuid4().hex) for i in ids],
                )
                seq = cur.execute("SELECT seq FROM audit_head WHERE id = 1 FOR UPDATE").fetchone()
                assert seq is not None
                with cur.copy(
                    "COPY audit_event (seq, recorded_at, canonical, hash, id, kind, occurred_at, "
                    "contact_id, topic, to_status, outcome, actor, source) "
                    "FROM STDIN (FORMAT BINARY)"
                ) as copy:
                    copy.set_types(
                        ["int8", "timestamptz", "bytea", "text", "text", "text", "timestamptz"]
                        + ["text"] * 6
                    )
                    for offset in range(BATCH):
                        copy.write_row(
                            (
                                seq[0] + 1 + offset,
                                now,
                                secrets.token_bytes(300),
                                secrets.token_hex(32),
                                uuid.uuid4().hex,
                                "consent_change",
                                now,
                                uuid.uuid4().hex,
                                "newsletter",
                                "subscribed",
                                "applied",
                                "api:bench",
                                "crm-sync",
                            )
                        )
                cur.execute("UPDATE audit_head SET seq = seq + %s WHERE id = 1", (BATCH,))
            times.append(time.perf_counter() - started)
            conn.rollback()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--contacts", type=int, default=100_000)
    parser.add_argument("--keep-db", action="store_true")
    args = parser.parse_args()

    admin_url = make_url(ADMIN_URL)
    name = f"prefcenter_bench_batch_{uuid.uuid4().hex[:8]}"
    admin_dsn = admin_url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = admin_url.set(database=name)
    dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
    settings = Settings(
        _env_file=None,
        database_url=url.render_as_string(hide_password=False),
        signing_keys="bench1:" + "b" * 32,
        audit_key="bench-audit-key-" + "a" * 32,
    )
    try:
        migrations.upgrade(settings)
        seed(dsn, args.contacts)
        print(f"seeded {args.contacts:,} contacts; {args.batches} batches of {BATCH:,} changes")
        service = measure_service(settings, args.batches, args.contacts)
        floor = measure_floor(dsn, args.batches)
        service_rate = BATCH * len(service) / sum(service)
        floor_rate = BATCH * len(floor) / sum(floor)
        print(
            f"POST /v1/consents/batch: {service_rate:,.0f} changes/s "
            f"(batch p50 {statistics.median(service) * 1000:.1f} ms, "
            f"max {max(service) * 1000:.1f} ms)"
        )
        print(
            f"floor (raw upserts + COPY of the events): {floor_rate:,.0f} changes/s "
            f"(batch p50 {statistics.median(floor) * 1000:.1f} ms)"
        )
        print(
            f"ratio {service_rate / floor_rate:.2f}; goal ≥ {GOAL:,}/s: "
            f"{'met' if service_rate >= GOAL else 'NOT met'}"
        )
    finally:
        if not args.keep_db:
            with psycopg.connect(admin_dsn, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
