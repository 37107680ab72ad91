"""What Django answers when a page fails: a database that is down is a 503 to retry, not a 500.

The console, the admin and the REST API read the database on every page (the session, the user,
the rows shown), so while PostgreSQL restarts they cannot answer. That is an outage of a
dependency, not a bug in the page: a 503 with ``Retry-After`` tells a browser, a script and a
load balancer so, where Django's generic 500 page says "Server Error" and nothing more. The front
door (``/v1/…``) never comes here: it answers from in-memory snapshots (``anvil_site/snapshots.py``).
"""

from __future__ import annotations

import logging
import sys

from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.defaults import server_error as django_server_error

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5
DATABASE_DOWN = (OperationalError, InterfaceError)  # cannot connect, or the connection broke
MESSAGE = "The database is unavailable (restarting or unreachable); retry in a few seconds."
PAGE = f"""<!doctype html>
<html lang="en"><head><title>Database unavailable (503)</title></head>
<body><h1>Database unavailable</h1><p>{MESSAGE}</p></body></html>
"""


def _database_down(error: BaseException | None) -> BaseException | None:
    seen = 0
    while error is not None and seen < 10:  # a template or DRF may have wrapped the driver's error
        if isinstance(error, DATABASE_DOWN):
            return error
        error, seen = error.__cause__ or error.__context__, seen + 1
    return None


def server_error(request: HttpRequest) -> HttpResponse:
    """``handler500``: Django calls it inside the except block, so the error is ``sys.exc_info()``'s."""
    cause = _database_down(sys.exc_info()[1])
    if cause is None:
        return django_server_error(request)
    response: HttpResponse
    if request.path.startswith("/api/") or "application/json" in request.headers.get("accept", ""):
        response = JsonResponse({"detail": MESSAGE}, status=503)
    else:
        response = HttpResponse(PAGE, status=503, content_type="text/html; charset=utf-8")
    response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    response["Cache-Control"] = "no-store"
    # One line, not django.request's traceback per page view: the cause is the same for the whole outage.
    log.warning("database unavailable: %s %s answered 503 (%s: %s)", request.method, request.path,
                type(cause).__name__, " ".join(str(cause).split())[:300])
    response._has_been_logged = True  # type: ignore[attr-defined]  # Django's log_response skips it
    return response
