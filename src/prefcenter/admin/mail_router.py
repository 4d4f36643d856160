"""HTML under `/admin/mail`: the outbox and the Maildir's mails ("Outgoing mail")."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request
from fastapi.responses import HTMLResponse

from prefcenter.admin.access import SignedIn
from prefcenter.admin.mail import mail_page, maildir_mail
from prefcenter.admin.pages import AdminRoute, render
from prefcenter.mail.config import MailConfig
from prefcenter.mail.maildir import MAX_KEY_LENGTH
from prefcenter.request_sessions import ReadSession

router = APIRouter(route_class=AdminRoute)

MailKey = Annotated[str, Path(max_length=MAX_KEY_LENGTH)]


def _mail_of(request: Request) -> MailConfig | None:
    mail: MailConfig | None = request.app.state.mail
    return mail


@router.get("/mail")
def outgoing_mail(request: Request, admin: SignedIn, session: ReadSession) -> HTMLResponse:
    return render(
        request, "mail.html", {"page": mail_page(session, _mail_of(request))}, admin=admin
    )


@router.get("/mail/maildir/{key}")
def show_mail(request: Request, key: MailKey, admin: SignedIn) -> HTMLResponse:
    """One mail of the Maildir: its headers and its text part, as the recipient reads it."""
    return render(
        request, "mail_message.html", {"mail": maildir_mail(_mail_of(request), key)}, admin=admin
    )
