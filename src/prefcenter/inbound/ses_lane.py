"""Owns the lane of `POST /v1/inbound/ses` on PostgreSQL: an SES notification through SNS
answered in front of the app (an ASGI middleware, as the consent lanes are), without the
framework's routing, and, for a bounce or a complaint, in two statements on a pooled
connection in one worker-thread hand-off, without the ORM (inbound.ses_record).

The signature is checked as the route checks it (inbound.receive.read_ses: topic allow-list,
certificate URL, SignatureVersion 1 or 2, age), on the event loop and only with the
certificate cached. The lane answers a notification of ignored events only (deliveries,
opens), and one naming one recipient's bounce or complaint. It hands everything else to the
app, body and all, having written nothing, which answers it the ordinary way: SQLite; a body
of no declared length or more than the app takes; a message that fails any check (the route
refuses it with the same problem); a certificate not cached yet (the route fetches it); a
subscription's confirmation or end; a message SES received; several recipients; an unknown
or erased address, a superseded complaint, whatever moved on between the lane's read and its
write, a database error; and the first notification to record after the hourly deletion of
old receipts is due (the route deletes them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from prefcenter.db import Database, utcnow
from prefcenter.http_limits import read_whole_body, replay_body
from prefcenter.inbound import receive, ses_record, sns
from prefcenter.inbound.schemas import InboundReport
from prefcenter.lane_io import declared_small, posted_to
from prefcenter.problems import Problem, ServiceUnavailable
from prefcenter.settings import Settings

if TYPE_CHECKING:
    from prefcenter.audit.keys import AuditKeys
    from prefcenter.inbound.receive import InboundState

PATH = "/v1/inbound/ses"
_JSON = (b"content-type", b"application/json")


@dataclass(frozen=True, slots=True)
class _RouteName:
    """What the request log and metrics name an answered request by (request_log)."""

    path_format: str


_ROUTE = _RouteName(PATH)


class SesLane:
    """ASGI middleware: answers `POST /v1/inbound/ses`'s common cases itself, hands the rest to
    `app` (see the module). The inbound state and audit keys are the app's own
    (`app.state.inbound`, `app.state.audit_keys`), read per request."""

    def __init__(self, app: ASGIApp, *, settings: Settings, database: Database) -> None:
        self.app = app
        self.settings = settings
        self.database = database

    async def __call__(self, scope: Scope, receive_: Receive, send: Send) -> None:
        if (
            not posted_to(scope, PATH)
            or self.settings.is_sqlite
            or not declared_small(Headers(scope=scope), self.settings.max_body_bytes)
        ):
            await self.app(scope, receive_, send)
            return
        body = await read_whole_body(receive_)
        if body is None:
            return  # the client went away before its body arrived: nothing was asked
        answer = await self._answer(scope, body)
        if answer is None:
            await self.app(scope, replay_body(body, receive_), send)
            return
        scope["route"] = _ROUTE
        text = answer.model_dump_json().encode()
        headers = [_JSON, (b"content-length", str(len(text)).encode("latin-1"))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": text})

    async def _answer(self, scope: Scope, body: bytes) -> InboundReport | None:
        """The lane's report, or None: the app answers."""
        state: InboundState = scope["app"].state.inbound
        keys: AuditKeys = scope["app"].state.audit_keys
        now = utcnow()
        try:
            delivery = receive.read_ses(state, body, now=now, fetch=False)
        except (sns.CertificateNotCached, Problem):
            return None
        if (answer := receive.answer_at_once(delivery)) is not None:
            return answer
        events = delivery.notification
        if (
            not isinstance(events, list)
            or len(events) != 1
            or events[0].action not in ses_record.ACTIONS
            or state.forget_is_due()
        ):
            return None
        (event,) = events
        try:
            return await self.database.run_write_on_connection(
                lambda cursor: ses_record.record_on_cursor(
                    cursor, event, settings=state.settings, keys=keys, now=now
                )
            )
        except ServiceUnavailable:
            return None  # the app's path retries on a fresh connection, or answers 503
