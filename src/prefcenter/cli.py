"""The `prefcenter` command: serve, migrate, deliver the outbox, and manage API keys."""

from __future__ import annotations

import asyncio
import dataclasses
import getpass
import json
import re
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
import uvicorn
from rich.console import Console
from rich.table import Table

from prefcenter import logs, migrations
from prefcenter.admin import users as admins
from prefcenter.apikeys import service as apikeys
from prefcenter.apikeys.schemas import Scope
from prefcenter.audit import console as audit_console
from prefcenter.audit.checkpoint import (
    CheckpointInvalid,
    make_checkpoint,
    verify_with_checkpoint,
)
from prefcenter.audit.context import RequestContext
from prefcenter.audit.keys import AuditKeys
from prefcenter.backups.commands import add_backup_commands
from prefcenter.consent.erasure import erase_contact, stored_again
from prefcenter.consent.ledger.replay import first_contact_off_its_events, verify_ledger
from prefcenter.contacts.addresses import InvalidAddress, parse_address
from prefcenter.db import Database, utcnow
from prefcenter.delivery.test_mail import QueuedMail, queue_test_mail
from prefcenter.delivery.webhooks import WebhookSender
from prefcenter.delivery.worker import (
    BackgroundWorker,
    DeliveryReport,
    OutboxWorker,
    run_until_signalled,
)
from prefcenter.imports.console import import_with_progress, print_report
from prefcenter.imports.formats import ImportFormat
from prefcenter.imports.service import DEFAULT_BATCH_SIZE, ImportRequest
from prefcenter.inbound.receive import receive_mail
from prefcenter.mail.config import mail_config
from prefcenter.monitoring.listener import serve_metrics
from prefcenter.notices.commands import notices_cli
from prefcenter.problems import Problem, ServiceUnavailable
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


def _settings() -> Settings:
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
def _database(settings: Settings | None = None, *, refused_exit: int = 1) -> Iterator[Database]:
    """The configured database for one command, disposed at the end. A refusal from a service
    (a Problem: a taken name, an unknown key) is printed and ends the command with
    `refused_exit`, not a traceback."""
    database = Database(settings or _settings())
    try:
        yield database
    except Problem as exc:
        stderr.print(f"[red]error:[/red] {exc.detail}")
        raise typer.Exit(refused_exit) from exc
    finally:
        database.dispose()


cli.add_typer(webhooks_cli(_database), name="webhooks")
cli.add_typer(notices_cli(_database), name="notices")
add_backup_commands(db_cli, _settings)


@cli.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
    no_migrate: Annotated[
        bool, typer.Option("--no-migrate", help="Do not apply pending migrations first.")
    ] = False,
    no_worker: Annotated[
        bool,
        typer.Option(
            "--no-worker", help="Run no outbox worker inside (run `prefcenter worker` instead)."
        ),
    ] = False,
) -> None:
    """Serve the HTTP API and the recipient pages (applies pending migrations first), with an
    outbox worker that sends the service's mail unless --no-worker."""
    settings = _settings()
    # Redacted (tokens, addresses, query strings) in this process, in uvicorn's own loggers
    # and in every worker it spawns: a dict, which each worker configures itself from.
    config = logs.log_config(level=settings.log_level, log_format=settings.log_format)
    logs.configure_logging(config)
    pending = None
    if not no_migrate:
        # A database that does not answer yet is waited for while serving (/readyz 503).
        pending = migrations.upgrade_or_wait(
            settings, on_failure=lambda: signal.raise_signal(signal.SIGTERM)
        )
    with (
        serve_metrics(settings),
        _outbox_worker_beside(settings, enabled=not no_worker),
        _exit_0_after_shutdown(),
    ):
        uvicorn.run(
            "prefcenter.app:app_from_environment",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_config=config,
            log_level=settings.log_level,
            proxy_headers=False,  # client addresses are taken from trusted proxies only
            server_header=False,
            # In-flight requests get this long after SIGTERM (and the drain), then are cut off.
            timeout_graceful_shutdown=settings.shutdown_timeout_s,
            access_log=False,  # the app logs each request itself (request_log)
        )
    if pending is not None and pending.failed:
        raise typer.Exit(1)


@contextmanager
def _outbox_worker_beside(settings: Settings, *, enabled: bool) -> Iterator[None]:
    """One outbox worker in this process, whatever `--workers` says (the server's worker
    processes only queue), stopped gracefully once the server has stopped: the deliveries in
    hand are finished, within `shutdown_timeout_s`, the rest of its claims given back."""
    if not enabled:
        yield
        return
    database = Database(settings)
    background = BackgroundWorker(
        OutboxWorker(
            database,
            settings,
            mail=mail_config(settings),
            webhooks=WebhookSender(database, settings),
        )
    )
    background.start()
    try:
        yield
    finally:
        background.stop(timeout=settings.shutdown_timeout_s)
        database.dispose()


@contextmanager
def _exit_0_after_shutdown() -> Iterator[None]:
    """SIGTERM is how a server is asked to stop: once uvicorn has shut down gracefully it raises
    the signal again, which would end the process with -15. Here it ends `serve` with status 0
    instead (after the outbox worker's own graceful stop)."""
    previous = signal.signal(signal.SIGTERM, _exit_after_shutdown)
    try:
        yield
    except _Stopped:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Stopped(Exception):
    """SIGTERM arrived after the server had shut down (see _exit_0_after_shutdown)."""


def _exit_after_shutdown(_signum: int, _frame: object) -> None:
    raise _Stopped


@cli.command("worker")
def outbox_worker(
    once: Annotated[
        bool, typer.Option("--once", help="Deliver what is due now, print the counts, exit.")
    ] = False,
) -> None:
    """Deliver the outbox (the service's mail) until SIGTERM or SIGINT; any number of
    workers may run on PostgreSQL. Exit status 1 with --once when a delivery failed."""
    settings = _settings()
    # Redacted like the server's: a relay's refusal can quote the address it refused.
    logs.configure_logging(
        logs.log_config(level=settings.log_level, log_format=settings.log_format)
    )
    mail = mail_config(settings)
    if mail is None:
        stderr.print("mail is off (PREFCENTER_MAIL_URL): delivering webhooks only")
    with _database(settings) as database:
        worker = OutboxWorker(
            database, settings, mail=mail, webhooks=WebhookSender(database, settings)
        )
        if not once:
            asyncio.run(run_until_signalled(worker))
            return
        report = asyncio.run(_deliver_due_once(worker))
    stderr.print(report.summary())
    for error in report.errors:
        stderr.print(f"[red]error:[/red] {error}")
    if report.failed or report.retried:
        raise typer.Exit(1)


async def _deliver_due_once(worker: OutboxWorker) -> DeliveryReport:
    try:
        return await worker.deliver_due()
    finally:
        await worker.aclose()


@mail_cli.command("test")
def mail_test(
    address: Annotated[str, typer.Argument(help="Where to send the test mail.")],
) -> None:
    """Queue one test mail and deliver it at once: prints its Message-ID, or the transport's
    error (exit status 1). A test mail that fails is not retried."""
    settings = _settings()
    mail = mail_config(settings)
    if mail is None:
        stderr.print(
            "[red]error:[/red] mail is off: set PREFCENTER_MAIL_URL (and PREFCENTER_MAIL_FROM)"
        )
        raise typer.Exit(2)
    try:
        recipient = parse_address(address).normalised
    except InvalidAddress as exc:
        stderr.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    with _database(settings) as database:
        with database.transaction(write=True) as session:
            queued = queue_test_mail(session, mail, recipient=recipient, now=utcnow())
        worker = OutboxWorker(database, settings, mail=mail)
        report = asyncio.run(_deliver_now(worker, queued))
    if report.sent != 1:
        stderr.print(f"[red]not sent:[/red] {report.last_error or 'nothing was delivered'}")
        raise typer.Exit(1)
    stderr.print(f"sent via {mail.target.describe()}")
    sys.stdout.write(queued.message_id + "\n")


async def _deliver_now(worker: OutboxWorker, queued: QueuedMail) -> DeliveryReport:
    try:
        return await worker.deliver_batch(only={queued.id}, final=True)
    finally:
        await worker.aclose()


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
    with _database() as database, database.transaction(write=True) as session:
        issued = apikeys.create_api_key(session, name=name, scopes=scope)
    scopes = " ".join(s.value for s in issued.info.scopes)
    stderr.print(f"created API key {issued.info.id} ({issued.info.name}) with scopes: {scopes}")
    stderr.print("Store the secret now: it is not shown again.")
    sys.stdout.write(issued.secret + "\n")


@keys_cli.command("list")
def keys_list() -> None:
    """List API keys (never their secrets)."""
    with _database() as database, database.transaction(write=False) as session:
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
    with _database() as database, database.transaction(write=True) as session:
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
    with _database() as database, database.transaction(write=True) as session:
        user = admins.create_admin(session, username=username, password=password, now=utcnow())
    stderr.print(f"created admin user {user.username}: sign in at /admin/sign-in")


@admins_cli.command("list")
def admins_list() -> None:
    """List console users (never their password hashes)."""
    with _database() as database, database.transaction(write=False) as session:
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
    with _database() as database, database.transaction(write=True) as session:
        user = admins.disable_admin(session, username=username)
    stderr.print(f"disabled admin user {user.username}; their sessions are ended")


# The same names the API accepts as `source` (consent.schemas.SourceName).
_IMPORT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")


@cli.command("import")
def import_file(
    file: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="The CSV file.")
    ],
    topic: Annotated[str, typer.Option(help="The topic every row applies to.")],
    source: Annotated[str, typer.Option(help="The import's name, kept in every event.")],
    file_format: Annotated[
        ImportFormat, typer.Option("--format", help="The file's layout; auto sniffs the header.")
    ] = ImportFormat.AUTO,
    batch_size: Annotated[
        int, typer.Option(min=1, help="Rows per transaction (each batch is all-or-nothing).")
    ] = DEFAULT_BATCH_SIZE,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Decide every row and report; write nothing.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the report as JSON on stdout.")
    ] = False,
) -> None:
    """Import subscriptions and opt-outs from a file; never reverses an opt-out or an erasure.

    Exit status 1 when a batch failed (the report says which landed), 2 for an unknown topic
    or a file that cannot be read.
    """
    if not _IMPORT_NAME.fullmatch(source):
        stderr.print("[red]error:[/red] --source must match [A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
        raise typer.Exit(2)
    request = ImportRequest(
        topic=topic,
        name=source,
        actor=f"cli:{getpass.getuser()}",
        format=file_format,
        file_name=file.name,
        batch_size=batch_size,
        dry_run=dry_run,
    )
    with _database(refused_exit=2) as database:
        report = import_with_progress(database, file, request, stderr)
    if as_json:
        sys.stdout.write(report.model_dump_json(indent=2) + "\n")
    else:
        print_report(report, Console())
    if not report.complete:
        raise typer.Exit(1)


@contacts_cli.command("re-erase")
def contacts_re_erase(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count and list them; erase nothing.")
    ] = False,
) -> None:
    """Erase again every contact whose address had been erased and was stored again (before
    version 0.2, `POST /v1/links` created such contacts). Prints their ids on stdout."""
    settings = _settings()
    keys = AuditKeys.from_settings(settings)
    actor = f"cli:{getpass.getuser()}"
    with _database(settings) as database:
        with database.transaction(write=False) as session:
            found = stored_again(session, keys)
        stderr.print(f"{len(found):,} contact(s) hold an erased address again")
        for public_id in found:
            if not dry_run:
                with database.transaction(write=True) as session:
                    erase_contact(
                        session,
                        public_id,
                        keys=keys,
                        actor=actor,
                        request=RequestContext(None, "prefcenter contacts re-erase", None),
                    )
            sys.stdout.write(public_id + "\n")
    if found and not dry_run:
        stderr.print(f"erased {len(found):,} again; each is an erasure event in the trail")


@audit_cli.command("verify")
def audit_verify(
    deep: Annotated[
        bool, typer.Option("--deep", help="Also check current subscriptions against the events.")
    ] = False,
    checkpoint: Annotated[
        Path | None,
        typer.Option(help="A file from `audit checkpoint`: the chain must still hold it."),
    ] = None,
) -> None:
    """Check the chain; prints {"ok", "checked", "first_bad_seq", …} and exits 1 if it fails."""
    settings = _settings()
    keys = AuditKeys.from_settings(settings)
    statement: dict[str, Any] | None = None
    if checkpoint is not None:
        try:
            statement = json.loads(checkpoint.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            stderr.print(f"[red]error:[/red] cannot read the checkpoint {checkpoint}: {exc}")
            raise typer.Exit(2) from exc
    database = Database(settings)
    try:
        with audit_console.verify_progress(stderr) as progress:
            if statement is None:
                result = verify_ledger(database, keys, deep=deep, progress=progress)
            else:
                result = verify_with_checkpoint(
                    database,
                    keys,
                    statement,
                    replay=first_contact_off_its_events if deep else None,
                    progress=progress,
                )
    except CheckpointInvalid as exc:
        stderr.print(f"[red]checkpoint refused:[/red] {exc}")
        raise typer.Exit(1) from exc
    finally:
        database.dispose()
    audit_console.print_result(stderr, result)
    sys.stdout.write(json.dumps(dataclasses.asdict(result)) + "\n")
    if not result.ok:
        raise typer.Exit(1)


@audit_cli.command("checkpoint")
def audit_checkpoint(
    output: Annotated[
        Path | None, typer.Option(help="Write it to this file instead of stdout.")
    ] = None,
) -> None:
    """Print a signed statement of the chain's head (seq, hash, time) to keep elsewhere."""
    settings = _settings()
    with _database(settings) as database:
        statement = make_checkpoint(database, AuditKeys.from_settings(settings), now=utcnow())
    text = json.dumps(statement, indent=2) + "\n"
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text, encoding="utf-8")
        stderr.print(f"checkpoint at seq {statement['seq']} written to {output}")


# sysexits.h: what an MTA's pipe takes as "try again later" (the message stays queued).
EX_TEMPFAIL = 75
# A message larger than this is no unsubscribe request; an MTA keeps it (exit status 1).
MAX_MAIL_BYTES = 10 * 1024 * 1024


@cli.command("inbound-mail")
def inbound_mail() -> None:
    """Read one message sent to the List-Unsubscribe mailto: address from stdin (an MTA pipe,
    e.g. Postfix) and unsubscribe as its token says. Exit status 0 when it was taken (acted on
    or ignored), 75 (EX_TEMPFAIL) when the database could not be reached: the MTA retries."""
    raw = sys.stdin.buffer.read(MAX_MAIL_BYTES + 1)
    if len(raw) > MAX_MAIL_BYTES:
        stderr.print("[red]error:[/red] the message is too large to be an unsubscribe request")
        raise typer.Exit(1)
    settings = _settings()
    with _database(settings) as database:
        try:
            report = receive_mail(
                database,
                raw,
                ring=settings.signing_key_ring(),
                request=RequestContext(None, "prefcenter inbound-mail", None),
                now=utcnow(),
            )
        except ServiceUnavailable as exc:
            stderr.print(f"[red]temporary failure:[/red] {exc.detail}")
            raise typer.Exit(EX_TEMPFAIL) from exc
    reason = f" ({report.reason})" if report.reason else ""
    stderr.print(f"{report.outcome.value}{reason}")


def main() -> None:
    cli()
