"""The transports against real servers: SMTP with STARTTLS (required, never skipped), with TLS
from the first byte, with a log-in; and a Maildir on disk."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import ssl
import stat
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from prefcenter.mail.config import MaildirTarget, SmtpSecurity, SmtpTarget
from prefcenter.mail.maildir import newest_mail, read_mail
from prefcenter.mail.transports import DeliveryFailed, Transport, open_transport
from tests.support.mail_server import HOST, Inbox, smtp_server

USER, PASSWORD = "prefcenter", "relay-password-123"


@dataclass(frozen=True, slots=True)
class Certificate:
    server: ssl.SSLContext
    client: ssl.SSLContext  # trusts exactly this certificate


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    """A self-signed certificate for 127.0.0.1, made here (nothing downloaded)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "relay.test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(HOST))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_path, key_path)
    client = ssl.create_default_context(cafile=str(cert_path))
    return Certificate(server=server, client=client)


def authenticate(
    server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
) -> AuthResult:
    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login == USER.encode()
        and auth_data.password == PASSWORD.encode()
    )
    # handled=False: aiosmtpd then answers the refusal (535) itself.
    return AuthResult(success=ok, handled=False)


def a_mail(recipient: str = "ada@example.com") -> EmailMessage:
    message = EmailMessage()
    message["From"] = "news@example.com"
    message["To"] = recipient
    message["Subject"] = "Hello"
    message["Message-ID"] = "<m1@example.com>"
    message.set_content("Hello.\n")
    return message


def send(transport: Transport, message: EmailMessage | None = None) -> None:
    async def go() -> None:
        try:
            await transport.send(
                message or a_mail(), sender="news@example.com", recipient="ada@example.com"
            )
        finally:
            await transport.close()

    asyncio.run(go())


class TestSmtp:
    def test_starttls_is_required_a_relay_without_it_gets_nothing(self) -> None:
        with smtp_server() as server:
            transport = open_transport(
                SmtpTarget(HOST, server.port, USER, PASSWORD, SmtpSecurity.STARTTLS)
            )
            with pytest.raises(DeliveryFailed) as failed:
                send(transport)
            assert server.inbox.mails() == []
        assert not failed.value.permanent
        assert failed.value.unreachable
        assert PASSWORD not in failed.value.detail

    def test_starttls_and_a_log_in(self, certificate: Certificate) -> None:
        with smtp_server(
            tls_context=certificate.server,
            require_starttls=True,
            auth_required=True,
            authenticator=authenticate,
        ) as server:
            target = SmtpTarget(HOST, server.port, USER, PASSWORD, SmtpSecurity.STARTTLS)
            send(open_transport(target, tls_context=certificate.client))
            (mail,) = server.inbox.wait_for(1)
        assert mail.message_id == "<m1@example.com>"

    def test_a_wrong_password_is_the_relays_set_up_tried_again_later(
        self, certificate: Certificate
    ) -> None:
        with smtp_server(
            tls_context=certificate.server,
            require_starttls=True,
            auth_required=True,
            authenticator=authenticate,
        ) as server:
            target = SmtpTarget(HOST, server.port, USER, "wrong", SmtpSecurity.STARTTLS)
            with pytest.raises(DeliveryFailed) as failed:
                send(open_transport(target, tls_context=certificate.client))
            assert server.inbox.mails() == []
        assert not failed.value.permanent
        assert "535" in failed.value.detail

    def test_a_certificate_nobody_vouches_for_is_refused(self, certificate: Certificate) -> None:
        with smtp_server(tls_context=certificate.server, require_starttls=True) as server:
            target = SmtpTarget(HOST, server.port, None, None, SmtpSecurity.STARTTLS)
            with pytest.raises(DeliveryFailed):
                send(open_transport(target))  # the system's trust store: not this one
            assert server.inbox.mails() == []

    def test_tls_from_the_first_byte(self, certificate: Certificate) -> None:
        with smtp_server(Inbox(), server_hostname=None, ssl_context=certificate.server) as server:
            target = SmtpTarget(HOST, server.port, None, None, SmtpSecurity.TLS)
            send(open_transport(target, tls_context=certificate.client))
            assert len(server.inbox.wait_for(1)) == 1


class TestMaildir:
    @pytest.fixture
    def maildir(self, tmp_path: Path) -> Path:
        return tmp_path / "outgoing"

    def test_each_mail_is_a_file_in_new_readable_only_by_us(self, maildir: Path) -> None:
        send(open_transport(MaildirTarget(maildir)))
        (written,) = list((maildir / "new").iterdir())
        assert b"Message-ID: <m1@example.com>" in written.read_bytes()
        assert stat.S_IMODE(maildir.stat().st_mode) == 0o700
        assert list((maildir / "tmp").iterdir()) == []

    def test_read_back_for_the_console(self, maildir: Path) -> None:
        send(open_transport(MaildirTarget(maildir)), a_mail())
        (summary,) = newest_mail(maildir, limit=10)
        assert summary.subject == "Hello"
        assert summary.recipient == "a•••@example.com"
        assert summary.message_id == "<m1@example.com>"
        found = read_mail(maildir, summary.key)
        assert found is not None
        assert found.text == "Hello.\n"

    @pytest.mark.parametrize("key", ["../../etc/passwd", "/etc/passwd", ".", "", "x" * 300, "nope"])
    def test_a_key_is_never_a_path(self, maildir: Path, key: str) -> None:
        send(open_transport(MaildirTarget(maildir)))
        assert read_mail(maildir, key) is None

    def test_no_maildir_yet_lists_nothing(self, tmp_path: Path) -> None:
        assert newest_mail(tmp_path / "missing", limit=5) == []
        assert read_mail(tmp_path / "missing", "1.2.host") is None
