"""REST API views for API keys (read-only: keys are minted by the command or the admin)."""

from __future__ import annotations

from rest_framework import serializers, viewsets

from inference.models import ApiKey


class ApiKeySerializer(serializers.ModelSerializer):
    revoked = serializers.BooleanField(source="is_revoked", read_only=True)

    class Meta:
        model = ApiKey
        fields = ["id", "name", "prefix", "created_at", "last_used_at", "revoked", "revoked_at"]


class ApiKeyViewSet(viewsets.ReadOnlyModelViewSet):
    """API keys with their public prefix and usage; never their secret or its hash."""

    queryset = ApiKey.objects.all()
    serializer_class = ApiKeySerializer
