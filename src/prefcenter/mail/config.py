"""Owns the mail configuration: `PREFCENTER_MAIL_URL` and `PREFCENTER_MAIL_FROM` parsed once at
start (a bad value stops the service with a message saying what to set), the default Maildir
beside a SQLite database, and the Message-IDs of the service's mail."""

from __future__ import annotations

import ipaddress
import re
import uuid
from dataclasses import dataclass
from email.utils import formataddr
from enum import StrEnum
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

from prefcenter.settings import ConfigError, Settings

DEFAULT_SENDER = "prefcenter@localhost"
SMTP_PORT = 587  # submission, STARTTLS
SMTPS_PORT = 465  # submission over TLS from the first byte
# A plain mailbox, nothing a header would need quoted; a one-label domain (localhost) allowed.
_MAILBOX = re.compile(r"[A-Za-z0-9.!#$%&'*+/=^_`{|}~-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*")
_NAMED_MAILBOX = re.compile(r"(?P<name>[^<>@\r\n]*)<(?P<address>[^<>\s]+)>")
_HOST_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?")


class SmtpSecurity(StrEnum):
    STARTTLS = "starttls"  # smtp://: required, never falls back to plain text
    TLS = "tls"  # smtps://
    NONE = "none"  # smtp://…?starttls=off: a relay on this host or a trusted network


@dataclass(frozen=True, slots=True)
class SmtpTarget:
    host: str
    port: int
    username: str | None
    password: str | None = None
    security: SmtpSecurity = SmtpSecurity.STARTTLS

    def describe(self) -> str:
        """For logs and pages: never the password."""
        scheme = "smtps" if self.security is SmtpSecurity.TLS else "smtp"
        return f"{scheme}://{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class MaildirTarget:
    path: Path

    def describe(self) -> str:
        return f"maildir://{self.path}"


MailTarget = SmtpTarget | MaildirTarget


@dataclass(frozen=True, slots=True)
class MailConfig:
    target: MailTarget
    sender: str  # the From header: `news@example.com` or `Example <news@example.com>`
    envelope_sender: str  # the bare address, for MAIL FROM
    # The domain of the Message-IDs: the sender's, so that they are ours to make unique.
    domain: str
    default: bool  # the Maildir beside the database, nobody configured anything


def mail_config(settings: Settings) -> MailConfig | None:
    """What the settings say about outgoing mail; None when the service sends none.

    Raises ConfigError for a URL or sender that cannot work. Its messages never repeat the URL,
    which may hold a password.
    """
    if not settings.mail_enabled:
        return None
    default = settings.mail_url is None
    if default:
        db_path = settings.sqlite_path()
        assert db_path is not None  # mail_enabled says so
        target: MailTarget = MaildirTarget(default_maildir(db_path))
    else:
        assert settings.mail_url is not None
        target = parse_mail_url(settings.mail_url)
    from_value = settings.mail_from
    if from_value is None:
        if not default:
            raise ConfigError(
                "PREFCENTER_MAIL_FROM is required once PREFCENTER_MAIL_URL is set: the From "
                "of every mail, e.g. news@example.com or 'Example <news@example.com>'"
            )
        from_value = DEFAULT_SENDER
    sender, address = parse_sender(from_value)
    return MailConfig(
        target=target,
        sender=sender,
        envelope_sender=address,
        domain=address.rpartition("@")[2].lower(),
        default=default,
    )


def default_maildir(db_path: Path) -> Path:
    """The Maildir beside a SQLite database file: `./prefcenter.db.maildir/`."""
    return db_path.with_name(db_path.name + ".maildir")


def parse_mail_url(url: str) -> MailTarget:
    """`smtp://user:pass@host:587` (STARTTLS required; `?starttls=off` for a relay that has
    none), `smtps://user:pass@host:465`, or `maildir:///absolute/path`."""
    scheme, _, rest = url.partition("://")
    scheme = scheme.lower()
    if not rest or scheme not in ("smtp", "smtps", "maildir"):
        raise ConfigError(
            "PREFCENTER_MAIL_URL must be smtp://user:password@host:587 (STARTTLS), "
            "smtps://user:password@host:465 (TLS), maildir:///absolute/path, or off"
        )
    if scheme == "maildir":
        return _maildir(url)
    return _smtp(url, tls=scheme == "smtps")


def _maildir(url: str) -> MaildirTarget:
    parts = urlsplit(url)
    if parts.netloc or not parts.path.startswith("/") or parts.query or parts.fragment:
        raise ConfigError(
            "PREFCENTER_MAIL_URL: a Maildir is maildir:///absolute/path (three slashes, an "
            "absolute path, nothing after it)"
        )
    return MaildirTarget(Path(unquote(parts.path)))


def _smtp(url: str, *, tls: bool) -> SmtpTarget:
    parts = urlsplit(url)
    host = parts.hostname or ""
    if not host or not _host_is_plain(host):
        raise ConfigError("PREFCENTER_MAIL_URL names no SMTP host (smtp://user:password@host:587)")
    try:
        port = parts.port
    except ValueError as exc:
        raise ConfigError("PREFCENTER_MAIL_URL has a port that is not 1-65535") from exc
    if port == 0:
        raise ConfigError("PREFCENTER_MAIL_URL has a port that is not 1-65535")
    if parts.path not in ("", "/") or parts.fragment:
        raise ConfigError("PREFCENTER_MAIL_URL: an SMTP URL has no path (smtp://host:587)")
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    if password is not None and not username:
        raise ConfigError("PREFCENTER_MAIL_URL has a password but no user name")
    security = SmtpSecurity.TLS if tls else SmtpSecurity.STARTTLS
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if tls or name != "starttls" or value not in ("off", "required"):
            raise ConfigError(
                "PREFCENTER_MAIL_URL: the only option is ?starttls=off (smtp:// only), for a "
                "relay on this host that offers no STARTTLS"
            )
        if value == "off":
            security = SmtpSecurity.NONE
    if security is SmtpSecurity.NONE and password is not None and not _is_loopback(host):
        raise ConfigError(
            "PREFCENTER_MAIL_URL: ?starttls=off with a password would send it in clear text "
            "over the network; use STARTTLS (drop the option) or smtps://"
        )
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in (username or "") + (password or "")):
        raise ConfigError("PREFCENTER_MAIL_URL: the user name or password holds control characters")
    return SmtpTarget(
        host=host,
        port=port or (SMTPS_PORT if tls else SMTP_PORT),
        username=username,
        password=password,
        security=security,
    )


def _host_is_plain(host: str) -> bool:
    """A DNS name or an IP address: nothing else reaches the socket layer."""
    if _HOST_NAME.fullmatch(host):
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_sender(value: str) -> tuple[str, str]:
    """`news@example.com` or `Example <news@example.com>` → (the From header, the address)."""
    value = value.strip()
    named = _NAMED_MAILBOX.fullmatch(value)
    if named is not None:
        name, address = named.group("name").strip().strip('"').strip(), named.group("address")
    else:
        name, address = "", value
    if not _MAILBOX.fullmatch(address):
        raise ConfigError(
            "PREFCENTER_MAIL_FROM must be an address, e.g. news@example.com, or a name and an "
            "address, e.g. 'Example <news@example.com>'"
        )
    return (formataddr((name, address)) if name else address), address


def new_message_id(config: MailConfig) -> str:
    """A Message-ID made once, when a mail is queued, and reused by every attempt: receivers
    recognise a mail sent again after a crash by it."""
    return f"<{uuid.uuid4().hex}@{config.domain}>"
