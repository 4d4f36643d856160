"""`prefcenter serve --workers 2` on SIGTERM: every process ends with status 0 once it has shut
down gracefully, the server processes as well as their supervisor (uvicorn's own would end each
server process with -15), and the supervisor names each one's status."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest

from tests.support.live_server import fresh_database_url, live_server

pytestmark = pytest.mark.slow

_STARTED = re.compile(r"Started server process \[(\d+)\]")
_EXITED = re.compile(r"server process \[(\d+)\] exited with status (-?\d+)")


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_sigterm_ends_the_supervisor_and_every_server_process_with_status_0(
    request: pytest.FixtureRequest, engine: str, tmp_path: Path
) -> None:
    url = fresh_database_url(request, engine, tmp_path)
    with live_server(url, log_dir=tmp_path, workers=2, extra_args=("--no-worker",)) as live:
        live.process.send_signal(signal.SIGTERM)
        code = live.process.wait(timeout=30)
        log = live.log()

    assert code == 0, log
    started = set(_STARTED.findall(log))
    assert len(started) == 2, log
    exited = dict(_EXITED.findall(log))
    assert exited == dict.fromkeys(started, "0"), log
