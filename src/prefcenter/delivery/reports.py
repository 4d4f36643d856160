"""Owns what an outbox round reports (`DeliveryReport`) and the names a worker is known by in
the delivery log: its host and process, its mail transport."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

from prefcenter.mail.config import MailConfig, MaildirTarget, SmtpSecurity


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"[:100]


@dataclass(slots=True)
class DeliveryReport:
    """What one or more rounds of delivery did."""

    claimed: int = 0
    sent: int = 0
    retried: int = 0
    failed: int = 0
    cancelled: int = 0
    released: int = 0  # claimed, not tried (stopping), given back
    last_error: str | None = None
    errors: list[str] = field(default_factory=list)  # the last few

    def add(self, other: DeliveryReport) -> None:
        self.claimed += other.claimed
        self.sent += other.sent
        self.retried += other.retried
        self.failed += other.failed
        self.cancelled += other.cancelled
        self.released += other.released
        self.last_error = other.last_error or self.last_error
        self.errors = (self.errors + other.errors)[-5:]

    def summary(self) -> str:
        return (
            f"sent {self.sent}, to retry {self.retried}, failed {self.failed}, "
            f"cancelled {self.cancelled}, given back {self.released}"
        )


def transport_name(config: MailConfig) -> str:
    if isinstance(config.target, MaildirTarget):
        return "maildir"
    return "smtps" if config.target.security is SmtpSecurity.TLS else "smtp"
