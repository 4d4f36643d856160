"""Every table, imported in one place so that Alembic sees the whole schema."""

from sqlmodel import SQLModel

from prefcenter.apikeys.models import ApiKey
from prefcenter.audit.models import AuditEvent, AuditHead
from prefcenter.consent.models import Subscription, Suppression
from prefcenter.contacts.models import Contact
from prefcenter.idempotency import IdempotencyRecord
from prefcenter.topics.models import Topic

metadata = SQLModel.metadata

__all__ = [
    "ApiKey",
    "AuditEvent",
    "AuditHead",
    "Contact",
    "IdempotencyRecord",
    "Subscription",
    "Suppression",
    "Topic",
    "metadata",
]
