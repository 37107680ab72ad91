from __future__ import annotations

from django.db import models
from django.utils import timezone


class LoginFailure(models.Model):
    """One failed sign-in; anvil_site/login_throttle.py counts them per username and per client address.

    Kept in the database, which every sign-in needs anyway, so all web processes agree and a
    Redis outage neither opens nor closes the door.
    """

    username = models.CharField(max_length=150, blank=True, help_text="As typed; the account may not exist.")
    client = models.CharField(max_length=64, blank=True, help_text="The client address; blank when unknown.")
    at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [
            models.Index(fields=["username", "at"]),
            models.Index(fields=["client", "at"]),
            models.Index(fields=["at"]),
        ]

    def __str__(self) -> str:
        return f"{self.username or '?'} from {self.client or '?'} at {self.at:%Y-%m-%d %H:%M:%S}"
