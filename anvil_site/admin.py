from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from anvil_site.models import LoginFailure


@admin.register(LoginFailure)
class LoginFailureAdmin(admin.ModelAdmin):
    """Who failed to sign in, from where, within the throttle's window. Deleting rows lifts a lockout."""

    list_display = ["at", "username", "client"]
    list_filter = ["client"]
    search_fields = ["username", "client"]
    readonly_fields = ["username", "client", "at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False
