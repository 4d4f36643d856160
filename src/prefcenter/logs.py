"""Owns what the service writes to its logs: tokens and addresses redacted out of every line,
as text or one JSON object per line, and the logging configuration `prefcenter serve` gives
uvicorn (its own access and error logs included).

A manage token never expires, so a log line holding `/u/<token>` lets whoever reads the logs
act for that recipient; an address in a log outlives the contact's erasure. Every handler
therefore runs `RedactingFilter`: a token (the rest of a `/u/`, `/p/` or `/c/` path, or anything
shaped like one) becomes `tok:<8 hex of its SHA-256>`, the same for the same link, so that one
recipient's requests can still be followed; a query string becomes `?[redacted]`; an address
becomes `[address]`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import logging.config
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from prefcenter.settings import LogFormat

TEXT_FORMAT = "%(levelname)s %(name)s: %(message)s"
# The logger of the one line per request (request_log).
REQUEST_LOGGER = "prefcenter.request"
# What uvicorn logs each request with: client, method, path with its query, version, status.
UVICORN_ACCESS_FORMAT = '%s - "%s %s HTTP/%s" %d'
ADDRESS = "[address]"
QUERY = "?[redacted]"
# uvicorn's own level below DEBUG (`--log-level trace`).
TRACE = 5
_DONE = "prefcenter_redacted"
# A record's attribute (`extra={FIELDS: {...}}`) of fields a JSON line carries beside the
# message, e.g. the request line's route and status; redacted like the message.
FIELDS = "fields"

# Each pattern is linear in the text (no quantifier backtracks over more than one run of
# characters, and a run is only started once): log lines carry request paths, and a request
# path is whatever a caller sends. Each runs only when the character it needs is there, so
# an ordinary access line costs a few microseconds.
#
# A %-escape of a character that needs none (a letter, a digit, `-._~`) or of `/`: the router
# decodes the path before matching it, so `/u%2F<token>` and `/%75/<token>` are recipient
# links too, and a token may arrive with any of its characters escaped.
_PLAIN_ESCAPE = re.compile(r"%(?:[46][1-9A-Fa-f]|[57][0-9Aa]|3[0-9]|2[DEFdef]|5[Ff]|7[Ee])")
# The whole rest of a recipient path is its token (the routes take it as a `path`), up to the
# query, the end of the path or a quote; a fingerprint already there is left as it is, and so
# is a route template's placeholder (`/u/{token}`: no token is made of braces).
_RECIPIENT_PATH = re.compile(
    r"(/[upc]/)(?!(?:tok:[0-9a-f]{8}|\{[a-z_]+\})(?![^\s?#\"'<>]))([^\s?#\"'<>]+)"
)
# A token anywhere else, e.g. in an exception's text: `<version>.<kid>.<payload>.<tag>`, of
# version 1 (links mailed before purposes were split) or 2 (tokens.VERSION).
_TOKEN = re.compile(
    r"(?<![A-Za-z0-9_.-])[12]\.[A-Za-z0-9]{1,16}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{22}"
    r"(?![A-Za-z0-9_-])"
)
_SHORTEST_TOKEN = len("1.k.") + 8 + len(".") + 22
# A query string after a path: `?email=…`, `?q=…`.
_QUERY = re.compile(r"\?(?<=[A-Za-z0-9_/.%~-]\?)[^\s\"'<>]+")
# An address as it may reach a log, also with its `@` escaped. The local part: RFC 5322
# atext, non-ASCII (also UTF-8 read as Latin-1, as uvicorn decodes a raw path) and
# %-escapes; not `/`, `?` or `#`, which end a path segment. A match starts only where a run
# of such characters starts (the look-behind).
_NON_ASCII = "\x80-\U0010ffff"
_LOCAL = rf"A-Za-z0-9.!#$%&'*+=^_`{{|}}~{_NON_ASCII}-"
_DOMAIN_LABEL = rf"[A-Za-z0-9%_{_NON_ASCII}-]+"
_ADDRESS = re.compile(rf"(?<![{_LOCAL}])[{_LOCAL}]+(?:@|%40){_DOMAIN_LABEL}(?:\.{_DOMAIN_LABEL})*")


def fingerprint(token: str) -> str:
    """A short stand-in for a token: the same link gives the same one, and it cannot be
    turned back into the token (a token holds a 128-bit MAC)."""
    digest = hashlib.sha256(token.encode("utf-8", "backslashreplace")).hexdigest()
    return f"tok:{digest[:8]}"


def _unescape(match: re.Match[str]) -> str:
    return chr(int(match[0][1:], 16))


def _path_fingerprint(match: re.Match[str]) -> str:
    return match[1] + fingerprint(match[2])


def _token_fingerprint(match: re.Match[str]) -> str:
    return fingerprint(match[0])


def _address(match: re.Match[str]) -> str:
    # An apostrophe may start a local part, but more often it opens a quoted `repr`: keep it.
    found = match[0]
    return "'" * (len(found) - len(found.lstrip("'"))) + ADDRESS


def redact(text: str) -> str:
    """The text without tokens, query strings or addresses (see the module)."""
    if "%" in text:
        text = _PLAIN_ESCAPE.sub(_unescape, text)
    if "/" in text:
        text = _RECIPIENT_PATH.sub(_path_fingerprint, text)
    if len(text) >= _SHORTEST_TOKEN and ("2." in text or "1." in text):
        text = _TOKEN.sub(_token_fingerprint, text)
    if "?" in text:
        text = _QUERY.sub(QUERY, text)
    if "@" in text or "%40" in text:
        text = _ADDRESS.sub(_address, text)
    return text


class RedactingFilter(logging.Filter):
    """Redacts a record in place before any handler formats it: its message (with its
    arguments), the text of its exception and its stack. Lets every record through.

    uvicorn's access records keep their arguments (client, method, path, version, status),
    each redacted, as uvicorn's own access formatter unpacks them. Any other record is
    collapsed into its redacted message: an argument that is an exception or an object
    (a database error quoting an address) is only seen whole once it is formatted.
    """

    _exceptions = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.__dict__.get(_DONE):  # a record reaching a second handler
            return True
        record.__dict__[_DONE] = True
        if record.name == "uvicorn.access" and isinstance(record.args, tuple):
            if record.msg != UVICORN_ACCESS_FORMAT:
                record.msg = redact(str(record.msg))
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        else:
            record.msg = redact(_message(record))
            record.args = None
        if "color_message" in record.__dict__:  # uvicorn's coloured variant of the message
            del record.__dict__["color_message"]
        if record.exc_info and not record.exc_text:
            record.exc_text = self._exceptions.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        fields = record.__dict__.get(FIELDS)
        if isinstance(fields, dict):
            record.__dict__[FIELDS] = {
                name: redact(value) if isinstance(value, str) else value
                for name, value in fields.items()
            }
        return True


def _message(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except (TypeError, ValueError, KeyError):
        # The formatter would report the failure with the raw arguments: keep them out.
        return f"{record.msg!s} [arguments that do not fit the message withheld]"


class TextFormatter(logging.Formatter):
    """`LEVEL logger: message`; exception and stack text redacted here too, for a record that
    reached this formatter without the filter."""

    def __init__(self, fmt: str = TEXT_FORMAT) -> None:
        super().__init__(fmt)

    def formatException(self, ei: Any) -> str:  # noqa: N802 - logging's name
        return redact(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:  # noqa: N802 - logging's name
        return redact(super().formatStack(stack_info))


class JsonFormatter(TextFormatter):
    """One JSON object per line: `time` (UTC), `level`, `logger`, `message`, the record's
    fields (FIELDS) if it has any, and `exc` or `stack` when the record has one. ASCII only,
    so a line is a line whatever it holds."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = record.__dict__.get(FIELDS)
        if isinstance(fields, dict):
            entry.update((k, v) for k, v in fields.items() if k not in entry)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry)


_LEVELS: Mapping[str, int] = {
    "critical": logging.CRITICAL,
    "error": logging.ERROR,
    "warning": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
    "trace": TRACE,
}


def log_config(*, level: str, log_format: LogFormat) -> dict[str, Any]:
    """The `logging.config.dictConfig` for the service and uvicorn. Names, not objects: uvicorn
    hands it to every worker process it spawns, which builds its own filter and formatter.

    As uvicorn does by default, the access log goes to stdout, everything else to stderr.
    """
    number = _LEVELS[level.lower()]
    formatter = "JsonFormatter" if log_format == "json" else "TextFormatter"

    def handler(stream: str) -> dict[str, Any]:
        return {
            "class": "logging.StreamHandler",
            "stream": f"ext://sys.{stream}",
            "formatter": "redacted",
            "filters": ["redact"],
        }

    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"redact": {"()": f"{__name__}.RedactingFilter"}},
        # Not uvicorn's names ("default", "access"): it would set `use_colors` on those.
        "formatters": {"redacted": {"()": f"{__name__}.{formatter}"}},
        "handlers": {"stderr": handler("stderr"), "stdout": handler("stdout")},
        "loggers": {
            "uvicorn": {"handlers": ["stderr"], "level": number, "propagate": False},
            "uvicorn.error": {"level": number},
            "uvicorn.access": {"handlers": ["stdout"], "level": number, "propagate": False},
            # The request line (request_log), in place of uvicorn's access log.
            REQUEST_LOGGER: {"handlers": ["stdout"], "level": number, "propagate": False},
        },
        "root": {"handlers": ["stderr"], "level": number},
    }


def configure_logging(config: dict[str, Any]) -> None:
    """Apply `log_config(...)` in this process (uvicorn applies it again in its workers)."""
    logging.addLevelName(TRACE, "TRACE")
    logging.config.dictConfig(config)
