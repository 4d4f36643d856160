"""HTTP: `GET /metrics` on the app, for API keys with the `metrics` scope."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, FastAPI, Request, Response

from prefcenter import metrics
from prefcenter.apikeys.auth import requires
from prefcenter.apikeys.schemas import Caller, Scope
from prefcenter.monitoring.state import DatabaseState
from prefcenter.problems import problem_responses
from prefcenter.request_sessions import database_of
from prefcenter.settings import Settings

MetricsReader = Annotated[Caller, Depends(requires(Scope.METRICS))]


def install_metrics(app: FastAPI, settings: Settings) -> None:
    """`GET /metrics` on the app, unless PREFCENTER_METRICS_LISTEN serves it elsewhere (then
    the app answers 404: no scrape path on the public port)."""
    if settings.metrics_listen is not None:
        return

    @app.get(
        "/metrics",
        tags=["health"],
        summary="Prometheus metrics of every worker process, and the database's state",
        response_class=Response,
        responses={
            200: {"content": {metrics.CONTENT_TYPE: {"schema": {"type": "string"}}}},
            **problem_responses(401, 403, 503),
        },
    )
    def read_metrics(_: MetricsReader, request: Request) -> Response:
        body = metrics.exposition(DatabaseState(database_of(request)))
        return Response(body, media_type=metrics.CONTENT_TYPE)
