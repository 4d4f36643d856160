"""Owns one webhook POST: the request, signed as Standard Webhooks v1 says, and what the
receiver's answer (or its silence) makes of the delivery: sent, retried later, or failed."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from prefcenter.delivery.checked_transport import Answer, BrokenAnswer, CheckedConnections
from prefcenter.delivery.webhook_outgoing import Outgoing
from prefcenter.delivery.webhook_records import Sent
from prefcenter.outbox.schemas import Attempted, AttemptOutcome
from prefcenter.webhooks.addresses import AddressRefused
from prefcenter.webhooks.rules import Answer as Meaning
from prefcenter.webhooks.rules import answer_of, retry_after
from prefcenter.webhooks.rules import signature_header as sign

logger = logging.getLogger(__name__)

# The whole of one attempt: resolving, connecting, sending, the answer.
TIMEOUT_S = 15.0
_RETRY = AttemptOutcome.RETRY


@dataclass(frozen=True, slots=True)
class PostResult:
    sent: Sent
    unreachable: str | None = None


async def post_delivery(
    item: Outgoing,
    connections: CheckedConnections,
    *,
    started: datetime,
    clock: Callable[[], datetime],
    wall: Callable[[], float],
) -> PostResult:
    """POST one delivery, signed now (`wall` stamps `webhook-timestamp`), and say what its
    answer makes of it; `unreachable` says why the endpoint could not be reached at all."""
    endpoint_id = item.claimed.endpoint_id
    timestamp = int(wall())
    signature = sign(list(item.keys), item.webhook_id, timestamp, item.body)
    unreachable: str | None = None
    try:
        headers = _headers(item.webhook_id, timestamp, signature)
        async with asyncio.timeout(TIMEOUT_S):
            response = await connections.post(item.url, headers, item.body)
    except AddressRefused as exc:
        error = f"refused: {exc}"
        unreachable = error
    except TimeoutError:
        error = f"no answer within {TIMEOUT_S:g} s"
        unreachable = error
    except OSError as exc:  # resolving or connecting
        error = f"cannot connect: {exc or type(exc).__name__}"
        unreachable = error
    except BrokenAnswer as exc:
        error = f"{type(exc).__name__}: {exc}"
    except Exception as exc:
        logger.warning("webhook %s: unexpected error", item.webhook_id, exc_info=True)
        error = f"{type(exc).__name__}: {exc}"
    else:
        finished = clock()
        meaning = answer_of(response.status)
        if meaning is Meaning.DELIVERED:
            return PostResult(
                Sent(
                    Attempted(item.claimed, AttemptOutcome.SENT, started, finished),
                    endpoint_id,
                    reached=True,
                )
            )
        error = _answer_error(response)
        if meaning is Meaning.GONE:
            return PostResult(
                Sent(
                    Attempted(item.claimed, AttemptOutcome.FAILED, started, finished, error),
                    endpoint_id,
                    gone=True,
                )
            )
        not_before = retry_after(response.status, response.headers.get("retry-after"), now=finished)
        return PostResult(
            Sent(
                Attempted(item.claimed, _RETRY, started, finished, error, not_before=not_before),
                endpoint_id,
            )
        )
    return PostResult(
        Sent(Attempted(item.claimed, _RETRY, started, clock(), error), endpoint_id),
        unreachable=unreachable,
    )


def _headers(webhook_id: str, timestamp: int, signature: str) -> bytes:
    """The Standard Webhooks headers, as lines; the id is ours, but a line break in it would
    let it write headers of its own: refused, never sent."""
    if not (webhook_id.isascii() and webhook_id.isprintable()):
        raise BrokenAnswer(f"the webhook-id holds a control character: {webhook_id!r}")
    return (
        f"webhook-id: {webhook_id}\r\nwebhook-timestamp: {timestamp}\r\n"
        f"webhook-signature: {signature}\r\n"
    ).encode()


def _answer_error(response: Answer) -> str:
    text = response.head.decode("utf-8", "replace")
    text = "".join(ch if ch.isprintable() else " " for ch in text).strip()
    reason = f"HTTP {response.status}"
    if 300 <= response.status < 400:
        reason += " (redirects are not followed)"
    return f"{reason}: {text}" if text else reason
