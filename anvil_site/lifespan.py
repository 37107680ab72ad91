"""The ASGI lifespan protocol: what the web process does as its server stops.

uvicorn sends it (``--lifespan on``); Daphne does not, and closes the same things from a reactor
trigger instead (``anvil_site/webserver.py``). At shutdown the relay's pooled upstream clients are
closed on the loop they live on: their connections end cleanly, and no unclosed client warns as
the process exits.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from inference.upstream_client import close_sessions

Message = dict[str, Any]


async def lifespan_app(scope: dict[str, Any], receive: Callable[[], Awaitable[Message]],
                       send: Callable[[Message], Awaitable[None]]) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await close_sessions()
            await send({"type": "lifespan.shutdown.complete"})
            return
