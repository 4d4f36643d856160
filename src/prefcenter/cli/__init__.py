"""The `prefcenter` command: serve, migrate, deliver the outbox, manage keys, users and data,
check the audit trail. Each module adds its commands to the one `cli`."""

from prefcenter.backups.commands import add_backup_commands
from prefcenter.cli import access, data, running, trail
from prefcenter.cli.root import cli, db_cli, load_settings, main, opened_database
from prefcenter.notices.commands import notices_cli
from prefcenter.webhooks.commands import webhooks_cli

cli.add_typer(webhooks_cli(opened_database), name="webhooks")
cli.add_typer(notices_cli(opened_database), name="notices")
add_backup_commands(db_cli, load_settings)

__all__ = ["access", "cli", "data", "main", "running", "trail"]
