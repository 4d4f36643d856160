"""Owns the `api_key` table: only a hash of each secret is kept; keys are revoked, not deleted."""

from datetime import datetime

from sqlmodel import Field, SQLModel

from prefcenter.db import UtcDateTime


class ApiKey(SQLModel, table=True):
    __tablename__ = "api_key"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=100)
    # The first characters of the secret, to tell keys apart in listings; not enough to use.
    prefix: str = Field(max_length=16)
    # SHA-256 of the whole secret. Secrets are 256 random bits, so a fast hash is safe here.
    secret_hash: str = Field(max_length=64, unique=True)
    # Space-separated scope names.
    scopes: str = Field(max_length=200)
    created_at: datetime = Field(sa_type=UtcDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
