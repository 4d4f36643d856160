"""Owns what the service observes about a request for the record: client address (believing
`X-Forwarded-For` only from configured proxies), user agent and idempotency key."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request

MAX_USER_AGENT = 500

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# An IPv6 client holds at least a /64 (one SLAAC subnet, often a whole /56 or /48): counting
# its single addresses would give it 2^64 fresh counts.
IPV6_NETWORK_PREFIX = 64
# Longest network text kept (an IPv6 /64 takes at most 43 characters); a peer that is not an
# IP address at all (a Unix socket, a test client) is kept as its text, cut to this.
MAX_NETWORK_LENGTH = 64


@dataclass(frozen=True, slots=True)
class RequestContext:
    client_ip: str | None
    user_agent: str | None
    idempotency_key: str | None

    def as_evidence(self) -> dict[str, Any]:
        return {
            k: v
            for k, v in (
                ("client_ip", self.client_ip),
                ("user_agent", self.user_agent),
                ("idempotency_key", self.idempotency_key),
            )
            if v is not None
        }


def parse_trusted_proxies(value: str) -> tuple[IPNetwork, ...]:
    return tuple(
        ipaddress.ip_network(part.strip(), strict=False)
        for part in value.split(",")
        if part.strip()
    )


def client_address(
    peer: str | None, forwarded_for: str | None, trusted: tuple[IPNetwork, ...]
) -> str | None:
    """The nearest address that is not a trusted proxy.

    Walks `X-Forwarded-For` from the right (the hop our own proxy added) and stops at the
    first address that is not a trusted proxy: anything left of that the client could forge.
    """

    def is_trusted(text: str) -> bool:
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            return False
        return any(address in net for net in trusted)

    if peer is None or not trusted or not is_trusted(peer) or not forwarded_for:
        return peer
    hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
    for hop in reversed(hops):
        if not is_trusted(hop):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return peer  # garbage from a proxy we trust: do not record it as an address
    return peer


def request_context(
    peer: str | None, headers: Mapping[str, str], trusted: tuple[IPNetwork, ...]
) -> RequestContext:
    """What is recorded of a request made by `peer` with `headers` (lower-case names)."""
    user_agent = headers.get("user-agent")
    return RequestContext(
        client_ip=client_address(peer, headers.get("x-forwarded-for"), trusted),
        user_agent=user_agent[:MAX_USER_AGENT] if user_agent else None,
        idempotency_key=headers.get("idempotency-key"),
    )


async def _request_context(request: Request) -> RequestContext:
    """`async def`: no I/O, so no hand-off to a worker thread."""
    return request_context(
        request.client.host if request.client else None,
        request.headers,
        request.app.state.trusted_proxies,
    )


RequestContextDep = Annotated[RequestContext, Depends(_request_context)]


def client_network(client_ip: str | None) -> str | None:
    """What a client is counted as by the throttles (console sign-in, "email me my link"): an
    IPv4 address itself, an IPv6 address's /64 (one subscriber's usual allocation; an
    IPv4-mapped IPv6 address as the IPv4 one). Not an address at all: its text, as the one
    network it can be counted as."""
    if client_ip is None:
        return None
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        return client_ip[:MAX_NETWORK_LENGTH]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        # Without the zone (`%eth0`): the same host by any interface is one client.
        unscoped = ipaddress.IPv6Address(address.packed)
        return str(ipaddress.IPv6Network((unscoped, IPV6_NETWORK_PREFIX), strict=False))
    return str(address)
