"""Helpers of the notice tests: a notice and its versions through the API."""

from __future__ import annotations

import asyncio
import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi.testclient import TestClient

from prefcenter.db import Database
from prefcenter.delivery.worker import OutboxWorker
from prefcenter.mail.config import mail_config
from prefcenter.settings import Settings
from tests.support.factories import Headers, Json

POLICY = "privacy"
TEXT = "We keep your address to send you what you asked for.\n"


def put_notice(
    client: TestClient, headers: Headers, key: str = POLICY, kind: str = "privacy_policy"
) -> Json:
    response = client.put(
        f"/v1/notices/{key}", headers=headers, json={"name": "Privacy policy", "kind": kind}
    )
    assert response.status_code in (200, 201), response.text
    answer: Json = response.json()
    return answer


def version_body(
    version: str,
    *,
    effective_in: timedelta = timedelta(days=31),
    effective_at: datetime | None = None,
    material: bool = True,
    text: str = TEXT,
    **fields: Any,
) -> Json:
    when = effective_at or datetime.now(UTC) + effective_in
    body: Json = {
        "version": version,
        "language": "en",
        "text": text,
        "sha256": hashlib.sha256(text.encode()).hexdigest(),
        "effective_at": when.isoformat(),
        "material": material,
        "summary": "We now name the company that sends our mail.",
    }
    body.update(fields)
    return body


def publish(
    client: TestClient,
    headers: Headers,
    version: str,
    *,
    key: str = POLICY,
    expect: int = 201,
    **fields: Any,
) -> Json:
    response = client.post(
        f"/v1/notices/{key}/versions", headers=headers, json=version_body(version, **fields)
    )
    assert response.status_code == expect, response.text
    answer: Json = response.json()
    return answer


def notification(client: TestClient, headers: Headers, version: str, key: str = POLICY) -> Json:
    response = client.get(f"/v1/notices/{key}/versions/{version}/notification", headers=headers)
    assert response.status_code == 200, response.text
    answer: Json = response.json()
    return answer


def deliver(database: Database, settings: Settings) -> None:
    config = mail_config(settings)
    assert config is not None
    worker = OutboxWorker(database, settings, mail=config, draw=lambda: 0.5)

    async def go() -> None:
        try:
            await worker.deliver_due()
        finally:
            await worker.aclose()

    asyncio.run(go())
