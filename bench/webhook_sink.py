"""A fast local HTTP receiver for webhook benchmarks: asyncio protocols in a few processes
sharing one port (SO_REUSEPORT), answering every POST `200` on kept-alive connections, so
that the receiver is not what is measured. Each process counts what it got and, for the
latency run, keeps `arrival - body timestamp` (the audit event's `recorded_at`, taken just
before its change commits), written to a file when it is stopped."""

from __future__ import annotations

import asyncio
import multiprocessing
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
_REPLY = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
_STAMP = b'"timestamp":"'


class _Receiver(asyncio.Protocol):
    def __init__(self, counter: Any, latencies: list[float]) -> None:
        self.buffer = b""
        self.counter = counter
        self.latencies = latencies
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buffer[:head_end].lower()
            at = head.find(b"content-length:")
            length = 0
            if at >= 0:
                line_end = head.find(b"\r\n", at)
                length = int(head[at + 15 : line_end if line_end >= 0 else len(head)])
            end = head_end + 4 + length
            if len(self.buffer) < end:
                return
            body = self.buffer[head_end + 4 : end]
            self.buffer = self.buffer[end:]
            stamp = body.find(_STAMP)
            if stamp >= 0:
                text = body[stamp + len(_STAMP) : stamp + len(_STAMP) + 27].decode()
                sent = datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
                self.latencies.append(time.time() - sent)
            with self.counter.get_lock():
                self.counter.value += 1
            assert self.transport is not None
            self.transport.write(_REPLY)


def _serve(port: int, counter: Any, ready: Any, out: str) -> None:
    latencies: list[float] = []
    loop = asyncio.new_event_loop()
    loop.run_until_complete(
        loop.create_server(
            lambda: _Receiver(counter, latencies), HOST, port, reuse_port=True, backlog=1024
        )
    )
    loop.add_signal_handler(signal.SIGTERM, loop.stop)
    ready.set()
    loop.run_forever()
    Path(out).write_text("\n".join(f"{v:.6f}" for v in latencies))


class Sink:
    def __init__(self, port: int, counter: Any, outputs: list[Path]) -> None:
        self.port = port
        self.counter = counter
        self.outputs = outputs

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/hooks"

    @property
    def received(self) -> int:
        return int(self.counter.value)

    def latencies(self) -> list[float]:
        found: list[float] = []
        for path in self.outputs:
            if path.exists() and path.read_text().strip():
                found += [float(v) for v in path.read_text().split()]
        return found


@contextmanager
def sink(processes: int, work: Path) -> Iterator[Sink]:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
    work.mkdir(parents=True, exist_ok=True)
    counter = multiprocessing.Value("q", 0)
    started = []
    outputs = []
    for index in range(processes):
        ready = multiprocessing.Event()
        out = work / f"sink-{index}.txt"
        outputs.append(out)
        process = multiprocessing.Process(
            target=_serve, args=(port, counter, ready, str(out)), daemon=True
        )
        process.start()
        ready.wait(30)
        started.append(process)
    running = Sink(port, counter, outputs)
    try:
        yield running
    finally:
        for process in started:
            process.terminate()
        for process in started:
            process.join(10)
