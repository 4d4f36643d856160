"""The fast lane of `/u/{token}`: the unsubscribe page and the RFC 8058 one-click POST served
by a plain ASGI handler in front of the FastAPI app, for the two requests that come in storms
(a campaign's opt-outs; link scanners fetching every link of every mail).

It answers only the common case, the same way the app's routes (preference_center.router)
would, and hands everything else to the app, which answers it the ordinary way:

- GET, HEAD and POST with a valid unsubscribe token. A bad token, another method, a `root_path`:
  the app (its invalid-link page, its 405).
- POST with an url-encoded body (what Gmail, Yahoo and our page send) or none, with a
  `Content-Length` within `MAX_FORM_BYTES`; multipart and chunked bodies go to the app.
- GET/HEAD: one read, on either engine (consent.ledger.lane.read_link_contact). An unknown
  or erased contact goes to the app (its 404 page).
- POST on PostgreSQL: one read and one guarded statement that writes the opt-out and its audit
  event (consent.ledger.lane). If the state moved on between them, the contact is gone,
  or the database failed, the app's locking path does it instead (the request body is handed
  on as it came). POST on SQLite: the app.

Pages are filled from frames rendered once (templating.Pages.render_fast), with the headers
every recipient page carries.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from starlette.datastructures import Headers, QueryParams
from starlette.types import ASGIApp, Receive, Scope, Send

from prefcenter.audit.context import IPNetwork, request_context
from prefcenter.audit.keys import AuditKeys
from prefcenter.consent.ledger.lane import (
    OptOutState,
    read_link_contact,
    read_optout_state,
    write_optout,
)
from prefcenter.consent.rules import Status
from prefcenter.contacts.service import mask_address
from prefcenter.db import Database, utcnow
from prefcenter.http_limits import read_whole_body, replay_body
from prefcenter.metrics import count_consent_change
from prefcenter.preference_center import service
from prefcenter.preference_center.policy_in_force import PolicyVersions, policy_texts
from prefcenter.preference_center.router import MAX_FORM_FIELDS, pages
from prefcenter.problems import ServiceUnavailable
from prefcenter.settings import Settings, SigningKey
from prefcenter.templating import (
    RECIPIENT_PAGE_HEADER_PAIRS,
    negotiate_language,
    with_language,
)
from prefcenter.tokens import TokenError, TokenPurpose, VerifiedToken, verify_token

PREFIX = "/u/"
# RFC 8058's body is 26 bytes; the page's form a few more.
MAX_FORM_BYTES = 4096
_FORM_TYPE = "application/x-www-form-urlencoded"
_HTML = (b"content-type", b"text/html; charset=utf-8")


class UnsubscribeLane:
    """ASGI middleware: answers `/u/{token}`'s common case itself, hands the rest to `app`."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        settings: Settings,
        database: Database,
        signing_keys: tuple[SigningKey, ...],
        trusted_proxies: tuple[IPNetwork, ...],
        audit_keys: AuditKeys,
        policy_versions: PolicyVersions,
    ) -> None:
        self.app = app
        self.settings = settings
        self.database = database
        self.signing_keys = signing_keys
        self.trusted_proxies = trusted_proxies
        self.audit_keys = audit_keys
        self.policy_versions = policy_versions
        # Never more than the app would take (http_limits.BodySizeLimit answers 413 above).
        self.max_form_bytes = min(MAX_FORM_BYTES, settings.max_body_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or not scope["path"].startswith(PREFIX)
            or scope["method"] not in ("GET", "HEAD", "POST")
            or scope.get("root_path")
        ):
            await self.app(scope, receive, send)
            return
        token = scope["path"][len(PREFIX) :]
        try:
            verified = verify_token(
                self.signing_keys, TokenPurpose.UNSUBSCRIBE, token, now=utcnow()
            )
        except TokenError:
            await self.app(scope, receive, send)
            return
        if scope["method"] == "POST":
            await self._opt_out(scope, receive, send, token, verified)
        else:
            await self._page(scope, receive, send, token, verified)

    async def _page(
        self, scope: Scope, receive: Receive, send: Send, token: str, verified: VerifiedToken
    ) -> None:
        sqlite = self.settings.is_sqlite
        claims = verified.claims
        try:
            contact = await self.database.run_on_connection(
                lambda cursor: read_link_contact(
                    cursor, public_id=claims.contact_id, topic_key=claims.topic, sqlite=sqlite
                )
            )
        except ServiceUnavailable:
            contact = None
        if contact is None or contact.erased or contact.address is None:
            await self.app(scope, receive, send)
            return
        # No read of its own: the versions are kept for a few seconds (policy_in_force).
        policy = await self.policy_versions.in_force(utcnow())
        await self._send_page(
            scope,
            send,
            Headers(scope=scope),
            "unsubscribe.html",
            token,
            contact.address,
            contact.topic_name,
            policy_texts(policy),
        )

    async def _opt_out(
        self, scope: Scope, receive: Receive, send: Send, token: str, verified: VerifiedToken
    ) -> None:
        headers = Headers(scope=scope)
        if self.settings.is_sqlite or not _small_form(headers, self.max_form_bytes):
            await self.app(scope, receive, send)
            return
        body = await read_whole_body(receive)
        if body is None:
            return  # the client went away before its body arrived: nothing was asked
        fields = parse_qsl(body.decode("latin-1"), keep_blank_values=True)
        if len(fields) > MAX_FORM_FIELDS:
            await self.app(scope, replay_body(body, receive), send)
            return
        via = dict(fields).get("via")
        channel = service.Channel.UNSUBSCRIBE_PAGE if via == "page" else service.Channel.ONE_CLICK
        client = scope.get("client")
        record = service.recipient_record(
            verified,
            channel,
            request_context(client[0] if client else None, headers, self.trusted_proxies),
        )
        now = utcnow()
        requested = service.recipient_change(Status.UNSUBSCRIBED, channel, now)
        keys = self.audit_keys
        claims = verified.claims

        def opt_out(cursor: object) -> OptOutState | None:
            state = read_optout_state(cursor, public_id=claims.contact_id, topic_key=claims.topic)
            if state is None:
                return None
            written = write_optout(
                cursor, state, requested=requested, record=record, keys=keys, now=now
            )
            if written is None:
                return None
            # Committed already: one statement in autocommit.
            count_consent_change(None, source=channel.value, outcome=written.decision_outcome.value)
            return state

        try:
            state = await self.database.run_on_connection(opt_out)
        except ServiceUnavailable:
            state = None
        if state is None or state.address is None:
            await self.app(scope, replay_body(body, receive), send)
            return
        await self._send_page(
            scope, send, headers, "unsubscribed.html", token, state.address, state.topic_name
        )

    async def _send_page(
        self,
        scope: Scope,
        send: Send,
        headers: Headers,
        template: str,
        token: str,
        address: str,
        topic_name: str | None,
        more: dict[str, str | None] | None = None,
    ) -> None:
        query_lang = QueryParams(scope["query_string"]).get("lang")
        language = negotiate_language(query_lang, headers.get("accept-language"))
        text = pages.render_fast(
            language,
            template,
            {
                "organization": self.settings.organization_name,
                "masked_address": mask_address(address),
                "topic_name": topic_name,
                "action": with_language(query_lang, f"{PREFIX}{token}"),
                **(more or {}),
            },
        )
        body = text.encode("utf-8")
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    _HTML,
                    (b"content-length", str(len(body)).encode("latin-1")),
                    (b"content-language", language.encode("latin-1")),
                    *RECIPIENT_PAGE_HEADER_PAIRS,
                ],
            }
        )
        await send(
            {"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body}
        )


def _small_form(headers: Headers, max_bytes: int) -> bool:
    """An url-encoded body (or none) of a declared, small length: what the lane reads itself."""
    if "transfer-encoding" in headers:
        return False
    content_type = headers.get("content-type")
    length_text = headers.get("content-length", "0")
    if not length_text.isdigit() or int(length_text) > max_bytes:
        return False
    if content_type is None:
        return int(length_text) == 0
    return content_type.split(";", 1)[0].strip().lower() == _FORM_TYPE
