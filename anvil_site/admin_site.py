"""Anvil's admin site: Django's, with a sign-in form that says when sign-in is throttled.

The default site of ``anvil_site.admin_app.AnvilAdminConfig``, installed in place of
``django.contrib.admin``: ``admin.site`` and ``@admin.register`` everywhere are this site.
The console signs in here too (``LOGIN_URL``).
"""

from __future__ import annotations

from typing import Any

from django.contrib.admin import AdminSite
from django.contrib.admin.forms import AdminAuthenticationForm
from django.core.exceptions import ValidationError

from anvil_site.login_throttle import client_address, lockout


class ThrottledAuthenticationForm(AdminAuthenticationForm):
    """Refuses a locked-out username or address with the reason, not as a wrong password."""

    def clean(self) -> dict[str, Any]:
        self._refuse_when_locked()
        try:
            return super().clean()
        except ValidationError:
            self._refuse_when_locked()  # this failure may be the one that locks: say so now
            raise

    def _refuse_when_locked(self) -> None:
        username = self.cleaned_data.get("username")
        if not username:
            return
        found = lockout(username, client_address(self.request))
        if found is not None:
            raise ValidationError(found.message(), code="throttled")


class AnvilAdminSite(AdminSite):
    login_form = ThrottledAuthenticationForm
