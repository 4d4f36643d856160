"""Owns resolving an endpoint's host and refusing what deliveries may not reach, at creation
and at every connection (DNS can change between the two: the delivery connects to the very
address it checked, see delivery.webhooks)."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable

from prefcenter.webhooks.rules import IpAddress, UrlRefused, address_refusal, check_url

# host, port → its addresses; raises OSError when the name does not resolve. Injected in tests.
Resolve = Callable[[str, int], list[IpAddress]]


def system_resolve(host: str, port: int) -> list[IpAddress]:
    """The addresses the system resolver gives (the order it gives them in, no duplicates)."""
    found: list[IpAddress] = []
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except UnicodeError as exc:
        # A label IDNA cannot encode (a control character, over 63 characters) is no name
        # anyone can resolve: refused like one, not a 500 (found by tests/test_schemathesis.py).
        raise OSError(f"not a host name: {exc}") from None
    for _family, _type, _proto, _name, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in found:
            found.append(address)
    return found


def literal(host: str) -> IpAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


class AddressRefused(Exception):
    """The host resolves to an address deliveries may not reach; the message says which."""


def checked_addresses(
    host: str, port: int, *, resolve: Resolve, allow_private: bool
) -> list[IpAddress]:
    """The addresses to connect to for `host`: all of them must be public (one that is not
    refuses the host: a name that also points inward is not trusted), unless `allow_private`.
    Raises AddressRefused, or OSError when the name does not resolve."""
    address = literal(host)
    addresses = [address] if address is not None else resolve(host, port)
    if not addresses:
        raise OSError(f"{host} has no address")
    if not allow_private:
        for address in addresses:
            why = address_refusal(address)
            if why is not None:
                raise AddressRefused(f"{host} resolves to {address}, {why}")
    return addresses


def check_endpoint_url(url: str, *, resolve: Resolve, allow_private: bool) -> None:
    """At creation or change: the URL's form, and where its host resolves now. Raises
    UrlRefused with the reason."""
    parts = check_url(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        checked_addresses(host, port, resolve=resolve, allow_private=allow_private)
    except AddressRefused as exc:
        raise UrlRefused(
            f"is refused: {exc} (set PREFCENTER_WEBHOOKS_ALLOW_PRIVATE=true to deliver "
            "inside your own network)"
        ) from None
    except OSError as exc:
        raise UrlRefused(f"names a host that does not resolve: {host} ({exc})") from None
