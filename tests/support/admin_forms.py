"""The POST a browser would send for an admin change form, read from the page Django rendered.

Tests that list every field by hand break each time the model grows a field (a new field with a
default is required in the form, and the hand-written POST lacks it). A browser submits what the page
shows, so the tests start from that and change only what they are about.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpResponse


def submitted_form(page: HttpResponse, **changes: Any) -> dict[str, Any]:
    """The fields of the rendered admin form as a browser posts them, with ``changes`` applied.

    ``page`` is the response of a GET on an admin add or change page (rendered by the test client, so
    its context is there). Unchecked checkboxes are left out, as a browser leaves them out; a change of
    ``False`` does the same.
    """
    context = page.context
    posted: dict[str, Any] = {}
    _add_form(posted, context["adminform"].form)
    for inline in context.get("inline_admin_formsets", []):
        formset = inline.formset
        _add_form(posted, formset.management_form)
        for form in formset.forms:
            _add_form(posted, form)
    for name, value in changes.items():
        posted.pop(name, None)
        if value is not False:
            posted[name] = "on" if value is True else value
    return posted


def _add_form(posted: dict[str, Any], form: Any) -> None:
    for bound in form:
        value = bound.value()
        if value is None:
            posted[bound.html_name] = ""
        elif isinstance(value, bool):
            if value:
                posted[bound.html_name] = "on"
        elif isinstance(value, list | tuple):
            posted[bound.html_name] = [str(item) for item in value]
        else:
            posted[bound.html_name] = value
