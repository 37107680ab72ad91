from __future__ import annotations

from typing import Any

import redis
from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.db import models
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from anvil_site.task_queue import QueueUnavailable
from serves.drain_counts import in_flight
from serves.hosts import live_hosts
from serves.loading import InvalidLoadRequest
from serves.models import Gpu, Health, Host, Modality, ModelState, Runtime, Serve, ServeEvent, default_modalities
from serves.operations import LoadConflict, request_load, request_unload
from serves.runtimes import runtime_for
from serves.tasks import enqueue

STATE_COLOURS = {"running": "#1f7a3d", "paused": "#b54708", "exited": "#5b6475", "missing": "#5b6475",
                 "restarting": "#b42318", "dead": "#b42318", "remote": "#3b5bdb"}
HEALTH_COLOURS = {Health.OK: "#1f7a3d", Health.UNHEALTHY: "#b42318", Health.UNREACHABLE: "#b42318"}
MODEL_STATE_COLOURS = {ModelState.LOADED: "#1f7a3d", ModelState.LOADING: "#b54708", ModelState.UNLOADING: "#b54708",
                       ModelState.FAILED: "#b42318", ModelState.UNLOADED: "#5b6475"}
LIFECYCLE_ACTIONS = ("up", "down", "status")


def _badge(text: str, colour: str) -> str:
    return format_html('<span style="color:#fff;background:{};border-radius:8px;padding:1px 8px">{}</span>',
                       colour, text)


class GroupFilter(admin.SimpleListFilter):
    title = "group"
    parameter_name = "group"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        groups = sorted({g for groups in Serve.objects.values_list("groups", flat=True) for g in (groups or [])})
        return [(g, g) for g in groups]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Serve]) -> QuerySet[Serve]:
        if not self.value():
            return queryset
        # JSON containment is not portable to SQLite; the serves table is small.
        ids = [serve.pk for serve in queryset if serve.in_group(self.value())]
        return queryset.filter(pk__in=ids)


class ServeEventInline(admin.TabularInline):
    model = ServeEvent
    extra = 0
    max_num = 0
    can_delete = False
    fields = ["started_at", "action", "requested_by", "outcome", "state_before", "state_after", "detail"]
    readonly_fields = fields
    ordering = ["-started_at"]
    show_change_link = True


@admin.register(Serve)
class ServeAdmin(admin.ModelAdmin):
    list_display = ["name", "tier", "engine", "runtime", "model_state_badge", "state_badge", "health_badge",
                    "reported_model", "gpu_memory", "checked_at", "enabled"]
    list_filter = ["tier", "engine", "runtime", "model_state", GroupFilter, "enabled", "state"]
    search_fields = ["name", "served_model", "container"]
    actions = ["load_models", "bring_up", "bring_down", "refresh"]
    readonly_fields = ["state", "health", "reported_model", "gpu_memory", "state_detail", "checked_at",
                       "context_limit_probed", "fingerprint_display", "created_at", "updated_at",
                       "model_state_badge", "state_changed_at", "load_error", "last_error", "live_overrides",
                       "vram_measured_gb", "log_tail"]
    inlines = [ServeEventInline]
    change_form_template = "admin/serves/serve/change_form.html"
    # Local serves speak plain http on loopback; don't guess https for a bare host.
    formfield_overrides = {models.URLField: {"assume_scheme": "http"}}
    fieldsets = [
        (None, {"fields": ["name", "tier", "engine", "dialect", "enabled", "groups"]}),
        ("Where it answers", {"fields": ["base_url", "port", "served_model", "health_path", "api_key_env"]}),
        ("What it can take", {"fields": ["modalities", "supports_tools", "thinking", "embeddings", "responses_api",
                                         "stream_verify"]}),
        ("Pool (the name clients send, and how requests wait)", {
            "fields": ["alias", "fallback_to", "on_demand", "ttl", "target_inflight", "max_queue", "queue_timeout",
                       "replicas", "replica_max"]}),
        ("Price (USD per million tokens)", {"fields": ["price_input", "price_output"]}),
        ("Model state", {"fields": ["model_state_badge", "state_changed_at", "load_error", "last_error",
                                    "live_overrides", "vram_measured_gb", "log_tail"]}),
        ("Runtime (who starts it)", {"fields": ["runtime", "preset", "preset_args", "command", "env", "cwd",
                                                "library_path", "ready_timeout", "stop_timeout", "drain_timeout",
                                                "load_constraints", "vram_gb"]}),
        ("Container", {"fields": ["container", "compose_file", "compose_service", "up_command", "trusted_command",
                                  "gpu", "queue", "host"]}),
        ("Identity (a change marks measurements stale)", {
            "fields": ["model_source", "revision", "quantization", "context_limit", "context_limit_probed",
                       "extra_body", "engine_args", "fingerprint_display"]}),
        ("Last known state", {"fields": ["state", "health", "reported_model", "gpu_memory", "state_detail",
                                         "checked_at", "created_at", "updated_at"]}),
    ]

    def formfield_for_dbfield(self, db_field: models.Field, request: HttpRequest, **kwargs: Any) -> forms.Field:
        if db_field.name == "modalities":  # checkboxes rather than a JSON text box: the values are a closed set
            # The model's default ticked on the add page (a replaced form field loses the model's initial).
            return forms.MultipleChoiceField(choices=Modality.choices, widget=forms.CheckboxSelectMultiple,
                                             label="Modalities", help_text=db_field.help_text,
                                             initial=default_modalities)
        return super().formfield_for_dbfield(db_field, request, **kwargs)

    @admin.display(description="state", ordering="state")
    def state_badge(self, serve: Serve) -> str:
        return _badge(serve.state, STATE_COLOURS.get(serve.state, "#5b6475"))

    @admin.display(description="health", ordering="health")
    def health_badge(self, serve: Serve) -> str:
        return _badge(serve.health, HEALTH_COLOURS.get(serve.health, "#5b6475"))

    @admin.display(description="model", ordering="model_state")
    def model_state_badge(self, serve: Serve) -> str:
        state = serve.current_model_state
        return _badge(state, MODEL_STATE_COLOURS.get(state, "#3b5bdb"))

    @admin.display(description="log (tail)")
    def log_tail(self, serve: Serve) -> str:
        # A process serve's log is a bounded file on this host; a container's would be a `docker logs`
        # call per page view, so the page names the command instead.
        if not serve.pk or serve.run_by == Runtime.REMOTE:
            return "-"
        if serve.run_by == Runtime.COMPOSE:
            return f"docker logs --tail 100 {serve.container}" if serve.container else "-"
        return format_html("<pre style=\"max-height:24em;overflow:auto;white-space:pre-wrap\">{}</pre>",
                           runtime_for(serve).log_tail(serve)[-8192:] or "(empty)")

    @admin.display(description="fingerprint")
    def fingerprint_display(self, serve: Serve) -> str:
        return serve.fingerprint() if serve.pk else "-"

    def _enqueue(self, request: HttpRequest, action: str, serves: list[Serve]) -> None:
        try:
            enqueue(action, [serve.pk for serve in serves], f"admin:{request.user.get_username()}")
        except QueueUnavailable as exc:
            self.message_user(request, f"Nothing was queued: {exc}", messages.ERROR)
            return
        names = ", ".join(serve.name for serve in serves)
        self.message_user(request, f"Queued {action} for {names}. The event history shows the outcome.",
                          messages.SUCCESS)

    @admin.action(description="Load the selected models", permissions=["change"])
    def load_models(self, request: HttpRequest, queryset: QuerySet[Serve]) -> None:
        for serve in queryset:
            self._model_action(request, serve, "load")

    def _model_action(self, request: HttpRequest, serve: Serve, action: str) -> None:
        who = f"admin:{request.user.get_username()}"
        try:
            done = request_load(serve.name, {}, who) if action == "load" else request_unload(serve.name, who)
        except (LoadConflict, InvalidLoadRequest, QueueUnavailable) as exc:
            self.message_user(request, f"{serve.name}: {exc}", messages.ERROR)
            return
        if done.accepted:
            self.message_user(request, f"{serve.name}: {action} queued (now {done.serve['state']}). The event "
                                       "history shows the outcome.", messages.SUCCESS)
        else:
            self.message_user(request, f"{serve.name} is already {done.serve['state']}: nothing to do.",
                              messages.INFO)

    @admin.action(description="Bring selected serves up", permissions=["change"])
    def bring_up(self, request: HttpRequest, queryset: QuerySet[Serve]) -> None:
        self._enqueue(request, "up", list(queryset))

    @admin.action(description="Bring selected serves down", permissions=["change"])
    def bring_down(self, request: HttpRequest, queryset: QuerySet[Serve]) -> None:
        self._enqueue(request, "down", list(queryset))

    @admin.action(description="Refresh state of selected serves", permissions=["change"])
    def refresh(self, request: HttpRequest, queryset: QuerySet[Serve]) -> None:
        self._enqueue(request, "status", list(queryset))

    def get_urls(self) -> list[Any]:
        own = [path("<int:serve_id>/lifecycle/<str:action>/", self.admin_site.admin_view(self.lifecycle_view),
                    name="serves_serve_lifecycle"),
               path("<int:serve_id>/model/<str:action>/", self.admin_site.admin_view(self.model_view),
                    name="serves_serve_model")]
        return own + super().get_urls()

    def model_view(self, request: HttpRequest, serve_id: int, action: str) -> HttpResponse:
        """Load (a POST) or unload (a confirmation page, then a POST): the same operations as /v1/admin/."""
        serve = get_object_or_404(Serve, pk=serve_id)
        back = HttpResponseRedirect(reverse("admin:serves_serve_change", args=[serve.pk]))
        if action not in ("load", "unload") or not self.has_change_permission(request, serve):
            return back
        if request.method == "GET" and action == "unload":
            # Unloading turns the model's traffic away (503 model_not_loaded) until it is loaded again: confirm.
            context = {**self.admin_site.each_context(request), "opts": self.model._meta, "serve": serve,
                       "in_flight": in_flight(serve.name), "title": f"Unload {serve.name}?"}
            return TemplateResponse(request, "admin/serves/serve/unload_confirmation.html", context)
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        self._model_action(request, serve, action)
        return back

    def lifecycle_view(self, request: HttpRequest, serve_id: int, action: str) -> HttpResponseRedirect:
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])  # type: ignore[return-value]
        serve = get_object_or_404(Serve, pk=serve_id)
        if action not in LIFECYCLE_ACTIONS or not self.has_change_permission(request, serve):
            return HttpResponseRedirect(reverse("admin:serves_serve_change", args=[serve.pk]))
        self._enqueue(request, action, [serve])
        return HttpResponseRedirect(reverse("admin:serves_serve_change", args=[serve.pk]))


@admin.register(Gpu)
class GpuAdmin(admin.ModelAdmin):
    list_display = ["name", "memory_gb", "exclusive", "min_residency", "max_wait"]


@admin.register(ServeEvent)
class ServeEventAdmin(admin.ModelAdmin):
    list_display = ["started_at", "serve", "action", "requested_by", "outcome", "state_before", "state_after"]
    list_filter = ["action", "outcome", "serve"]
    readonly_fields = ["serve", "action", "requested_by", "started_at", "finished_at", "outcome", "state_before",
                       "state_after", "commands", "output_tail", "detail"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(Host)
class HostAdmin(admin.ModelAdmin):
    """Host agents (manage.py runhost NAME): their last beat, GPUs, and the serves they run."""

    list_display = ["name", "beating", "last_heartbeat", "gpu_count", "serve_count", "pid", "started_at"]
    readonly_fields = ["name", "gpus", "pid", "started_at", "last_heartbeat"]

    @admin.display(boolean=True, description="beating")
    def beating(self, host: Host) -> bool:
        client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=settings.ANVIL_REDIS_TIMEOUT,
                                      socket_connect_timeout=settings.ANVIL_REDIS_TIMEOUT)
        try:
            return host.name in live_hosts(client, [host.name])
        except redis.RedisError:
            return False
        finally:
            client.close()

    @admin.display(description="GPUs")
    def gpu_count(self, host: Host) -> int:
        return len(host.gpus or [])

    @admin.display(description="serves")
    def serve_count(self, host: Host) -> int:
        return Serve.objects.filter(host=host.name).count()
