"""Small typed helpers of the webhook tests: endpoints through the API, changes, the outbox
rows and attempts, and running the sender once."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import Any

from fastapi.testclient import TestClient
from sqlmodel import col, select

from prefcenter.db import Database, utcnow
from prefcenter.delivery.webhooks import BatchReport, WebhookSender
from prefcenter.outbox.models import OutboxAttempt, OutboxMessage
from prefcenter.settings import Settings
from prefcenter.webhooks.addresses import Resolve, system_resolve
from tests.support.factories import Headers, record_change

MIDDLE = 0.5  # a draw that gives each delay exactly as the schedule says


def create_endpoint(
    client: TestClient, admin: Headers, url: str, events: list[str] | None = None
) -> dict[str, Any]:
    response = client.post(
        "/v1/webhooks", headers=admin, json={"url": url, "events": events or ["*"]}
    )
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def change(
    client: TestClient, writer: Headers, email: str, status: str, topic: str | None = "newsletter"
) -> dict[str, Any]:
    """One consent change through the API, of the `newsletter` topic unless told."""
    fields: dict[str, Any] = {"topic": topic} if topic is not None else {}
    return record_change(client, writer, email, status, source="test", **fields)


def make_sender(
    database: Database,
    settings: Settings,
    *,
    clock: Callable[[], datetime] = utcnow,
    resolve: Resolve = system_resolve,
) -> WebhookSender:
    """A sender whose retry delays are exactly the schedule's (`MIDDLE`)."""
    return WebhookSender(database, settings, clock=clock, draw=lambda: MIDDLE, resolve=resolve)


def deliveries(database: Database) -> list[OutboxMessage]:
    with database.transaction(write=False) as session:
        return list(
            session.exec(
                select(OutboxMessage)
                .where(col(OutboxMessage.kind) == "webhook")
                .order_by(col(OutboxMessage.id))
            )
        )


def attempts_of(database: Database, message: int) -> list[OutboxAttempt]:
    with database.transaction(write=False) as session:
        return list(
            session.exec(
                select(OutboxAttempt)
                .where(col(OutboxAttempt.message) == message)
                .order_by(col(OutboxAttempt.number))
            )
        )


def run(sender: WebhookSender, *, due: bool = True) -> BatchReport:
    """One round (`due=False`) or rounds until nothing is due, then the client closed."""

    async def go() -> BatchReport:
        try:
            return await (sender.deliver_due() if due else sender.deliver_batch())
        finally:
            await sender.aclose()

    return asyncio.run(go())
