"""Every table, imported in one place so that Alembic sees the whole schema."""

from sqlmodel import SQLModel

from prefcenter.admin.models import AdminSession, AdminSignInAttempt, AdminUser
from prefcenter.apikeys.models import ApiKey
from prefcenter.audit.models import AuditEvent, AuditEvidence, AuditFreeText, AuditHead
from prefcenter.bounces.models import Bounce
from prefcenter.consent.models import ErasedAddress, Subscription, Suppression
from prefcenter.contacts.models import Contact
from prefcenter.idempotency import IdempotencyRecord
from prefcenter.inbound.models import InboundReceipt
from prefcenter.notices.models import Notice, NoticeDelivery, NoticeVersion
from prefcenter.outbox.models import OutboxAttempt, OutboxMessage
from prefcenter.preference_center.models import MailRequest
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
    "AuditFreeText",
    "AuditHead",
    "Bounce",
    "Contact",
    "ErasedAddress",
    "IdempotencyRecord",
    "InboundReceipt",
    "MailRequest",
    "Notice",
    "NoticeDelivery",
    "NoticeVersion",
    "OutboxAttempt",
    "OutboxMessage",
    "Subscription",
    "Suppression",
    "Topic",
    "WebhookEndpoint",
    "WebhookEndpointEvent",
    "metadata",
]
