"""Owns the terminal side of `prefcenter import`: the progress bar and the human report."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from prefcenter.db import Database
from prefcenter.imports.schemas import BatchReport, BatchStatus, CountWithSample, ImportReport
from prefcenter.imports.service import ImportRequest, file_sha256, run_import


def import_with_progress(
    database: Database, path: Path, request: ImportRequest, console: Console
) -> ImportReport:
    """Run the import with a progress bar in bytes of the file, updated after each batch."""
    size = path.stat().st_size
    with path.open("rb") as binary:
        sha256 = file_sha256(binary)
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as progress:
            task = progress.add_task("importing", total=size)

            def on_batch(batch: BatchReport) -> None:
                # The reader runs ahead of the rows by one buffer: close enough for a bar.
                progress.update(
                    task,
                    completed=binary.tell(),
                    description=f"batch {batch.number} {batch.status.value}",
                )

            report = run_import(database, binary, request, sha256=sha256, on_batch=on_batch)
            if report.complete:
                progress.update(task, completed=size)
    return report


def _sample_lines(name: str, counted: CountWithSample) -> list[str]:
    lines = []
    for row in counted.sample:
        detail = f" — {row.detail}" if row.detail else ""
        lines.append(f"  {name} line {row.line}: {row.email}{detail}")
    if counted.count > len(counted.sample):
        lines.append(f"  … and {counted.count - len(counted.sample)} more")
    return lines


def print_report(report: ImportReport, console: Console) -> None:
    """The report for a person: totals, samples of what was not applied, failed batches."""
    title = f"import {report.source!r} into {report.topic} ({report.format.value})"
    table = Table("outcome", "rows", title=escape(title + (" — dry run" if report.dry_run else "")))
    for label, count in (
        ("rows read", report.rows),
        ("applied: subscribed", report.applied.subscribed),
        ("applied: unsubscribed", report.applied.unsubscribed),
        ("unchanged", report.unchanged),
        ("superseded (older than the current state)", report.superseded.count),
        ("refused: would reverse an opt-out", report.refused_reversal.count),
        ("refused: erased", report.refused_erased.count),
        ("refused: sharing without evidence", report.refused_no_evidence.count),
        ("invalid", report.invalid.count),
        ("duplicates within a batch", report.duplicates),
        ("in failed batches (not applied)", report.failed_rows),
    ):
        table.add_row(label, f"{count:,}")
    console.print(table)
    console.print(f"sha256 {report.sha256}")
    for name, counted in (
        ("refused", report.refused_reversal),
        ("erased", report.refused_erased),
        ("no evidence", report.refused_no_evidence),
        ("invalid", report.invalid),
        ("superseded", report.superseded),
    ):
        for line in _sample_lines(name, counted):
            console.print(escape(line))
    for batch in report.batches:
        if batch.status is BatchStatus.FAILED:
            console.print(
                f"[red]batch {batch.number} (lines {batch.first_line}–{batch.last_line}) "
                f"failed and was rolled back:[/red] {escape(batch.error or '')}"
            )
    if not report.complete:
        committed = sum(b.status is BatchStatus.COMMITTED for b in report.batches)
        console.print(
            f"[red]stopped:[/red] {committed} batch(es) committed; the rest of the file was "
            "not applied. Running the same file again is safe."
        )
