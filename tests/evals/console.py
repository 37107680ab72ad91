"""Operators for the console page tests: a logged-in staff client whose POSTs carry a real CSRF token."""

from __future__ import annotations

import re
from html import unescape

from django.contrib.auth import get_user_model
from django.http import HttpResponse as Response
from django.test import Client

TOKEN = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')
HIDDEN = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)"')


def operator_client(username: str = "ops") -> Client:
    """A staff user's client that enforces CSRF as a browser's requests meet it."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(get_user_model().objects.create_superuser(username, "", "pw-for-tests-only"))
    return client


def post_from(client: Client, page: str, action: str, data: dict[str, object] | None = None,
              follow: bool = True) -> Response:
    """Submit the form for ``action`` drawn on ``page`` as a browser would: its hidden inputs (the CSRF
    token, a diff's token, ``next``) plus ``data``. With no such form on the page, only the CSRF token."""
    drawn = client.get(page)
    assert drawn.status_code == 200, (page, drawn.status_code)
    html = drawn.content.decode()
    form = re.search(rf'<form[^>]*action="{re.escape(action)}"[^>]*>(.*?)</form>', html, re.S)
    hidden = {name: unescape(value) for name, value in HIDDEN.findall(form.group(1))} if form else {}
    if "csrfmiddlewaretoken" not in hidden:
        token = TOKEN.search(html)
        assert token, f"{page} draws no form with a CSRF token"
        hidden["csrfmiddlewaretoken"] = token.group(1)
    return client.post(action, {**hidden, **(data or {})}, follow=follow)


def text(response: Response) -> str:
    return response.content.decode()
