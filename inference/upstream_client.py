"""The upstream relay: one pooled aiohttp client per process (per event loop), explicit limits and timeouts.

aiohttp rather than httpx: on the same relay work it measured faster (bench/http_clients.py,
numbers in bench/RESULTS.md). Responses are read with ``readany`` so bytes are handed on the
moment they arrive. Leaving ``open_upstream`` before the body is read (a client that went away)
closes the upstream connection, which is how vLLM and SGLang learn to abort the request.

Three clocks, because a first byte is not a next token: connecting (``ANVIL_UPSTREAM_CONNECT_TIMEOUT``);
the first byte of the body, counted from the request (``ANVIL_UPSTREAM_FIRST_BYTE_TIMEOUT`` for a
stream, which waits for the prefill; ``ANVIL_UPSTREAM_WHOLE_ANSWER_TIMEOUT`` for a whole answer,
which the model writes before sending anything); then the silence between two reads
(``ANVIL_UPSTREAM_INTER_TOKEN_TIMEOUT``), so a serve that hangs mid-answer is noticed in seconds.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp
from django.conf import settings


class UpstreamError(Exception):
    pass


class UpstreamUnreachable(UpstreamError):
    pass


class UpstreamTimedOut(UpstreamError):
    pass


@dataclass(frozen=True)
class UpstreamRequest:
    url: str
    body: bytes | None
    headers: dict[str, str]
    stream: bool = False  # which first-byte clock applies
    method: str = "POST"

    @property
    def first_byte_timeout(self) -> float:
        return (settings.ANVIL_UPSTREAM_FIRST_BYTE_TIMEOUT if self.stream
                else settings.ANVIL_UPSTREAM_WHOLE_ANSWER_TIMEOUT)


class UpstreamResponse:
    """An upstream's answer: status and headers, and the body as it arrives, under the relay's clocks."""

    def __init__(self, response: aiohttp.ClientResponse, first_byte_deadline: float) -> None:
        self._response = response
        self._deadline: float | None = first_byte_deadline  # loop time; None once the body has begun
        self.status = response.status
        self.headers = response.headers

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives; timeouts and broken connections become UpstreamError."""
        content = self._response.content
        loop = asyncio.get_running_loop()
        gap = settings.ANVIL_UPSTREAM_INTER_TOKEN_TIMEOUT
        while True:
            first = self._deadline is not None
            try:
                async with asyncio.timeout_at(self._deadline if first else loop.time() + gap):
                    data = await content.readany()
            except TimeoutError:
                which = ("sent no answer within ANVIL_UPSTREAM_FIRST_BYTE_TIMEOUT / _WHOLE_ANSWER_TIMEOUT" if first
                         else f"went silent for {gap:g} s mid-answer (ANVIL_UPSTREAM_INTER_TOKEN_TIMEOUT)")
                raise UpstreamTimedOut(f"the upstream {which}") from None
            except aiohttp.ClientError as exc:
                raise UpstreamUnreachable(f"the upstream connection broke: {type(exc).__name__}: {exc}") from None
            if not data:
                return
            self._deadline = None
            yield data

    async def read_capped(self, limit: int) -> bytes:
        parts, size = [], 0
        async for data in self.chunks():
            parts.append(data)
            size += len(data)
            if size > limit:
                break
        return b"".join(parts)[:limit]


_sessions: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aiohttp.ClientSession] = weakref.WeakKeyDictionary()


def _session() -> aiohttp.ClientSession:
    loop = asyncio.get_running_loop()
    session = _sessions.get(loop)
    if session is None or session.closed:
        connector = aiohttp.TCPConnector(
            limit=settings.ANVIL_UPSTREAM_POOL_SIZE,
            limit_per_host=settings.ANVIL_UPSTREAM_POOL_SIZE,
            keepalive_timeout=30,
            ttl_dns_cache=300,
        )
        timeout = aiohttp.ClientTimeout(
            total=None,  # streams last as long as the model writes; the clocks above bound the silences
            connect=settings.ANVIL_UPSTREAM_CONNECT_TIMEOUT,
            sock_connect=settings.ANVIL_UPSTREAM_CONNECT_TIMEOUT,
        )
        session = aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=True,
                                        skip_auto_headers=("User-Agent",))
        _sessions[loop] = session
    return session


async def close_sessions() -> None:
    """Close this process's upstream clients (at shutdown: an unclosed one warns as it is collected)."""
    for session in list(_sessions.values()):
        if not session.closed:
            await session.close()
    _sessions.clear()


async def close_session_of_this_loop() -> None:
    """Close the running loop's upstream client: for a short-lived loop (a test's, a command's) about to end."""
    session = _sessions.pop(asyncio.get_running_loop(), None)
    if session is not None and not session.closed:
        await session.close()


@asynccontextmanager
async def open_upstream(request: UpstreamRequest) -> AsyncIterator[UpstreamResponse]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + request.first_byte_timeout
    try:
        async with asyncio.timeout_at(deadline):
            response = await _session().request(request.method, request.url, data=request.body,
                                                 headers=request.headers)
    except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
        raise UpstreamTimedOut(f"no answer within the timeout ({exc or type(exc).__name__})") from None
    except aiohttp.ClientError as exc:
        raise UpstreamUnreachable(f"{type(exc).__name__}: {exc}") from None
    try:
        yield UpstreamResponse(response, deadline)
    finally:
        response.release()

