"""Benchmark of events coming in (issue "The border with mail, coming in", "Performance"),
against real servers with 2 workers on PostgreSQL:

- SendGrid: batches of 1,000 signed events per POST to `prefcenter serve --workers 2`;
  events/s, beside a floor measured in the same run: the same events written as rows by one
  `COPY` into a plain table.
- SNS: signed SES notifications (one recipient each), one per POST, the certificate cached
  (bench/inbound_app.py, the real app reading its certificate from a file); notifications/s,
  beside a floor measured in the same run: as many POSTs by as many clients to
  bench/floor_app.py (bare FastAPI, one durable INSERT each) under the same uvicorn.

The mix of events is what a sending platform sees (`--mix realistic`: mostly processed,
delivered, opened; a few percent bounces, complaints, unsubscribes) or only events that change
something (`--mix actionable`). Afterwards the database is checked: every event that acts is
recorded once (receipts), nothing failed. Prints figures; asserts no time.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import secrets
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import one_click as oc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID
from sqlalchemy import text

TOPIC_ARN = "arn:aws:sns:us-east-1:123456789012:ses-feedback"
CERT_URL = (
    "https://sns.us-east-1.amazonaws.com/"
    "SimpleNotificationService-0123456789abcdef0123456789abcdef.pem"
)
MIXES = {
    # Of every 1,000 events a sending platform's webhook posts, roughly.
    "realistic": {
        "processed": 300,
        "delivered": 400,
        "open": 150,
        "click": 50,
        "deferred": 20,
        "bounce": 40,
        "blocked": 20,
        "spamreport": 5,
        "unsubscribe": 10,
        "group_unsubscribe": 5,
    },
    "actionable": {"bounce": 500, "blocked": 200, "spamreport": 100, "unsubscribe": 200},
}


def seed(target: oc.Target, contacts: int) -> list[str]:
    """Contacts by COPY (the addresses events name), each subscribed to the topic."""
    addresses = [f"user{n}@bench.example.com" for n in range(contacts)]
    raw = target.engine.raw_connection()
    try:
        driver: Any = raw.driver_connection
        with driver.cursor() as cursor:
            with cursor.copy(
                "COPY contact (public_id, address, address_display, created_at) FROM STDIN"
            ) as copy:
                now = datetime.now(UTC)
                for address in addresses:
                    copy.write_row((secrets.token_urlsafe(12), address, address, now))
            cursor.execute(
                "INSERT INTO subscription (contact_id, topic_id, status, occurred_at, since, "
                "source, by_recipient, event_id) SELECT c.id, t.id, 'subscribed', "
                "'2015-01-01', now(), 'import', false, 'seed' FROM contact c, topic t"
            )
            cursor.execute("ANALYZE")
        driver.commit()
    finally:
        raw.close()
    return addresses


def sendgrid_batches(
    addresses: list[str], batches: int, size: int, mix: dict[str, int], rng: random.Random
) -> list[list[dict[str, Any]]]:
    kinds = [k for k, n in mix.items() for _ in range(n)]
    stamp = int(time.time()) - 60
    out = []
    for b in range(batches):
        batch = []
        for n in range(size):
            kind = rng.choice(kinds)
            event: dict[str, Any] = {
                "email": rng.choice(addresses),
                "timestamp": stamp,
                "sg_event_id": f"bench-{b}-{n}-{secrets.token_hex(6)}",
                "sg_message_id": f"msg-{b}-{n}.filter0001",
                "event": "bounce" if kind == "blocked" else kind,
            }
            if kind in ("bounce", "blocked"):
                event.update(type=kind, status="5.1.1", reason="550 5.1.1 unknown user")
            if kind == "group_unsubscribe":
                event["asm_group_id"] = 1
            batch.append(event)
        out.append(batch)
    return out


def post_all(
    base_url: str, requests: list[tuple[bytes, dict[str, str]]], path: str, clients: int
) -> tuple[float, Counter[int]]:
    """POST every request, `clients` at a time; wall time and status counts."""
    statuses: Counter[int] = Counter()
    lock = threading.Lock()
    position = iter(range(len(requests)))

    def worker() -> None:
        with httpx.Client(base_url=base_url, timeout=120.0) as client:
            while True:
                with lock:
                    index = next(position, None)
                if index is None:
                    return
                body, headers = requests[index]
                status = client.post(path, content=body, headers=headers).status_code
                with lock:
                    statuses[status] += 1

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started, statuses


def copy_floor(target: oc.Target, batches: list[list[dict[str, Any]]]) -> float:
    """The same events written as rows by one COPY into a plain table, committed."""
    raw = target.engine.raw_connection()
    try:
        driver: Any = raw.driver_connection
        with driver.cursor() as cursor:
            cursor.execute(
                "CREATE TABLE IF NOT EXISTS floor_event (sg_event_id text PRIMARY KEY, "
                "email text, event text, occurred_at timestamptz, document jsonb)"
            )
            driver.commit()
            started = time.perf_counter()
            with cursor.copy(
                "COPY floor_event (sg_event_id, email, event, occurred_at, document) FROM STDIN"
            ) as copy:
                for batch in batches:
                    for e in batch:
                        copy.write_row(
                            (
                                e["sg_event_id"],
                                e["email"],
                                e["event"],
                                datetime.fromtimestamp(e["timestamp"], UTC),
                                json.dumps(e),
                            )
                        )
            driver.commit()
            return time.perf_counter() - started
    finally:
        raw.close()


def sns_signer() -> tuple[rsa.RSAPrivateKey, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return key, certificate.public_bytes(serialization.Encoding.PEM)


def sns_notifications(
    key: rsa.RSAPrivateKey, addresses: list[str], count: int, rng: random.Random
) -> list[bytes]:
    stamp = (datetime.now(UTC) - timedelta(minutes=1)).isoformat().replace("+00:00", "Z")
    out = []
    for n in range(count):
        address = rng.choice(addresses)
        roll = rng.random()
        if roll < 0.5:
            content: dict[str, Any] = {
                "notificationType": "Bounce",
                "bounce": {
                    "bounceType": "Permanent" if roll < 0.4 else "Transient",
                    "bouncedRecipients": [{"emailAddress": address, "status": "5.1.1"}],
                    "timestamp": stamp,
                    "feedbackId": f"feedback-{n}",
                },
                "mail": {"messageId": f"mail-{n}"},
            }
        elif roll < 0.6:
            content = {
                "notificationType": "Complaint",
                "complaint": {
                    "complainedRecipients": [{"emailAddress": address}],
                    "complaintFeedbackType": "abuse",
                    "timestamp": stamp,
                    "feedbackId": f"feedback-{n}",
                },
                "mail": {"messageId": f"mail-{n}"},
            }
        else:
            content = {"notificationType": "Delivery", "mail": {"messageId": f"mail-{n}"}}
        message = {
            "Type": "Notification",
            "MessageId": f"bench-{n}-{secrets.token_hex(8)}",
            "TopicArn": TOPIC_ARN,
            "Message": json.dumps(content),
            "Timestamp": stamp,
            "SignatureVersion": "2",
            "SigningCertURL": CERT_URL,
        }
        signed = "".join(
            f"{name}\n{message[name]}\n"
            for name in ("Message", "MessageId", "Timestamp", "TopicArn", "Type")
        )
        signature = key.sign(signed.encode(), padding.PKCS1v15(), hashes.SHA256())
        message["Signature"] = base64.b64encode(signature).decode()
        out.append(json.dumps(message).encode())
    return out


def _pythonpath() -> str:
    """The servers' path: this directory, then the caller's PYTHONPATH (so that
    `PYTHONPATH=<an older checkout>/src` measures that one)."""
    return os.pathsep.join(
        p for p in (str(Path(__file__).resolve().parent), os.environ.get("PYTHONPATH")) if p
    )


def sns_floor(target: oc.Target, args: argparse.Namespace, count: int, work: Path) -> float:
    """The same number of POSTs, by the same clients, to bench/floor_app.py (bare FastAPI,
    one durable INSERT each) under the same uvicorn and worker count: seconds."""
    import floor_app  # noqa: PLC0415

    floor_app.create_schema(target.libpq_url)
    port = oc.free_port()
    env = oc.server_env(target, port)
    env["FLOOR_DATABASE_URL"] = target.libpq_url
    env["PYTHONPATH"] = _pythonpath()
    command = [sys.executable, "-m", "uvicorn", "floor_app:app", "--host", oc.HOST]
    command += ["--port", str(port), "--workers", str(args.workers)]
    command += ["--log-level", "warning", "--no-access-log"]
    server = oc.start_server("floor", command, env, port, args.workers, work)
    requests: list[tuple[bytes, dict[str, str]]] = [(b"", {}) for _ in range(count)]
    try:
        post_all(server.base_url, requests[: args.workers * 4], "/u/warm-up", args.workers)
        cpu = oc.cpu_seconds(server.pids())
        seconds, statuses = post_all(server.base_url, requests, "/u/floor", args.clients * 2)
        cpu = oc.cpu_seconds(server.pids()) - cpu
    finally:
        server.stop()
    print(f"  floor server CPU {1e6 * cpu / count:,.0f} µs/request, statuses {dict(statuses)}")
    return seconds


def check(target: oc.Target) -> dict[str, int]:
    with target.engine.connect() as connection:
        return {
            table: int(connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())
            for table in ("inbound_receipt", "bounce", "audit_event")
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--contacts", type=int, default=100_000)
    parser.add_argument("--batches", type=int, default=100, help="SendGrid POSTs")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--notifications", type=int, default=5000, help="SNS POSTs")
    parser.add_argument("--mix", choices=sorted(MIXES), default="realistic")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--pg-admin-url",
        default=os.environ.get(
            "PREFCENTER_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
        ),
    )
    parser.add_argument("--keep-db", action="store_true")
    args = parser.parse_args()
    args.sqlite = False
    rng = random.Random(20261202)
    sendgrid_key = ec.generate_private_key(ec.SECP256R1())
    public = base64.b64encode(
        sendgrid_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    ).decode()
    rsa_key, certificate = sns_signer()
    with (
        tempfile.TemporaryDirectory(prefix="prefcenter-inbound-bench-") as tmp,
        oc.throwaway_database(args, Path(tmp)) as target,
    ):
        work = Path(tmp)
        (work / "sns.pem").write_bytes(certificate)
        oc.prepare(target)
        addresses = seed(target, args.contacts)
        print(f"seeded {len(addresses):,} contacts, each subscribed to `{oc.TOPIC}`")
        batches = sendgrid_batches(addresses, args.batches, args.batch_size, MIXES[args.mix], rng)
        requests = []
        for batch in batches:
            body = json.dumps(batch).encode()
            stamp = str(int(time.time()))
            signature = sendgrid_key.sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256()))
            requests.append(
                (
                    body,
                    {
                        "Content-Type": "application/json",
                        "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(
                            signature
                        ).decode(),
                        "X-Twilio-Email-Event-Webhook-Timestamp": stamp,
                    },
                )
            )
        kinds = Counter(e["event"] for batch in batches for e in batch)
        print(
            f"SendGrid: {len(batches)} batches of {args.batch_size}, mix {args.mix}: {dict(kinds)}"
        )
        port = oc.free_port()
        env = oc.server_env(target, port)
        env.update(
            PREFCENTER_SENDGRID_PUBLIC_KEY=public,
            PREFCENTER_SENDGRID_GROUP_TOPICS=f"1:{oc.TOPIC}",
            PREFCENTER_SES_TOPIC_ARNS=TOPIC_ARN,
            BENCH_SNS_CERT=str(work / "sns.pem"),
            PYTHONPATH=_pythonpath(),
        )
        command = [sys.executable, "-m", "prefcenter", "serve", "--host", oc.HOST]
        command += ["--port", str(port), "--workers", str(args.workers), "--no-migrate"]
        load, busy = oc.load_note()
        print(f"machine before: load average {load:.2f}, CPUs {busy:.0f}% busy")
        server = oc.start_server("prefcenter", command, env, port, args.workers, work)
        try:
            cpu = oc.cpu_seconds(server.pids())
            seconds, statuses = post_all(
                server.base_url, requests, "/v1/inbound/sendgrid", args.clients
            )
            cpu = oc.cpu_seconds(server.pids()) - cpu
        finally:
            server.stop()
        events = len(batches) * args.batch_size
        counts = check(target)
        floor = copy_floor(target, batches)
        print(
            f"SendGrid: {events:,} events in {seconds:.2f} s = {events / seconds:,.0f} events/s "
            f"({len(batches) / seconds:.1f} POSTs/s), statuses {dict(statuses)}; server CPU "
            f"{1e6 * cpu / events:,.0f} µs/event"
        )
        print(
            f"  floor: one COPY of the same {events:,} rows: {floor:.2f} s = "
            f"{events / floor:,.0f} rows/s"
        )
        print(f"  ratio ours/floor (throughput): {(events / seconds) / (events / floor):.2f}")
        print(f"  after: {counts}")

        notifications = sns_notifications(rsa_key, addresses, args.notifications, rng)
        sns_requests = [
            (body, {"Content-Type": "text/plain; charset=UTF-8"}) for body in notifications
        ]
        port = oc.free_port()
        env = oc.server_env(target, port)
        env.update(
            PREFCENTER_SES_TOPIC_ARNS=TOPIC_ARN,
            BENCH_SNS_CERT=str(work / "sns.pem"),
            PYTHONPATH=_pythonpath(),
        )
        command = [sys.executable, "-m", "uvicorn", "--factory", "inbound_app:make_app"]
        command += ["--host", oc.HOST, "--port", str(port), "--workers", str(args.workers)]
        command += ["--log-level", "warning", "--no-access-log"]
        server = oc.start_server("sns", command, env, port, args.workers, work)
        try:
            # Each worker fetches (here: reads) its certificate once, on its first notification.
            post_all(
                server.base_url, sns_requests[: args.workers * 4], "/v1/inbound/ses", args.workers
            )
            rest = sns_requests[args.workers * 4 :]
            cpu = oc.cpu_seconds(server.pids())
            seconds, statuses = post_all(server.base_url, rest, "/v1/inbound/ses", args.clients * 2)
            cpu = oc.cpu_seconds(server.pids()) - cpu
        finally:
            server.stop()
        floor_seconds = sns_floor(target, args, len(rest), work)
        print(
            f"SNS: {len(rest):,} notifications in {seconds:.2f} s = {len(rest) / seconds:,.0f}/s "
            f"(clients {args.clients * 2}), statuses {dict(statuses)}; server CPU "
            f"{1e6 * cpu / len(rest):,.0f} µs/notification"
        )
        print(
            f"  floor: bare FastAPI + one INSERT per POST (bench/floor_app.py), same clients: "
            f"{len(rest) / floor_seconds:,.0f}/s; ratio ours/floor: "
            f"{floor_seconds / seconds:.2f}"
        )
        print(f"  after: {check(target)}")
        failed = sum(n for status, n in statuses.items() if status != 200)
        return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
