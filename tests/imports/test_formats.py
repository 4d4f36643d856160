"""Reading import files, without a database: each layout, sniffing, and the tolerance for
BOMs, CRLF, quotes, blank lines and broken rows (reported with their line, never fatal)."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import pytest

from prefcenter.consent.rules import Status
from prefcenter.imports.errors import UnreadableImport
from prefcenter.imports.formats import (
    BrokenRow,
    ImportFormat,
    ImportRow,
    Row,
    open_text,
    read_rows,
)


def read(
    data: bytes, fmt: ImportFormat = ImportFormat.AUTO, file_name: str | None = None
) -> tuple[ImportFormat, list[Row]]:
    found, rows = read_rows(open_text(io.BytesIO(data)), fmt=fmt, file_name=file_name)
    return found, list(rows)


def good(rows: list[Row]) -> list[ImportRow]:
    return [r for r in rows if isinstance(r, ImportRow)]


def broken(rows: list[Row]) -> list[BrokenRow]:
    return [r for r in rows if isinstance(r, BrokenRow)]


class TestPlainCsv:
    def test_rows_with_bom_crlf_quotes_and_blank_lines(self) -> None:
        data = (
            b"\xef\xbb\xbfemail,status,occurred_at\r\n"
            b'"Ada@Example.com",subscribed,2024-01-02T03:04:05Z\r\n'
            b"\r\n"
            b'grace@example.com,"UNSUBSCRIBED",\r\n'
        )
        fmt, rows = read(data)

        assert fmt is ImportFormat.CSV
        ada, grace = good(rows)
        assert (ada.line, ada.address.normalised, ada.address.given) == (
            2,
            "ada@example.com",
            "Ada@Example.com",
        )
        assert ada.status is Status.SUBSCRIBED
        assert ada.occurred_at == datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
        assert (grace.line, grace.status, grace.occurred_at) == (4, Status.UNSUBSCRIBED, None)

    def test_columns_in_any_order_and_case(self) -> None:
        _, rows = read(b"Status , EMAIL\nsubscribed,ada@example.com\n")

        assert [r.address.normalised for r in good(rows)] == ["ada@example.com"]

    def test_broken_rows_are_reported_with_their_line_and_reading_goes_on(self) -> None:
        data = (
            b"email,status,occurred_at\n"
            b"not-an-address,subscribed,\n"
            b"ada@example.com,pending,\n"
            b"grace@example.com,subscribed,2024-01-02 03:04:05\n"
            b",subscribed,\n"
            b"bob@exa\xffmple.com,subscribed,\n"
            b"carol@example.com,subscribed,\n"
        )
        _, rows = read(data)

        assert [(r.line, r.problem.split(":")[0]) for r in broken(rows)] == [
            (2, "invalid address"),
            (3, "unknown status 'pending'"),
            (4, "bad time"),
            (5, "no address"),
            (6, "invalid address"),
        ]
        assert [r.line for r in good(rows)] == [7]

    def test_a_quoted_line_break_keeps_line_numbers_true(self) -> None:
        data = (
            b"email,status,note\n"
            b'ada@example.com,subscribed,"two\nlines"\n'
            b"bob@example.com,subscribed,\n"
        )
        _, rows = read(data)

        assert [r.line for r in good(rows)] == [3, 4]

    def test_occurred_at_needs_an_offset(self) -> None:
        _, rows = read(
            b"email,status,occurred_at\nada@example.com,subscribed,2024-01-02T03:04:05\n"
        )

        assert "RFC 3339" in broken(rows)[0].problem


class TestMailchimp:
    HEADER = b"Email Address,First Name,MEMBER_RATING,OPTIN_TIME,CONFIRM_TIME"

    def test_subscribed_export_takes_the_confirm_time(self) -> None:
        data = self.HEADER + b"\nada@example.com,Ada,2,2024-01-01 10:00:00,2024-01-02 11:00:00\n"
        fmt, rows = read(data, file_name="subscribed_members_export_1a2b.csv")

        assert fmt is ImportFormat.MAILCHIMP
        (row,) = good(rows)
        assert row.status is Status.SUBSCRIBED
        assert row.occurred_at == datetime(2024, 1, 2, 11, tzinfo=UTC)

    @pytest.mark.parametrize(
        "name", ["unsubscribed_members_export_1a2b.csv", "cleaned_members_export_1a2b.csv"]
    )
    def test_unsubscribed_and_cleaned_files_are_opt_outs_by_name(self, name: str) -> None:
        data = self.HEADER + b"\nada@example.com,Ada,2,2024-01-01 10:00:00,\n"
        _, rows = read(data, file_name=f"/exports/{name}")

        assert good(rows)[0].status is Status.UNSUBSCRIBED

    @pytest.mark.parametrize("column", [b"UNSUB_TIME", b"CLEAN_TIME"])
    def test_opt_out_columns_win_over_a_misleading_name(self, column: bytes) -> None:
        data = self.HEADER + b"," + column + b"\nada@example.com,,,,,2024-05-06 07:08:09\n"
        _, rows = read(data, file_name="subscribed_renamed.csv")

        (row,) = good(rows)
        assert row.status is Status.UNSUBSCRIBED
        assert row.occurred_at == datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)

    def test_an_export_that_does_not_say_its_status_is_refused(self) -> None:
        with pytest.raises(UnreadableImport):
            read(b"Email Address,First Name\nada@example.com,Ada\n", file_name="contacts.csv")


class TestSendGrid:
    def test_every_row_is_an_opt_out_at_its_unix_time(self) -> None:
        fmt, rows = read(b"email,created\nada@example.com,1700000000\n")

        assert fmt is ImportFormat.SENDGRID
        (row,) = good(rows)
        assert row.status is Status.UNSUBSCRIBED
        assert row.occurred_at == datetime.fromtimestamp(1700000000, UTC)

    def test_a_bounce_export_with_a_status_column_is_sendgrid(self) -> None:
        fmt, rows = read(b"email,created,reason,status\nada@example.com,1700000000,bad,5.1.1\n")

        assert fmt is ImportFormat.SENDGRID
        assert good(rows)[0].status is Status.UNSUBSCRIBED

    def test_a_bad_time_is_a_broken_row(self) -> None:
        _, rows = read(b"email,created\nada@example.com,yesterday\n")

        assert broken(rows)[0].line == 2


class TestUnreadable:
    @pytest.mark.parametrize(
        "data", [b"", b"\r\n\r\n", b"address,state\nada@example.com,subscribed\n"]
    )
    def test_a_file_without_a_known_header_fails_as_a_whole(self, data: bytes) -> None:
        with pytest.raises(UnreadableImport):
            read(data)

    def test_a_format_given_explicitly_needs_its_columns(self) -> None:
        with pytest.raises(UnreadableImport, match="status"):
            read(b"email,created\nada@example.com,1\n", fmt=ImportFormat.CSV)
