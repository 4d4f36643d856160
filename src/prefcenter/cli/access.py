"""`db upgrade`, `api-keys` and `admins`: the schema and who may use the service."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from prefcenter import migrations
from prefcenter.admin import users as admins
from prefcenter.apikeys import service as apikeys
from prefcenter.apikeys.schemas import Scope
from prefcenter.cli.root import (
    admins_cli,
    db_cli,
    keys_cli,
    load_settings,
    opened_database,
    stderr,
)
from prefcenter.db import utcnow


@db_cli.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
) -> None:
    """Apply pending migrations (SQLite or PostgreSQL)."""
    settings = load_settings()
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
    with opened_database() as database, database.transaction(write=True) as session:
        issued = apikeys.create_api_key(session, name=name, scopes=scope)
    scopes = " ".join(s.value for s in issued.info.scopes)
    stderr.print(f"created API key {issued.info.id} ({issued.info.name}) with scopes: {scopes}")
    stderr.print("Store the secret now: it is not shown again.")
    sys.stdout.write(issued.secret + "\n")


@keys_cli.command("list")
def keys_list() -> None:
    """List API keys (never their secrets)."""
    with opened_database() as database, database.transaction(write=False) as session:
        keys = apikeys.list_api_keys(session)
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
    with opened_database() as database, database.transaction(write=True) as session:
        info = apikeys.revoke_api_key(session, key_id=key_id)
    assert info.revoked_at is not None
    stderr.print(f"revoked API key {info.id} ({info.name}) at {info.revoked_at.isoformat()}")


@admins_cli.command("create")
def admins_create(
    username: Annotated[str, typer.Argument(help="Lower-case letters, digits, '.', '_', '-'.")],
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from stdin's first line.")
    ] = False,
) -> None:
    """Create a console user; the password is asked for twice (hidden), or read from stdin."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    with opened_database() as database, database.transaction(write=True) as session:
        user = admins.create_admin(session, username=username, password=password, now=utcnow())
    stderr.print(f"created admin user {user.username}: sign in at /admin/sign-in")


@admins_cli.command("list")
def admins_list() -> None:
    """List console users (never their password hashes)."""
    with opened_database() as database, database.transaction(write=False) as session:
        users = admins.list_admins(session)
    table = Table("username", "created", "disabled")
    for user in users:
        table.add_row(
            user.username,
            user.created_at.isoformat(timespec="seconds"),
            "yes" if user.disabled else "",
        )
    Console().print(table)


@admins_cli.command("disable")
def admins_disable(username: Annotated[str, typer.Argument(help="The user to disable.")]) -> None:
    """Disable a console user and end their sessions at once."""
    with opened_database() as database, database.transaction(write=True) as session:
        user = admins.disable_admin(session, username=username)
    stderr.print(f"disabled admin user {user.username}; their sessions are ended")
