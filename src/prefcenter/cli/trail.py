"""`audit verify`/`checkpoint` and `inbound-mail`: the trail and the unsubscribe mailbox."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from prefcenter.audit import console as audit_console
from prefcenter.audit.checkpoint import (
    CheckpointInvalid,
    make_checkpoint,
    verify_with_checkpoint,
)
from prefcenter.audit.context import RequestContext
from prefcenter.audit.keys import AuditKeys
from prefcenter.cli.root import (
    audit_cli,
    cli,
    load_settings,
    opened_database,
    stderr,
)
from prefcenter.consent.ledger.replay import first_contact_off_its_events, verify_ledger
from prefcenter.db import Database, utcnow
from prefcenter.inbound.receive import receive_mail
from prefcenter.problems import ServiceUnavailable


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
    settings = load_settings()
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
    settings = load_settings()
    with opened_database(settings) as database:
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
    settings = load_settings()
    with opened_database(settings) as database:
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
