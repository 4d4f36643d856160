"""Owns the lane of `POST /v1/contacts/lookup` on PostgreSQL: the lookup answered in front of
the app (an ASGI middleware, as consent.change_lane is), the caller's API key and the lookup's
rows read in one statement on a pooled connection, in one worker-thread hand-off, the answer
written once (consent.lookup.render), without the framework's routing, dependency solving or
body parsing. The key is read on every request (a revoked key's next request is refused), and
the rows only for a key that allows `consent:read`.

It answers what the route would answer 200 and hands everything else to the app, body and all,
which answers it the ordinary way: SQLite; a read replica configured (the route reads through
it after the primary's position, replica.py: two round trips whatever the lane does); a body
that is not a JSON object `LookupIn` accepts, of a declared length the app would take; no
bearer key, or one that is unknown, revoked or without `consent:read` (the app's 401 or 403);
a dead pooled connection (the app's path retries on a fresh one).
"""

from __future__ import annotations

from pydantic import ValidationError
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from prefcenter.apikeys.schemas import Scope as KeyScope
from prefcenter.apikeys.service import bearer_secret, hash_secret
from prefcenter.audit.keys import AuditKeys
from prefcenter.consent.lookup import answer_of_rows, read_caller_and_rows
from prefcenter.consent.schemas import LookupIn
from prefcenter.db import Database, utcnow
from prefcenter.http_limits import read_whole_body, replay_body
from prefcenter.lane_io import LaneRoute, posted_to, send_json, small_json
from prefcenter.problems import ServiceUnavailable
from prefcenter.settings import Settings

PATH = "/v1/contacts/lookup"
_ROUTE = LaneRoute(PATH)


class LookupLane:
    """ASGI middleware: answers `POST /v1/contacts/lookup` itself when the route would answer
    200, hands the rest to `app` (see the module)."""

    def __init__(
        self, app: ASGIApp, *, settings: Settings, database: Database, audit_keys: AuditKeys
    ) -> None:
        self.app = app
        self.settings = settings
        self.database = database
        self.audit_keys = audit_keys
        # With a replica the route's reads go through it (db.Database.reads); the lane steps
        # aside rather than read the primary where the route would not.
        self.applies = not settings.is_sqlite and database.replica is None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not posted_to(scope, PATH) or not self.applies:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        secret = bearer_secret(headers.get("authorization"))
        if secret is None or not small_json(headers, self.settings.max_body_bytes):
            await self.app(scope, receive, send)
            return
        body = await read_whole_body(receive)
        if body is None:
            return  # the client went away before its body arrived: nothing was asked
        try:
            query = LookupIn.model_validate_json(body)
        except ValidationError:
            await self.app(scope, replay_body(body, receive), send)  # the app's 422
            return
        now = utcnow()
        secret_hash = hash_secret(secret)
        try:
            caller, rows = await self.database.run_on_connection(
                lambda cursor: read_caller_and_rows(
                    cursor, query.emails, secret_hash=secret_hash, keys=self.audit_keys
                )
            )
        except ServiceUnavailable:
            rows = None  # the app's path retries on a fresh connection, or answers 503
        else:
            # The statement read no rows for a caller who may not; checked here as well, by
            # the rule itself.
            if caller is None or not caller.allows(KeyScope.CONSENT_READ):
                rows = None
        if rows is None:
            await self.app(scope, replay_body(body, receive), send)
            return
        answer = await answer_of_rows(self.database, query.emails, rows, now=now)
        await send_json(scope, send, _ROUTE, 200, answer)
