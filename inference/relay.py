"""The upstream relay: one pooled aiohttp client per process (per event loop), explicit limits and timeouts.

aiohttp rather than httpx: on the same relay work it measured faster (bench/http_clients.py,
numbers in bench/RESULTS.md). Responses are read with ``iter_any`` so bytes are handed on the
moment they arrive. Leaving ``open`` before the body is read (a client that went away)
closes the upstream connection, which is how vLLM and SGLang learn to abort the request.
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
    body: bytes
    headers: dict[str, str]


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
            total=None,  # streams last as long as the model writes
            connect=settings.ANVIL_UPSTREAM_CONNECT_TIMEOUT,
            sock_connect=settings.ANVIL_UPSTREAM_CONNECT_TIMEOUT,
            sock_read=settings.ANVIL_UPSTREAM_READ_TIMEOUT,  # silence between two reads
        )
        session = aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=True,
                                        skip_auto_headers=("User-Agent",))
        _sessions[loop] = session
    return session


@asynccontextmanager
async def open_upstream(request: UpstreamRequest) -> AsyncIterator[aiohttp.ClientResponse]:
    try:
        response = await _session().post(request.url, data=request.body, headers=request.headers)
    except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
        raise UpstreamTimedOut(f"no answer within the timeout ({exc or type(exc).__name__})") from None
    except aiohttp.ClientError as exc:
        raise UpstreamUnreachable(f"{type(exc).__name__}: {exc}") from None
    try:
        yield response
    finally:
        response.release()


async def chunks(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """The body as it arrives; timeouts and broken connections become UpstreamError."""
    try:
        async for data in response.content.iter_any():
            yield data
    except (TimeoutError, aiohttp.ServerTimeoutError):
        raise UpstreamTimedOut("the upstream went silent past ANVIL_UPSTREAM_READ_TIMEOUT") from None
    except aiohttp.ClientError as exc:
        raise UpstreamUnreachable(f"the upstream connection broke: {type(exc).__name__}: {exc}") from None


async def read_capped(response: aiohttp.ClientResponse, limit: int) -> bytes:
    parts, size = [], 0
    async for data in chunks(response):
        parts.append(data)
        size += len(data)
        if size > limit:
            break
    return b"".join(parts)[:limit]
