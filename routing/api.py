"""REST API: the decision log (read-only)."""

from __future__ import annotations

from rest_framework import serializers, viewsets

from routing.models import DecisionRecord


class DecisionSerializer(serializers.ModelSerializer):
    class Meta:
        model = DecisionRecord
        fields = ["id", "created_at", "request_id", "api_key", "endpoint", "requested_model", "work_class",
                  "confident", "candidates", "attempts", "notes", "served_by", "outcome", "status", "prompt_tokens",
                  "completion_tokens", "bytes_out", "latency_ms", "ttft_ms"]


class DecisionViewSet(viewsets.ReadOnlyModelViewSet):
    """Routing decisions, newest first; filter with ?served_by=, ?work_class=, ?outcome=."""

    serializer_class = DecisionSerializer

    def get_queryset(self):  # type: ignore[no-untyped-def]
        queryset = DecisionRecord.objects.all()
        for name in ("served_by", "work_class", "outcome", "request_id"):
            value = self.request.query_params.get(name)
            if value:
                queryset = queryset.filter(**{name: value})
        return queryset
