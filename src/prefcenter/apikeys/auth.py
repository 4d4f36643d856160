"""Owns bearer authentication: 401 for a missing or bad key, 403 for a key without the scope."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from prefcenter.apikeys.schemas import Caller, Scope
from prefcenter.apikeys.service import find_caller, find_caller_on_cursor
from prefcenter.problems import Problem
from prefcenter.request_sessions import database_of
from prefcenter.storage_errors import ConnectionLost

_bearer = HTTPBearer(auto_error=False, description="An API key from `prefcenter api-keys create`.")


class Unauthenticated(Problem):
    status = 401
    slug = "unauthenticated"
    title = "Authentication required"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": 'Bearer realm="prefcenter"'})


class Forbidden(Problem):
    status = 403
    slug = "forbidden"
    title = "Missing scope"


async def _authenticate(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    """The key is read on every request (a revoked key's next request is refused), in one
    statement of its own on a pooled connection: one hand-off to a worker thread, one round
    trip, no transaction held while the request's own waits for its turn."""
    if credentials is None:
        raise Unauthenticated("Send an API key as `Authorization: Bearer <key>`.")
    database = database_of(request)
    secret = credentials.credentials
    try:
        caller = await database.run_on_connection(
            partial(find_caller_on_cursor, secret=secret, sqlite=database.settings.is_sqlite)
        )
    except ConnectionLost:
        # A dead pooled connection (the server restarted): the session path drops every
        # pooled connection, as SQLAlchemy does on a disconnect, and retries once on a fresh
        # one (or answers 503 itself).
        caller = await database.run_in_transaction(partial(find_caller, secret=secret), write=False)
    if caller is None:
        raise Unauthenticated("The API key is unknown or has been revoked.")
    return caller


def requires(scope: Scope) -> Callable[..., Awaitable[Caller]]:
    # `async def`: no I/O, so no hand-off to a worker thread.
    async def _check(caller: Annotated[Caller, Depends(_authenticate)]) -> Caller:
        if not caller.allows(scope):
            raise Forbidden(f"This API key lacks the `{scope.value}` scope.", required_scope=scope)
        return caller

    return _check


ConsentWriter = Annotated[Caller, Depends(requires(Scope.CONSENT_WRITE))]
ConsentReader = Annotated[Caller, Depends(requires(Scope.CONSENT_READ))]
Admin = Annotated[Caller, Depends(requires(Scope.ADMIN))]
AnyCaller = Annotated[Caller, Depends(_authenticate)]
