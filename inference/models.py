from __future__ import annotations

from django.db import models
from django.utils import timezone


class ApiKey(models.Model):
    """A key that clients present to the front door.

    Only a SHA-256 digest of the secret is stored: the secrets are 256-bit
    random strings, so a slow password hash would add latency and no safety.
    ``prefix`` is the public part of the key (``anv_XXXXXXXX``), unique, shown
    in lists and used to find the row before the constant-time comparison.
    """

    name = models.SlugField(max_length=64, unique=True, help_text="Who or what uses this key.")
    prefix = models.CharField(max_length=16, unique=True, editable=False)
    secret_hash = models.CharField(max_length=64, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["name"]
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None
