"""`/healthz` (the process) and `/readyz` (the database, with its schema current)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from fastapi.testclient import TestClient

from prefcenter import migrations
from prefcenter.app import create_app
from prefcenter.draining import Drain
from prefcenter.settings import Settings
from tests.support.factories import assert_problem
from tests.support.harness import make_settings


class TestHealthz:
    def test_answers_ok_without_a_key(self, client: TestClient) -> None:
        response = client.get("/healthz")

        assert response.status_code == 200
        assert response.json() == {"status": "ok"}

    def test_answers_while_the_database_is_down(self) -> None:
        settings = make_settings("postgresql+psycopg://postgres@127.0.0.1:1/nowhere")
        with TestClient(create_app(settings)) as client:
            assert client.get("/healthz").status_code == 200


class TestReadyz:
    def test_migrated_database_is_ready_with_its_revision(
        self, client: TestClient, settings: Settings
    ) -> None:
        response = client.get("/readyz")

        assert response.status_code == 200
        head = migrations.head_revision(settings)
        assert head is not None
        assert response.json() == {"status": "ok", "schema": head}

    def test_database_without_the_schema_is_503(self, tmp_path: Path) -> None:
        settings = make_settings(f"sqlite:///{tmp_path / 'empty.db'}")
        with TestClient(create_app(settings)) as client:
            response = client.get("/readyz")

        problem = assert_problem(response, 503, "unavailable")
        assert "prefcenter db upgrade" in problem["detail"]
        assert migrations.head_revision(settings) in problem["detail"]

    def test_database_behind_the_code_is_503(self, tmp_path: Path) -> None:
        settings = make_settings(f"sqlite:///{tmp_path / 'old.db'}")
        migrations.upgrade(settings)
        migrations.downgrade(settings, "base")
        with TestClient(create_app(settings)) as client:
            response = client.get("/readyz")

        assert_problem(response, 503, "unavailable")

    def test_unreachable_database_is_503_with_retry_after(self) -> None:
        settings = make_settings("postgresql+psycopg://postgres@127.0.0.1:1/nowhere")
        with TestClient(create_app(settings)) as client:
            response = client.get("/readyz")

        assert_problem(response, 503, "unavailable")
        assert response.headers["retry-after"] == "1"

    def test_a_draining_process_is_503_at_once_and_still_serves(
        self, client: TestClient, writer_headers: dict[str, str]
    ) -> None:
        drain: Drain = client.app.state.drain  # type: ignore[attr-defined]
        drain.start()  # what SIGTERM does (prefcenter.draining)

        problem = assert_problem(client.get("/readyz"), 503, "unavailable")
        assert "shutting down" in problem["detail"]
        assert client.get("/healthz").status_code == 200
        assert client.get("/v1/topics", headers=writer_headers).status_code == 200


def test_a_served_worker_freezes_what_it_built_to_start(tmp_path: Path) -> None:
    """`app_from_environment` (each `prefcenter serve` worker) moves its start-up objects out
    of the garbage collector's full collections. In a child process: frozen objects are never
    collected, which this test process must not inherit."""
    environment = {
        **os.environ,
        "PREFCENTER_DATABASE_URL": f"sqlite:///{tmp_path / 'worker.db'}",
    }
    environment.pop("PREFCENTER_SIGNING_KEYS", None)
    probe = (
        "import gc; from prefcenter.app import app_from_environment; "
        "before = gc.get_freeze_count(); app_from_environment(); "
        "print(before, gc.get_freeze_count())"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    before, after = (int(n) for n in result.stdout.split())
    assert before == 0
    assert after > 50_000  # the app, its routes and schemas, the modules they came from
