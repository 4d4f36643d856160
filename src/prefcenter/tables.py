"""Every table, imported in one place so that Alembic sees the whole schema."""

from sqlmodel import SQLModel

from prefcenter.admin.models import AdminSession, AdminSignInAttempt, AdminUser
from prefcenter.apikeys.models import ApiKey
from prefcenter.audit.models import AuditEvent, AuditEvidence, AuditHead
from prefcenter.consent.models import ErasedAddress, Subscription, Suppression
from prefcenter.contacts.models import Contact
from prefcenter.idempotency import IdempotencyRecord
from prefcenter.outbox.models import OutboxAttempt, OutboxMessage
from prefcenter.topics.models import Topic
from prefcenter.webhooks.models import WebhookEndpoint, WebhookEndpointEvent

metadata = SQLModel.metadata

__all__ = [
    "AdminSession",
    "AdminSignInAttempt",
    "AdminUser",
    "ApiKey",
    "AuditEvent",
    "AuditEvidence",
    "AuditHead",
    "Contact",
    "ErasedAddress",
    "IdempotencyRecord",
    "OutboxAttempt",
    "OutboxMessage",
    "Subscription",
    "Suppression",
    "Topic",
    "WebhookEndpoint",
    "WebhookEndpointEvent",
    "metadata",
]
