"""Where the time of a one-click opt-out (and of a scanner GET) goes, per request.

    .venv/bin/python bench/profile_one_click.py                 # W=2, 8 clients, 10 s
    .venv/bin/python bench/profile_one_click.py --py-spy        # plus py-spy --gil samples
    .venv/bin/python bench/profile_one_click.py --mode get --clients 16

Serves bench/profiled_app.py (prefcenter's app plus timing probes) with uvicorn, drives it
with the same load generator as one_click.py, then prints per request: the wait for a session
slot, each SQL statement's round trip (and how many there are), the Python time between them,
the COMMIT, and how long the audit head row stays locked (from `UPDATE audit_head` to the end
of COMMIT): every writer in every worker queues for that lock, so 1 / (time held) is the
ceiling of opt-outs per second. With `--py-spy` (pip install py-spy; needs ptrace, e.g. root)
the workers are sampled while they hold the GIL, grouped by what the code was doing.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import one_click as oc


def _ms(values: list[float], q: float | None = None) -> str:
    if not values:
        return "-"
    if q is None:
        return f"{1000 * statistics.fmean(values):7.3f}"
    ordered = sorted(values)
    return f"{1000 * ordered[min(len(ordered) - 1, int(len(ordered) * q))]:7.3f}"


def analyse(records: list[dict[str, Any]], label: str) -> None:
    if not records:
        print(f"{label}: no records")
        return
    stages: dict[str, list[float]] = defaultdict(list)
    statement_counts: Counter[int] = Counter()
    kinds: Counter[str] = Counter()
    lock_held: list[float] = []
    lock_before_commit: list[float] = []
    for r in records:
        t0, t_end = r["t0"], r["t_end"]
        stages["total (first byte in → last byte out)"].append(t_end - t0)
        if "t_slot" in r:
            stages["before the slot (routing, token, form, deps)"].append(r["t_slot_wait"] - t0)
            stages["wait for a session slot"].append(r["t_slot"] - r["t_slot_wait"])
        stmts = [s for s in r["stmts"] if s[2] is not None]
        statement_counts[len(stmts)] += 1
        db_time = 0.0
        for kind, start, end in stmts:
            stages[f"  SQL {kind}"].append(end - start)
            kinds[kind] += 1
            db_time += end - start
        stages["all SQL round trips (excl. BEGIN/COMMIT)"].append(db_time)
        if "t_commit" in r and "t_committed" in r:
            stages["COMMIT round trip (WAL flush)"].append(r["t_committed"] - r["t_commit"])
            if stmts:
                stages["last statement → COMMIT sent (render, hops)"].append(
                    r["t_commit"] - stmts[-1][2]
                )
            if "t_response" in r:
                stages["COMMIT done → response start"].append(r["t_response"] - r["t_committed"])
            # the statement that takes the next seq: a plain UPDATE, or the WITH head AS
            # (UPDATE …) INSERT … that appends the event in the same round trip
            heads = [s for s in stmts if s[0].startswith(("UPDATE audit_head", "WITH head"))]
            if heads:
                # acquired when the UPDATE returns (its round trip is the wait), then held
                # until COMMIT is done
                lock_held.append(r["t_committed"] - heads[0][2])
                lock_before_commit.append(r["t_commit"] - heads[0][2])
        if "t_slot" in r and stmts:
            stages["slot → first statement (thread hop, checkout)"].append(
                stmts[0][1] - r["t_slot"]
            )
    if lock_held:
        stages["audit head HELD (UPDATE returned → COMMIT done)"] = lock_held
        stages["  of which app-side, before COMMIT is sent"] = lock_before_commit
    n = len(records)
    statuses = Counter(r.get("status") for r in records)
    print(f"\n{label}: {n:,} requests, statuses {dict(statuses)}")
    print(f"  {'stage':<52} {'mean ms':>8} {'p50 ms':>8} {'p99 ms':>8} {'share':>6}")
    total_mean = statistics.fmean(stages["total (first byte in → last byte out)"])
    for name, values in stages.items():
        share = statistics.fmean(values) * len(values) / n / total_mean
        print(
            f"  {name:<52} {_ms(values)} {_ms(values, 0.5)} {_ms(values, 0.99)} {100 * share:5.0f}%"
        )
    per_request = {k: v / n for k, v in kinds.items()}
    print(
        "  SQL statements per request (plus BEGIN and COMMIT, sent by psycopg): "
        + ", ".join(f"{k} ×{v:.2f}" for k, v in per_request.items())
        + f"; distribution {dict(sorted(statement_counts.items()))}"
    )
    if lock_held:
        mean = statistics.fmean(lock_held)
        print(
            f"  → the audit head is held {1000 * mean:.2f} ms per opt-out on average: at most "
            f"~{1 / mean:,.0f} opt-outs/s whatever the number of workers"
        )


CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("template render (Jinja, Babel)", ("Pages.render", "language_of", "Template.render")),
    ("token check (HMAC)", ("read_token", "verify_token")),
    ("form parse", ("_form (prefcenter", "Request.form", "FormParser", "MultiPartParser")),
    ("request context (IP, UA)", ("_request_context",)),
    ("commit", ("Session.commit", "SessionTransaction.commit")),
    ("audit append", ("append_event",)),
    ("consent apply (ORM, SQL)", ("apply_change", "_apply_topic", "_apply_global")),
    ("contact lock (ORM, SQL)", ("lock_contact_by_public_id", "find_contact_by_public_id")),
    ("topic lookup (ORM, SQL)", ("find_topic",)),
    ("session/connection set-up", ("Database.transaction", "Session.connection", "do_ping")),
    ("FastAPI deps/validation/serialize", ("solve_dependencies", "serialize_response")),
    ("thread pool hand-off", ("to_thread", "run_sync_in_worker_thread", "WorkerThread")),
    ("HTTP protocol (uvicorn/httptools)", ("httptools_impl",)),
    ("asyncio event loop", ("run_forever", "_run_once", "Runner.run")),
]


def categorise(stack: str) -> str:
    for name, needles in CATEGORIES:
        if any(needle in stack for needle in needles):
            return name
    return "other"


def analyse_py_spy(files: list[Path]) -> None:
    totals: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    samples = 0
    for path in files:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack:
                continue
            n = int(count)
            samples += n
            totals[categorise(stack)] += n
            leaves[stack.split(";")[-1]] += n
    if not samples:
        print("py-spy: no samples")
        return
    print(f"\npy-spy --gil: {samples:,} samples of the GIL holder, by what it was doing")
    for name, n in totals.most_common():
        print(f"  {100 * n / samples:5.1f}%  {name}")
    print("  top leaf functions:")
    for name, n in leaves.most_common(12):
        print(f"  {100 * n / samples:5.1f}%  {name[:110]}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--mode", choices=("post", "get", "both"), default="both")
    parser.add_argument("--max-rate", type=float, default=2500.0)
    parser.add_argument("--py-spy", action="store_true")
    parser.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--sqlite", action="store_true")
    parser.add_argument(
        "--pg-admin-url",
        default=os.environ.get(
            "PREFCENTER_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
        ),
    )
    args = parser.parse_args()
    args.keep_db = False
    generator = (
        ("wrk" if shutil.which("wrk") else "python") if args.loadgen == "auto" else args.loadgen
    )
    loadavg, busy = oc.load_note()
    print(
        f"profile: W={args.workers}, {args.clients} clients, {args.duration:g} s, "
        f"load generator {generator}; machine before start: load average {loadavg:.2f}, "
        f"CPU busy {busy:.0f}%"
    )
    with tempfile.TemporaryDirectory(prefix="prefcenter-profile-") as tmp:
        work = Path(tmp)
        with oc.throwaway_database(args, work) as target:
            headers = oc.prepare(target)
            port = oc.free_port()
            env = oc.server_env(target, port)
            env["BENCH_PROFILE_DIR"] = str(work)
            command = [
                sys.executable,
                "-m",
                "uvicorn",
                "--app-dir",
                str(oc.BENCH_DIR),
                "--factory",
                "profiled_app:make_app",
                "--host",
                oc.HOST,
                "--port",
                str(port),
                "--workers",
                str(args.workers),
                "--log-level",
                "warning",
                "--no-server-header",
                "--no-proxy-headers",
            ]
            server = oc.start_server("profiled", command, env, port, args.workers, work)
            windows: dict[str, tuple[float, float]] = {}
            spy_files: list[Path] = []
            try:
                tag = secrets.token_hex(3)
                need = int(args.max_rate * (args.duration + args.warmup))
                tokens = oc.mint(server, headers, f"prof{tag}", need)
                oc.seed_subscriptions(target)
                warm, fresh = tokens[: need // 4], tokens[need // 4 :]
                load = {"clients": args.clients, "generator": generator, "work_dir": work}
                modes = ["post", "get"] if args.mode == "both" else [args.mode]
                for mode in modes:
                    pool = warm if mode == "post" else tokens
                    oc.run_load(server, label="warm-up", tokens=pool, mode=mode, duration=2, **load)
                    oc.housekeeping(target)
                    spies = []
                    if args.py_spy:
                        for pid in server.pids()[1:] or server.pids():
                            out = work / f"spy-{mode}-{pid}.txt"
                            spy_files.append(out)
                            spies.append(
                                subprocess.Popen(
                                    [
                                        str(Path(sys.executable).with_name("py-spy")),
                                        "record",
                                        "--pid",
                                        str(pid),
                                        "--gil",
                                        "--nonblocking",
                                        "--rate",
                                        "200",
                                        "--duration",
                                        str(int(args.duration)),
                                        "--format",
                                        "raw",
                                        "-o",
                                        str(out),
                                    ],
                                    stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL,
                                )
                            )
                    started = time.time()
                    result = oc.run_load(
                        server,
                        label=f"{mode.upper()} /u/{{token}}, W={args.workers}",
                        tokens=fresh if mode == "post" else tokens,
                        mode=mode,
                        duration=args.duration,
                        **load,
                    )
                    windows[mode] = (started + 0.5, time.time() - 0.5)
                    for spy in spies:
                        spy.wait(timeout=args.duration + 60)
                    print(result.line())
            finally:
                server.stop()
            records: list[dict[str, Any]] = []
            for path in work.glob("requests-*.jsonl"):
                records.extend(json.loads(line) for line in path.read_text().splitlines())
            for mode, (start, end) in windows.items():
                method = "POST" if mode == "post" else "GET"
                analyse(
                    [
                        r
                        for r in records
                        if r["method"] == method
                        and r["path"] == "/u/"
                        and start <= r["wall"] <= end
                    ],
                    f"{method} /u/{{token}} (W={args.workers}, {args.clients} clients)",
                )
                if args.py_spy:
                    analyse_py_spy([f for f in spy_files if f"spy-{mode}-" in f.name])
    return 0


if __name__ == "__main__":
    sys.exit(main())
