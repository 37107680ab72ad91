"""The traffic pages: the decisions browser with its filters and charts, and one decision as readable rows."""

from __future__ import annotations

import datetime as dt

from django.contrib.admin.views.decorators import staff_member_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.utils.dateparse import parse_datetime

from console.traffic import WINDOWS, Filters, attempt_rows, candidate_rows, charts, choices, decisions
from inference.models import ApiKey
from routing.decision_log import drain_decisions
from routing.models import DecisionRecord

PER_PAGE = 50


def _moment(text: str | None) -> dt.datetime | None:
    found = parse_datetime(text) if text else None
    if found is not None and found.tzinfo is None:
        found = found.replace(tzinfo=dt.UTC)
    return found


@staff_member_required
def traffic(request: HttpRequest) -> HttpResponse:
    query = request.GET
    filters = Filters(serve=query.get("serve", ""), work_class=query.get("work_class", ""), key=query.get("key", ""),
                      outcome=query.get("outcome", ""), start=_moment(query.get("from")), end=_moment(query.get("to")))
    window = query.get("window", "1h") if query.get("window") in WINDOWS else "1h"
    page = Paginator(decisions(filters), PER_PAGE).get_page(query.get("page"))
    return render(request, "console/traffic.html", {
        "page": page, "filters": filters, "choices": choices(), "window": window, "windows": list(WINDOWS),
        "charts": charts(window), "query": query.urlencode()})


@staff_member_required
def decision(request: HttpRequest, pk: str) -> HttpResponse:
    if not DecisionRecord.objects.filter(pk=pk).exists():
        drain_decisions()  # a record from a moment ago may still wait in Redis for the writer: write it now
    record = get_object_or_404(DecisionRecord, pk=pk)
    key = ApiKey.objects.filter(pk=record.key_id).first() if record.key_id else None
    return render(request, "console/decision.html", {
        "record": record, "key": key, "candidates": candidate_rows(record), "attempts": attempt_rows(record)})
