"""Owns how `prefcenter audit verify` shows itself on a terminal: a progress bar on stderr for
long chains and a one-line verdict."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

from prefcenter.audit.verify import Progress as ProgressCallback
from prefcenter.audit.verify import VerifyResult


@contextmanager
def verify_progress(console: Console) -> Iterator[ProgressCallback]:
    """A progress callback for verify_chain, drawn on `console` (nothing when not a terminal)."""
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("verifying events", total=None)

        def advance(done: int, total: int) -> None:
            bar.update(task, completed=done, total=max(total, done))

        yield advance


def print_result(console: Console, result: VerifyResult) -> None:
    if result.ok:
        console.print(f"[green]chain ok[/green]: {result.checked} events verified")
        return
    if result.first_bad_seq is not None:
        where = f" at first bad seq {result.first_bad_seq}"
    elif result.first_bad_contact is not None:
        where = f" at first bad contact {result.first_bad_contact}"
    else:
        where = ""  # nothing in the trail to point at: the audit key is wrong
    console.print(f"[red]chain FAILED[/red]{where}: {result.detail}")
