"""Daphne with Anvil's request class: ``python -m anvil_site.webserver`` takes Daphne's own arguments.

Daphne (through Twisted) reads a whole request body, spooling it to disk past 100 kB, before the
ASGI application sees a byte; so a body cap in the application comes too late (a declared 1 GiB
upload was accepted and spooled) and nothing bounds how long a body may take to arrive (one byte
every 5 s held a request open for minutes). ``BoundedRequest`` refuses at the HTTP layer:

* a ``Content-Length`` over ``ANVIL_MAX_BODY_BYTES``: 413 at once, before reading the body;
* a chunked body that grows past it: 413 the moment it does;
* a body not wholly received within ``ANVIL_BODY_TIMEOUT`` seconds of its headers: 408.

Each answer is JSON in the dialect of the path (Anthropic's under ``/v1/messages``, OpenAI's
elsewhere), and the connection is closed, as Twisted does for a malformed request.

Under any other ASGI server (uvicorn, the launcher's default: ``ANVIL_WEB_SERVER``) the same bounds
are kept by the application itself (``anvil_site/body_bounds.py``), which that server feeds the body
as it arrives; the two share ``refusal_body``.
"""

from __future__ import annotations

import sys
from typing import Any

import daphne.server
from daphne.cli import CommandLineInterface
from daphne.http_protocol import HTTPFactory, WebRequest
from twisted.internet import reactor

from anvil_site.body_bounds import refusal_body

REASONS = {408: b"Request Timeout", 413: b"Content Too Large"}


class BoundedRequest(WebRequest):
    """A Daphne request that refuses oversized or slow bodies while they arrive."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        from django.conf import settings

        self.max_body = settings.ANVIL_MAX_BODY_BYTES
        self.body_timeout = settings.ANVIL_BODY_TIMEOUT
        self.received = 0
        self.refused = False
        self.body_timer: Any = None
        super().__init__(*args, **kwargs)

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self.max_body:
            self._refuse(413, f"The request body is {length} bytes; the limit is {self.max_body} "
                              "(ANVIL_MAX_BODY_BYTES).")
            return
        super().gotLength(length)
        if length != 0:
            self.body_timer = reactor.callLater(self.body_timeout, self._too_slow)

    def handleContentChunk(self, data: bytes) -> None:
        if self.refused:
            return
        self.received += len(data)
        if self.received > self.max_body:
            self._refuse(413, f"The request body exceeds {self.max_body} bytes (ANVIL_MAX_BODY_BYTES).")
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        self._stop_timer()
        if self.refused:
            return
        super().requestReceived(command, path, version)

    def connectionLost(self, reason: Any) -> None:
        self._stop_timer()
        super().connectionLost(reason)

    def _too_slow(self) -> None:
        self.body_timer = None
        self._refuse(408, f"The request body did not arrive within {self.body_timeout:g} s (ANVIL_BODY_TIMEOUT).")

    def _stop_timer(self) -> None:
        if self.body_timer is not None and self.body_timer.active():
            self.body_timer.cancel()
        self.body_timer = None

    def _refuse(self, status: int, message: str) -> None:
        self.refused = True
        self._stop_timer()
        if self.content is None:  # Twisted reads the body into this: give it somewhere harmless
            self.content = _Discard()
        body = refusal_body(getattr(self.channel, "_path", b"") or b"", status, message)
        head = (b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                b"connection: close\r\n\r\n" % (status, REASONS[status], len(body)))
        self.channel.transport.write(head + body)
        self.channel.loseConnection()


class _Discard:
    def write(self, data: bytes) -> None:
        pass

    def seek(self, *args: Any) -> None:
        pass

    def close(self) -> None:
        pass


class BoundedHTTPFactory(HTTPFactory):
    def buildProtocol(self, addr: Any) -> Any:
        protocol = super().buildProtocol(addr)
        protocol.requestFactory = BoundedRequest
        return protocol


def _close_upstream_clients() -> Any:
    """Before the reactor stops: close the relay's pooled clients on the loop they live on."""
    import asyncio

    from twisted.internet.defer import Deferred

    from inference.upstream_client import close_sessions

    return Deferred.fromFuture(asyncio.ensure_future(close_sessions()))


def main(argv: list[str] | None = None) -> None:
    import django

    django.setup()
    # Daphne builds its HTTP factory by this module-global name in Server.run and offers no other
    # hook for the request class: point the name at ours, in this process only.
    daphne.server.HTTPFactory = BoundedHTTPFactory
    reactor.addSystemEventTrigger("before", "shutdown", _close_upstream_clients)
    CommandLineInterface().run(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    import os

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "anvil_site.settings")
    main()
