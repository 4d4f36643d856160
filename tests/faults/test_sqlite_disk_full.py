"""SQLite on a disk that fills up: writes answer a 503 `storage-full` problem, reads keep
working, nothing is corrupted (integrity check, audit verify), and writes work again once
space is freed. The disk is a small tmpfs of the test's own (skipped where mounting is not
permitted)."""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from prefcenter.apikeys.schemas import Scope
from prefcenter.problems import PROBLEM_MEDIA_TYPE, PROBLEM_TYPE_PREFIX
from tests.faults.load import TOPIC, audit_seqs_are_gap_free, opt_out_bodies, stored_opt_outs
from tests.faults.test_clock_jump import audit_verify
from tests.support.live_server import fresh_database_url, issue_live_key, live_server

pytestmark = [pytest.mark.slow, pytest.mark.faults]

DISK = "8m"
ATTEMPTS = 200


@pytest.fixture
def small_disk() -> Iterator[Path]:
    mount_point = Path(tempfile.mkdtemp(prefix="prefcenter-full-disk-"))
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK},mode=0700", "tmpfs", str(mount_point)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        mount_point.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)
        mount_point.rmdir()


def fill(disk: Path) -> Path:
    """Write a file until the disk has no space left; returns it."""
    filler = disk / "filler"
    with filler.open("wb") as out, contextlib.suppress(OSError):
        while True:
            out.write(b"\0" * 65536)
            out.flush()
    return filler


def test_writes_refused_reads_served_nothing_corrupted_then_writes_again(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    small_disk: Path,
    measured: Callable[[str], None],
) -> None:
    template = Path(fresh_database_url(request, "sqlite", tmp_path).removeprefix("sqlite:///"))
    path = small_disk / "prefcenter.db"
    path.write_bytes(template.read_bytes())
    url = f"sqlite:///{path}"
    headers = issue_live_key(url, Scope.ADMIN)
    bodies = opt_out_bodies(uuid.uuid4().hex[:8], ATTEMPTS + 1)
    acknowledged: set[str] = set()
    refused: list[httpx.Response] = []
    with (
        live_server(url, log_dir=tmp_path / "server") as server,
        httpx.Client(base_url=server.base_url, headers=headers, timeout=30) as client,
    ):
        topic = {"name": "News", "kind": "marketing", "consent": "opt_out"}
        assert client.put(f"/v1/topics/{TOPIC}", json=topic).status_code == 201
        filler = fill(small_disk)
        for body in bodies[:ATTEMPTS]:
            answer = client.post("/v1/consents", json=body)
            if answer.status_code == 200:
                acknowledged.add(body["email"])
                continue
            refused.append(answer)
            assert client.get(f"/v1/topics/{TOPIC}").status_code == 200
            known = sorted(acknowledged) or [body["email"]]
            lookup = client.post("/v1/contacts/lookup", json={"emails": known})
            assert lookup.status_code == 200, lookup.text
            if len(refused) >= 5:
                break
        filler.unlink()
        again = client.post("/v1/consents", json=bodies[ATTEMPTS])
        log = server.log()

    assert refused, f"{ATTEMPTS} writes found space on a full {DISK} disk"
    for answer in refused:
        assert answer.status_code == 503, answer.text
        assert answer.headers["content-type"] == PROBLEM_MEDIA_TYPE
        assert answer.json()["type"] == PROBLEM_TYPE_PREFIX + "storage-full"
        assert "Retry-After" in answer.headers
    assert again.status_code == 200, again.text
    acknowledged.add(bodies[ATTEMPTS]["email"])
    assert 'HTTP/1.1" 500' not in log
    with contextlib.closing(sqlite3.connect(path)) as database:
        assert database.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert stored_opt_outs(url, acknowledged) == acknowledged
    audit_seqs_are_gap_free(url)
    verified = audit_verify(url)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    measured(
        f"SQLite disk full: {len(acknowledged) - 1} writes fitted, then 503 storage-full; "
        "reads served; the next write after freeing space answered 200"
    )
