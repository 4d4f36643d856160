"""CPU cost of one webhook delivery, in-process: what the webhook sender (claim, read the
audit event and the endpoint's secret, build and sign the body, POST through the checked
transport, record the attempt) costs its process in CPU time, measured on one process with
a local receiver in processes of its own, so the figure moves less with what else the
machine does than deliveries/s (bench/webhooks.py).

    .venv/bin/python bench/cpu_webhooks.py                      # PostgreSQL, 5,000 deliveries
    .venv/bin/python bench/cpu_webhooks.py --profile 30         # plus cProfile's top 30

Process CPU time (user + system, every thread) per delivery is printed, and the wall time.
`--profile` profiles the event loop's thread only (the database work runs in worker
threads); attach `py-spy record --pid …` for all of them.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import text

from prefcenter import migrations
from prefcenter.db import Database, utcnow
from prefcenter.delivery.webhooks import WebhookSender
from prefcenter.settings import Settings
from prefcenter.topics.schemas import ConsentModel, TopicIn, TopicKind
from prefcenter.topics.service import put_topic
from prefcenter.webhooks import service as webhooks
from prefcenter.webhooks.addresses import system_resolve
from prefcenter.webhooks.schemas import WebhookIn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mail_outbox import throwaway_postgres
from webhook_sink import sink

from webhooks import ACTOR, AUDIT_KEY, CALLER, SIGNING_KEYS, TOPIC, seed


def sent_count(database: Database) -> int:
    with database.transaction(write=False) as session:
        found = session.execute(
            text("SELECT count(*) FROM outbox_message WHERE kind = 'webhook' AND status = 'sent'")
        ).scalar_one()
    return int(found)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deliveries", type=int, default=5_000)
    parser.add_argument("--sinks", type=int, default=1, help="receiver processes")
    parser.add_argument("--profile", type=int, default=0, help="print cProfile's top N")
    parser.add_argument("--wait", type=float, default=0.0, help="seconds before sending")
    parser.add_argument("--keep-db", action="store_true")
    args = parser.parse_args()

    with (
        tempfile.TemporaryDirectory() as tmp,
        throwaway_postgres("prefcenter_bench_cpuhooks", keep=args.keep_db) as url,
        sink(args.sinks, Path(tmp)) as receiver,
    ):
        settings = Settings(
            _env_file=None,
            database_url=url,
            signing_keys=SIGNING_KEYS,
            audit_key=AUDIT_KEY,
            mail_url="off",
            webhooks_allow_private=True,
        )
        migrations.upgrade(settings)
        database = Database(settings)
        try:
            with database.transaction(write=True) as session:
                put_topic(
                    session,
                    TOPIC,
                    TopicIn(
                        name="Newsletter", kind=TopicKind.MARKETING, consent=ConsentModel.OPT_IN
                    ),
                    caller=CALLER,
                    now=utcnow(),
                )
                webhooks.create_endpoint(
                    session,
                    WebhookIn.model_validate({"url": receiver.url, "events": ["consent.changed"]}),
                    settings=settings,
                    resolve=system_resolve,
                    actor=ACTOR,
                    now=utcnow(),
                )
            seed(database, args.deliveries)
            sender = WebhookSender(database, settings, name="cpu-bench")
            time.sleep(args.wait)  # e.g. to attach py-spy

            async def run() -> None:
                await sender.deliver_due()
                await sender.aclose()

            profile = cProfile.Profile() if args.profile else None
            cpu0, wall0 = time.process_time(), time.perf_counter()
            if profile is not None:
                profile.enable()
            asyncio.run(run())
            if profile is not None:
                profile.disable()
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            sent = sent_count(database)
        finally:
            database.dispose()
    print(
        f"{sent:,} of {args.deliveries:,} delivered ({receiver.received:,} received) in "
        f"{wall:.2f} s = {sent / wall:,.0f}/s; process CPU {cpu:.2f} s = "
        f"{1000 * cpu / max(sent, 1):.3f} ms per delivery"
    )
    if profile is not None:
        out = io.StringIO()
        pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(args.profile)
        print(out.getvalue())


if __name__ == "__main__":
    main()
