"""A lean asyncio load generator, used by one_click.py when `wrk` is not installed.

Raw HTTP/1.1 over keep-alive sockets (no HTTP library in the loop), one request in flight per
connection, the same modes and the same JSON output as bench/tokens.lua:

    python bench/pyload.py --url http://127.0.0.1:8000 --tokens FILE --mode post \
        --connections 8 --duration 10 --out OUT

Costs more CPU per request than wrk (one_click.py reports how much), so prefer wrk.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

BODY = b"List-Unsubscribe=One-Click"


@dataclass
class Tally:
    latencies_ns: list[int] = field(default_factory=list)
    acked: list[str] = field(default_factory=list)
    non_200: int = 0
    read_errors: int = 0
    replays: int = 0


def _request(mode: str, host: str, token: str) -> bytes:
    if mode == "post":
        return (
            f"POST /u/{token} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: bench-one-click\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {len(BODY)}\r\n\r\n"
        ).encode() + BODY
    return f"GET /u/{token} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: bench-scanner\r\n\r\n".encode()


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length:
        await reader.readexactly(length)
    return status


async def _connection(
    url: str, tokens: list[str], mode: str, deadline: float, tally: Tally, rng: random.Random
) -> None:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    reader, writer = await asyncio.open_connection(host, port)
    index = 0
    try:
        while time.monotonic() < deadline:
            if mode == "post":
                if index >= len(tokens):
                    tally.replays += 1
                    index = 0
                token = tokens[index]
                index += 1
            else:
                token = tokens[rng.randrange(len(tokens))]
            started = time.perf_counter_ns()
            writer.write(_request(mode, parts.netloc, token))
            try:
                status = await _read_response(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                tally.read_errors += 1
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
                continue
            tally.latencies_ns.append(time.perf_counter_ns() - started)
            if status == 200:
                if mode == "post":
                    tally.acked.append(token)
            else:
                tally.non_200 += 1
    finally:
        writer.close()


def _percentile(ordered: list[int], p: float) -> int:
    if not ordered:
        return 0
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


async def run(args: argparse.Namespace, all_tokens: list[str]) -> dict[str, object]:
    tally = Tally()
    started = time.monotonic()
    deadline = started + args.duration
    tasks = []
    for k in range(args.connections):
        # one-click: each connection its own tokens, each used once; scanner: any token
        mine = all_tokens[k :: args.connections] if args.mode == "post" else all_tokens
        tasks.append(_connection(args.url, mine, args.mode, deadline, tally, random.Random(k)))
    await asyncio.gather(*tasks)
    elapsed_us = int((time.monotonic() - started) * 1e6)
    ordered = sorted(tally.latencies_ns)
    us = [v / 1000 for v in ordered]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "requests": len(ordered),
        "duration_us": elapsed_us,
        "non_200": tally.non_200,
        "acked": len(tally.acked),
        "replays": tally.replays,
        "errors": {"connect": 0, "read": tally.read_errors, "write": 0, "status": tally.non_200},
        "latency_us": {
            "mean": sum(us) / len(us) if us else 0.0,
            "max": int(us[-1]) if us else 0,
            "p50": _percentile(ordered, 50) // 1000,
            "p90": _percentile(ordered, 90) // 1000,
            "p95": _percentile(ordered, 95) // 1000,
            "p99": _percentile(ordered, 99) // 1000,
            "p999": _percentile(ordered, 99.9) // 1000,
        },
        "client_cpu_s": usage.ru_utime + usage.ru_stime,
        "acked_tokens": tally.acked,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--tokens", required=True)
    parser.add_argument("--mode", choices=("post", "get"), required=True)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    tokens = Path(args.tokens).read_text().split()
    try:
        import uvloop  # noqa: PLC0415 - optional speed-up

        figures = uvloop.run(run(args, tokens))
    except ImportError:
        figures = asyncio.run(run(args, tokens))
    out = Path(args.out)
    acked = figures.pop("acked_tokens")
    assert isinstance(acked, list)
    out.with_name(out.name + ".acked").write_text("".join(f"{t}\n" for t in acked))
    out.write_text(json.dumps(figures) + "\n")


if __name__ == "__main__":
    main()
