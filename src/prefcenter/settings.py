"""Owns the service's configuration: environment (`PREFCENTER_*`), `.env`, the signing key ring
and the audit key."""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

from fastapi import Request
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from prefcenter.settings_keys import (
    MIN_AUDIT_KEY_BYTES,
    MIN_SECRET_BYTES,
    ConfigError,
    SigningKey,
    local_audit_key,
    local_signing_key,
    parse_signing_keys,
)

# The key ring's syntax and the local key files live in settings_keys; the rest of the service
# imports them from here.
__all__ = [
    "MIN_AUDIT_KEY_BYTES",
    "MIN_SECRET_BYTES",
    "ConfigError",
    "LogFormat",
    "LogLevel",
    "Settings",
    "SigningKey",
    "parse_listen_address",
    "parse_signing_keys",
    "settings_of",
    "signing_keys_of",
]

LogFormat = Literal["text", "json"]
LogLevel = Literal["critical", "error", "warning", "info", "debug", "trace"]
_TOPIC_KEY = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
_MAILBOX = re.compile(r"[A-Za-z0-9.!#$%&'*+/=^_`{|}~-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+")


def parse_listen_address(value: str) -> tuple[str, int]:
    """`host:port` (`[::1]:9100` for IPv6) as (host, port); ValueError if it is not one."""
    host, sep, port = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} is not host:port, e.g. 127.0.0.1:9100")
    return host, int(port)


class Settings(BaseSettings):
    """Everything the service reads from its environment, parsed once and passed down."""

    model_config = SettingsConfigDict(
        env_prefix="PREFCENTER_", env_file=".env", extra="ignore", frozen=True
    )

    database_url: str = "sqlite:///./prefcenter.db"
    base_url: str = "http://127.0.0.1:8000"
    signing_keys: Annotated[str, NoDecode] = ""
    # Key ids (no secrets) taken out of the ring on purpose: their links get the "expired link"
    # page instead of the one for a link that was changed on the way.
    retired_signing_keys: Annotated[str, NoDecode] = ""
    # Secret of the audit trail (see audit.keys); like the signing keys, generated beside a
    # SQLite database when unset and required on PostgreSQL.
    audit_key: str = ""
    # The mailbox for the `mailto:` part of List-Unsubscribe; unset or empty: no mailto part.
    unsubscribe_mailto: str | None = None
    # Shown at the top of recipient pages, e.g. "Example Inc".
    organization_name: str | None = None
    # How a person reaches the support desk (an address or a URL), shown where a page cannot
    # do what they ask without proof that they hold the mailbox.
    support_contact: str | None = None
    # Consent receipts (GET /v1/contacts/{id}/receipt): where the controller is established,
    # e.g. "DE" or "EU", and the privacy notice the receipts point to.
    jurisdiction: str | None = None
    privacy_policy_url: str | None = None
    # How long a double opt-in confirmation link works.
    confirm_link_ttl_days: int = Field(default=7, ge=1, le=90)
    # How long before it takes effect a notice version must be published (the mail of a
    # material one goes out in between); sooner needs an admin's reason.
    notice_period_days: int = Field(default=30, ge=0, le=365)
    # Largest JSON request body accepted, in bytes; larger bodies get a 413 problem. A batch of
    # 10,000 links with long campaign ids needs a few MiB.
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    # How long a request body may take to arrive, in seconds; a later one gets a 408 and its
    # connection is closed. Bodies that stream (eligibility stream, imports): how long each
    # read may wait for data instead.
    body_timeout_seconds: float = Field(default=10.0, gt=0, le=3600)
    # How long a SQLite writer waits for the write lock before giving up (a 503 problem).
    sqlite_busy_timeout_s: float = Field(default=30.0, gt=0)
    db_pool_size: int = Field(default=10, ge=1)
    # PostgreSQL: how long a statement waits for a lock (another session holding the audit
    # head, a row being changed) before it gives up, and how long any statement may run (0:
    # no limit; exports and `audit verify` run long statements); either way the request is
    # answered 503 + Retry-After and its connection goes back to the pool. (SQLite: the busy
    # timeout above.)
    db_lock_timeout_s: float = Field(default=10.0, gt=0, le=3600)
    db_statement_timeout_s: float = Field(default=0.0, ge=0, le=86400)
    # PostgreSQL: a streaming replica (hot standby) for the heavy reads: the eligibility API,
    # the audience and suppression exports, audit queries and exports, lookups (replica.py).
    # Each such read first waits until the replica has replayed the primary's WAL position of
    # the request's start, at most `read_replica_max_wait_ms`, else it reads the primary; a
    # replica found unreachable is tried again after `read_replica_retry_s`.
    read_database_url: str | None = None
    read_replica_max_wait_ms: int = Field(default=250, ge=0, le=60_000)
    read_replica_retry_s: float = Field(default=5.0, ge=0, le=3600)
    # On SIGTERM: how long the server keeps serving while `/readyz` answers 503 (a load
    # balancer's time to notice), then how long in-flight requests and the outbox worker's
    # deliveries may take to finish before they are cut off.
    shutdown_drain_s: float = Field(default=0.0, ge=0, le=300)
    shutdown_timeout_s: int = Field(default=30, ge=1, le=3600)
    # Only these proxies' X-Forwarded-For is believed when recording a client address.
    trusted_proxies: Annotated[str, NoDecode] = ""
    log_level: LogLevel = "info"
    # `json`: one JSON object per line (see logs.py); either way tokens and addresses are
    # redacted out of every line.
    log_format: LogFormat = "text"
    # `host:port`: GET /metrics is served there, without authentication, and not on the app
    # (monitoring.listener). Unset: on the app, for API keys with the `metrics` scope.
    metrics_listen: str | None = None
    # Swagger UI at /docs (/openapi.json is always served; ReDoc never). Unset: on with SQLite
    # (a try-out on one host), off with PostgreSQL (production).
    api_docs: bool | None = None

    # Events coming in (inbound.router): each ESP's route answers 404 until its setting is set.
    # Amazon SNS topics whose SES notifications are accepted (comma-separated ARNs).
    ses_topic_arns: Annotated[str, NoDecode] = ""
    # SendGrid's "Signed Event Webhook" verification key (base64 DER, as its console shows it,
    # or PEM).
    sendgrid_public_key: str | None = None
    # SendGrid group unsubscribes: `group_id:topic[,group_id:topic…]`; a group not listed
    # opts the address out of all marketing (when in doubt, suppress more).
    sendgrid_group_topics: Annotated[str, NoDecode] = ""
    mailgun_signing_key: str | None = None
    postmark_webhook_user: str | None = None
    postmark_webhook_password: str | None = None
    # How old a signed timestamp (SendGrid, Mailgun, SNS) may be. Every accepted event's id is
    # remembered longer than this (inbound.models.RECEIPT_RETENTION), so a replay within it
    # changes nothing either.
    inbound_timestamp_tolerance_s: int = Field(default=86_400, ge=60, le=7 * 86_400)
    # Soft bounces (a full mailbox, a greylisting server): this many within the window make
    # the address `bounced`, as one hard bounce does.
    soft_bounce_limit: int = Field(default=3, ge=1, le=100)
    soft_bounce_window_days: int = Field(default=7, ge=1, le=365)
    # Outgoing mail (prefcenter.mail.config reads it): smtp://, smtps://, maildir:///path, or
    # `off`. Unset: a Maildir beside a SQLite database file, no mail on PostgreSQL.
    mail_url: str | None = None
    # The From of every mail; required once mail is on, but for the default Maildir.
    mail_from: str | None = None
    # How long an idle outbox worker waits before it looks for due messages again.
    outbox_poll_seconds: float = Field(default=1.0, gt=0, le=300)
    # How long a worker may hold the messages it claimed before another may take them over
    # (it died, or hangs): a message is sent again at the earliest this long after a crash.
    outbox_lease_seconds: float = Field(default=300.0, ge=1, le=86400)
    # Let webhook endpoints resolve to loopback, private, link-local, CGNAT or metadata
    # addresses (a receiver inside your own network; tests). Off: refused at creation and at
    # every delivery.
    webhooks_allow_private: bool = False

    @field_validator("base_url")
    @classmethod
    def _strip_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower_case(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator(
        "unsubscribe_mailto",
        "organization_name",
        "support_contact",
        "jurisdiction",
        "privacy_policy_url",
        "mailgun_signing_key",
        "postmark_webhook_user",
        "postmark_webhook_password",
        "mail_url",
        "mail_from",
    )
    @classmethod
    def _empty_is_unset(cls, value: str | None) -> str | None:
        value = value.strip() if value is not None else None
        if value and any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
            raise ValueError("must not contain control characters")
        return value or None

    @field_validator("sendgrid_public_key")
    @classmethod
    def _key_or_unset(cls, value: str | None) -> str | None:
        # A PEM spans lines; inbound.sendgrid parses it (at start, see create_app).
        return value.strip() or None if value is not None else None

    @field_validator("metrics_listen")
    @classmethod
    def _host_and_port(cls, value: str | None) -> str | None:
        value = value.strip() if value is not None else None
        if value:
            parse_listen_address(value)
        return value or None

    def metrics_address(self) -> tuple[str, int] | None:
        """PREFCENTER_METRICS_LISTEN as (host, port), or None when /metrics is on the app."""
        return parse_listen_address(self.metrics_listen) if self.metrics_listen else None

    @field_validator("unsubscribe_mailto")
    @classmethod
    def _plain_mailbox(cls, value: str | None) -> str | None:
        # It goes into a mail header inside <mailto:…>: a plain mailbox, nothing to escape.
        if value is not None and not _MAILBOX.fullmatch(value):
            raise ValueError("must be a plain address such as unsubscribe@example.com")
        return value

    def ses_topics(self) -> frozenset[str]:
        """The SNS topic ARNs whose notifications are accepted; empty: the route is off."""
        return frozenset(arn.strip() for arn in self.ses_topic_arns.split(",") if arn.strip())

    def sendgrid_groups(self) -> dict[int, str]:
        """SendGrid unsubscribe group id → topic key, from `id:topic[,id:topic…]`."""
        groups: dict[int, str] = {}
        for raw in self.sendgrid_group_topics.split(","):
            entry = raw.strip()
            if not entry:
                continue
            group, sep, topic = (part.strip() for part in entry.partition(":"))
            if not sep or not group.isdigit() or not _TOPIC_KEY.fullmatch(topic):
                raise ConfigError(
                    f"PREFCENTER_SENDGRID_GROUP_TOPICS entry {entry!r} is not "
                    "group_id:topic_key (e.g. 12345:newsletter)"
                )
            if int(group) in groups:
                raise ConfigError(f"SendGrid group {group} appears twice")
            groups[int(group)] = topic
        return groups

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def api_docs_enabled(self) -> bool:
        return self.is_sqlite if self.api_docs is None else self.api_docs

    def sqlite_path(self) -> Path | None:
        """The database file for a file-backed SQLite URL, else None."""
        if not self.is_sqlite:
            return None
        _, _, path = self.database_url.partition(":///")
        if not path or path == ":memory:":
            return None
        return Path(path.split("?", 1)[0])

    @property
    def mail_enabled(self) -> bool:
        """Whether the service sends mail itself: a transport is configured, or the default
        Maildir beside a SQLite database file applies (mail.config says which)."""
        if self.mail_url is not None:
            return self.mail_url.lower() != "off"
        return self.sqlite_path() is not None

    def signing_key_ring(self) -> tuple[SigningKey, ...]:
        """The configured key ring, or on SQLite one generated once and kept beside the data.

        On PostgreSQL there is no file beside the data that every worker shares, so a missing
        key is a configuration error rather than something to invent per host.
        """
        if self.signing_keys.strip():
            ring = parse_signing_keys(self.signing_keys)
        else:
            db_path = self.sqlite_path()
            if db_path is None:
                raise ConfigError(
                    "PREFCENTER_SIGNING_KEYS is required with this database: set it to "
                    f"kid:secret (at least {MIN_SECRET_BYTES} random bytes), e.g. "
                    "k1:$(python -c 'import secrets; print(secrets.token_urlsafe(32))')"
                )
            ring = parse_signing_keys(local_signing_key(db_path))
        both = sorted(self.retired_signing_key_ids & {key.kid for key in ring})
        if both:
            raise ConfigError(
                f"signing key {both[0]!r} is in PREFCENTER_SIGNING_KEYS and in "
                "PREFCENTER_RETIRED_SIGNING_KEYS: a key either verifies links or is retired"
            )
        return ring

    @cached_property
    def retired_signing_key_ids(self) -> frozenset[str]:
        """Ids of signing keys retired from the ring, from `kid[,kid…]`: only the id, the
        secret of a retired key is not needed (delete it)."""
        ids: set[str] = set()
        for raw in self.retired_signing_keys.split(","):
            kid = raw.strip()
            if not kid:
                continue
            if ":" in kid:
                raise ConfigError(
                    "PREFCENTER_RETIRED_SIGNING_KEYS lists key ids only (e.g. k202510,k202409), "
                    "not kid:secret: a retired key's secret is not needed, delete it"
                )
            if not kid.isalnum() or len(kid) > 16:
                raise ConfigError(f"retired signing key id {kid!r} must be 1-16 letters or digits")
            ids.add(kid)
        return frozenset(ids)

    @cached_property
    def audit_secret(self) -> bytes:
        """The audit key, or on SQLite one generated once and kept beside the data.

        Never rotate or lose it: verification checks evidence digests with it, new events could
        no longer be matched to old ones by address, erased addresses would no longer be kept
        suppressed, and checkpoints and receipts signed with it could no longer be checked.
        """
        if self.audit_key.strip():
            secret = self.audit_key.strip().encode()
            if len(secret) < MIN_AUDIT_KEY_BYTES:
                raise ConfigError(
                    f"PREFCENTER_AUDIT_KEY is too short: use at least {MIN_AUDIT_KEY_BYTES} "
                    "bytes of random data, e.g. from "
                    "`python -c 'import secrets; print(secrets.token_urlsafe(48))'`"
                )
            return secret
        db_path = self.sqlite_path()
        if db_path is None:
            raise ConfigError(
                "PREFCENTER_AUDIT_KEY is required with this database: set it to at least "
                f"{MIN_AUDIT_KEY_BYTES} random bytes, e.g. "
                "$(python -c 'import secrets; print(secrets.token_urlsafe(48))'), and keep "
                "it with your other secrets"
            )
        return local_audit_key(db_path).encode()


def settings_of(request: Request) -> Settings:
    """The settings the running app was built with."""
    settings: Settings = request.app.state.settings
    return settings


def signing_keys_of(request: Request) -> tuple[SigningKey, ...]:
    """The running app's key ring, parsed once at start."""
    ring: tuple[SigningKey, ...] = request.app.state.signing_keys
    return ring
