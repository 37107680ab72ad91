"""REST API: the decision log (read-only)."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import serializers, viewsets
from rest_framework.exceptions import ValidationError

from routing.models import DecisionRecord

FILTERS = ("served_by", "work_class", "outcome", "request_id")


class DecisionSerializer(serializers.ModelSerializer):
    class Meta:
        model = DecisionRecord
        fields = ["id", "created_at", "request_id", "api_key", "endpoint", "requested_model", "work_class",
                  "confident", "candidates", "attempts", "notes", "served_by", "outcome", "status", "prompt_tokens",
                  "completion_tokens", "bytes_out", "latency_ms", "ttft_ms"]


@extend_schema_view(list=extend_schema(parameters=[
    OpenApiParameter(name, str, description=f"Only decisions whose {name} is exactly this.") for name in FILTERS]))
class DecisionViewSet(viewsets.ReadOnlyModelViewSet):
    """Routing decisions, newest first; filter with ?served_by=, ?work_class=, ?outcome=, ?request_id=."""

    serializer_class = DecisionSerializer

    def get_queryset(self):  # type: ignore[no-untyped-def]
        queryset = DecisionRecord.objects.all()
        for name in FILTERS:
            value = self.request.query_params.get(name)
            if value and "\x00" in value:
                # PostgreSQL text cannot hold a NUL: the query itself would fail (a 500), so it is the client's 400.
                raise ValidationError({name: ["Must not contain a NUL character."]})
            if value:
                queryset = queryset.filter(**{name: value})
        return queryset
