"""Owns the connections webhook deliveries go out on: a transport that connects only to an
address of the host that it resolved and checked just now.

SSRF: the endpoint's host is resolved when a connection is opened, every address checked
(webhooks.rules.address_refusal), and the connection made to the address that was checked,
never to the result of a second lookup; TLS still verifies the certificate against the host
name. Redirects are not followed; proxies from the environment are not used.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Iterable
from typing import Any

import anyio
import httpcore
import httpx

from prefcenter.webhooks.addresses import Resolve, checked_addresses

# Connections per lane (a pool of its own): the sender opens as many lanes as its
# concurrency needs.
LANE_CONNECTIONS = 4


class CheckedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's own backend, but each TCP connection goes to an address of the host that
    was resolved and checked just now (webhooks.addresses.checked_addresses)."""

    def __init__(self, *, resolve: Resolve, allow_private: bool) -> None:
        self._inner = httpcore.AnyIOBackend()
        self._resolve = resolve
        self._allow_private = allow_private

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109  (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await anyio.to_thread.run_sync(
            functools.partial(
                checked_addresses,
                host,
                port,
                resolve=self._resolve,
                allow_private=self._allow_private,
            )
        )
        failure: Exception | None = None
        for address in addresses:
            try:
                stream = await self._inner.connect_tcp(
                    str(address),
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
            else:
                return _KeptStream(stream)
        assert failure is not None
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109  (httpcore's interface)
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("webhooks are never delivered to a Unix socket")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _KeptStream(httpcore.AsyncNetworkStream):
    """httpcore's stream, with its socket looked up once: httpcore asks for it before every
    request on a kept connection (is it still open?), and anyio builds all of a stream's
    attributes to answer (a tenth of a delivery's time)."""

    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self._inner = inner
        self._socket: Any = None

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        return await self._inner.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> httpcore.AsyncNetworkStream:
        return _KeptStream(await self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        if info == "socket":
            if self._socket is None:
                self._socket = self._inner.get_extra_info("socket")
            return self._socket
        return self._inner.get_extra_info(info)


class CheckedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport (request and answer, errors, streams) over a pool whose connections
    `CheckedBackend` opens."""

    def __init__(self, *, resolve: Resolve, allow_private: bool, limits: httpx.Limits) -> None:
        super().__init__(trust_env=False)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=CheckedBackend(resolve=resolve, allow_private=allow_private),
        )


def checked_transport(*, resolve: Resolve, allow_private: bool) -> CheckedTransport:
    limits = httpx.Limits(
        max_connections=LANE_CONNECTIONS,
        max_keepalive_connections=LANE_CONNECTIONS,
        keepalive_expiry=5,
    )
    return CheckedTransport(resolve=resolve, allow_private=allow_private, limits=limits)
