"""Owns the console's tables: `admin_user` (staff who sign in with a password),
`admin_session` (server-side sessions, kept only as a hash of their token) and
`admin_sign_in_attempt` (failed sign-ins, for a throttle that holds across workers)."""

from datetime import datetime

from sqlalchemy import Index
from sqlmodel import Field, SQLModel

from prefcenter.db import UtcDateTime


class AdminUser(SQLModel, table=True):
    __tablename__ = "admin_user"

    id: int | None = Field(default=None, primary_key=True)
    username: str = Field(max_length=64, unique=True)
    # Argon2id, in the PHC string form argon2-cffi writes (parameters and salt included).
    password_hash: str = Field(max_length=255)
    created_at: datetime = Field(sa_type=UtcDateTime)
    # Disabled, not deleted: the audit trail keeps naming the person as `admin:<username>`.
    disabled: bool = False


class AdminSession(SQLModel, table=True):
    """A signed-in browser. Exactly one of `admin_user_id` and `api_key_id` is set; both are
    checked again on every request, so disabling a user or revoking a key ends its sessions."""

    __tablename__ = "admin_session"

    # SHA-256 of the cookie's token: a copy of this table does not let anyone sign in.
    id: str = Field(max_length=64, primary_key=True)
    admin_user_id: int | None = Field(default=None, foreign_key="admin_user.id", index=True)
    api_key_id: int | None = Field(default=None, foreign_key="api_key.id", index=True)
    # How the audit trail names whoever uses this session.
    actor: str = Field(max_length=200)
    # The synchroniser token every form of this session carries.
    csrf_secret: str = Field(max_length=64)
    created_at: datetime = Field(sa_type=UtcDateTime)
    # The absolute end, however active the session is.
    expires_at: datetime = Field(sa_type=UtcDateTime, index=True)
    last_seen_at: datetime = Field(sa_type=UtcDateTime)


class AdminSignInAttempt(SQLModel, table=True):
    """One failed sign-in. Counted per scope (`rules.ThrottleScope`) over a sliding window:
    a device's own rows by `device_id`; every other client's rows (no `device_id`) per username
    and network, per username, per network. Rows older than the window are deleted as new
    failures arrive."""

    __tablename__ = "admin_sign_in_attempt"
    __table_args__ = (
        Index("ix_admin_sign_in_attempt_username_attempted_at", "username", "attempted_at"),
        Index("ix_admin_sign_in_attempt_network_attempted_at", "network", "attempted_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    # The username tried (lower-cased), or None for an API key or a name that cannot exist.
    username: str | None = Field(default=None, max_length=64)
    # The client's IPv4 address or IPv6 /64 (`rules.client_network`).
    network: str | None = Field(default=None, max_length=64)
    # Set when the try came from a browser that had signed in as `username` before: it then
    # counts against that device only.
    device_id: str | None = Field(default=None, max_length=32)
    attempted_at: datetime = Field(sa_type=UtcDateTime, index=True)
