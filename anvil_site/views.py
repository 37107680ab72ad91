"""The operator console's pages (Django views: login, CSRF, templates)."""

from __future__ import annotations

from django.conf import settings
from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from anvil_site.environment import describe_database, describe_redis
from inference.models import ApiKey


@staff_member_required
def console(request: HttpRequest) -> HttpResponse:
    context = {
        "database": describe_database(settings.DATABASES["default"]),
        "redis": describe_redis(settings.REDIS_URL),
        "redis_embedded": settings.REDIS_URL_IS_EMBEDDED,
        "bind": settings.ANVIL_BIND,
        "active_keys": ApiKey.objects.filter(revoked_at__isnull=True).count(),
        "revoked_keys": ApiKey.objects.filter(revoked_at__isnull=False).count(),
    }
    return render(request, "console/index.html", context)
