"""First-run set-up the launcher performs: the admin account."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass

from django.contrib.auth import get_user_model
from django.db import transaction


@dataclass(frozen=True)
class AdminAccount:
    username: str
    created: bool
    generated_password: str | None  # only when generated now: printed once, never stored


def ensure_admin_user() -> AdminAccount:
    """Create a superuser when none exists (password from ANVIL_ADMIN_PASSWORD, else generated)."""
    users = get_user_model()
    username = os.environ.get("ANVIL_ADMIN_USER", "admin")
    with transaction.atomic():
        existing = users.objects.filter(is_superuser=True).order_by("pk").first()
        if existing is not None:
            return AdminAccount(existing.get_username(), created=False, generated_password=None)
        password = os.environ.get("ANVIL_ADMIN_PASSWORD") or None
        generated = None
        if password is None:
            generated = password = secrets.token_urlsafe(12)
        users.objects.create_superuser(username=username, email="", password=password)
    return AdminAccount(username, created=True, generated_password=generated)
