"""Small typed helpers of the webhook tests: endpoints through the API, changes, the outbox
rows and attempts, and running the sender once."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi.testclient import TestClient
from sqlmodel import col, select

from prefcenter.db import Database
from prefcenter.delivery.webhooks import BatchReport, WebhookSender
from prefcenter.outbox.models import OutboxAttempt, OutboxMessage
from tests.support.factories import Headers

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
    body: dict[str, Any] = {"email": email, "status": status, "source": "test"}
    if topic is not None:
        body["topic"] = topic
    response = client.post("/v1/consents", headers=writer, json=body)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


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
