"""prefcenter's app for bench/inbound.py's SNS run. Not for production.

The real app from the environment (as `prefcenter serve` builds it), with one change: the SNS
signing certificate is read from `$BENCH_SNS_CERT` instead of fetched from AWS (this machine
reaches no AWS). Each worker reads it once, on its first notification, and then has it cached,
as a served worker has after its first fetch.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import FastAPI

from prefcenter.app import create_app
from prefcenter.inbound.receive import InboundState
from prefcenter.settings import Settings


def make_app() -> FastAPI:
    settings = Settings()
    app = create_app(settings)
    certificate = Path(os.environ["BENCH_SNS_CERT"]).read_bytes()
    app.state.inbound = InboundState.from_settings(
        settings, fetch=lambda _url: certificate, confirm=lambda _url: None
    )
    return app
