"""Helpers for driving the admin console through its forms, as a browser would."""

from __future__ import annotations

import re

import httpx2
from fastapi.testclient import TestClient
from sqlmodel import select

from prefcenter.admin.models import AdminSession
from prefcenter.admin.users import create_admin
from prefcenter.db import Database, utcnow

PASSWORD = "correct horse battery staple"
_TOKEN = re.compile(r'name="csrf_token" value="([^"]*)"')


def create_user(database: Database, username: str = "desk", password: str = PASSWORD) -> None:
    with database.transaction(write=True) as session:
        create_admin(session, username=username, password=password, now=utcnow())


def form_token(html: str) -> str:
    """The CSRF token of the first form on a page."""
    found = _TOKEN.search(html)
    assert found is not None, html
    return found.group(1)


def sign_in(client: TestClient, **fields: str) -> httpx2.Response:
    """Open the sign-in page and post its form with these fields (`username` and `password`,
    or `api_key`); redirects are not followed."""
    page = client.get("/admin/sign-in")
    assert page.status_code == 200
    method = "api_key" if "api_key" in fields else "password"
    return client.post(
        "/admin/sign-in",
        data={"csrf_token": form_token(page.text), "method": method, **fields},
        follow_redirects=False,
    )


def sign_in_with_key(client: TestClient, headers: dict[str, str]) -> None:
    answer = sign_in(client, api_key=headers["Authorization"].removeprefix("Bearer "))
    assert answer.status_code == 303, answer.text
    assert answer.headers["location"] == "/admin"


def page_token(client: TestClient, path: str) -> str:
    """The CSRF token the forms of a console page carry."""
    page = client.get(path)
    assert page.status_code == 200, page.text
    return form_token(page.text)


def sessions(database: Database) -> list[AdminSession]:
    with database.transaction(write=False) as session:
        return list(session.exec(select(AdminSession)))
