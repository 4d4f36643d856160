"""The `prefcenter` command itself, its groups, and what every command shares: the settings
from the environment and the database, opened and disposed per command."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console

from prefcenter.db import Database
from prefcenter.mail.config import mail_config
from prefcenter.notices.commands import notices_cli
from prefcenter.problems import Problem
from prefcenter.settings import ConfigError, Settings
from prefcenter.webhooks.commands import webhooks_cli

cli = typer.Typer(
    help="prefcenter: consent and marketing preferences, and the proof of them.",
    no_args_is_help=True,
    add_completion=False,
)
db_cli = typer.Typer(help="Database schema, backup and restore.", no_args_is_help=True)
keys_cli = typer.Typer(help="API keys for the JSON API.", no_args_is_help=True)
cli.add_typer(db_cli, name="db")
cli.add_typer(keys_cli, name="api-keys")
audit_cli = typer.Typer(help="The tamper-evident audit trail.", no_args_is_help=True)
cli.add_typer(audit_cli, name="audit")
admins_cli = typer.Typer(help="Users of the admin console at /admin.", no_args_is_help=True)
cli.add_typer(admins_cli, name="admins")
contacts_cli = typer.Typer(help="Contacts and their personal data.", no_args_is_help=True)
cli.add_typer(contacts_cli, name="contacts")
mail_cli = typer.Typer(help="The service's own mail.", no_args_is_help=True)
cli.add_typer(mail_cli, name="mail")

stderr = Console(stderr=True)


def load_settings() -> Settings:
    try:
        settings = Settings()
        settings.signing_key_ring()
        settings.audit_secret  # noqa: B018 - fails here, not at the first event, when unset
        mail_config(settings)  # a bad PREFCENTER_MAIL_URL stops every command at once
    except ConfigError as exc:
        stderr.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(2) from exc
    return settings


@contextmanager
def opened_database(
    settings: Settings | None = None, *, refused_exit: int = 1
) -> Iterator[Database]:
    """The configured database for one command, disposed at the end. A refusal from a service
    (a Problem: a taken name, an unknown key) is printed and ends the command with
    `refused_exit`, not a traceback."""
    database = Database(settings or load_settings())
    try:
        yield database
    except Problem as exc:
        stderr.print(f"[red]error:[/red] {exc.detail}")
        raise typer.Exit(refused_exit) from exc
    finally:
        database.dispose()


cli.add_typer(webhooks_cli(opened_database), name="webhooks")
cli.add_typer(notices_cli(opened_database), name="notices")


def main() -> None:
    cli()
