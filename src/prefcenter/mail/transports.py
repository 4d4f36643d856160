"""Owns how a written mail leaves: SMTP (STARTTLS or TLS, via aiosmtplib, one connection reused
while there is work) or a Maildir (the standard library's `mailbox`, each file on disk before
the mail counts as sent). Errors say whether trying again can help."""

from __future__ import annotations

import asyncio
import mailbox
import os
import re
import ssl
from email.message import Message
from pathlib import Path
from typing import Protocol

import aiosmtplib
import anyio

from prefcenter.mail.config import MaildirTarget, MailTarget, SmtpSecurity, SmtpTarget

# Per SMTP command, connecting included: a relay that stops answering is given up on, and the
# mail tried again later.
SMTP_TIMEOUT_S = 30.0


class DeliveryFailed(Exception):
    """The transport did not take the mail. `permanent`: the receiver refused it for good (a
    5xx for the recipient or the content); otherwise it is tried again later."""

    def __init__(self, detail: str, *, permanent: bool, unreachable: bool = False) -> None:
        super().__init__(detail)
        self.detail = detail
        self.permanent = permanent
        # The transport itself is down (no connection, a timeout): the next mails would fare
        # no better, so they wait for their retry without being tried now.
        self.unreachable = unreachable


class Transport(Protocol):
    def describe(self) -> str: ...

    async def send(self, message: Message, *, sender: str, recipient: str) -> None:
        """Hand the mail over; it is the receiver's once this returns."""

    async def close(self) -> None: ...


def open_transport(target: MailTarget, *, tls_context: ssl.SSLContext | None = None) -> Transport:
    if isinstance(target, MaildirTarget):
        return MaildirTransport(target.path)
    return SmtpTransport(target, tls_context=tls_context)


def without_address(text: str, address: str) -> str:
    """A relay's answer often repeats the recipient; the outbox keeps errors longer than an
    erasure keeps addresses, so it is never stored."""
    if not address:
        return text
    return re.sub(re.escape(address), "<recipient>", text, flags=re.IGNORECASE)


class SmtpTransport:
    """One SMTP connection, opened on the first mail and kept for the next ones until `close`
    or an error. `smtp://` insists on STARTTLS: a relay that does not offer it gets nothing
    (never the password in clear text)."""

    def __init__(
        self,
        target: SmtpTarget,
        *,
        timeout: float = SMTP_TIMEOUT_S,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self.target = target
        self._timeout = timeout
        self._tls_context = tls_context
        self._client: aiosmtplib.SMTP | None = None

    def describe(self) -> str:
        return self.target.describe()

    async def _connected(self) -> aiosmtplib.SMTP:
        if self._client is not None and self._client.is_connected:
            return self._client
        target = self.target
        # The log-in is ours, not `connect()`'s: when `connect()` fails it closes the
        # connection itself, gently, and over TLS that leaves the socket open until the relay
        # says goodbye. A log-in refused here is closed at once (`_abandon`).
        client = aiosmtplib.SMTP(
            hostname=target.host,
            port=target.port,
            use_tls=target.security is SmtpSecurity.TLS,
            start_tls=target.security is SmtpSecurity.STARTTLS,
            timeout=self._timeout,
            tls_context=self._tls_context,
        )
        try:
            await client.connect()
            if target.username is not None:
                await client.login(target.username, target.password or "")
        except BaseException:
            _abandon(client)
            raise
        self._client = client
        return client

    async def send(self, message: Message, *, sender: str, recipient: str) -> None:
        try:
            client = await self._connected()
            await client.send_message(message, sender=sender, recipients=[recipient])
        except aiosmtplib.SMTPRecipientsRefused as exc:
            await self._drop()
            codes = [refused.code for refused in exc.recipients]
            detail = "; ".join(f"{r.code} {r.message}" for r in exc.recipients)
            raise DeliveryFailed(
                without_address(f"recipient refused: {detail}", recipient),
                permanent=bool(codes) and all(500 <= code < 600 for code in codes),
            ) from exc
        except (aiosmtplib.SMTPRecipientRefused, aiosmtplib.SMTPDataError) as exc:
            await self._drop()
            what = "recipient" if isinstance(exc, aiosmtplib.SMTPRecipientRefused) else "message"
            raise DeliveryFailed(
                without_address(f"{what} refused: {exc.code} {exc.message}", recipient),
                permanent=500 <= exc.code < 600,
            ) from exc
        except aiosmtplib.SMTPResponseException as exc:
            # The sender, the log-in or the greeting refused: the relay's set-up, not this
            # mail's; once it is fixed, the retries deliver.
            await self._drop()
            raise DeliveryFailed(
                without_address(f"{type(exc).__name__}: {exc.code} {exc.message}", recipient),
                permanent=False,
                unreachable=True,
            ) from exc
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            await self._drop()
            raise DeliveryFailed(
                without_address(f"{type(exc).__name__}: {exc}", recipient),
                permanent=False,
                unreachable=True,
            ) from exc

    async def _drop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            _abandon(client)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        transport = client.transport  # `quit()` lets go of it before the socket is closed
        try:
            if client.is_connected:
                await client.quit()
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            pass
        finally:
            _abort(transport)
            _abandon(client)


def _abandon(client: aiosmtplib.SMTP) -> None:
    """Close the socket now. `SMTP.close()` over TLS only starts the TLS goodbye, and the
    socket underneath stays open until the peer answers it; a worker that stops (or a loop
    that ends) before then leaks it. After QUIT, or after an error, nothing is left to say."""
    _abort(client.transport)
    client.close()


def _abort(transport: asyncio.BaseTransport | None) -> None:
    if isinstance(transport, asyncio.Transport):
        transport.abort()


class MaildirTransport:
    """Each mail a file in `new/`, written to `tmp/` and renamed (the Maildir rule: a reader
    never sees half a mail), and synced to disk before it counts as sent."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def describe(self) -> str:
        return f"maildir://{self.path}"

    async def send(self, message: Message, *, sender: str, recipient: str) -> None:
        try:
            await anyio.to_thread.run_sync(self._deliver, message)
        except OSError as exc:
            raise DeliveryFailed(
                f"cannot write to the Maildir: {exc.strerror or exc}",
                permanent=False,
                unreachable=True,
            ) from exc

    def _deliver(self, message: Message) -> None:
        box = mailbox.Maildir(self.path, create=True)
        key = box.add(message)
        # A plain message goes to new/ under its key, with no flags after it.
        written = os.open(self.path / "new" / key, os.O_RDONLY)
        try:
            os.fsync(written)
        finally:
            os.close(written)
        directory = os.open(self.path / "new", os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    async def close(self) -> None:
        return None
