"""Owns one webhook POST: the request, signed as Standard Webhooks v1 says, and what the
receiver's answer (or its silence) makes of the delivery: sent, retried later, or failed."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import httpcore
import httpx

from prefcenter.delivery.checked_transport import CheckedTransport
from prefcenter.delivery.webhook_outgoing import Outgoing
from prefcenter.delivery.webhook_records import Sent
from prefcenter.outbox.schemas import Attempted, AttemptOutcome
from prefcenter.webhooks.addresses import AddressRefused
from prefcenter.webhooks.rules import Answer, answer_of, retry_after
from prefcenter.webhooks.rules import signature_header as sign

logger = logging.getLogger(__name__)

# The whole of one attempt: resolving, connecting, sending, the answer's head.
TIMEOUT_S = 15.0
# What is kept of a receiver's answer in the attempt's error.
ANSWER_CHARS = 200
# An answer's body is read up to this much (then the connection is dropped, not read on).
MAX_ANSWER_BYTES = 64 * 1024
USER_AGENT = "prefcenter-webhooks/1"
_TIMEOUT = httpx.Timeout(TIMEOUT_S)
_RETRY = AttemptOutcome.RETRY


@dataclass(frozen=True, slots=True)
class PostResult:
    sent: Sent
    unreachable: str | None = None


async def post_delivery(
    item: Outgoing,
    lane: CheckedTransport,
    *,
    started: datetime,
    clock: Callable[[], datetime],
    wall: Callable[[], float],
) -> PostResult:
    """POST one delivery, signed now (`wall` stamps `webhook-timestamp`), and say what its
    answer makes of it; `unreachable` says why the endpoint could not be reached at all."""
    endpoint_id = item.claimed.endpoint_id
    timestamp = int(wall())
    headers = {
        "user-agent": USER_AGENT,
        "content-type": "application/json",
        "webhook-id": item.webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(list(item.keys), item.webhook_id, timestamp, item.body),
    }
    unreachable: str | None = None
    try:
        async with asyncio.timeout(TIMEOUT_S):
            request = httpx.Request(
                "POST",
                item.url,
                content=item.body,
                headers=headers,
                extensions={"timeout": _TIMEOUT.as_dict()},
            )
            response = await lane.handle_async_request(request)
            try:
                head = await _read_some(response)
            finally:
                await response.aclose()
    except AddressRefused as exc:
        error = f"refused: {exc}"
        unreachable = error
    except TimeoutError:
        error = f"no answer within {TIMEOUT_S:.0f} s"
        unreachable = error
    except httpx.TimeoutException:
        error = f"no answer within {TIMEOUT_S:.0f} s"
        unreachable = error
    except (httpx.ConnectError, OSError) as exc:
        error = f"cannot connect: {exc or type(exc).__name__}"
        unreachable = error
    except (httpx.HTTPError, httpcore.ProtocolError) as exc:
        error = f"{type(exc).__name__}: {exc}"
    except Exception as exc:
        logger.warning("webhook %s: unexpected error", item.webhook_id, exc_info=True)
        error = f"{type(exc).__name__}: {exc}"
    else:
        finished = clock()
        answer = answer_of(response.status_code)
        if answer is Answer.DELIVERED:
            return PostResult(
                Sent(
                    Attempted(item.claimed, AttemptOutcome.SENT, started, finished),
                    endpoint_id,
                    reached=True,
                )
            )
        error = _answer_error(response, head)
        if answer is Answer.GONE:
            return PostResult(
                Sent(
                    Attempted(item.claimed, AttemptOutcome.FAILED, started, finished, error),
                    endpoint_id,
                    gone=True,
                )
            )
        not_before = retry_after(
            response.status_code, response.headers.get("retry-after"), now=finished
        )
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


async def _read_some(response: httpx.Response) -> bytes:
    """The start of an answer's body, for the error. A short body is read to its end, so
    that the connection is kept for the next delivery; a long one is not read further (the
    connection is then closed)."""
    head = b""
    async for chunk in response.aiter_raw():
        head += chunk
        if len(head) > MAX_ANSWER_BYTES:
            break
    return head[:ANSWER_CHARS]


def _answer_error(response: httpx.Response, head: bytes) -> str:
    text = head.decode("utf-8", "replace")
    text = "".join(ch if ch.isprintable() else " " for ch in text).strip()
    reason = f"HTTP {response.status_code}"
    if 300 <= response.status_code < 400:
        reason += " (redirects are not followed)"
    return f"{reason}: {text}" if text else reason
