"""The application shell: `create_app(settings)` wires settings, database, errors and routers."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

import prefcenter
from prefcenter import migrations
from prefcenter.admin.router import install_admin_console
from prefcenter.api_docs.router import install_api_docs
from prefcenter.audit.context import parse_trusted_proxies
from prefcenter.audit.keys import AuditKeys
from prefcenter.audit.router import changes_router, new_verify_slot
from prefcenter.audit.router import router as audit_router
from prefcenter.bounces.router import router as bounces_router
from prefcenter.consent.change_lane import ChangeLane
from prefcenter.consent.ledger.replay import first_contact_off_its_events
from prefcenter.consent.lookup_lane import LookupLane
from prefcenter.consent.router import router as consent_router
from prefcenter.db import Database
from prefcenter.draining import Drain, drain_on_sigterm
from prefcenter.eligibility.router import router as eligibility_router
from prefcenter.exports.router import router as exports_router
from prefcenter.http_limits import BodySizeLimit, BodyTimeout
from prefcenter.imports.router import router as imports_router
from prefcenter.inbound.router import install_inbound
from prefcenter.inbound.ses_lane import SesLane
from prefcenter.links.router import router as links_router
from prefcenter.mail.config import mail_config
from prefcenter.monitoring.router import install_metrics
from prefcenter.notices.router import router as notices_router
from prefcenter.preference_center.error_pages import install_invalid_link_page, request_timeout_page
from prefcenter.preference_center.policy_in_force import PolicyVersions
from prefcenter.preference_center.router import router as recipient_router
from prefcenter.preference_center.unsubscribe_lane import UnsubscribeLane
from prefcenter.problems import (
    ServiceUnavailable,
    document_problems,
    install_problem_handlers,
    problem_responses,
)
from prefcenter.request_log import ObservedFastAPI
from prefcenter.request_sessions import ReadSession
from prefcenter.settings import Settings
from prefcenter.templating import RecipientPageHeaders
from prefcenter.topics.router import router as topics_router
from prefcenter.webhooks.router import router as webhooks_router

logger = logging.getLogger(__name__)

# Read incrementally and never held whole: no body limit here. (Imports spool the body to a
# temporary file and enforce their own, larger limit: imports.router.MAX_IMPORT_BYTES.)
STREAMING_PREFIXES: tuple[str, ...] = ("/v1/eligibility/stream", "/v1/imports")
RECIPIENT_PREFIXES = ("/u/", "/p/", "/c/")


def create_app(settings: Settings) -> FastAPI:
    """Build the service. Fails at once on a configuration that cannot work (no signing key
    on PostgreSQL, a bad key ring) rather than on the first request."""
    signing_keys = settings.signing_key_ring()
    mail = mail_config(settings)  # a bad PREFCENTER_MAIL_URL stops the start, not a request
    database = Database(settings)
    head = migrations.head_revision(settings)
    known_revisions = migrations.known_revisions(settings)

    drain = Drain()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        undo = drain_on_sigterm(drain, delay_s=settings.shutdown_drain_s)
        yield
        if undo is not None:
            undo()
        database.dispose()

    app = ObservedFastAPI(  # X-Request-ID, the request log line, the HTTP metrics
        title="prefcenter",
        version=prefcenter.__version__,
        summary="Consent and marketing preferences: who may be emailed about what, and the proof.",
        lifespan=lifespan,
        # No trailing-slash redirects: a redirect built from the Host header is an open
        # redirect, and recipients' links never need one.
        redirect_slashes=False,
        # Not the framework's pages: they load their scripts from a CDN (see api_docs).
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.database = database
    app.state.drain = drain
    app.state.signing_keys = signing_keys
    app.state.mail = mail
    app.state.trusted_proxies = parse_trusted_proxies(settings.trusted_proxies)
    app.state.audit_keys = AuditKeys.from_settings(settings)
    app.state.policy_versions = PolicyVersions(database)
    app.state.audit_verify_slot = new_verify_slot()
    # `GET /v1/audit/verify?deep=true` replays the events against the ledger's state.
    app.state.state_replay = first_contact_off_its_events
    install_problem_handlers(app)
    document_problems(app)
    _install_middleware(app, settings, database)
    _install_routes(app, settings)
    if settings.api_docs_enabled:
        install_api_docs(app)

    @app.get("/healthz", tags=["health"], summary="The process is up")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["health"],
        summary="The database answers and its schema has every migration this code needs",
        responses=problem_responses(503),
        # Before the session: a draining process answers without touching the database.
        dependencies=[Depends(_not_draining)],
    )
    def readyz(session: ReadSession) -> JSONResponse:
        session.execute(text("SELECT 1"))
        current = migrations.current_revision(session.connection())
        if migrations.is_behind(current, head=head, known=known_revisions):
            raise ServiceUnavailable(
                f"The database schema is at {current or 'nothing'}, not {head}: "
                "run `prefcenter db upgrade`."
            )
        return JSONResponse({"status": "ok", "schema": current})

    return app


def _not_draining(request: Request) -> None:
    drain: Drain = request.app.state.drain
    if drain.started:
        raise ServiceUnavailable(
            "The server is shutting down; send requests to another one.",
            headers={"Retry-After": "1"},
        )


def app_from_environment() -> FastAPI:
    """Factory for `uvicorn --factory` worker processes: settings from the environment.

    What a worker builds to start (the app, its routes and schemas, the imported modules:
    ~140,000 objects) lives as long as the process. Frozen, the garbage collector's full
    collections no longer walk it: one cost 74 ms here, paid by whichever request happened to
    trigger it (the tail of `POST /v1/eligibility`). Not in `create_app`: a test process
    builds hundreds of apps, and frozen objects are never collected.
    """
    app = create_app(Settings())
    app.openapi()  # built now, not by the first request for it
    gc.collect()
    gc.freeze()
    return app


def _install_middleware(app: FastAPI, settings: Settings, database: Database) -> None:
    """Innermost first: the recipient pages' headers, the body size limit, the unsubscribe
    lane, the API lanes (consent changes, lookups), the SNS lane, the body timeout."""
    app.add_middleware(RecipientPageHeaders, prefixes=RECIPIENT_PREFIXES)
    app.add_middleware(
        BodySizeLimit, max_bytes=settings.max_body_bytes, exempt_prefixes=STREAMING_PREFIXES
    )
    # Outermost: the unsubscribe page and one-click POST without the framework's routing,
    # dependencies and templates per request; anything else it hands on (see the module).
    app.add_middleware(
        UnsubscribeLane,
        settings=settings,
        database=database,
        signing_keys=app.state.signing_keys,
        trusted_proxies=app.state.trusted_proxies,
        audit_keys=app.state.audit_keys,
        policy_versions=app.state.policy_versions,
    )
    # POST /v1/consents's common case without the framework's routing and dependencies
    # (consent.change_lane); anything else it hands on.
    app.add_middleware(
        ChangeLane,
        settings=settings,
        database=database,
        signing_keys=app.state.signing_keys,
        trusted_proxies=app.state.trusted_proxies,
        audit_keys=app.state.audit_keys,
    )
    # POST /v1/contacts/lookup likewise (consent.lookup_lane): key and rows in one read.
    app.add_middleware(
        LookupLane, settings=settings, database=database, audit_keys=app.state.audit_keys
    )
    # SES notifications through SNS (a bounce, a complaint, events to ignore) without the
    # framework's routing and the ORM (inbound.ses_lane); anything else it hands on.
    app.add_middleware(SesLane, settings=settings, database=database)
    # Outside the lanes too, which read their bodies themselves.
    app.add_middleware(
        BodyTimeout,
        timeout_s=settings.body_timeout_seconds,
        streaming_prefixes=STREAMING_PREFIXES,
        page_prefixes=RECIPIENT_PREFIXES,
        page=lambda scope: request_timeout_page(settings, scope),
    )


def _install_routes(app: FastAPI, settings: Settings) -> None:
    app.include_router(topics_router)
    app.include_router(consent_router)
    app.include_router(links_router)
    app.include_router(eligibility_router)
    app.include_router(exports_router)
    app.include_router(changes_router)
    app.include_router(audit_router)
    app.include_router(imports_router)
    app.include_router(bounces_router)
    install_inbound(app, settings)
    app.include_router(recipient_router)
    app.include_router(webhooks_router)
    app.include_router(notices_router)
    install_invalid_link_page(app)
    install_admin_console(app)
    install_metrics(app, settings)
