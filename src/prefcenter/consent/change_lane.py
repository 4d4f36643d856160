"""Owns the lane of `POST /v1/consents`: an API client's change answered in front of the app
(an ASGI middleware, as the unsubscribe lane is) from one read, without the framework's
routing, dependency solving or ORM. The API key is checked in that read
(consent.ledger.api_state), on every request (a revoked key's next request is refused). The
change is decided by the same rules and written with the same row values, audit event, webhook
deliveries, Idempotency-Key record and metrics as consent.service's locking path: on
PostgreSQL on a pooled connection in one worker-thread hand-off, in one guarded statement
(consent.ledger.api_lane); on SQLite by the database's writer thread (sqlite_batches), which
reads, decides and writes (consent.ledger.api_lane_sqlite) inside its write transaction, with
the other changes queued at that moment, each in its own savepoint, and answers them all once
their one COMMIT has returned.

It answers the common case and hands everything else to the app, body and all, having written
nothing, which answers it the ordinary way (its route, dependencies and locking path): a
body that is not a JSON object the model accepts, of a declared length the app would take; no
bearer key, or one that is unknown, revoked or without `consent:write`; a malformed
Idempotency-Key, or one stored with another request; a change that names a notice version, or of
a topic bound to a notice (the version it is given under is notices' to decide:
consent.ledger.changes.given_under); an unknown topic or an erased address; a change the rules
refuse or find superseded; a pending subscription while the service mails confirmations itself;
whatever moved on between the read and the write; a database error. A stored answer under the
caller's Idempotency-Key is answered from the read, as idempotency.IdempotentCall does.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import replace
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from prefcenter.apikeys.schemas import Scope as KeyScope
from prefcenter.apikeys.service import bearer_secret, hash_secret
from prefcenter.audit.context import IPNetwork, RequestContext, request_context
from prefcenter.audit.keys import AuditKeys
from prefcenter.audit.schemas import new_event_id
from prefcenter.confirmations import confirm_link
from prefcenter.consent.ledger.api_lane import AnswerToKeep, NewContact, write_api_change
from prefcenter.consent.ledger.api_lane_sqlite import write_api_change_sqlite
from prefcenter.consent.ledger.api_state import (
    ApiChangeState,
    StateQuery,
    TopicRow,
    read_api_state,
)
from prefcenter.consent.ledger.changes import (
    change_event,
    counted_source,
    decide_global_change,
    decide_topic_change,
    needs_suppression,
    subscription_change,
    suppression_change,
)
from prefcenter.consent.rules import Decision, Outcome, RequestedChange, Status
from prefcenter.consent.schemas import ConsentChangeIn, ConsentChangeOut
from prefcenter.consent.service import api_change_record, pending_confirmation, requested_change
from prefcenter.contacts.service import new_public_id
from prefcenter.db import Database, utcnow
from prefcenter.driver import DriverCursor
from prefcenter.http_limits import read_whole_body, replay_body
from prefcenter.idempotency import (
    MAX_KEY_LENGTH,
    REPLAY_HEADER,
    IdempotentCall,
    StoredAnswer,
    fingerprint,
)
from prefcenter.lane_io import LaneRoute, posted_to, send_json, small_json
from prefcenter.mail.config import mail_config
from prefcenter.metrics import count_consent_change
from prefcenter.problems import Problem, ServiceUnavailable
from prefcenter.settings import Settings, SigningKey
from prefcenter.sqlite_batches import AfterCommit
from prefcenter.topics.schemas import TopicKind

PATH = "/v1/consents"
# What the route's `Idempotency-Key` header accepts (idempotency._idempotent_call).
_IDEMPOTENCY_KEY = re.compile(rf"[\x21-\x7e]{{1,{MAX_KEY_LENGTH}}}")
_ROUTE = LaneRoute(PATH)
# What the lane's work gives: see record_on_cursor.
Recorded = ConsentChangeOut | StoredAnswer | None


class ChangeLane:
    """ASGI middleware: answers `POST /v1/consents`'s common case itself, hands the rest to
    `app` (see the module)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        settings: Settings,
        database: Database,
        signing_keys: tuple[SigningKey, ...],
        trusted_proxies: tuple[IPNetwork, ...],
        audit_keys: AuditKeys,
    ) -> None:
        self.app = app
        self.settings = settings
        self.database = database
        self.signing_keys = signing_keys
        self.trusted_proxies = trusted_proxies
        self.audit_keys = audit_keys
        # The settings do not change: asked once, not per request (create_app has checked it).
        self.mail_on = mail_config(settings) is not None
        # SQLite: the writes are batched in the database's writer thread (sqlite_batches),
        # each read inside the write transaction.
        self.batches = database.sqlite_batches

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not posted_to(scope, PATH):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        secret = bearer_secret(headers.get("authorization"))
        key = headers.get("idempotency-key")
        if (
            secret is None
            or (key is not None and _IDEMPOTENCY_KEY.fullmatch(key) is None)
            or not small_json(headers, self.settings.max_body_bytes)
        ):
            await self.app(scope, receive, send)
            return
        body = await read_whole_body(receive)
        if body is None:
            return  # the client went away before its body arrived: nothing was asked
        try:
            change = ConsentChangeIn.model_validate_json(body)
        except ValidationError:
            change = None
        if change is None or change.notice is not None:
            await self.app(scope, replay_body(body, receive), send)
            return
        client = scope.get("client")
        idempotency = IdempotentCall(
            key=key,
            request_hash=""
            if key is None
            else fingerprint("POST", PATH, scope["query_string"].decode("latin-1"), body),
        )
        context = request_context(client[0] if client else None, headers, self.trusted_proxies)
        now = utcnow()
        secret_hash = hash_secret(secret)

        def record(cursor: DriverCursor, after_commit: AfterCommit | None = None) -> Recorded:
            return record_on_cursor(
                cursor,
                change,
                secret_hash=secret_hash,
                idempotency=idempotency,
                request=context,
                settings=self.settings,
                ring=self.signing_keys,
                keys=self.audit_keys,
                now=now,
                mail_on=self.mail_on,
                after_commit=after_commit,
            )

        try:
            if self.batches is not None:
                answer = await self.batches.run(record)
            else:
                answer = await self.database.run_write_on_connection(record)
        except (ServiceUnavailable, sqlite3.IntegrityError):
            # The app's path retries on a fresh connection, or answers 503; or decides afresh
            # a change that met a unique row the read could not see (a public id drawn twice).
            answer = None
        if isinstance(answer, StoredAnswer):
            if answer.request_hash != idempotency.request_hash:
                answer = None  # the app refuses the reused key (422)
            else:
                await self._send(scope, send, answer.status_code, answer.body, replayed=True)
                return
        if answer is None:
            await self.app(scope, replay_body(body, receive), send)
            return
        await self._send(scope, send, 200, answer.model_dump_json(), replayed=False)

    async def _send(
        self, scope: Scope, send: Send, status: int, text: str, *, replayed: bool
    ) -> None:
        extra = ((REPLAY_HEADER.lower().encode("latin-1"), b"true"),) if replayed else ()
        await send_json(scope, send, _ROUTE, status, text.encode(), extra_headers=extra)


def record_on_cursor(
    cursor: DriverCursor,
    change: ConsentChangeIn,
    *,
    secret_hash: str,
    idempotency: IdempotentCall,
    request: RequestContext,
    settings: Settings,
    ring: tuple[SigningKey, ...],
    keys: AuditKeys,
    now: datetime,
    mail_on: bool | None = None,
    after_commit: AfterCommit | None = None,
) -> Recorded:
    """The change recorded and committed, with its answer (stored under the Idempotency-Key,
    if any); or the stored answer to a retry; or None, nothing written: the app answers (a
    key that is unknown, revoked or without `consent:write`, and whatever the lane leaves to
    the locking path). `secret_hash`: the hash of the caller's bearer secret; `mail_on`:
    whether the service sends mail itself, if known (else read from `settings`).

    `after_commit`: run in a SQLite batch (sqlite_batches), whose transaction `cursor` is in
    and which commits it: the state is read in that transaction and not again, and what
    follows the commit (the metrics) is appended here instead of done."""
    mail_on = mail_config(settings) is not None if mail_on is None else mail_on
    address = change.email
    address_hash = keys.address_hash(address.normalised)
    sqlite = settings.is_sqlite
    query = StateQuery(
        topic_key=change.topic,
        address=address.normalised,
        address_hash=address_hash,
        secret_hash=secret_hash,
        idempotency_key=idempotency.key,
    )
    state = read_api_state(
        cursor,
        topic_key=query.topic_key,
        address=query.address,
        address_hash=address_hash,
        secret_hash=secret_hash,
        idempotency_key=query.idempotency_key,
        sqlite=sqlite,
    )
    caller = state.caller
    if caller is None or not caller.allows(KeyScope.CONSENT_WRITE):
        return None  # the app's 401 or 403
    if idempotency.key is not None and state.stored_answer is not None:
        return state.stored_answer
    if (
        state.address_erased
        or (change.topic is not None and state.topic is None)
        or (state.topic is not None and state.topic.notice_key is not None)
    ):
        # The locking path's: its problem (address-erased, unknown topic), or the version a
        # subscription is given under (consent.ledger.changes.given_under).
        return None
    topic = state.topic
    record = api_change_record(
        change, caller=caller, request=request, settings=settings, mail_on=mail_on
    )
    requested = replace(
        requested_change(change, topic, caller=caller, now=now),
        with_evidence=bool(record.evidence),
    )
    try:
        decision = _decide(state, topic, requested, now=now)
    except Problem:
        return None  # the locking path refuses it the same way
    if decision.outcome is Outcome.SUPERSEDED:
        return None
    pending = topic is not None and decision.status is Status.PENDING
    if pending and mail_on:
        return None  # the confirmation mail is queued through the session
    public_id = state.public_id or new_public_id()
    event_id = new_event_id()
    if topic is not None:
        values = subscription_change(decision, requested, now=now, event_id=event_id)
    else:
        was = None if state.suppression is None else state.suppression[0]
        values = suppression_change(decision, requested, now=now, was_suppressed=was)
    event = change_event(
        event_id=event_id,
        contact_id=public_id,
        address=address.normalised,
        topic_key=None if topic is None else topic.key,
        requested=requested,
        record=record,
        decision=decision,
    )
    link = None
    if pending:
        assert topic is not None
        link = _confirm_link(state, topic, values, change, settings, ring, public_id, now)
    answer = ConsentChangeOut(
        contact_id=public_id,
        email=address.given,
        topic=None if topic is None else topic.key,
        status=decision.status,
        changed=decision.changed,
        outcome=decision.outcome,
        event_id=event_id,
        confirm_url=link,
    )
    kept = (
        None
        if idempotency.key is None
        else AnswerToKeep(
            owner=caller.owner,
            key=idempotency.key,
            request_hash=idempotency.request_hash,
            status_code=200,
            body=answer.model_dump_json(),
            created_at=now,
        )
    )
    new_contact = (
        None
        if state.contact_row_id is not None
        else NewContact(
            public_id=public_id,
            address=address.normalised,
            address_display=address.given,
            address_hash=address_hash,
            created_at=now,
        )
    )
    if sqlite:
        written = write_api_change_sqlite(
            cursor,
            state,
            query=query,
            settings=settings,
            values=values,
            new_contact=new_contact,
            event=event,
            keys=keys,
            answer=kept,
            now=now,
            in_turn=after_commit is not None,
        )
    else:
        written = write_api_change(
            cursor,
            state,
            values=values,
            new_contact=new_contact,
            event=event,
            keys=keys,
            answer=kept,
            now=now,
            expected_suppression=topic is not None
            and state.contact_row_id is not None
            and needs_suppression(topic.kind, requested),
        )
    if not written:
        return None
    _count(counted_source(requested), decision.outcome.value, after_commit)
    return answer


def _count(source: str, outcome: str, after_commit: AfterCommit | None) -> None:
    """The change counted in the metrics once committed: now (PostgreSQL's one statement in
    autocommit, SQLite's own turn), or after its batch's commit."""
    if after_commit is None:
        count_consent_change(None, source=source, outcome=outcome)
    else:
        after_commit.append(lambda: count_consent_change(None, source=source, outcome=outcome))


def _confirm_link(
    state: ApiChangeState,
    topic: TopicRow,
    values: dict[str, Any],
    change: ConsentChangeIn,
    settings: Settings,
    ring: tuple[SigningKey, ...],
    public_id: str,
    now: datetime,
) -> str:
    """The confirmation link of a change that leaves the subscription pending, bound to the
    event that made it pending: this one, or the one before an unchanged repeat."""
    pending_event = values.get("event_id")
    if pending_event is None:
        assert state.subscription is not None
        pending_event = state.subscription[3]
    return confirm_link(
        settings.base_url,
        ring,
        pending_confirmation(change, public_id, topic, pending_event),
        now=now,
    )


def _decide(
    state: ApiChangeState, topic: TopicRow | None, requested: RequestedChange, *, now: datetime
) -> Decision:
    """The decision, as the locking path (ledger.orm) makes it. Raises the rules' problems."""
    if topic is None:
        return decide_global_change(state.suppression_state, requested, now=now)
    return decide_topic_change(
        state.subscription_state,
        state.suppression_state if needs_suppression(topic.kind, requested) else None,
        topic_kind=TopicKind(topic.kind),
        requested=requested,
        now=now,
    )
