"""Notice run benchmark (issue 13): a material version's notification run for 1M contacts on
PostgreSQL, queued set-based as it is published, beside the floor of one plain
`INSERT … SELECT` of the same rows measured in the same run; then a sample of the run sent by
2 `prefcenter worker` processes to a local aiosmtpd, beside a bare aiosmtplib floor.

    .venv/bin/python bench/notices.py                       # 1,000,000 contacts, 20,000 sent
    .venv/bin/python bench/notices.py --contacts 100000 --send 5000   # a quick run

What it does:
  1. a throwaway PostgreSQL database (`prefcenter_bench_notice_…`, dropped at the end unless
     `--keep-db`), migrated; N contacts seeded by SQL (generate_series), 1 % of them bounced;
  2. floor: one `INSERT INTO outbox_message … SELECT … FROM contact` of the same N rows (a
     constant payload, no filter), timed with its commit; then the outbox is emptied;
  3. the run: `notices.service.publish_version` of a material version (its audit event, its
     `notice.published` webhook check and its mails, one INSERT … SELECT that builds each
     payload and leaves out the bounced), timed with its commit;
  4. the same for a run the team sends itself (`"delivery": "export"`: one row per recipient
     in `notice_delivery`), for comparison;
  5. sending: the outbox is cut to the run's first `--send` mails, and 2 workers send them to
     aiosmtpd processes that accept everything (each mail written from the notice templates,
     with its preference link, and recorded sent with its `mail_sent` audit event); the floor
     sends as many ready-made mails with bare aiosmtplib from 2 processes.
Goals: queued in ≤ 30 s; sent at ≥ 500 mails/s.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import text

from prefcenter import migrations
from prefcenter.db import Database
from prefcenter.notices import service
from prefcenter.notices.schemas import NoticeIn, NoticeKind, NoticeVersionIn, RunDelivery
from prefcenter.settings import Settings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mail_outbox import (
    AUDIT_KEY,
    HOST,
    SENDER,
    SIGNING_KEYS,
    bare_processes,
    sink,
    throwaway_postgres,
)
from outbox_workers import start_workers, stop_workers

QUEUE_GOAL_S = 30.0
SEND_GOAL = 500.0
TEXT = "We keep your address to send you what you asked for.\n"


def seed(database: Database, contacts: int) -> float:
    """N contacts and 1 % of them bounced, by SQL; seconds taken."""
    started = time.perf_counter()
    with database.transaction(write=True) as session:
        session.execute(
            text(
                "INSERT INTO contact (public_id, address, address_display, created_at) "
                "SELECT 'c' || n, 'p' || n || '@example.com', 'p' || n || '@example.com', now() "
                "FROM generate_series(1, :n) AS n"
            ),
            {"n": contacts},
        )
        session.execute(
            text(
                "INSERT INTO bounce (contact_id, bounced, occurred_at, since, source, event_id, "
                "soft_bounces) SELECT id, true, now(), now(), 'ses', 'bench', '' "
                "FROM contact WHERE id % 100 = 0"
            )
        )
    with database.transaction(write=True) as session:
        session.execute(text("ANALYZE contact"))
        session.execute(text("ANALYZE bounce"))
    return time.perf_counter() - started


def floor_insert(database: Database) -> tuple[float, int]:
    """One INSERT … SELECT of a row per contact into the outbox, committed: seconds, rows."""
    started = time.perf_counter()
    with database.transaction(write=True) as session:
        result = session.execute(
            text(
                "INSERT INTO outbox_message "
                "(kind, message_id, cause_event_id, payload, status, created_at, due_at, attempts) "
                "SELECT 'mail', '<floor.' || public_id || '@example.com>', 'floor', "
                "CAST('{}' AS JSON), 'queued', now(), now(), 0 FROM contact"
            )
        )
        rows = int(result.rowcount)  # type: ignore[attr-defined]
    return time.perf_counter() - started, rows


def empty_outbox(database: Database) -> None:
    with database.transaction(write=True) as session:
        session.execute(text("TRUNCATE outbox_message CASCADE"))


def version(label: str, delivery: RunDelivery) -> NoticeVersionIn:
    return NoticeVersionIn(
        version=label,
        language="en",
        text=TEXT,
        sha256=hashlib.sha256(TEXT.encode()).hexdigest(),
        effective_at=datetime.now(UTC) + timedelta(days=31),
        material=True,
        summary="We now name the company that sends our mail.",
        delivery=delivery,
    )


def publish(
    database: Database, settings: Settings, label: str, delivery: RunDelivery
) -> tuple[float, int]:
    """Publish a material version, committed: seconds, recipients queued."""
    actor = service.Actor(name="bench", channel="cli")
    started = time.perf_counter()
    with database.transaction(write=True) as session:
        published = service.publish_version(
            session,
            "privacy",
            version(label, delivery),
            actor=actor,
            settings=settings,
            now=datetime.now(UTC),
        )
    return time.perf_counter() - started, published.queued


def keep_first(database: Database, count: int) -> None:
    """Cut the outbox to its first `count` mails (copied aside, truncated, put back)."""
    with database.transaction(write=True) as session:
        session.execute(
            text(
                "CREATE TEMP TABLE keep ON COMMIT DROP AS "
                "SELECT * FROM outbox_message ORDER BY id LIMIT :n"
            ),
            {"n": count},
        )
        session.execute(text("TRUNCATE outbox_message CASCADE"))
        session.execute(text("INSERT INTO outbox_message SELECT * FROM keep"))


def sent_count(database: Database) -> int:
    with database.transaction(write=False) as session:
        found = session.execute(
            text("SELECT count(*) FROM outbox_message WHERE status = 'sent'")
        ).scalar_one()
    return int(found)


def send(args: argparse.Namespace, database: Database, url: str, mail_url: str) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFCENTER_")}
    env.update(
        PREFCENTER_DATABASE_URL=url,
        PREFCENTER_SIGNING_KEYS=SIGNING_KEYS,
        PREFCENTER_AUDIT_KEY=AUDIT_KEY,
        PREFCENTER_MAIL_URL=mail_url,
        PREFCENTER_MAIL_FROM=SENDER,
        PREFCENTER_OUTBOX_POLL_SECONDS="0.02",
        PREFCENTER_LOG_LEVEL="info",  # the workers say when they are up
    )
    with tempfile.TemporaryDirectory() as logs:
        workers = start_workers(env, args.workers, Path(logs))
        try:
            started = time.perf_counter()
            while (done := sent_count(database)) < args.send:
                if time.perf_counter() - started > 600:
                    raise SystemExit(f"only {done:,} of {args.send:,} sent within 10 minutes")
                time.sleep(0.05)
            return time.perf_counter() - started
        finally:
            stop_workers(workers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=1_000_000)
    parser.add_argument("--send", type=int, default=20_000, help="mails of the run to send")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--sinks", type=int, default=2, help="SMTP server processes")
    parser.add_argument("--keep-db", action="store_true")
    args = parser.parse_args()
    with (
        sink(args.sinks) as port,
        throwaway_postgres("prefcenter_bench_notice", keep=args.keep_db) as url,
    ):
        mail_url = f"smtp://{HOST}:{port}?starttls=off"
        settings = Settings(
            _env_file=None,
            database_url=url,
            signing_keys=SIGNING_KEYS,
            audit_key=AUDIT_KEY,
            mail_url=mail_url,
            mail_from=SENDER,
        )
        migrations.upgrade(settings)
        database = Database(settings)
        try:
            seeded = seed(database, args.contacts)
            print(f"seeded {args.contacts:,} contacts (1 % bounced) in {seeded:.1f} s")
            with database.transaction(write=True) as session:
                service.put_notice(
                    session,
                    "privacy",
                    NoticeIn(name="Privacy policy", kind=NoticeKind.PRIVACY_POLICY),
                    now=datetime.now(UTC),
                )
            floor_s, floor_rows = floor_insert(database)
            empty_outbox(database)
            run_s, queued = publish(database, settings, "v2", RunDelivery.SERVICE)
            team_s, team_rows = publish(database, settings, "v3", RunDelivery.EXPORT)
            sample = min(args.send, queued)
            args.send = sample
            keep_first(database, sample)
            floor_send_s = bare_processes(port, sample, args.workers)
            send_s = send(args, database, url, mail_url)
        finally:
            database.dispose()

    print(f"PostgreSQL, {args.contacts:,} contacts, 1 % bounced")
    print(f"floor, one INSERT … SELECT of {floor_rows:,} outbox rows: {floor_s:6.1f} s")
    print(
        f"run queued on publishing (service mails, {queued:,} mails): {run_s:6.1f} s "
        f"= {run_s / floor_s:.2f} × floor; goal ≤ {QUEUE_GOAL_S:.0f} s: "
        f"{'met' if run_s <= QUEUE_GOAL_S else 'NOT met'}"
    )
    print(
        f"run queued on publishing (delivery export, {team_rows:,} recipients): {team_s:6.1f} s "
        f"= {team_s / floor_s:.2f} × floor"
    )
    floor_rate = sample / floor_send_s
    rate = sample / send_s
    print(f"floor, bare aiosmtplib, {args.workers} processes: {floor_rate:8,.0f} mails/s")
    print(
        f"run sent by {args.workers} workers ({sample:,} notice mails, written, sent, recorded "
        f"+ audit event): {rate:8,.0f} mails/s = {rate / floor_rate:.2f} × floor; "
        f"goal ≥ {SEND_GOAL:.0f} mails/s: {'met' if rate >= SEND_GOAL else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
