"""The `prefcenter` command: serve, migrate, and manage API keys."""

from __future__ import annotations

import logging
import sys
from typing import Annotated

import typer
import uvicorn
from rich.console import Console
from rich.table import Table

from prefcenter import migrations
from prefcenter.apikeys import service as apikeys
from prefcenter.apikeys.schemas import Scope
from prefcenter.db import Database
from prefcenter.problems import Problem
from prefcenter.settings import ConfigError, Settings

cli = typer.Typer(
    help="prefcenter: consent and marketing preferences, and the proof of them.",
    no_args_is_help=True,
    add_completion=False,
)
db_cli = typer.Typer(help="Database schema.", no_args_is_help=True)
keys_cli = typer.Typer(help="API keys for the JSON API.", no_args_is_help=True)
cli.add_typer(db_cli, name="db")
cli.add_typer(keys_cli, name="api-keys")

stderr = Console(stderr=True)


def _settings() -> Settings:
    try:
        settings = Settings()
        settings.signing_key_ring()
    except ConfigError as exc:
        stderr.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(2) from exc
    return settings


@cli.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
    no_migrate: Annotated[
        bool, typer.Option("--no-migrate", help="Do not apply pending migrations first.")
    ] = False,
) -> None:
    """Serve the HTTP API and the recipient pages (applies pending migrations first)."""
    settings = _settings()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(levelname)s %(name)s: %(message)s"
    )
    if not no_migrate:
        migrations.upgrade(settings)
    uvicorn.run(
        "prefcenter.app:app_from_environment",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=settings.log_level,
        proxy_headers=False,  # client addresses are taken from trusted proxies only (settings)
        server_header=False,
    )


@db_cli.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
) -> None:
    """Apply pending migrations (SQLite or PostgreSQL)."""
    settings = _settings()
    migrations.upgrade(settings, revision)
    stderr.print(
        f"database at {migrations.head_revision(settings) if revision == 'head' else revision}"
    )


@keys_cli.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="Who or what uses the key, e.g. crm.")],
    scope: Annotated[list[Scope], typer.Option(help="A scope to grant; repeat for several.")],
) -> None:
    """Create an API key. The secret is printed once, as the last line of stdout."""
    database = Database(_settings())
    try:
        with database.transaction(write=True) as session:
            issued = apikeys.create_api_key(session, name=name, scopes=scope)
    except Problem as exc:
        stderr.print(f"[red]error:[/red] {exc.detail}")
        raise typer.Exit(1) from exc
    finally:
        database.dispose()
    scopes = " ".join(s.value for s in issued.info.scopes)
    stderr.print(f"created API key {issued.info.id} ({issued.info.name}) with scopes: {scopes}")
    stderr.print("Store the secret now: it is not shown again.")
    sys.stdout.write(issued.secret + "\n")


@keys_cli.command("list")
def keys_list() -> None:
    """List API keys (never their secrets)."""
    database = Database(_settings())
    try:
        with database.transaction(write=False) as session:
            keys = apikeys.list_api_keys(session)
    finally:
        database.dispose()
    table = Table("id", "name", "prefix", "scopes", "created", "revoked")
    for key in keys:
        table.add_row(
            str(key.id),
            key.name,
            key.prefix + "…",
            " ".join(s.value for s in key.scopes),
            key.created_at.isoformat(timespec="seconds"),
            key.revoked_at.isoformat(timespec="seconds") if key.revoked_at else "",
        )
    Console().print(table)


@keys_cli.command("revoke")
def keys_revoke(key_id: Annotated[int, typer.Argument(help="The key's id (see list).")]) -> None:
    """Revoke an API key at once."""
    database = Database(_settings())
    try:
        with database.transaction(write=True) as session:
            info = apikeys.revoke_api_key(session, key_id=key_id)
    except Problem as exc:
        stderr.print(f"[red]error:[/red] {exc.detail}")
        raise typer.Exit(1) from exc
    finally:
        database.dispose()
    assert info.revoked_at is not None
    stderr.print(f"revoked API key {info.id} ({info.name}) at {info.revoked_at.isoformat()}")


def main() -> None:
    cli()
