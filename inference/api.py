"""REST API views for API keys (read-only: keys are minted by the command or the admin) and their usage."""

from __future__ import annotations

import datetime as dt
import hmac
from typing import Any

from django.contrib.auth.models import AnonymousUser
from django.utils.dateparse import parse_date, parse_datetime
from rest_framework import authentication, permissions, serializers, viewsets
from rest_framework.exceptions import AuthenticationFailed, PermissionDenied, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from inference.keys import hash_secret, prefix_of
from inference.models import ApiKey, Scope
from inference.usage import UsageQueryError, totals, usage


class ApiKeySerializer(serializers.ModelSerializer):
    revoked = serializers.BooleanField(source="is_revoked", read_only=True)

    class Meta:
        model = ApiKey
        fields = ["id", "name", "prefix", "created_at", "last_used_at", "revoked", "revoked_at"]


class ApiKeyViewSet(viewsets.ReadOnlyModelViewSet):
    """API keys with their public prefix and usage; never their secret or its hash."""

    queryset = ApiKey.objects.all()
    serializer_class = ApiKeySerializer


class AdminKeyAuthentication(authentication.BaseAuthentication):
    """An API key with the ``admin`` scope, as ``Authorization: Bearer`` or ``x-api-key`` (constant-time compare)."""

    def authenticate(self, request: Request) -> tuple[Any, ApiKey] | None:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        secret = token.strip() if scheme.lower() == "bearer" else request.headers.get("x-api-key", "").strip()
        if not secret:
            return None
        prefix = prefix_of(secret)
        key = ApiKey.objects.filter(prefix=prefix, revoked_at__isnull=True).first() if prefix else None
        expected = key.secret_hash if key is not None else hash_secret("anvil-no-such-key")
        if not hmac.compare_digest(hash_secret(secret), expected) or key is None:
            raise AuthenticationFailed("Incorrect or revoked API key.")
        if Scope.ADMIN not in (key.scopes or ()):
            raise PermissionDenied("This API key lacks the admin scope (manage.py apikey create NAME --scope admin).")
        return AnonymousUser(), key  # the key is the credential (request.auth); no user signs in

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="anvil"'


class StaffOrAdminKey(permissions.BasePermission):
    def has_permission(self, request: Request, view: Any) -> bool:
        return isinstance(request.auth, ApiKey) or bool(request.user and request.user.is_staff)


def _moment(text: str | None, name: str) -> dt.datetime | None:
    if not text:
        return None
    found = parse_datetime(text)
    if found is None and parse_date(text) is not None:
        found = dt.datetime.combine(parse_date(text), dt.time())  # type: ignore[arg-type]
    if found is None:
        raise ValidationError({name: "an ISO date or date-time, e.g. 2026-12-01 or 2026-12-01T12:00:00Z."})
    return found if found.tzinfo else found.replace(tzinfo=dt.UTC)


class UsageView(APIView):
    """Requests, tokens, spend and errors from the decision log, grouped by day, serve or key.

    ``GET /api/usage/?key=NAME&serve=NAME&from=DATE&to=DATE&group_by=day|serve|key`` (all optional; from and
    to are ISO dates or date-times, UTC when no zone is given, ``to`` excluded). Staff session or an API key
    with the admin scope."""

    authentication_classes = [authentication.SessionAuthentication, AdminKeyAuthentication]
    permission_classes = [StaffOrAdminKey]

    def get(self, request: Request) -> Response:
        params = request.query_params
        key = None
        if params.get("key"):
            key = ApiKey.objects.filter(name=params["key"]).first()
            if key is None:
                raise ValidationError({"key": f"no API key is named {params['key']!r}."})
        start, end = _moment(params.get("from"), "from"), _moment(params.get("to"), "to")
        group_by = params.get("group_by", "day")
        try:
            rows = usage(key, params.get("serve", ""), start, end, group_by)
        except UsageQueryError as exc:
            raise ValidationError({"detail": str(exc)}) from None
        return Response({"group_by": group_by, "key": params.get("key") or None, "serve": params.get("serve") or None,
                         "from": start, "to": end, "rows": rows, "total": totals(rows)})
