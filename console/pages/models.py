"""The console's pages and actions (staff only, CSRF on every POST): thin over ``console.board`` and
``serves.operations``."""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_POST

from anvil_site.environment import describe_database, describe_redis
from anvil_site.task_queue import QueueUnavailable
from console.board import board
from console.hosts import host_rows
from inference.models import ApiKey
from serves.loading import InvalidLoadRequest
from serves.operations import LoadConflict, ModelNotFound, request_load, request_unload


@staff_member_required
def models(request: HttpRequest) -> HttpResponse:
    """The home page: the models board (live over ``/ws/models/``), and the stack beneath it."""
    context = {
        "board": board(),
        "hosts": host_rows(),
        "database": describe_database(settings.DATABASES["default"]),
        "redis": describe_redis(settings.REDIS_URL),
        "redis_embedded": settings.REDIS_URL_IS_EMBEDDED,
        "bind": settings.ANVIL_BIND,
        "active_keys": ApiKey.objects.filter(revoked_at__isnull=True).count(),
        "revoked_keys": ApiKey.objects.filter(revoked_at__isnull=False).count(),
    }
    return render(request, "console/models.html", context)


@staff_member_required
@require_POST
def load(request: HttpRequest, name: str) -> JsonResponse:
    """Load a serve, with the live overrides in the JSON body ({"overrides": {...}}), checked at once."""
    try:
        body = json.loads(request.body or b"{}")
    except ValueError:
        return _refused(400, "The body is JSON: {\"overrides\": {...}}.")
    overrides = body.get("overrides") if isinstance(body, dict) else None
    return _act(lambda: request_load(name, overrides or {}, _who(request)), "load")


@staff_member_required
@require_POST
def unload(request: HttpRequest, name: str) -> JsonResponse:
    return _act(lambda: request_unload(name, _who(request)), "unload")


def _act(action: Any, verb: str) -> JsonResponse:
    try:
        done = action()
    except ModelNotFound as exc:
        return _refused(404, str(exc))
    except InvalidLoadRequest as exc:
        return _refused(422, exc.message, field=exc.field)
    except LoadConflict as exc:
        return _refused(409, str(exc))
    except QueueUnavailable as exc:
        return _refused(503, f"The task queue cannot take the {verb} now ({exc}); nothing changed.")
    return JsonResponse({"accepted": done.accepted, "serve": done.serve}, status=202 if done.accepted else 200)


def _refused(status: int, message: str, field: str | None = None) -> JsonResponse:
    return JsonResponse({"error": {"message": message, "field": field}}, status=status)


def _who(request: HttpRequest) -> str:
    return f"console ({request.user.get_username()})"
