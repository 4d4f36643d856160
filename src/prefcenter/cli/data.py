"""`import` and `contacts re-erase`: consent data in bulk."""

from __future__ import annotations

import getpass
import re
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from prefcenter.audit.context import RequestContext
from prefcenter.audit.keys import AuditKeys
from prefcenter.cli.root import (
    cli,
    contacts_cli,
    load_settings,
    opened_database,
    stderr,
)
from prefcenter.consent.erasure import erase_contact, stored_again
from prefcenter.db import utcnow
from prefcenter.imports.console import import_with_progress, print_report
from prefcenter.imports.formats import ImportFormat
from prefcenter.imports.service import DEFAULT_BATCH_SIZE, ImportRequest

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
    with opened_database(refused_exit=2) as database:
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
    settings = load_settings()
    keys = AuditKeys.from_settings(settings)
    actor = f"cli:{getpass.getuser()}"
    with opened_database(settings) as database:
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
                        now=utcnow(),
                    )
            sys.stdout.write(public_id + "\n")
    if found and not dry_run:
        stderr.print(f"erased {len(found):,} again; each is an erasure event in the trail")
