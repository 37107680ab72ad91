"""python manage.py runweb: the web process alone, as the launcher starts it (one web node of many).

It becomes the server (``exec``), so a container's stop signal reaches uvicorn or Daphne itself.
"""

from __future__ import annotations

import os
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from anvil_site.launcher import web_argv


class Command(BaseCommand):
    help = ("Serve anvil_site.asgi under ANVIL_WEB_SERVER (uvicorn or daphne) with the launcher's options; "
            "behind a proxy (ANVIL_BEHIND_TLS_PROXY) it trusts X-Forwarded-For.")
    requires_system_checks: list[str] = []  # the server runs them as it imports the application

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default=settings.ANVIL_BIND.host, help="default: ANVIL_BIND's host")
        parser.add_argument("--port", type=int, default=settings.ANVIL_BIND.port, help="default: ANVIL_BIND's port")

    def handle(self, *args: Any, **options: Any) -> None:
        argv = web_argv(settings.ANVIL_WEB_SERVER, options["host"], options["port"],
                        behind_proxy=settings.ANVIL_BEHIND_TLS_PROXY)
        os.execv(argv[0], argv)
