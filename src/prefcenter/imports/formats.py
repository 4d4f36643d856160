"""Owns reading import files: plain CSV, Mailchimp audience exports and SendGrid suppression
exports, row by row, into consent rows with their line numbers.

Pure: text in, rows out, no database. A broken row (bad address, unknown status, bad time) is
yielded as a `BrokenRow` and reading goes on; only a file whose header cannot be understood
fails as a whole (`UnreadableImport`).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import PurePath
from typing import IO, TYPE_CHECKING, TextIO

from prefcenter.consent.rules import Status
from prefcenter.contacts.addresses import Address, InvalidAddress, parse_address
from prefcenter.imports.errors import UnreadableImport

if TYPE_CHECKING:
    from _csv import Reader

# A cell longer than this is no address or time; csv's own limit (128 KiB) still bounds memory.
_MAX_CELL = 4_096


class ImportFormat(StrEnum):
    AUTO = "auto"  # sniffed from the header row
    CSV = "csv"  # email,status[,occurred_at][,evidence]
    MAILCHIMP = "mailchimp"  # an audience export: one file per status
    SENDGRID = "sendgrid"  # a suppression export: every row is an opt-out


@dataclass(frozen=True, slots=True)
class ImportRow:
    line: int  # the file's line on which the row ends (the header is line 1)
    address: Address
    status: Status  # SUBSCRIBED or UNSUBSCRIBED
    occurred_at: datetime | None  # None: the import's own time
    # The row's own proof of consent (plain CSV's `evidence` column: the form, its wording,
    # the time and place the person agreed); None when the file gives none.
    evidence: str | None = None


@dataclass(frozen=True, slots=True)
class BrokenRow:
    line: int
    email: str  # the address cell as given (possibly empty)
    problem: str


Row = ImportRow | BrokenRow


@dataclass(frozen=True, slots=True)
class _Layout:
    """Where a format finds what it needs in a row."""

    format: ImportFormat
    email: int
    status: int | None  # a status column (plain CSV), or None: `fixed_status` for every row
    fixed_status: Status | None
    times: tuple[int, ...]  # columns holding occurred_at, first non-empty wins
    time_kind: str  # "rfc3339" | "mailchimp" | "sendgrid"
    evidence: int | None = None  # a column holding the row's proof of consent


_STATUS_WORDS = {"subscribed": Status.SUBSCRIBED, "unsubscribed": Status.UNSUBSCRIBED}
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")
# Mailchimp writes times as `2024-03-14 09:40:28`, in UTC, without an offset.
_MAILCHIMP_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}")
_UNIX_TIME = re.compile(r"\d{1,12}(\.\d+)?")
# Mailchimp names each export file after the status of the contacts in it.
_MAILCHIMP_OPTED_OUT_FILES = ("unsubscribed", "cleaned")
_MAILCHIMP_OPTED_OUT_COLUMNS = ("unsub_time", "clean_time")
_MAILCHIMP_SUBSCRIBED_COLUMNS = ("confirm_time", "optin_time")


def _names(header: list[str]) -> list[str]:
    return [cell.strip().lower() for cell in header]


def sniff_format(header: list[str]) -> ImportFormat:
    """Which export a header row comes from; `UnreadableImport` when none fits."""
    names = _names(header)
    if "email address" in names:
        return ImportFormat.MAILCHIMP
    if "email" in names and "created" in names:
        # SendGrid's bounce export also has a `status` column (an SMTP code): `created` first.
        return ImportFormat.SENDGRID
    if "email" in names and "status" in names:
        return ImportFormat.CSV
    raise UnreadableImport(
        "The header row names no known layout: plain CSV needs `email` and `status` columns, "
        "a Mailchimp export an `Email Address` column, a SendGrid export `email` and `created`."
    )


def _column(names: list[str], name: str, fmt: ImportFormat) -> int:
    try:
        return names.index(name)
    except ValueError:
        raise UnreadableImport(f"A {fmt.value} file needs a `{name}` column.") from None


def _mailchimp_status(names: list[str], file_name: str | None) -> Status:
    """Opted out when either the columns or the file's name say so; subscribed only when one
    of them says that; otherwise the file is refused rather than guessed at (fail safe)."""
    stem = PurePath(file_name).name.lower() if file_name else ""
    if any(c in names for c in _MAILCHIMP_OPTED_OUT_COLUMNS) or stem.startswith(
        _MAILCHIMP_OPTED_OUT_FILES
    ):
        return Status.UNSUBSCRIBED
    if stem.startswith("subscribed") or any(c in names for c in _MAILCHIMP_SUBSCRIBED_COLUMNS):
        return Status.SUBSCRIBED
    raise UnreadableImport(
        "Cannot tell whether this Mailchimp export lists subscribed or opted-out contacts: "
        "keep its file name (`subscribed_…`, `unsubscribed_…`, `cleaned_…`) or its "
        "OPTIN_TIME / UNSUB_TIME / CLEAN_TIME columns."
    )


def layout_of(header: list[str], fmt: ImportFormat, file_name: str | None) -> _Layout:
    if fmt is ImportFormat.AUTO:
        fmt = sniff_format(header)
    names = _names(header)
    if fmt is ImportFormat.CSV:
        times: tuple[int, ...] = (names.index("occurred_at"),) if "occurred_at" in names else ()
        return _Layout(
            fmt,
            _column(names, "email", fmt),
            _column(names, "status", fmt),
            None,
            times,
            "rfc3339",
            names.index("evidence") if "evidence" in names else None,
        )
    if fmt is ImportFormat.MAILCHIMP:
        status = _mailchimp_status(names, file_name)
        wanted = (
            _MAILCHIMP_OPTED_OUT_COLUMNS
            if status is Status.UNSUBSCRIBED
            else _MAILCHIMP_SUBSCRIBED_COLUMNS
        )
        times = tuple(names.index(c) for c in wanted if c in names)
        return _Layout(fmt, _column(names, "email address", fmt), None, status, times, "mailchimp")
    times = (names.index("created"),) if "created" in names else ()
    return _Layout(fmt, _column(names, "email", fmt), None, Status.UNSUBSCRIBED, times, "sendgrid")


def parse_time(text: str, kind: str) -> datetime:
    """A row's time, UTC-aware; ValueError names what was expected."""
    if kind == "sendgrid" and _UNIX_TIME.fullmatch(text):
        return datetime.fromtimestamp(float(text), UTC)
    if _RFC3339.fullmatch(text):
        return datetime.fromisoformat(text.replace("z", "Z")).astimezone(UTC)
    if kind != "rfc3339" and _MAILCHIMP_TIME.fullmatch(text):
        return datetime.fromisoformat(text).replace(tzinfo=UTC)
    if kind == "rfc3339":
        raise ValueError("occurred_at must be RFC 3339 with an offset, e.g. 2026-11-25T12:00:00Z")
    raise ValueError(f"{text[:40]!r} is not a time this {kind} export uses")


def _cell(row: list[str], index: int) -> str:
    return row[index].strip()[:_MAX_CELL] if index < len(row) else ""


def _row(layout: _Layout, row: list[str], line: int) -> Row:
    email = _cell(row, layout.email)
    if not email:
        return BrokenRow(line, email, "no address")
    try:
        address = parse_address(email)
    except InvalidAddress as exc:
        return BrokenRow(line, email, f"invalid address: {exc}")
    if layout.status is not None:
        word = _cell(row, layout.status).lower()
        status = _STATUS_WORDS.get(word)
        if status is None:
            return BrokenRow(
                line, email, f"unknown status {word[:40]!r}: use subscribed or unsubscribed"
            )
    else:
        assert layout.fixed_status is not None
        status = layout.fixed_status
    occurred_at: datetime | None = None
    for index in layout.times:
        text = _cell(row, index)
        if text:
            try:
                occurred_at = parse_time(text, layout.time_kind)
            except (ValueError, OverflowError, OSError) as exc:
                return BrokenRow(line, email, f"bad time: {exc}")
            break
    evidence = _cell(row, layout.evidence) if layout.evidence is not None else ""
    return ImportRow(line, address, status, occurred_at, evidence or None)


def read_rows(
    text: TextIO, *, fmt: ImportFormat, file_name: str | None = None
) -> tuple[ImportFormat, Iterator[Row]]:
    """The file's format (sniffed for AUTO) and its rows, read lazily.

    `text` must be opened with `newline=""` (csv's requirement, so quoted line breaks and
    CRLF work) and `encoding="utf-8-sig"` (a BOM is dropped). Blank lines are skipped. The
    header is read at once: an unreadable one raises `UnreadableImport` before any row.
    """
    reader = csv.reader(text)
    try:
        header = next((row for row in reader if any(c.strip() for c in row)), None)
    except csv.Error as exc:
        raise UnreadableImport(f"The header row cannot be read: {exc}") from None
    if header is None:
        raise UnreadableImport("The file is empty: it needs a header row.")
    header = [cell.removeprefix("\ufeff") for cell in header]
    layout = layout_of(header, fmt, file_name)
    return layout.format, _rows(reader, layout)


def _rows(reader: Reader, layout: _Layout) -> Iterator[Row]:
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            # A field past csv's size limit, say: this row is lost, the file goes on.
            yield BrokenRow(reader.line_num, "", f"unreadable row: {exc}")
            continue
        if not any(cell.strip() for cell in row):
            continue
        yield _row(layout, row, reader.line_num)


def open_text(binary: IO[bytes]) -> io.TextIOWrapper:
    """The text of an import file as `read_rows` wants it: UTF-8 with or without a BOM, line
    ends left to csv, bytes that are not UTF-8 replaced by U+FFFD (which no address accepts,
    so such a row is reported as broken instead of failing the file)."""
    return io.TextIOWrapper(binary, encoding="utf-8-sig", errors="replace", newline="")
