"""Sign-in throttling: after too many failures, a username or a client address is refused for a while.

``ANVIL_LOGIN_FAILURE_LIMIT`` failures (default 5) within ``ANVIL_LOGIN_LOCKOUT_SECONDS``
(default 900) for one username, or from one client address whatever the username, lock
that username or address until the oldest of those failures leaves the window. While
locked, an attempt is refused before its password is checked (so a guess, even a right
one, learns nothing) and is not counted (so the lockout ends on time). A successful
sign-in forgets that username's failures.

The failures are rows (``LoginFailure``) in the database every sign-in already needs, so
all web processes agree, and no second store can be down while the login page is up.
Two concurrent attempts may both pass the check at the limit's edge: one extra guess
per concurrent request at most, which counting rows instead of locking keeps cheap.

``ThrottledModelBackend`` enforces the rule for every password sign-in; the admin's
login form (``anvil_site/admin_site.py``) asks ``lockout`` first to say why it refuses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.base_user import AbstractBaseUser
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest
from django.utils import timezone

from anvil_site.models import LoginFailure

USERNAME_MAX_LENGTH = LoginFailure._meta.get_field("username").max_length
CLIENT_MAX_LENGTH = LoginFailure._meta.get_field("client").max_length


@dataclass(frozen=True)
class Lockout:
    until: datetime

    def seconds_left(self, now: datetime | None = None) -> int:
        return max(1, math.ceil((self.until - (now or timezone.now())).total_seconds()))

    def message(self, now: datetime | None = None) -> str:
        minutes = math.ceil(self.seconds_left(now) / 60)
        return (f"Too many failed sign-in attempts for this account or from this address. Sign-in is refused "
                f"for {minutes} more minute{'s' if minutes != 1 else ''}; try again after that.")


def _window() -> timedelta:
    return timedelta(seconds=settings.ANVIL_LOGIN_LOCKOUT_SECONDS)


def client_address(request: HttpRequest | None) -> str:
    """The address the throttle counts for ``request`` ("" when there is no client to count).

    REMOTE_ADDR is what Daphne was told by the connection (or by X-Forwarded-For when it runs
    with proxy headers), never a header the client may set for itself.
    """
    if request is None:
        return ""
    return (request.META.get("REMOTE_ADDR") or "")[:CLIENT_MAX_LENGTH]


def lockout(username: str, client: str, now: datetime | None = None) -> Lockout | None:
    """The lockout holding ``username`` or ``client`` now, or None."""
    now = now or timezone.now()
    limit, since = settings.ANVIL_LOGIN_FAILURE_LIMIT, now - _window()
    ends: list[datetime] = []
    for scope in ({"username": username[:USERNAME_MAX_LENGTH]}, {"client": client} if client else None):
        if scope is None:
            continue
        recent = list(LoginFailure.objects.filter(at__gt=since, **scope).order_by("-at")
                      .values_list("at", flat=True)[:limit])
        if len(recent) >= limit:
            ends.append(recent[-1] + _window())  # locked until the limit-th latest failure leaves the window
    return Lockout(max(ends)) if ends else None


def record_failure(username: str, client: str, now: datetime | None = None) -> None:
    now = now or timezone.now()
    LoginFailure.objects.create(username=username[:USERNAME_MAX_LENGTH], client=client, at=now)
    # Failures older than the window count for nothing: keep the table as small as the window.
    LoginFailure.objects.filter(at__lte=now - _window()).delete()


def record_success(username: str) -> None:
    LoginFailure.objects.filter(username=username[:USERNAME_MAX_LENGTH]).delete()


class ThrottledModelBackend(ModelBackend):
    """Django's ModelBackend, refusing a locked-out username or address before the password is checked."""

    def authenticate(self, request: HttpRequest | None, username: str | None = None, password: str | None = None,
                     **kwargs: Any) -> AbstractBaseUser | None:
        if username is None:
            username = kwargs.get(get_user_model().USERNAME_FIELD)
        if username is None or password is None:
            return None  # not a password sign-in: nothing to count
        client = client_address(request)
        if lockout(username, client) is not None:
            raise PermissionDenied  # Django stops asking other backends and records user_login_failed
        user = super().authenticate(request, username=username, password=password, **kwargs)
        if user is None:
            record_failure(username, client)
        else:
            record_success(username)
        return user
