"""HTML under `/admin/webhooks`: the endpoints with their newest deliveries (status, attempts,
last error) and a replay form for each."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Path, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from prefcenter.admin.access import Form, SignedIn, SignedInPost, form_text
from prefcenter.admin.pages import AdminRoute, render, see_other
from prefcenter.db import utcnow
from prefcenter.problems import Unprocessable
from prefcenter.request_sessions import ReadSession, WriteSession
from prefcenter.webhooks import deliveries, replays, service
from prefcenter.webhooks.schemas import ENDPOINT_ID_PATTERN

router = APIRouter(route_class=AdminRoute)

EndpointId = Annotated[str, Path(pattern=ENDPOINT_ID_PATTERN)]
DELIVERIES_SHOWN = 10


class BadSeq(Unprocessable):
    slug = "bad-seq"
    title = "Not a sequence number"


@router.get("/webhooks")
def webhooks_page(request: Request, admin: SignedIn, session: ReadSession) -> HTMLResponse:
    endpoints = service.list_endpoints(session, now=utcnow())
    recent = {
        e.id: deliveries.list_deliveries(
            session, e.id, status=None, limit=DELIVERIES_SHOWN, before=None
        ).deliveries
        for e in endpoints
    }
    return render(
        request,
        "webhooks.html",
        {
            "endpoints": endpoints,
            "recent": recent,
            "replayed": request.query_params.get("replayed"),
            "queued": request.query_params.get("queued"),
        },
        admin=admin,
    )


@router.post("/webhooks/{endpoint_id}/replay")
def replay(
    endpoint_id: EndpointId, admin: SignedInPost, form: Form, session: WriteSession
) -> RedirectResponse:
    """Queue the endpoint's events after a seq again (as the API's replay)."""
    raw = form_text(form, "after_seq").strip() or "0"
    if not raw.isdigit() or len(raw) > 18:
        raise BadSeq("After which seq? Give a whole number, 0 for the whole trail.")
    result = replays.replay(
        session,
        endpoint_id,
        after_seq=int(raw),
        actor=service.Actor(name=admin.actor, channel="console"),
        now=utcnow(),
    )
    return see_other(
        f"/admin/webhooks?replayed={quote(endpoint_id)}&queued={result.queued}#{endpoint_id}"
    )
