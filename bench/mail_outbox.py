"""Outbox benchmark: N mails queued at once, delivered by W `prefcenter worker` processes to a
local SMTP server (aiosmtpd, in a process of its own, accepting everything), against a floor
measured in the same run: the same messages sent by a bare aiosmtplib loop on one connection
(and on W connections at once).

    .venv/bin/python bench/mail_outbox.py             # PostgreSQL, 5,000 mails, 2 workers
    .venv/bin/python bench/mail_outbox.py --engine sqlite --messages 2000

What a worker does per mail and the floor does not: claim it (`FOR UPDATE SKIP LOCKED`), read
what it needs, write it from the templates (text and HTML, Jinja and Babel), and record it
sent, its attempt and its `mail_sent` audit event. Creates its own database (PostgreSQL:
`prefcenter_bench_mail_…`, dropped at the end unless `--keep-db`). Goal: ≥ 500 mails/s.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import signal
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from email.message import Message
from pathlib import Path
from typing import Any

import aiosmtplib
import psycopg
from aiosmtpd.smtp import SMTP
from sqlalchemy import func, make_url, select

from prefcenter import migrations
from prefcenter.db import Database
from prefcenter.delivery.test_mail import queue_test_mail
from prefcenter.mail.config import mail_config
from prefcenter.mail.messages import MailTemplates, compose
from prefcenter.outbox.models import OutboxMessage
from prefcenter.settings import Settings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from outbox_workers import start_workers, stop_workers, timed_in_processes

ADMIN_URL = os.environ.get(
    "PREFCENTER_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
SIGNING_KEYS = "b1:bench-signing-secret-0123456789abcdef"
AUDIT_KEY = "bench-audit-key-0123456789abcdefghijklmnop"
SENDER = "Bench <bench@example.com>"
GOAL = 500.0
HOST = "127.0.0.1"


def run_sink(port: int, ready: Any) -> None:
    """An SMTP server that accepts every mail and keeps nothing; several of these processes
    share the port (SO_REUSEPORT), so that the server is not what is measured."""

    class Sink:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
            return "250 OK"

    loop = asyncio.new_event_loop()
    loop.run_until_complete(
        loop.create_server(lambda: SMTP(Sink(), loop=loop), HOST, port, reuse_port=True)
    )
    loop.add_signal_handler(signal.SIGTERM, loop.stop)
    ready.set()
    loop.run_forever()


@contextmanager
def sink(processes: int) -> Iterator[int]:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
    started = []
    for _ in range(processes):
        ready = multiprocessing.Event()
        process = multiprocessing.Process(target=run_sink, args=(port, ready), daemon=True)
        process.start()
        ready.wait(30)
        started.append(process)
    try:
        yield port
    finally:
        for process in started:
            process.terminate()
            process.join(10)


@contextmanager
def bench_database(engine: str, keep: bool) -> Iterator[str]:
    if engine == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            yield f"sqlite:///{Path(tmp) / 'bench.db'}"
        return
    with throwaway_postgres("prefcenter_bench_mail", keep=keep) as url:
        yield url


@contextmanager
def throwaway_postgres(prefix: str, *, keep: bool) -> Iterator[str]:
    """A new PostgreSQL database named `prefix_<hex>`, dropped afterwards unless `keep`."""
    admin_url = make_url(ADMIN_URL)
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin_dsn = admin_url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        if not keep:
            with psycopg.connect(admin_dsn, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        else:
            print(f"kept database {name}")


def the_messages(count: int) -> list[tuple[str, Message]]:
    """The mails the workers send, written the same way (the test mail), for the floor."""
    templates = MailTemplates()
    context = {"organization": None, "preferences_url": None, "base_url": "http://127.0.0.1"}
    now = datetime.now(UTC)
    messages = []
    for n in range(count):
        recipient = f"p{n}@example.com"
        written = templates.write("test", "en", context)
        message = compose(
            written,
            sender=SENDER,
            recipient=recipient,
            message_id=f"<floor{n}@example.com>",
            date=now,
            language="en",
        )
        messages.append((recipient, message))
    return messages


async def bare_loop(port: int, messages: list[tuple[str, Message]], connections: int) -> float:
    """The same messages over `connections` plain aiosmtplib connections, one after another on
    each: seconds taken."""

    async def one(share: list[tuple[str, Message]]) -> None:
        client = aiosmtplib.SMTP(hostname=HOST, port=port, start_tls=False)
        await client.connect()
        for recipient, message in share:
            await client.send_message(message, sender="bench@example.com", recipients=[recipient])
        await client.quit()

    shares = [messages[i::connections] for i in range(connections)]
    started = time.perf_counter()
    await asyncio.gather(*(one(share) for share in shares))
    return time.perf_counter() - started


def _bare_process(port: int, count: int, start: Any, done: Any) -> None:
    messages = the_messages(count)
    start.wait()
    asyncio.run(bare_loop(port, messages, 1))
    done.set()


def bare_processes(port: int, count: int, processes: int) -> float:
    """The bare loop in `processes` processes at once (as many as workers), each sending its
    share on one connection: seconds from the start signal until the last is done."""
    return timed_in_processes(_bare_process, (port, count // processes), processes)


def sent_count(database: Database) -> int:
    with database.transaction(write=False) as session:
        return int(
            session.execute(
                select(func.count())
                .select_from(OutboxMessage)
                .where(
                    OutboxMessage.status == "sent"  # type: ignore[arg-type]
                )
            ).scalar_one()
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--sinks", type=int, default=2, help="SMTP server processes")
    parser.add_argument("--keep-db", action="store_true")
    args = parser.parse_args()

    with (
        sink(args.sinks) as port,
        bench_database(args.engine, args.keep_db) as url,
        tempfile.TemporaryDirectory() as logs,
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
        config = mail_config(settings)
        assert config is not None
        messages = the_messages(args.messages)
        floor_one = asyncio.run(bare_loop(port, messages, 1))
        floor_many = asyncio.run(bare_loop(port, messages, args.workers))
        floor_processes = bare_processes(port, args.messages, args.workers)

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
        workers = start_workers(env, args.workers, Path(logs))
        database = Database(settings)
        try:
            with database.transaction(write=True) as session:
                now = datetime.now(UTC)
                for n in range(args.messages):
                    queue_test_mail(session, config, recipient=f"p{n}@example.com", now=now)
            started = time.perf_counter()
            while sent_count(database) < args.messages:
                if time.perf_counter() - started > 600:
                    raise SystemExit("not delivered within 10 minutes")
                time.sleep(0.02)
            outbox_s = time.perf_counter() - started
        finally:
            stop_workers(workers)
            database.dispose()

    rate = args.messages / outbox_s
    print(f"{args.engine}, {args.messages:,} mails, {args.workers} workers, local aiosmtpd")
    print(f"floor, bare aiosmtplib, 1 connection:  {args.messages / floor_one:8,.0f} mails/s")
    print(
        f"floor, bare aiosmtplib, {args.workers} connections: "
        f"{args.messages / floor_many:8,.0f} mails/s"
    )
    print(
        f"floor, bare aiosmtplib, {args.workers} processes: "
        f"{args.messages / floor_processes:8,.0f} mails/s"
    )
    print(
        f"outbox, {args.workers} workers (claim, write, send, record + audit event): "
        f"{rate:8,.0f} mails/s"
    )
    print(f"goal ≥ {GOAL:.0f} mails/s: {'met' if rate >= GOAL else 'NOT met'}")


if __name__ == "__main__":
    main()
