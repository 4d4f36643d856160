"""`serve`, `worker` and `mail test`: the service and its outbox worker."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer

from prefcenter import logs, migrations
from prefcenter.cli.root import (
    cli,
    load_settings,
    mail_cli,
    opened_database,
    stderr,
)
from prefcenter.contacts.addresses import InvalidAddress, parse_address
from prefcenter.db import Database, utcnow
from prefcenter.delivery.reports import DeliveryReport
from prefcenter.delivery.running import BackgroundWorker, run_until_signalled
from prefcenter.delivery.test_mail import QueuedMail, queue_test_mail
from prefcenter.delivery.webhooks import WebhookSender
from prefcenter.delivery.worker import OutboxWorker
from prefcenter.mail.config import mail_config
from prefcenter.monitoring.listener import metrics_listener, serve_metrics
from prefcenter.server_processes import run_server
from prefcenter.settings import Settings, parse_listen_address


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
    settings = load_settings()
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
        clean = run_server(
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
        if not clean:
            stderr.print("[red]error:[/red] a server process did not end cleanly (see above)")
            raise typer.Exit(1)
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


def _listen_address(value: str | None) -> str | None:
    if value is not None:
        try:
            parse_listen_address(value)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from exc
    return value


@cli.command("worker")
def outbox_worker(
    once: Annotated[
        bool, typer.Option("--once", help="Deliver what is due now, print the counts, exit.")
    ] = False,
    metrics_listen: Annotated[
        str | None,
        typer.Option(
            "--metrics-listen",
            envvar="PREFCENTER_WORKER_METRICS_LISTEN",
            callback=_listen_address,
            help="host:port to serve this worker's /metrics on (its delivery counts, its "
            "database connections and the outbox's state), without authentication.",
        ),
    ] = None,
) -> None:
    """Deliver the outbox (the service's mail) until SIGTERM or SIGINT; any number of
    workers may run on PostgreSQL. Exit status 1 with --once when a delivery failed."""
    settings = load_settings()
    # Redacted like the server's: a relay's refusal can quote the address it refused.
    logs.configure_logging(
        logs.log_config(level=settings.log_level, log_format=settings.log_format)
    )
    mail = mail_config(settings)
    if mail is None:
        stderr.print("mail is off (PREFCENTER_MAIL_URL): delivering webhooks only")
    with opened_database(settings) as database:
        worker = OutboxWorker(
            database, settings, mail=mail, webhooks=WebhookSender(database, settings)
        )
        if not once:
            # Its own listener: PREFCENTER_METRICS_LISTEN is the server's (on the same host,
            # both would want the port).
            listen = settings.model_copy(update={"metrics_listen": metrics_listen})
            with metrics_listener(listen):
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
    settings = load_settings()
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
    with opened_database(settings) as database:
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
