"""CPU cost of one `POST /v1/consents`, in-process: what an API client's consent change costs
the server process in CPU time, without HTTP sockets or a load generator, so the figure barely
moves with what else the machine is doing (unlike requests/s on a shared machine).

    .venv/bin/python bench/cpu_consents.py                  # PostgreSQL, 2,000 of each kind
    .venv/bin/python bench/cpu_consents.py --profile 30     # plus cProfile's top 30
    .venv/bin/python bench/cpu_consents.py --sqlite         # SQLite (the lane's batches)

Three kinds of change, each sent one after another straight into the ASGI app with a bearer
key (as uvicorn would, minus the socket):
  - new: a new address subscribes to the marketing topic (bench/api.py's consent load);
  - known, marketing: a contact that exists (subscribed to another topic) subscribes to the
    marketing topic, which reads its contact-wide opt-out;
  - known, opt-out: the same contacts unsubscribe from the marketing topic.
Printed per request: process CPU time (user + system), wall time, SQL statements. One
request at a time: on SQLite each is a batch of one (sqlite_batches), so what batching saves
under load (one COMMIT and one hand-off for the changes queued together) is not in these
figures; bench/api.py --sqlite measures it.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import sys
import time
from pathlib import Path
from typing import Any

from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu_one_click import (
    AsgiCaller,
    bench_settings,
    count_statements,
    measure,
    throwaway_database,
)

from prefcenter import migrations
from prefcenter.apikeys.schemas import Caller, Scope
from prefcenter.apikeys.service import create_api_key
from prefcenter.app import create_app
from prefcenter.db import Database, utcnow
from prefcenter.settings import Settings
from prefcenter.topics.schemas import ConsentModel, TopicIn, TopicKind
from prefcenter.topics.service import put_topic

Sent = tuple[str, str, bytes, tuple[tuple[bytes, bytes], ...]]
TOPICS = (("newsletter", TopicKind.MARKETING), ("orders", TopicKind.TRANSACTIONAL))


def prepare(settings: Settings, known: int) -> str:
    """Migrate; the topics; `known` contacts subscribed to `orders`; an API key's secret."""
    migrations.upgrade(settings)
    database = Database(settings)
    try:
        with database.transaction(write=True) as session:
            scopes = [Scope.CONSENT_WRITE]
            issued = create_api_key(session, name="bench", scopes=scopes)
            caller = Caller(key_id=issued.info.id, name="bench", scopes=frozenset(scopes))
            for key, kind in TOPICS:
                put_topic(
                    session,
                    key,
                    TopicIn(name=key.title(), kind=kind, consent=ConsentModel.OPT_IN),
                    caller=caller,
                    now=utcnow(),
                )
        seeded_at = "2020-01-01 00:00:00" + ("" if settings.is_sqlite else "+00")
        with database.engine.begin() as connection:
            # A recursive count rather than generate_series, which SQLite lacks.
            connection.execute(
                text(
                    "WITH RECURSIVE n(i) AS"
                    " (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < :n - 1)"
                    " INSERT INTO contact (public_id, address, address_display, created_at)"
                    " SELECT 'k' || i, 'known.' || i || '@bench.example.com',"
                    " 'known.' || i || '@bench.example.com', :at FROM n"
                ),
                {"n": known, "at": seeded_at},
            )
            connection.execute(
                text(
                    "INSERT INTO subscription (contact_id, topic_id, status, occurred_at, since,"
                    " source, by_recipient, event_id) SELECT c.id, t.id, 'subscribed',"
                    " :at, :at, 'bench_seed', false,"
                    " 'seed' FROM contact c, topic t WHERE t.key = 'orders'"
                ),
                {"at": seeded_at},
            )
    finally:
        database.dispose()
    return issued.secret


def _post(address: str, status: str) -> bytes:
    return json.dumps(
        {"email": address, "topic": "newsletter", "status": status, "source": "bench"}
    ).encode()


async def run(args: argparse.Namespace) -> None:
    with throwaway_database(sqlite=args.sqlite) as url:
        settings = bench_settings(url)
        n, warm = args.requests, args.warmup
        secret = prepare(settings, n + warm)
        app = create_app(settings)
        caller = AsgiCaller(app)
        statements = count_statements(app)
        headers = (
            (b"content-type", b"application/json"),
            (b"authorization", f"Bearer {secret}".encode()),
            (b"user-agent", b"bench-cpu"),
        )

        def requests(addresses: list[str], status: str) -> list[Sent]:
            return [_request(_post(a, status)) for a in addresses]

        def _request(body: bytes) -> Sent:
            length = (b"content-length", str(len(body)).encode())
            return ("POST", "/v1/consents", body, (*headers, length))

        for i in range(warm):
            await caller(
                "POST", "/v1/consents", _post(f"warm.{i}@bench.example.com", "subscribed"), headers
            )
            await caller(
                "POST",
                "/v1/consents",
                _post(f"known.{n + i}@bench.example.com", "subscribed"),
                headers,
            )
        profile = cProfile.Profile(time.thread_time) if args.profile else None
        profiling = args.profile > 0
        worker_profile = cProfile.Profile(time.thread_time) if args.profile else None
        if worker_profile is not None:
            # The database work runs in worker threads, which the loop's profile does not see.
            database = app.state.database
            on_connection, run_write = database.on_connection, database._run_write

            def profiled(call: Any) -> Any:
                def run(work: Any) -> Any:
                    if not profiling:
                        return call(work)
                    worker_profile.enable()
                    try:
                        return call(work)
                    finally:
                        worker_profile.disable()

                return run

            database.on_connection = profiled(on_connection)
            database._run_write = profiled(run_write)
        engine = "SQLite" if args.sqlite else "PostgreSQL"
        print(f"prefcenter in-process CPU per request, {engine}, pid {os.getpid()}")
        await measure(
            "new address subscribes",
            caller,
            requests([f"new.{i}@bench.example.com" for i in range(n)], "subscribed"),
            statements,
            profile,
        )
        profiling = False
        known = [f"known.{i}@bench.example.com" for i in range(n)]
        await measure(
            "known contact subscribes", caller, requests(known, "subscribed"), statements, None
        )
        await measure(
            "known contact opts out", caller, requests(known, "unsubscribed"), statements, None
        )
        app.state.database.dispose()
        if profile is not None:
            stats = pstats.Stats(profile).strip_dirs().sort_stats("cumulative")
            stats.print_stats(args.profile)
            stats.sort_stats("tottime").print_stats(args.profile)
            print("worker threads:")
            stats = pstats.Stats(worker_profile).strip_dirs().sort_stats("cumulative")
            stats.print_stats(args.profile)
            stats.sort_stats("tottime").print_stats(args.profile)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--profile", type=int, default=0, metavar="N", help="cProfile top N")
    parser.add_argument("--sqlite", action="store_true", help="SQLite instead of PostgreSQL")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
