from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from inference.key_budget import spent_in_period
from inference.keys import assign_new_secret, revoke_key
from inference.models import ApiKey, Scope, default_scopes


class ScopesField(forms.MultipleChoiceField):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(choices=Scope.choices, widget=forms.CheckboxSelectMultiple, **kwargs)


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ["name", "prefix", "scopes", "reach", "allow_remote", "rpm", "tpm", "max_concurrent", "budget",
                    "created_at", "last_used_at", "revoked_at"]
    list_filter = [("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["name", "prefix"]
    readonly_fields = ["prefix", "created_at", "last_used_at", "revoked_at"]
    actions = ["revoke_selected"]

    def get_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> list[str]:
        editable = ["name", "scopes", "reach", "allow_remote", "rpm", "tpm", "max_concurrent", "budget_usd",
                    "budget_period", "budget_alert", "weight", "max_queued"]
        if obj is None:
            return editable
        return [*editable, "prefix", "created_at", "last_used_at", "revoked_at"]

    @admin.display(description="budget (this period)")
    def budget(self, obj: ApiKey) -> str:
        if obj.budget_usd is None:
            return "-"
        spent = spent_in_period(obj.pk, obj.budget_period)
        share = 100 * spent / obj.budget_usd
        warn = " ⚠ past the alert" if share >= obj.budget_alert else ""
        return f"${spent:.2f} of ${obj.budget_usd:.2f}/{obj.budget_period} ({share:.0f}%){warn}"

    def formfield_for_dbfield(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "scopes":  # checkboxes, not a JSON text box
            return ScopesField(required=True, initial=default_scopes())
        return super().formfield_for_dbfield(db_field, request, **kwargs)

    def save_model(self, request: HttpRequest, obj: ApiKey, form: Any, change: bool) -> None:
        if not change:
            # Kept on the request only: shown once by response_add, never stored.
            request._anvil_new_secret = assign_new_secret(obj)  # type: ignore[attr-defined]
        super().save_model(request, obj, form, change)

    def response_add(self, request: HttpRequest, obj: ApiKey, post_url_continue: str | None = None) -> HttpResponse:
        secret = getattr(request, "_anvil_new_secret", None)
        if secret is None:
            return super().response_add(request, obj, post_url_continue)
        # Render the secret in this response instead of redirecting with a
        # message: messages travel in cookies or the session table.
        context = {**self.admin_site.each_context(request), "key": obj, "secret": secret, "opts": self.opts,
                   "title": f"API key {obj.name} created"}
        return TemplateResponse(request, "admin/inference/apikey/created.html", context)

    @admin.action(description="Revoke selected API keys", permissions=["change"])
    def revoke_selected(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        names = [key.name for key in queryset if key.revoked_at is None]
        for name in names:
            revoke_key(name)
        self.message_user(request, f"Revoked {len(names)} key(s).", messages.SUCCESS)
