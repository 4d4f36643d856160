"""HTML under `/admin/notices`: each notice with its versions, and where each material
version's notice mails stand."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from prefcenter.admin.access import SignedIn
from prefcenter.admin.pages import AdminRoute, render
from prefcenter.notices import service
from prefcenter.request_sessions import ReadSession

router = APIRouter(route_class=AdminRoute)


@router.get("/notices")
def notices_page(request: Request, admin: SignedIn, session: ReadSession) -> HTMLResponse:
    notices = service.list_notices(session)
    versions = {n.key: service.list_versions(session, n.key) for n in notices}
    runs = {
        (v.notice, v.version): service.notification(session, v.notice, v.version)
        for listed in versions.values()
        for v in listed
        if v.material
    }
    return render(
        request,
        "notices.html",
        {"notices": notices, "versions": versions, "runs": runs},
        admin=admin,
    )
