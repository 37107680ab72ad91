"""The keys page: create a key (its secret shown once), revoke one (asked first, undone by restoring it), and
see each key's settings, last use, last 24 hours and budget."""

from __future__ import annotations

from collections.abc import Callable

from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_POST

from console.forms import NewKeyForm
from console.key_table import key_rows
from inference.keys import ApiKeyError, create_key, restore_key, revoke_key


@staff_member_required
def keys(request: HttpRequest) -> HttpResponse:
    """GET: the keys; POST: create one, and show its secret on this answer only (never stored, never again)."""
    form = NewKeyForm(request.POST or None)
    secret = None
    if request.method == "POST" and form.is_valid():
        try:
            minted = create_key(form.cleaned_data["name"], form.cleaned_data["scopes"], **form.settings())
        except ApiKeyError as exc:
            form.add_error(None, str(exc))
        else:
            secret = minted.secret
            form = NewKeyForm()
    answer = render(request, "console/keys.html", {"form": form, "rows": key_rows(), "secret": secret})
    answer["Cache-Control"] = "no-store"  # the page with a secret on it is never cached
    return answer


@staff_member_required
@require_POST
def revoke(request: HttpRequest, name: str) -> HttpResponseRedirect:
    return _change(request, revoke_key, name, f"Revoked {name}: its requests get 401 within a second. Restore it to "
                   "undo.")


@staff_member_required
@require_POST
def restore(request: HttpRequest, name: str) -> HttpResponseRedirect:
    return _change(request, restore_key, name, f"Restored {name}: the same secret works again within a second.")


def _change(request: HttpRequest, change: Callable[[str], object], name: str, done: str) -> HttpResponseRedirect:
    """Apply ``change`` to the key, say how it went, and go back to the keys page."""
    try:
        change(name)
    except ApiKeyError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, done)
    return HttpResponseRedirect(reverse("console:keys"))
