from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.urls import path

from routing.models import ClassifierRule, DecisionRecord, ProfileEntry, WorkClass
from routing.profile import Cell, Profile
from serves.catalog import load_enabled

VERDICT_COLOURS = {"allow": "#1f7a3d", "allow-with-verify": "#b54708", "deny": "#b42318"}


@admin.register(ClassifierRule)
class ClassifierRuleAdmin(admin.ModelAdmin):
    list_display = ["work_class", "priority", "enabled", "updated_at"]
    list_editable = ["priority", "enabled"]


@admin.register(ProfileEntry)
class ProfileEntryAdmin(admin.ModelAdmin):
    list_display = ["profile", "kind", "subject", "work_class", "decision", "quality", "samples", "stale",
                    "measured_at", "source"]
    list_filter = ["profile", "kind", "work_class", "decision", "stale"]
    search_fields = ["subject"]
    readonly_fields = ["fingerprint", "identity", "stale_reason", "updated_at"]
    change_list_template = "admin/routing/profileentry/change_list.html"

    def get_urls(self) -> list[Any]:
        return [path("matrix/", self.admin_site.admin_view(self.matrix), name="routing_profile_matrix"),
                *super().get_urls()]

    def matrix(self, request: HttpRequest) -> TemplateResponse:
        """Serves × work classes, each cell the verdict routing would use (measured or default)."""
        which = request.GET.get("profile", "live")
        serves: dict[tuple[str, str], Cell] = {}
        tiers: dict[tuple[str, str], Cell] = {}
        for entry in ProfileEntry.objects.filter(profile=which):
            cell = Cell(entry.decision, entry.quality, entry.samples, entry.fingerprint, entry.stale, entry.source)
            (serves if entry.kind == "serve" else tiers)[(entry.subject, entry.work_class)] = cell
        profile = Profile(serves, tiers)
        rows = []
        for serve in load_enabled():
            cells = []
            for work_class in WorkClass.values:
                verdict, notes = profile.verdict(serve, work_class)
                measured = (serve.name, work_class) in serves or (serve.tier, work_class) in tiers
                cells.append({"verdict": verdict, "colour": VERDICT_COLOURS[verdict], "notes": " · ".join(notes),
                              "measured": measured})
            rows.append({"serve": serve, "cells": cells})
        context = {**self.admin_site.each_context(request), "title": f"Quality profile ({which})", "rows": rows,
                   "work_classes": WorkClass.values, "which": which, "opts": self.model._meta}
        return TemplateResponse(request, "admin/routing/profile_matrix.html", context)


@admin.register(DecisionRecord)
class DecisionRecordAdmin(admin.ModelAdmin):
    list_display = ["created_at", "request_id", "api_key", "work_class", "served_by", "outcome", "status",
                    "latency_ms", "ttft_ms"]
    list_filter = ["work_class", "served_by", "outcome", "endpoint", "confident"]
    search_fields = ["request_id", "api_key"]
    date_hierarchy = "created_at"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False
