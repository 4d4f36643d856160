"""The metrics of a real `prefcenter serve --workers 2`: every scrape, whichever process answers
it, reports the sum over all worker processes (prometheus_client's multiprocess mode), on the
app and on a separate listen address."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from prefcenter.apikeys.schemas import Scope
from prefcenter.logs import REQUEST_LOGGER
from tests.support.live_server import (
    LiveServer,
    free_port,
    fresh_database_url,
    issue_live_key,
    live_server,
)

pytestmark = pytest.mark.slow

WORKERS = 2
BURST = 40  # requests at once: enough that both workers take some
MAX_BURSTS = 10
SCRAPES = 6
LOG_WAIT_S = 10.0


def healthz_count(text: str) -> float:
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == "prefcenter_http_requests_total" and found.labels == {
                "method": "GET",
                "route": "/healthz",
                "status": "200",
            }:
                return float(found.value)
    return 0.0


async def _burst(base_url: str) -> None:
    limits = httpx.Limits(max_connections=BURST, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30.0) as client:
        answers = await asyncio.gather(*(client.get("/healthz") for _ in range(BURST)))
    assert all(a.status_code == 200 for a in answers)


def healthz_processes(server: LiveServer) -> list[int]:
    """The worker process that answered each /healthz so far, from the JSON request lines."""
    entries = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    return [
        e["process"]
        for e in entries
        if e["logger"] == REQUEST_LOGGER and e["route"] == "/healthz" and e["status"] == 200
    ]


def _logged(server: LiveServer, sent: int) -> list[int]:
    """The processes of the first `sent` request lines, once all are written: a request is
    counted just before its line, which may follow its answer by a moment."""
    deadline = time.monotonic() + LOG_WAIT_S
    while len(processes := healthz_processes(server)) < sent and time.monotonic() < deadline:
        time.sleep(0.05)
    return processes


def requests_from_both_workers(server: LiveServer) -> int:
    """Bursts of /healthz until both workers have answered some; how many were sent."""
    sent = 0
    for _ in range(MAX_BURSTS):
        asyncio.run(_burst(server.base_url))
        sent += BURST
        if len(set(_logged(server, sent))) == WORKERS:
            return sent
    pytest.fail(f"one worker answered all {sent} requests; the test proves nothing")


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_every_scrape_sums_every_worker(
    request: pytest.FixtureRequest, engine: str, tmp_path: Path
) -> None:
    url = fresh_database_url(request, engine, tmp_path)
    headers = issue_live_key(url, Scope.METRICS)
    env = {"PREFCENTER_LOG_FORMAT": "json"}
    with live_server(url, log_dir=tmp_path, workers=WORKERS, extra_env=env) as server:
        sent = requests_from_both_workers(server)
        with httpx.Client(base_url=server.base_url, headers=headers, timeout=30.0) as client:
            # A new connection each time, so that either worker may answer.
            counts = [
                healthz_count(client.get("/metrics", headers={"Connection": "close"}).text)
                for _ in range(SCRAPES)
            ]

    assert len(healthz_processes(server)) == sent
    assert counts == [sent] * SCRAPES


def test_a_separate_listen_address(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    url = fresh_database_url(request, "sqlite", tmp_path)
    admin = issue_live_key(url, Scope.ADMIN)
    port = free_port()
    env = {"PREFCENTER_METRICS_LISTEN": f"127.0.0.1:{port}", "PREFCENTER_LOG_FORMAT": "json"}
    with live_server(url, log_dir=tmp_path, workers=WORKERS, extra_env=env) as server:
        sent = requests_from_both_workers(server)
        # Served by `serve`'s own process, which answered none of the requests itself.
        scraped = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30.0)
        on_the_app = httpx.get(f"{server.base_url}/metrics", headers=admin, timeout=30.0)

    assert scraped.status_code == 200
    assert healthz_count(scraped.text) == sent
    assert "prefcenter_audit_head_seq" in scraped.text
    assert on_the_app.status_code == 404
