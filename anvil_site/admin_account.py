"""First-run set-up the launcher performs: the admin account."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.db import transaction

from anvil_site.launcher import LaunchError


class AdminPasswordRefused(LaunchError):
    """ANVIL_ADMIN_PASSWORD fails the password validators; the launcher stops with this message."""


@dataclass(frozen=True)
class AdminAccount:
    username: str
    created: bool
    generated_password: str | None  # only when generated now: printed once, never stored


def ensure_admin_user() -> AdminAccount:
    """Create a superuser when none exists (password from ANVIL_ADMIN_PASSWORD, else generated).

    A chosen password must pass AUTH_PASSWORD_VALIDATORS, as one set in the admin would:
    the first account is a superuser, and the admin login is reachable wherever Anvil listens.
    """
    users = get_user_model()
    username = settings.ANVIL_ADMIN_USER
    with transaction.atomic():
        existing = users.objects.filter(is_superuser=True).order_by("pk").first()
        if existing is not None:
            return AdminAccount(existing.get_username(), created=False, generated_password=None)
        password = settings.ANVIL_ADMIN_PASSWORD or None
        generated = None
        if password is None:
            generated = password = secrets.token_urlsafe(12)
        else:
            _refuse_weak_password(password, users(**{users.USERNAME_FIELD: username}))
        users.objects.create_superuser(username=username, email="", password=password)
    return AdminAccount(username, created=True, generated_password=generated)


def _refuse_weak_password(password: str, user: object) -> None:
    try:
        validate_password(password, user=user)
    except ValidationError as exc:
        complaints = " ".join(exc.messages)
        raise AdminPasswordRefused(
            f"ANVIL_ADMIN_PASSWORD is refused by the password validators: {complaints} Set a stronger "
            "ANVIL_ADMIN_PASSWORD, or unset it to have a password generated and printed once."
        ) from None
