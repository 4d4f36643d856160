"""CPU cost of one recipient request, in-process: what a one-click opt-out (`POST /u/{token}`)
and an unsubscribe page (`GET /u/{token}`) cost the server process in CPU time, measured
without HTTP sockets or a load generator, so the figure barely moves with what else the
machine is doing (unlike requests/s on a shared machine).

    .venv/bin/python bench/cpu_one_click.py                    # PostgreSQL, 2,000 of each
    .venv/bin/python bench/cpu_one_click.py --sqlite
    .venv/bin/python bench/cpu_one_click.py --profile 25       # plus cProfile's top 25

Requests are sent one after another straight into the ASGI app (as uvicorn would, minus the
socket); process CPU time (user + system) per request is printed, along with wall time per
request and the SQL statements per request. On 2 cores, 1 / (CPU ms per request) x 2 x 1000
is a rough ceiling of requests/s before PostgreSQL's own CPU is counted.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, make_url, text
from sqlalchemy.pool import NullPool

from prefcenter import migrations
from prefcenter.apikeys.schemas import Caller, Scope
from prefcenter.apikeys.service import create_api_key
from prefcenter.app import create_app
from prefcenter.audit.keys import AuditKeys
from prefcenter.db import Database, utcnow
from prefcenter.settings import Settings
from prefcenter.topics.schemas import ConsentModel, TopicIn, TopicKind
from prefcenter.topics.service import put_topic

PG_ADMIN_URL = os.environ.get(
    "PREFCENTER_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
SIGNING_KEYS = "bench1:" + "b" * 32
AUDIT_KEY = "bench-audit-key-" + "a" * 32
TOPIC = "newsletter"
FORM = b"List-Unsubscribe=One-Click"


def bench_settings(url: str) -> Settings:
    return Settings(
        _env_file=None, database_url=url, signing_keys=SIGNING_KEYS, audit_key=AUDIT_KEY
    )


@contextmanager
def throwaway_database(*, sqlite: bool) -> Iterator[str]:
    if sqlite:
        with tempfile.TemporaryDirectory() as work_dir:
            yield f"sqlite:///{Path(work_dir) / 'bench.db'}"
        return
    admin_url = make_url(PG_ADMIN_URL)
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    name = f"prefcenter_bench_{uuid.uuid4().hex[:10]}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


class AsgiCaller:
    """Sends one HTTP request into an ASGI app and returns (status, body)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> tuple[int, bytes]:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(b"host", b"127.0.0.1"), *headers],
            "client": ("127.0.0.1", 40000),
            "server": ("127.0.0.1", 8000),
        }
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent:
                await asyncio.sleep(3600)
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        status = 0
        chunks: list[bytes] = []

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, send)
        return status, b"".join(chunks)


def prepare(settings: Settings, count: int) -> list[str]:
    """Migrate; a topic; `count` contacts subscribed to it, with their unsubscribe tokens."""
    from prefcenter.links.schemas import LinkRequest, LinkSet  # noqa: PLC0415
    from prefcenter.links.service import issue_links  # noqa: PLC0415

    migrations.upgrade(settings)
    database = Database(settings)
    try:
        with database.transaction(write=True) as session:
            issued = create_api_key(session, name="bench", scopes=[Scope.LINKS])
            caller = Caller(key_id=issued.info.id, name="bench", scopes=frozenset([Scope.LINKS]))
            put_topic(
                session,
                TOPIC,
                TopicIn(name="Newsletter", kind=TopicKind.MARKETING, consent=ConsentModel.OPT_IN),
                caller=caller,
                now=utcnow(),
            )
            links = []
            for start in range(0, count, 10_000):
                requests = [
                    LinkRequest.model_validate(
                        {"email": f"cpu.{i}@bench.example.com", "topic": TOPIC, "campaign_id": "b1"}
                    )
                    for i in range(start, min(count, start + 10_000))
                ]
                links += issue_links(
                    session,
                    requests,
                    settings=settings,
                    ring=settings.signing_key_ring(),
                    keys=AuditKeys.from_settings(settings),
                    now=utcnow(),
                )
        with database.engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO subscription (contact_id, topic_id, status, occurred_at, since,"
                    " source, by_recipient, event_id) SELECT c.id, t.id, 'subscribed',"
                    " :at, :at, 'bench_seed', false, 'seed' FROM contact c, topic t"
                ),
                {"at": "2020-01-01 00:00:00" + ("" if settings.is_sqlite else "+00")},
            )
    finally:
        database.dispose()
    return [link.unsubscribe_url.rsplit("/u/", 1)[1] for link in links if isinstance(link, LinkSet)]


class _CountingCursor:
    """The driver's cursor, counting its statements (the direct path bypasses SQLAlchemy)."""

    def __init__(self, cursor: Any, counter: list[int]) -> None:
        self._cursor = cursor
        self._counter = counter

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        self._counter[0] += 1
        return self._cursor.execute(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)


def count_statements(app: Any) -> list[int]:
    """Every SQL statement the app sends: through SQLAlchemy, and on the driver's cursor of
    Database.run_on_connection (the unsubscribe lane)."""
    counter = [0]
    database = app.state.database

    @event.listens_for(database.engine, "before_cursor_execute")
    def _count(*_: Any) -> None:
        counter[0] += 1

    direct = database.on_connection

    def counted(work: Any) -> Any:
        return direct(lambda cursor: work(_CountingCursor(cursor, counter)))

    database.on_connection = counted
    batches = getattr(database, "sqlite_batches", None)
    if batches is not None:
        # SQLite's batched writes (sqlite_batches: `POST /v1/consents`): each write's own
        # statements; the batch's BEGIN, savepoints and COMMIT are shared and not counted.
        batched = batches.run

        def counted_batch(work: Any) -> Any:
            return batched(lambda cursor, after: work(_CountingCursor(cursor, counter), after))

        batches.run = counted_batch
    return counter


async def measure(
    label: str,
    caller: AsgiCaller,
    requests: list[tuple[str, str, bytes, tuple[tuple[bytes, bytes], ...]]],
    statements: list[int],
    profile: cProfile.Profile | None,
) -> None:
    statements[0] = 0
    cpu0, wall0 = time.process_time(), time.perf_counter()
    if profile is not None:
        profile.enable()
    for method, path, body, headers in requests:
        status, _ = await caller(method, path, body, headers)
        if status != 200:
            sys.exit(f"{label}: {method} {path} answered {status}")
    if profile is not None:
        profile.disable()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    n = len(requests)
    print(
        f"{label:<28} {n:>6,} requests | CPU {1000 * cpu / n:6.3f} ms/request"
        f" | wall {1000 * wall / n:6.3f} ms/request | {statements[0] / n:4.1f} SQL statements"
        f"/request | CPU ceiling on 2 cores ~{2 * n / cpu:,.0f}/s"
    )


async def run(args: argparse.Namespace) -> None:
    with throwaway_database(sqlite=args.sqlite) as url:
        settings = bench_settings(url)
        tokens = prepare(settings, args.requests * 2 + args.warmup)
        app = create_app(settings)
        caller = AsgiCaller(app)
        statements = count_statements(app)
        form = ((b"content-type", b"application/x-www-form-urlencoded"),)
        warm, posts, gets = (
            tokens[: args.warmup],
            tokens[args.warmup : args.warmup + args.requests],
            tokens[args.warmup + args.requests :],
        )
        for token in warm:
            await caller("POST", f"/u/{token}", FORM, form)
            await caller("GET", f"/u/{token}")
        profile = cProfile.Profile() if args.profile else None
        engine = "SQLite" if args.sqlite else "PostgreSQL"
        print(f"prefcenter in-process CPU per request, {engine}, pid {os.getpid()}")
        await measure(
            "one-click POST /u/{token}",
            caller,
            [("POST", f"/u/{t}", FORM, form) for t in posts],
            statements,
            profile,
        )
        await measure(
            "scanner GET /u/{token}",
            caller,
            [("GET", f"/u/{t}", b"", ()) for t in gets],
            statements,
            None,
        )
        app.state.database.dispose()
        if profile is not None:
            stats = pstats.Stats(profile).strip_dirs().sort_stats("cumulative")
            stats.print_stats(args.profile)
            stats.sort_stats("tottime").print_stats(args.profile)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sqlite", action="store_true")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--profile", type=int, default=0, metavar="N", help="cProfile top N")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
