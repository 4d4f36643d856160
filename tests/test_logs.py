"""What the logs may hold: the redaction of tokens, query strings and addresses out of every
record (message, arguments, exception, stack), text and JSON lines, and the configuration
`prefcenter serve` gives uvicorn. The end-to-end proof against a real server is in
tests/test_logs_live.py."""

from __future__ import annotations

import json
import logging
import pickle
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import pytest
from pydantic import ValidationError
from uvicorn.logging import AccessFormatter

from prefcenter import logs
from prefcenter.settings import parse_signing_keys
from prefcenter.tokens import TokenClaims, TokenPurpose, sign_token
from tests.support.harness import TEST_SIGNING_KEYS, make_settings

RING = parse_signing_keys(TEST_SIGNING_KEYS)
ADDRESS = "Ada.Lovelace+news@Example.com"
ACCESS_FORMAT = logs.UVICORN_ACCESS_FORMAT

ExcInfo = tuple[type[BaseException], BaseException, TracebackType]


def make_token(purpose: TokenPurpose = TokenPurpose.MANAGE, campaign: str | None = None) -> str:
    claims = TokenClaims(
        contact_id="c0ffee00c0ffee00c0ffee00",
        topic="newsletter",
        campaign_id=campaign,
        issued_at=datetime(2026, 11, 25, tzinfo=UTC),
    )
    return sign_token(RING, purpose, claims)


TOKEN = make_token()


def record(
    msg: object,
    *args: object,
    name: str = "prefcenter.test",
    exc_info: ExcInfo | None = None,
    stack_info: str | None = None,
) -> logging.LogRecord:
    made = logging.LogRecord(name, logging.INFO, __file__, 1, msg, args or None, exc_info)
    made.stack_info = stack_info
    return made


def filtered(made: logging.LogRecord) -> logging.LogRecord:
    assert logs.RedactingFilter().filter(made) is True
    return made


def throw(exc: BaseException) -> None:
    raise exc


def caught(exc: BaseException) -> ExcInfo:
    """The exception with the traceback of having been raised."""
    try:
        throw(exc)
    except BaseException:
        kind, value, traceback = sys.exc_info()
    assert kind is not None
    assert value is not None
    assert traceback is not None
    return kind, value, traceback


def assert_no_secret(text: str) -> None:
    assert TOKEN not in text
    assert TOKEN[-22:] not in text  # not even its MAC
    assert "lovelace" not in text.lower()
    assert "example.com" not in text.lower()


class TestRedact:
    @pytest.mark.parametrize("prefix", ["u", "p", "c"])
    def test_a_recipient_path_keeps_its_shape_with_a_fingerprint(self, prefix: str) -> None:
        redacted = logs.redact(f"GET /{prefix}/{TOKEN} HTTP/1.1")

        assert redacted == f"GET /{prefix}/{logs.fingerprint(TOKEN)} HTTP/1.1"
        assert_no_secret(redacted)

    def test_the_same_link_gives_the_same_fingerprint_and_another_another(self) -> None:
        other = make_token(campaign="spring")

        assert logs.fingerprint(TOKEN) == logs.fingerprint(TOKEN)
        assert logs.fingerprint(TOKEN) != logs.fingerprint(other)
        assert logs.fingerprint(TOKEN).startswith("tok:")
        assert len(logs.fingerprint(TOKEN)) == len("tok:") + 8

    @pytest.mark.parametrize(
        "path",
        [
            f"/u/{TOKEN}/extra/segments",  # the route takes the whole rest as the token
            f"/u/garbage{TOKEN}",
            f"https://prefs.example.org/p/{TOKEN}",
            f"/u/{TOKEN.replace('.', '%2E')}",
            "/u/" + TOKEN[:40],  # a link cut short in a mail client
        ],
    )
    def test_whatever_follows_a_recipient_prefix_is_fingerprinted(self, path: str) -> None:
        redacted = logs.redact(path)

        assert "tok:" in redacted
        assert TOKEN[:20] not in redacted
        assert TOKEN[-20:] not in redacted

    @pytest.mark.parametrize(
        ("path", "prefix"),
        [
            (f"/u%2F{TOKEN}", "u"),
            (f"/%75/{TOKEN}", "u"),
            (f"/%70%2f{TOKEN}", "p"),
            ("/c/" + "".join(f"%{ord(ch):02X}" for ch in TOKEN), "c"),
            ("/u/" + TOKEN.replace(".", "%2E"), "u"),
        ],
    )
    def test_escaped_characters_hide_no_link(self, path: str, prefix: str) -> None:
        """The router decodes these to a recipient path and a token, so the log must too."""
        redacted = logs.redact(f"GET {path} HTTP/1.1")

        assert redacted == f"GET /{prefix}/{logs.fingerprint(TOKEN)} HTTP/1.1"

    def test_an_escaped_control_character_stays_escaped(self) -> None:
        assert logs.redact("/v1/topics/a%0Ab%2Bc") == "/v1/topics/a%0Ab%2Bc"

    @pytest.mark.parametrize("version", ["2", "1"])  # 1: links mailed before purposes split
    def test_a_token_outside_a_path_is_fingerprinted(self, version: str) -> None:
        token = version + TOKEN[1:]
        redacted = logs.redact(f"could not verify token {token}: bad signature")

        assert redacted == f"could not verify token {logs.fingerprint(token)}: bad signature"

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            (f"GET /v1/audit?email={ADDRESS}&limit=5 HTTP/1", "GET /v1/audit?[redacted] HTTP/1"),
            ("/admin/contacts?q=ada%40example.com", "/admin/contacts?[redacted]"),
            (f"/u/{TOKEN}?lang=de", f"/u/{logs.fingerprint(TOKEN)}?[redacted]"),
            ("/admin/audit?email=x&contact_id=y", "/admin/audit?[redacted]"),
        ],
    )
    def test_a_query_string_is_dropped(self, text: str, expected: str) -> None:
        assert logs.redact(text) == expected

    @pytest.mark.parametrize(
        "address",
        [
            ADDRESS,
            ADDRESS.upper(),
            "ada@example.com",
            "ada%40example.com",
            "Ada%40Example.COM",
            "o'brien.ada@example.com",
            "jörg.ada@bücher-example.com",
            "j\u00c3\u00b6rg.ada@example.com",  # UTF-8 bytes read as Latin-1 (a raw path)
            "ada%2Bnews%40example.com",
        ],
    )
    @pytest.mark.parametrize(
        "template",
        [
            "{}",
            "lookup of {} failed",
            "GET /v1/contacts/{} HTTP/1.1",
            "'{}' is not a valid email address",
            "DETAIL:  Key (address)=({}) already exists.",
            '{{"email": "{}"}}',
            "<{}>",
        ],
    )
    def test_an_address_is_replaced(self, address: str, template: str) -> None:
        redacted = logs.redact(template.format(address))

        assert "[address]" in redacted
        assert "example.com" not in redacted.lower()
        assert "ada" not in redacted.lower()

    @pytest.mark.parametrize(
        "text",
        [
            "GET /v1/topics/newsletter HTTP/1.1",
            "Uvicorn running on http://127.0.0.1:8000 (Press CTRL+C to quit)",
            "Started server process [4711]",
            "database connection lost; retrying the transaction once",
            "Are you sure? Yes.",
            '  File "/srv/app/prefcenter/db.py", line 180, in transaction',
            "POST /u/ HTTP/1.1",
        ],
    )
    def test_text_without_secrets_stays_as_it_is(self, text: str) -> None:
        assert logs.redact(text) == text

    @pytest.mark.parametrize(
        "text",
        [
            f"GET /u/{TOKEN}?email={ADDRESS} HTTP/1.1",
            f"{TOKEN} {ADDRESS} /p/{TOKEN}",
            "/c/tok:0123abcd/x?y=z",
        ],
    )
    def test_redacting_twice_changes_nothing_more(self, text: str) -> None:
        once = logs.redact(text)

        assert logs.redact(once) == once

    @pytest.mark.parametrize(
        "text",
        [
            "@" + "a" * 200_000,
            "a" * 200_000 + "%4",
            ("a" * 50 + "/") * 4_000 + "ada@example.com",
            "1.k1." + "A" * 200_000,
            "/v1/" + "a." * 100_000,
        ],
    )
    def test_hostile_long_text_is_redacted_in_one_pass(self, text: str) -> None:
        """A request path is whatever a caller sends: a pattern that backtracked over it
        quadratically would hang the worker logging it (this test with it)."""
        redacted = logs.redact(text)

        assert "ada@example.com" not in redacted


class TestFilter:
    def test_uvicorn_access_record_keeps_its_arguments_redacted(self) -> None:
        made = filtered(
            record(
                ACCESS_FORMAT,
                "127.0.0.1:50000",
                "POST",
                f"/u/{TOKEN}?email={ADDRESS}",
                "1.1",
                200,
                name="uvicorn.access",
            )
        )

        assert made.args == (
            "127.0.0.1:50000",
            "POST",
            f"/u/{logs.fingerprint(TOKEN)}?[redacted]",
            "1.1",
            200,
        )
        # uvicorn's own access formatter unpacks exactly these arguments.
        line = AccessFormatter('%(client_addr)s - "%(request_line)s" %(status_code)s').format(made)
        path = f"/u/{logs.fingerprint(TOKEN)}?[redacted]"
        assert line == f'127.0.0.1:50000 - "POST {path} HTTP/1.1" 200 OK'

    def test_an_argument_that_is_an_object_is_redacted_once_formatted(self) -> None:
        """A database error quoting the row: only its str() holds the address."""
        error = ValueError(f"Key (address)=({ADDRESS}) already exists; link {TOKEN}")

        made = filtered(record("integrity error, rolled back: %s", error))

        assert made.args is None
        assert made.getMessage() == (
            "integrity error, rolled back: Key (address)=([address]) already exists; link "
            f"{logs.fingerprint(TOKEN)}"
        )

    def test_an_address_split_over_arguments_is_still_found(self) -> None:
        made = filtered(record("mail to %s@%s", "ada", "example.com"))

        assert made.getMessage() == "mail to [address]"

    def test_a_message_that_is_not_a_string(self) -> None:
        made = filtered(record(ValueError(ADDRESS)))

        assert made.getMessage() == "[address]"

    def test_arguments_that_do_not_fit_are_withheld(self) -> None:
        made = filtered(record("only %s here", ADDRESS, TOKEN))

        assert_no_secret(made.getMessage())
        assert "withheld" in made.getMessage()

    def test_the_traceback_of_an_exception_is_redacted(self) -> None:
        info = caught(RuntimeError(f"could not serve http://x.test/p/{TOKEN} for {ADDRESS}"))

        made = filtered(record("unhandled error on %s %s", "POST", f"/p/{TOKEN}", exc_info=info))
        line = logging.Formatter(logs.TEXT_FORMAT).format(made)

        assert "Traceback (most recent call last)" in line
        assert "RuntimeError: could not serve http://x.test/p/tok:" in line
        assert f"unhandled error on POST /p/{logs.fingerprint(TOKEN)}" in line
        assert_no_secret(line)

    def test_the_stack_is_redacted(self) -> None:
        made = filtered(record("here", stack_info=f'  File "x.py", line 1\n    go("/u/{TOKEN}")'))

        assert made.stack_info is not None
        assert_no_secret(made.stack_info)
        assert logs.fingerprint(TOKEN) in made.stack_info

    def test_a_record_reaching_a_second_handler_keeps_its_fingerprint(self) -> None:
        made = filtered(record("GET /u/%s", TOKEN))
        first = made.getMessage()

        assert filtered(made).getMessage() == first == f"GET /u/{logs.fingerprint(TOKEN)}"

    def test_uvicorns_coloured_message_is_dropped(self) -> None:
        made = record("GET /u/%s", TOKEN)
        made.__dict__["color_message"] = f"GET /u/{TOKEN}"

        assert "color_message" not in filtered(made).__dict__


class TestFormatters:
    def test_text_formatter_redacts_an_exception_even_without_the_filter(self) -> None:
        info = caught(KeyError(ADDRESS))

        line = logs.TextFormatter().format(record("failed", exc_info=info))

        assert line.startswith("INFO prefcenter.test: failed\nTraceback")
        assert "KeyError: '[address]" in line
        assert_no_secret(line)

    def test_json_line_is_one_object_with_the_fields(self) -> None:
        made = filtered(record("GET %s", f"/u/{TOKEN}?email={ADDRESS}"))

        line = logs.JsonFormatter().format(made)

        assert "\n" not in line
        entry = json.loads(line)
        assert set(entry) == {"time", "level", "logger", "message"}
        assert entry["level"] == "INFO"
        assert entry["logger"] == "prefcenter.test"
        assert entry["message"] == f"GET /u/{logs.fingerprint(TOKEN)}?[redacted]"
        assert datetime.fromisoformat(entry["time"]).utcoffset() is not None

    def test_json_line_carries_the_redacted_exception(self) -> None:
        info = caught(ValueError(f"bad\nlink /c/{TOKEN}\nfor {ADDRESS}"))

        line = logs.JsonFormatter().format(record("boom", exc_info=info))

        assert "\n" not in line
        entry = json.loads(line)
        assert entry["message"] == "boom"
        assert entry["exc"].startswith("Traceback (most recent call last)")
        assert f"/c/{logs.fingerprint(TOKEN)}" in entry["exc"]
        assert_no_secret(entry["exc"])

    def test_json_line_is_ascii_whatever_the_message(self) -> None:
        line = logs.JsonFormatter().format(record("Grüße \u2028 an dich"))

        assert line.isascii()
        assert json.loads(line)["message"] == "Grüße \u2028 an dich"


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """dictConfig changes this process's loggers: put back what pytest and the tests had."""
    names = ("", "uvicorn", "uvicorn.error", "uvicorn.access")
    kept = [
        (lg, lg.handlers[:], lg.level, lg.propagate) for lg in (logging.getLogger(n) for n in names)
    ]
    yield
    for lg, handlers, level, propagate in kept:
        for handler in lg.handlers:
            if handler not in handlers:
                lg.removeHandler(handler)
                handler.close()
        lg.handlers[:] = handlers
        lg.setLevel(level)
        lg.propagate = propagate


class TestLogConfig:
    @pytest.mark.parametrize("log_format", ["text", "json"])
    def test_is_plain_data_for_worker_processes(self, log_format: Any) -> None:
        config = logs.log_config(level="info", log_format=log_format)

        # uvicorn sends it to every worker it spawns: names and values, no objects.
        assert json.loads(json.dumps(config)) == config
        assert pickle.loads(pickle.dumps(config)) == config

    @pytest.mark.usefixtures("restored_logging")
    @pytest.mark.parametrize(
        ("log_format", "formatter"),
        [("text", logs.TextFormatter), ("json", logs.JsonFormatter)],
    )
    def test_every_handler_redacts(
        self, log_format: Any, formatter: type[logging.Formatter]
    ) -> None:
        logs.configure_logging(logs.log_config(level="debug", log_format=log_format))

        handlers = [
            *logging.getLogger().handlers,
            *logging.getLogger("uvicorn").handlers,
            *logging.getLogger("uvicorn.access").handlers,
        ]
        assert len(handlers) == 3
        for handler in handlers:
            assert any(isinstance(f, logs.RedactingFilter) for f in handler.filters)
            assert isinstance(handler.formatter, formatter)
        # uvicorn.error and the service's loggers reach a redacting handler by propagation.
        assert logging.getLogger("uvicorn.error").propagate
        assert logging.getLogger("prefcenter.db").propagate
        assert logging.getLogger().level == logging.DEBUG

    @pytest.mark.usefixtures("restored_logging")
    def test_the_access_log_and_the_error_log_write_no_secret(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        logs.configure_logging(logs.log_config(level="info", log_format="json"))

        logging.getLogger("uvicorn.access").info(
            ACCESS_FORMAT, "127.0.0.1:1", "GET", f"/u/{TOKEN}?email={ADDRESS}", "1.1", 200
        )
        logging.getLogger("uvicorn.error").error(
            "Exception in ASGI application",
            exc_info=caught(RuntimeError(f"boom on /p/{TOKEN} for {ADDRESS}")),
        )
        logging.getLogger("prefcenter.db").warning("lost: %s", ValueError(ADDRESS))

        out, err = capsys.readouterr()
        access = json.loads(out)
        assert access["logger"] == "uvicorn.access"
        assert access["message"] == (
            f'127.0.0.1:1 - "GET /u/{logs.fingerprint(TOKEN)}?[redacted] HTTP/1.1" 200'
        )
        error, warning = (json.loads(line) for line in err.splitlines())
        assert error["logger"] == "uvicorn.error"
        assert "RuntimeError: boom on /p/tok:" in error["exc"]
        assert warning == {**warning, "logger": "prefcenter.db", "message": "lost: [address]"}
        assert_no_secret(out + err)

    @pytest.mark.usefixtures("restored_logging")
    def test_trace_is_uvicorns_level_below_debug(self) -> None:
        logs.configure_logging(logs.log_config(level="trace", log_format="text"))

        assert logging.getLogger().level == logs.TRACE
        assert logging.getLevelName(logs.TRACE) == "TRACE"


class TestSettings:
    def test_text_is_the_default(self) -> None:
        assert make_settings("sqlite:///x.db").log_format == "text"

    @pytest.mark.parametrize(("given", "expected"), [("json", "json"), (" JSON ", "json")])
    def test_json_is_offered(self, given: str, expected: str) -> None:
        assert make_settings("sqlite:///x.db", log_format=given).log_format == expected

    @pytest.mark.parametrize("field", ["log_format", "log_level"])
    def test_an_unknown_value_is_refused(self, field: str) -> None:
        with pytest.raises(ValidationError, match=field):
            make_settings("sqlite:///x.db", **{field: "yaml"})

    def test_the_level_is_read_in_any_case(self) -> None:
        assert make_settings("sqlite:///x.db", log_level="WARNING").log_level == "warning"
