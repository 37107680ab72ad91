"""Calling the real ASGI application (anvil_site.asgi) in-process, as Daphne would."""

from __future__ import annotations

import json
from dataclasses import dataclass

from asgiref.sync import async_to_sync
from asgiref.testing import ApplicationCommunicator

from anvil_site.snapshots import settle_all


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> object:
        return json.loads(self.body)


def call(method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None,
         timeout: float = 10) -> Answer:
    """One HTTP request through the whole ASGI stack, the response read to its end."""
    from anvil_site.asgi import application
    from inference.upstream_client import close_session_of_this_loop

    given = {"host": "127.0.0.1", **{k.lower(): v for k, v in (headers or {}).items()}}
    scope = {
        "type": "http", "http_version": "1.1", "method": method, "path": path, "raw_path": path.encode(),
        "query_string": b"", "scheme": "http", "root_path": "",
        "headers": [(k.encode(), v.encode()) for k, v in given.items()],
        "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000),
    }

    async def go() -> Answer:
        communicator = ApplicationCommunicator(application, scope)
        await communicator.send_input({"type": "http.request", "body": body, "more_body": False})
        start = await communicator.receive_output(timeout)
        assert start["type"] == "http.response.start", start
        chunks = []
        while True:
            message = await communicator.receive_output(timeout)
            chunks.append(message.get("body", b""))  # "body" is optional in ASGI
            if not message.get("more_body", False):
                break
        await communicator.wait(timeout)
        await settle_all()  # this loop closes with the call: let background checks finish in it
        await close_session_of_this_loop()  # and close its upstream client, or it warns when collected
        headers = {k.decode().lower(): v.decode() for k, v in start["headers"]}
        return Answer(start["status"], headers, b"".join(chunks))

    return async_to_sync(go)()
