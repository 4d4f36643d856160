"""A real SMTP server in the test process (aiosmtpd on loopback), for the tests of the service's
own mail and for the bench: it keeps every mail it accepts, can accept slowly, and can refuse
chosen recipients."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any

from aiosmtpd.controller import Controller

from prefcenter.db import Database
from prefcenter.delivery.worker import OutboxWorker
from prefcenter.mail.config import mail_config
from prefcenter.settings import Settings
from tests.support.harness import make_settings

HOST = "127.0.0.1"
WAIT_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class Received:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    content: bytes

    def message(self) -> EmailMessage:
        parsed = BytesParser(policy=policy.default).parsebytes(self.content)
        assert isinstance(parsed, EmailMessage)
        return parsed

    @property
    def message_id(self) -> str:
        return str(self.message()["Message-ID"])


@dataclass
class Inbox:
    """The aiosmtpd handler: what was accepted, in order."""

    delay_s: float = 0.0  # before answering DATA: a relay that accepts slowly
    refuse: dict[str, str] = field(default_factory=dict)  # recipient → the RCPT reply
    received: list[Received] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_RCPT(  # noqa: N802 - aiosmtpd's hook name
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        reply = self.refuse.get(address.lower())
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        content = envelope.original_content or envelope.content
        with self._lock:
            self.received.append(
                Received(str(envelope.mail_from), tuple(envelope.rcpt_tos), bytes(content))
            )
        return "250 Message accepted for delivery"

    def mails(self) -> list[Received]:
        with self._lock:
            return list(self.received)

    def wait_for(self, count: int, *, timeout_s: float = WAIT_TIMEOUT_S) -> list[Received]:
        """Until at least `count` mails have arrived; fails after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            mails = self.mails()
            if len(mails) >= count:
                return mails
            time.sleep(0.02)
        raise AssertionError(f"{len(self.mails())} mail(s) arrived, not {count}")


@dataclass(frozen=True, slots=True)
class SmtpServer:
    port: int
    inbox: Inbox

    @property
    def url(self) -> str:
        """What PREFCENTER_MAIL_URL says for it: no STARTTLS on loopback."""
        return f"smtp://{HOST}:{self.port}?starttls=off"


@contextmanager
def smtp_server(
    inbox: Inbox | None = None, *, port: int = 0, **options: Any
) -> Iterator[SmtpServer]:
    """Run an SMTP server until the block ends; `port` 0 takes a free one."""
    inbox = inbox or Inbox()
    controller = Controller(inbox, hostname=HOST, port=port or free_port(), **options)
    controller.start()
    try:
        yield SmtpServer(port=controller.port, inbox=inbox)
    finally:
        controller.stop()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
    return port


SENDER = "Example Shop <news@example.com>"


def mail_settings(database_url: str, server: SmtpServer, **overrides: Any) -> Settings:
    """Test settings with the service's mail going to `server`."""
    return make_settings(database_url, mail_url=server.url, mail_from=SENDER, **overrides)


@dataclass
class Clock:
    """A clock the test moves: the worker's `clock`."""

    now: datetime = field(default_factory=lambda: datetime.now(UTC))

    def __call__(self) -> datetime:
        return self.now

    def advance(self, by: timedelta) -> None:
        self.now += by


def deliver_mail(database: Database, settings: Settings) -> int:
    """Deliver the due mail once, as a worker would; how many were sent."""
    worker = OutboxWorker(database, settings, mail=mail_config(settings))

    async def run() -> int:
        try:
            return (await worker.deliver_due()).sent
        finally:
            await worker.aclose()

    return asyncio.run(run())
