from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone


class Scope(models.TextChoices):
    """What a key may do: ``inference`` (the front door), ``admin`` (/v1/admin/*), ``evals`` (runs)."""

    INFERENCE = "inference", "inference: the front door"
    ADMIN = "admin", "admin: load, unload and inspect models (/v1/admin/*)"
    EVALS = "evals", "evals: start and read eval runs"


def default_scopes() -> list[str]:
    return [Scope.INFERENCE.value]


def validate_scopes(value: object) -> None:
    if not isinstance(value, list) or not value or not all(item in Scope.values for item in value):
        raise ValidationError(f"scopes is a non-empty list of: {', '.join(Scope.values)}.")


class BudgetPeriod(models.TextChoices):
    DAY = "day", "day (UTC)"
    MONTH = "month", "month (UTC)"


def validate_reach(value: object) -> None:
    if not isinstance(value, list) or not all(isinstance(item, str) and item.strip() for item in value):
        raise ValidationError('reach is a list of glob patterns, e.g. ["qwen*", "tier:fast"].')


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
    scopes = models.JSONField(default=default_scopes, validators=[validate_scopes],
                              help_text="What the key may do: inference (the default), admin, evals.")

    # Fairness in the serves' queues (docs/pool.md): a key with weight 2 gets twice the slot-time of a key
    # with weight 1 when both wait; max_queued caps its requests waiting at once (blank: no cap of its own).
    weight = models.FloatField(default=1.0, help_text="Share of a busy serve's slot-time, against other keys.")
    max_queued = models.PositiveIntegerField(null=True, blank=True,
                                             help_text="Requests of this key that may wait at once; more get a 429.")

    # Reach and rate limits (docs/keys.md): what the key may use, and how fast, shared by every web process.
    reach = models.JSONField(default=list, blank=True, validators=[validate_reach],
                             help_text='Glob patterns of the models, serves and tiers (as "tier:NAME") it may use, '
                             'e.g. ["qwen*", "tier:fast"]. Empty: all.')
    allow_remote = models.BooleanField(default=True, help_text="May it reach the metered tiers (ANVIL_METERED_TIERS) "
                                       "at all? A request's allow_remote narrows it, never widens.")
    rpm = models.PositiveIntegerField(null=True, blank=True, help_text="Requests per minute (blank: no limit).")
    tpm = models.PositiveIntegerField(null=True, blank=True,
                                      help_text="Tokens per minute, prompt and completion (blank: no limit).")
    max_concurrent = models.PositiveIntegerField(null=True, blank=True,
                                                 help_text="Requests at once, across web processes (blank: no limit).")
    budget_usd = models.DecimalField(max_digits=12, decimal_places=4, null=True, blank=True,
                                     help_text="Spend allowed per period, in USD (blank: no budget).")
    budget_period = models.CharField(max_length=8, choices=BudgetPeriod.choices, default=BudgetPeriod.MONTH,
                                     help_text="The budget's period (calendar day or month, UTC).")
    budget_alert = models.PositiveSmallIntegerField(default=80, help_text="Percent of the budget at which the key "
                                                    "is flagged and a warning is logged (once per period).")

    class Meta:
        ordering = ["name"]
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    def clean(self) -> None:
        errors = {}
        if not self.weight > 0 or self.weight > 1000:
            errors["weight"] = "weight is a positive number, at most 1000."
        if self.budget_usd is not None and self.budget_usd <= 0:
            errors["budget_usd"] = "A budget is more than 0 (blank: no budget)."
        if not 1 <= self.budget_alert <= 100:
            errors["budget_alert"] = "budget_alert is a percentage, 1 to 100."
        for name in ("rpm", "tpm", "max_concurrent"):
            if getattr(self, name) == 0:
                errors[name] = f"{name} is at least 1 (blank: no limit)."
        if errors:
            raise ValidationError(errors)

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None
