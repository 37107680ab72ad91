"""The playground page: chat with any model, ``anvil/auto`` or a preset, or two side by side; and ``/generate`` and
``/loglikelihood`` for the serves that speak that contract. The requests go over ``/ws/playground/``."""

from __future__ import annotations

from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from routing.decide import PRESETS
from serves.models import Engine, Serve


@staff_member_required
def playground(request: HttpRequest) -> HttpResponse:
    serves = list(Serve.objects.filter(enabled=True).order_by("tier", "name"))
    models: dict[str, bool] = {}  # public model id -> takes images
    for serve in serves:
        models[serve.public_model] = models.get(serve.public_model, False) or "image" in (serve.modalities or [])
    return render(request, "console/playground.html", {
        "models": sorted(models.items()), "routed": ["anvil/auto", *sorted(PRESETS)],
        "hrm": sorted({serve.public_model for serve in serves if serve.engine == Engine.HRM})})
