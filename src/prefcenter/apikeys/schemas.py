"""Scopes and the authenticated caller."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel


class Scope(StrEnum):
    CONSENT_WRITE = "consent:write"
    CONSENT_READ = "consent:read"
    ELIGIBILITY = "eligibility"
    LINKS = "links"
    AUDIT_READ = "audit:read"
    INBOUND = "inbound"  # hands in messages sent to the List-Unsubscribe mailto: address
    METRICS = "metrics"  # reads /metrics
    ADMIN = "admin"  # implies every other scope


def granting(scope: Scope) -> frozenset[Scope]:
    """The scopes that each allow `scope`: itself, and admin, which implies every other."""
    return frozenset((scope, Scope.ADMIN))


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: an API key that was found, is not revoked, and was checked for a scope."""

    key_id: int
    name: str
    scopes: frozenset[Scope]

    @property
    def is_admin(self) -> bool:
        return Scope.ADMIN in self.scopes

    def allows(self, scope: Scope) -> bool:
        return not self.scopes.isdisjoint(granting(scope))

    @property
    def actor(self) -> str:
        """How this caller is named in the audit trail."""
        return f"api_key:{self.key_id}:{self.name}"

    @property
    def owner(self) -> str:
        """Namespace of this caller's idempotency keys."""
        return f"api_key:{self.key_id}"


class ApiKeyInfo(BaseModel):
    id: int
    name: str
    prefix: str
    scopes: list[Scope]
    created_at: datetime
    revoked_at: datetime | None


class IssuedApiKey(BaseModel):
    info: ApiKeyInfo
    secret: str
