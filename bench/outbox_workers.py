"""What the outbox benchmarks share (`mail_outbox.py`, `webhooks.py`): the floor's processes,
started together on a signal and timed until the last is done, and `prefcenter worker`
processes started and stopped around a run."""

from __future__ import annotations

import multiprocessing
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

WORKER_START_TIMEOUT_S = 60.0


def timed_in_processes(target: Callable[..., None], args: tuple[Any, ...], processes: int) -> float:
    """`target(*args, start, done)` in `processes` processes at once: each prepares its share,
    waits for `start`, works and sets `done`. Seconds from the start signal until the last
    one is done (preparation left out)."""
    start = multiprocessing.Event()
    dones = [multiprocessing.Event() for _ in range(processes)]
    children = [multiprocessing.Process(target=target, args=(*args, start, d)) for d in dones]
    for child in children:
        child.start()
    time.sleep(1.0)  # each has prepared its share
    started = time.perf_counter()
    start.set()
    for done in dones:
        done.wait()
    elapsed = time.perf_counter() - started
    for child in children:
        child.join()
    return elapsed


def start_workers(env: dict[str, str], workers: int, logs: Path) -> list[subprocess.Popen[bytes]]:
    """`prefcenter worker` processes, each logging to `logs/worker-N.log`, returned once each
    has said it started."""
    processes = []
    for index in range(workers):
        log = (logs / f"worker-{index}.log").open("wb")
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "prefcenter", "worker"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=logs,
            )
        )
    deadline = time.monotonic() + WORKER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if all(
            "outbox worker" in (logs / f"worker-{i}.log").read_text(errors="replace")
            for i in range(workers)
        ):
            return processes
        time.sleep(0.05)
    raise SystemExit(f"the workers did not start; see {logs}")


def stop_workers(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        process.send_signal(signal.SIGTERM)
    for process in processes:
        process.wait(60)
