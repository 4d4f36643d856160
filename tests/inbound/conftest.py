"""Fixtures of the inbound tests: settings with every ESP configured, and an app whose SNS
certificate fetcher and subscription confirmer are the test signer's."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from prefcenter.app import create_app
from prefcenter.inbound.receive import InboundState
from prefcenter.settings import Settings
from tests.inbound.esp import (
    MAILGUN_KEY,
    POSTMARK_PASSWORD,
    POSTMARK_USER,
    SENDGRID_GROUP,
    TOPIC_ARN,
    SendGridSigner,
    SnsSigner,
)
from tests.support.harness import make_settings


@pytest.fixture(scope="session")
def sns_key_pair() -> SnsSigner:
    return SnsSigner.create()


@pytest.fixture
def sns(sns_key_pair: SnsSigner) -> SnsSigner:
    """The session's key pair, with a fresh record of fetches."""
    return SnsSigner(key=sns_key_pair.key, certificate_pem=sns_key_pair.certificate_pem)


@pytest.fixture(scope="session")
def sendgrid_signer() -> SendGridSigner:
    return SendGridSigner.create()


@pytest.fixture
def settings(database_url: str, sendgrid_signer: SendGridSigner) -> Settings:
    return make_settings(
        database_url,
        ses_topic_arns=f"{TOPIC_ARN},arn:aws:sns:eu-west-1:123456789012:Other",
        sendgrid_public_key=sendgrid_signer.public_key,
        sendgrid_group_topics=f"{SENDGRID_GROUP}:offers",
        mailgun_signing_key=MAILGUN_KEY,
        postmark_webhook_user=POSTMARK_USER,
        postmark_webhook_password=POSTMARK_PASSWORD,
        unsubscribe_mailto="unsubscribe@mail.example.com",
    )


@pytest.fixture
def confirmed() -> list[str]:
    """The SubscribeURLs the app visited."""
    return []


@pytest.fixture
def client(settings: Settings, sns: SnsSigner, confirmed: list[str]) -> Iterator[TestClient]:
    app = create_app(settings)
    app.state.inbound = InboundState.from_settings(
        settings, fetch=sns.fetch, confirm=confirmed.append
    )
    # This hour's deletion of old receipts counted as done: on PostgreSQL the SNS lane
    # (inbound.ses_lane) records notifications from the first one its certificate is cached for.
    app.state.inbound.forget_due()
    with TestClient(app) as client:
        yield client
