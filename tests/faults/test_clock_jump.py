"""The service's clock is stepped back an hour while writes go on: `seq` stays gap-free and in
commit order, the chain verifies, and the ordering rules keep deciding by `occurred_at`, so a
change stamped by the clock that went back loses to one stamped before the jump."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from prefcenter.apikeys.schemas import Scope
from tests.faults import shifted_clock
from tests.faults.cluster import PrivatePostgres
from tests.faults.load import TOPIC, audit_seqs_are_gap_free
from tests.support.harness import TEST_AUDIT_KEY, TEST_SIGNING_KEYS
from tests.support.live_server import fresh_database_url, issue_live_key, live_server

pytestmark = [pytest.mark.slow, pytest.mark.faults]

JUMP_S = -3600
WRITES = 20


def database_for(engine: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if engine == "sqlite":
        return fresh_database_url(request, "sqlite", tmp_path)
    cluster: PrivatePostgres = request.getfixturevalue("private_postgres")
    return cluster.url


def write(client: httpx.Client, email: str, status: str, **fields: Any) -> dict[str, Any]:
    answer = client.post(
        "/v1/consents", json={"email": email, "topic": TOPIC, "status": status, **fields}
    )
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def audit_verify(database_url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFCENTER_")}
    env |= {
        "PREFCENTER_DATABASE_URL": database_url,
        "PREFCENTER_SIGNING_KEYS": TEST_SIGNING_KEYS,
        "PREFCENTER_AUDIT_KEY": TEST_AUDIT_KEY,
        "PREFCENTER_MAIL_URL": "off",
    }
    return subprocess.run(
        [sys.executable, "-m", "prefcenter", "audit", "verify"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_clock_stepped_back_an_hour_during_writes(
    engine: str, request: pytest.FixtureRequest, tmp_path: Path, measured: Callable[[str], None]
) -> None:
    url = database_for(engine, request, tmp_path)
    headers = issue_live_key(url, Scope.ADMIN)
    clock = tmp_path / "clock-offset"
    clock.write_text("0", encoding="ascii")
    with (
        live_server(
            url,
            log_dir=tmp_path / "server",
            extra_env={shifted_clock.CLOCK_FILE: str(clock)},
            command_prefix=(shifted_clock.__file__,),
        ) as server,
        httpx.Client(base_url=server.base_url, headers=headers, timeout=30) as client,
    ):
        topic = {"name": "News", "kind": "marketing", "consent": "opt_out"}
        assert client.put(f"/v1/topics/{TOPIC}", json=topic).status_code == 201
        before = [write(client, f"a{n}@example.com", "subscribed") for n in range(WRITES)]

        clock.write_text(str(JUMP_S), encoding="ascii")
        after = [write(client, f"a{n}@example.com", "unsubscribed") for n in range(WRITES)]
        # Stamped by the clock that went back: older than what it would replace.
        assert {a["outcome"] for a in after} == {"superseded"}
        # Told when it happened, a change is ordered by that, whatever our clock says.
        real_past = datetime.now(UTC) + timedelta(seconds=2 * JUMP_S)
        write(client, "b@example.com", "subscribed", occurred_at=real_past.isoformat())
        newer = write(client, "b@example.com", "unsubscribed")
        assert newer["outcome"] == "applied"
        older = write(
            client,
            "b@example.com",
            "subscribed",
            occurred_at=(real_past - timedelta(minutes=1)).isoformat(),
        )
        assert older["outcome"] == "superseded"

        lookup = client.post(
            "/v1/contacts/lookup",
            json={"emails": [f"a{n}@example.com" for n in range(WRITES)] + ["b@example.com"]},
        )
        assert lookup.status_code == 200, lookup.text
        statuses = {
            c["email"]: [s["status"] for s in c["subscriptions"] if s["topic"] == TOPIC]
            for c in lookup.json()["contacts"]
        }

    assert all(statuses[f"a{n}@example.com"] == ["subscribed"] for n in range(WRITES))
    assert statuses["b@example.com"] == ["unsubscribed"]
    assert len(before) == WRITES
    audit_seqs_are_gap_free(url)
    verified = audit_verify(url)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    measured(f"clock back 1 h ({engine}): seq gap-free, audit verify ok")
