"""Owns `prefcenter notices publish|status`: publishing a version from a shell (as
`cli:<os user>` in the audit trail), with a progress bar for its notification run."""

from __future__ import annotations

import getpass
import hashlib
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from prefcenter.db import Database, utcnow
from prefcenter.notices import service
from prefcenter.notices.schemas import NoticeVersionIn, NotificationOut, RunDelivery

OpenDatabase = Callable[[], AbstractContextManager[Database]]
# How often the progress bar asks the outbox, and how long it waits for a run that no
# worker moves before it says so and leaves (the run goes on without it).
POLL_SECONDS = 1.0


def _actor() -> service.Actor:
    return service.Actor(name=f"cli:{getpass.getuser()}", channel="cli")


def _done(counts: NotificationOut) -> int:
    return counts.sent + counts.failed + counts.skipped


def _line(key: str, version: str, counts: NotificationOut) -> str:
    return (
        f"{key}@{version}: queued {counts.queued}, sent {counts.sent}, failed {counts.failed}, "
        f"bounced {counts.bounced}, skipped {counts.skipped}"
    )


def notices_cli(open_database: OpenDatabase) -> typer.Typer:
    """The `notices` command group, on the database `open_database` gives (cli._database:
    refusals print their detail and exit 1)."""
    group = typer.Typer(
        help="Notices (privacy policy, terms…) and their versions.", no_args_is_help=True
    )
    stderr = Console(stderr=True)

    def follow(key: str, version: str, *, stall_seconds: float) -> NotificationOut:
        """A progress bar until nothing of the run is queued, or nothing moved for
        `stall_seconds` (no worker running: the run waits for one)."""
        with open_database() as database:
            read = database.transaction
            with read(write=False) as session:
                counts = service.notification(session, key, version)
            total = counts.queued + _done(counts)
            last_change = time.monotonic()
            with Progress(
                TextColumn("notice mails"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=stderr,
            ) as progress:
                task = progress.add_task("run", total=total, completed=_done(counts))
                while counts.queued:
                    time.sleep(POLL_SECONDS)
                    with read(write=False) as session:
                        now = service.notification(session, key, version)
                    if now != counts:
                        last_change = time.monotonic()
                    counts = now
                    progress.update(task, completed=_done(counts))
                    if time.monotonic() - last_change > stall_seconds:
                        break
        if counts.queued:
            stderr.print(
                "nothing was sent for a while: is a worker running "
                "(`prefcenter worker`, or `prefcenter serve`)? The run waits for one."
            )
        return counts

    @group.command("publish")
    def publish(
        file: Annotated[
            Path,
            typer.Argument(
                exists=True, dir_okay=False, help="The text (UTF-8); its SHA-256 is recorded."
            ),
        ],
        notice: Annotated[str, typer.Option(help="The notice's key.")],
        version: Annotated[str, typer.Option(help="The new version's label.")],
        effective_at: Annotated[
            str, typer.Option(help="When it takes effect (RFC 3339 with an offset).")
        ],
        material: Annotated[
            bool, typer.Option(help="A material change: every contact is mailed about it.")
        ] = False,
        language: Annotated[str, typer.Option(help="The text's language.")] = "en",
        summary: Annotated[
            str | None, typer.Option(help="What changed (the mail says it). Default: first line.")
        ] = None,
        url: Annotated[str | None, typer.Option(help="Where the text is published.")] = None,
        reason: Annotated[
            str | None,
            typer.Option(help="Why it takes effect sooner than the notice period (recorded)."),
        ] = None,
        delivery: Annotated[
            RunDelivery,
            typer.Option(
                help="Who mails a material version's run: the service, or your own sender "
                "from the CSV export or notice.recipient webhooks."
            ),
        ] = RunDelivery.SERVICE,
        follow_run: Annotated[
            bool,
            typer.Option("--follow/--no-follow", help="Show the run's progress until it is sent."),
        ] = True,
        stall_seconds: Annotated[
            float, typer.Option(help="Leave the progress bar when nothing moves this long.")
        ] = 60.0,
    ) -> None:
        """Publish a version of a notice; a material one starts its notification run."""
        text = file.read_text(encoding="utf-8")
        first_line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
        try:
            spec = NoticeVersionIn.model_validate(
                {
                    "version": version,
                    "language": language,
                    "url": url,
                    "text": text,
                    "sha256": hashlib.sha256(text.encode()).hexdigest(),
                    "effective_at": effective_at,
                    "material": material,
                    "summary": summary or first_line[:2000],
                    "reason": reason,
                    "delivery": delivery,
                }
            )
        except ValidationError as exc:
            details = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'file'}: {e['msg']}" for e in exc.errors()
            )
            stderr.print(f"[red]error:[/red] {details}")
            raise typer.Exit(2) from exc
        with open_database() as database, database.transaction(write=True) as session:
            published = service.publish_version(
                session,
                notice,
                spec,
                actor=_actor(),
                settings=database.settings,
                now=utcnow(),
            )
        out = published.version
        stderr.print(
            f"published {out.notice}@{out.version}, effective {out.effective_at.isoformat()}"
            + (f"; {published.queued} notice mails queued" if out.material else "")
        )
        # A run your own sender mails moves only as you mark it: nothing to follow here.
        if out.material and follow_run and delivery is RunDelivery.SERVICE:
            counts = follow(out.notice, out.version, stall_seconds=stall_seconds)
            stderr.print(_line(out.notice, out.version, counts))

    @group.command("status")
    def status(
        key: Annotated[str, typer.Argument(help="The notice's key.")],
        version: Annotated[str, typer.Argument(help="The version's label.")],
    ) -> None:
        """Where a version's notice mails stand (queued, sent, failed, bounced, skipped)."""
        with open_database() as database, database.transaction(write=False) as session:
            counts = service.notification(session, key, version)
        typer.echo(_line(key, version, counts))

    return group
