"""Owns `prefcenter webhooks list|create|rotate|replay`: the API's endpoint management from a
shell, as `cli:<os user>` in the audit trail."""

from __future__ import annotations

import getpass
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from prefcenter.db import Database, utcnow
from prefcenter.webhooks import replays, service
from prefcenter.webhooks.addresses import system_resolve
from prefcenter.webhooks.rules import EVERY_TYPE
from prefcenter.webhooks.schemas import ReplayIn, WebhookIn

OpenDatabase = Callable[[], AbstractContextManager[Database]]


def _actor() -> service.Actor:
    return service.Actor(name=f"cli:{getpass.getuser()}", channel="cli")


def webhooks_cli(open_database: OpenDatabase) -> typer.Typer:
    """The `webhooks` command group, on the database `open_database` gives (cli._database:
    refusals print their detail and exit 1)."""
    group = typer.Typer(help="Outgoing webhooks (Standard Webhooks).", no_args_is_help=True)
    stderr = Console(stderr=True)

    @group.command("list")
    def list_endpoints() -> None:
        """List endpoints (never their secrets)."""
        with open_database() as database, database.transaction(write=False) as session:
            endpoints = service.list_endpoints(session, now=utcnow())
        table = Table()
        table.add_column("id", no_wrap=True, min_width=23)  # whole: it is what commands take
        for name in ("url", "events", "enabled", "failing since / disabled"):
            table.add_column(name, overflow="fold")
        for e in endpoints:
            state = (
                f"{e.disabled_reason} ({e.disabled_at:%Y-%m-%d %H:%M})"
                if e.disabled_at is not None
                else (f"failing since {e.failing_since:%Y-%m-%d %H:%M}" if e.failing_since else "")
            )
            table.add_row(e.id, e.url, " ".join(e.events), "yes" if e.enabled else "no", state)
        Console().print(table)

    @group.command("create")
    def create(
        url: Annotated[str, typer.Argument(help="Where to POST deliveries (http or https).")],
        event: Annotated[
            list[str] | None,
            typer.Option(help="An event type to deliver; repeat for several. Default: all (*)."),
        ] = None,
        description: Annotated[str | None, typer.Option(help="What it is for.")] = None,
    ) -> None:
        """Create an endpoint. Its secret is printed once, as the last line of stdout."""
        try:
            spec = WebhookIn.model_validate(
                {"url": url, "events": event or [EVERY_TYPE], "description": description}
            )
        except ValueError as exc:
            stderr.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from exc
        with open_database() as database, database.transaction(write=True) as session:
            created = service.create_endpoint(
                session,
                spec,
                settings=database.settings,
                resolve=system_resolve,
                actor=_actor(),
                now=utcnow(),
            )
        stderr.print(f"created webhook endpoint {created.id} for {' '.join(created.events)}")
        stderr.print("Store the secret now: it is not shown again.")
        sys.stdout.write(created.secret + "\n")

    @group.command("rotate")
    def rotate(
        endpoint_id: Annotated[str, typer.Argument(help="The endpoint's id (see list).")],
    ) -> None:
        """A new secret (printed once, last line of stdout); the old one signs for a day."""
        with open_database() as database, database.transaction(write=True) as session:
            rotated = service.rotate_secret(
                session, endpoint_id, settings=database.settings, actor=_actor(), now=utcnow()
            )
        until = rotated.previous_secret_expires_at.isoformat(timespec="seconds")
        stderr.print(f"rotated the secret of {rotated.id}; the old one signs until {until}")
        sys.stdout.write(rotated.secret + "\n")

    @group.command("replay")
    def replay(
        endpoint_id: Annotated[str, typer.Argument(help="The endpoint's id (see list).")],
        after_seq: Annotated[int, typer.Option(help="Replay audit events after this seq.")],
    ) -> None:
        """Deliver again every audit event after a seq that the endpoint wants, in order."""
        spec = ReplayIn(after_seq=max(after_seq, 0))
        with open_database() as database, database.transaction(write=True) as session:
            result = replays.replay(
                session, endpoint_id, after_seq=spec.after_seq, actor=_actor(), now=utcnow()
            )
        stderr.print(f"queued {result.queued} deliveries, replaced {result.replaced} pending")

    return group
