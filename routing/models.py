from __future__ import annotations

import uuid

from django.db import models
from django.utils import timezone


class WorkClass(models.TextChoices):
    CHAT = "chat"
    BOUNDED_EDIT = "bounded-edit"
    MULTI_FILE_REFACTOR = "multi-file-refactor"
    PLANNING = "planning"
    REVIEW = "review"
    LONG_CONTEXT = "long-context"


class Verdict(models.TextChoices):
    ALLOW = "allow"
    ALLOW_WITH_VERIFY = "allow-with-verify"
    DENY = "deny"


class ClassifierRule(models.Model):
    """Keywords that put a request in a work class (tier-0 classifier). Data, edited in the admin."""

    work_class = models.CharField(max_length=32, choices=WorkClass.choices, unique=True)
    keywords = models.TextField(help_text="One keyword or phrase per line; matched as whole words, any case.")
    priority = models.PositiveIntegerField(help_text="Lower wins when several classes match (review=1 …).")
    enabled = models.BooleanField(default=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["priority"]

    def __str__(self) -> str:
        return f"{self.work_class} (priority {self.priority})"

    def keyword_list(self) -> list[str]:
        return [line.strip().lower() for line in self.keywords.splitlines() if line.strip()]


class ProfileEntry(models.Model):
    """The measured verdict for one (serve or tier, work class) in the live or the candidate profile."""

    class Profile(models.TextChoices):
        LIVE = "live"
        CANDIDATE = "candidate"

    class Kind(models.TextChoices):
        SERVE = "serve"
        TIER = "tier"

    profile = models.CharField(max_length=16, choices=Profile.choices, default=Profile.LIVE)
    kind = models.CharField(max_length=8, choices=Kind.choices, default=Kind.SERVE)
    subject = models.CharField(max_length=64, help_text="A serve name or a tier name.")
    work_class = models.CharField(max_length=32, choices=WorkClass.choices)
    decision = models.CharField(max_length=20, choices=Verdict.choices)
    quality = models.FloatField(null=True, blank=True, help_text="0..1")
    samples = models.PositiveIntegerField(default=0)
    measured_at = models.DateTimeField(null=True, blank=True)
    fingerprint = models.CharField(max_length=32, blank=True, help_text="The serve's identity when measured.")
    identity = models.JSONField(default=dict, blank=True, help_text="The serve's identity fields when measured.")
    stale = models.BooleanField(default=False)
    stale_reason = models.CharField(max_length=500, blank=True)
    source = models.CharField(max_length=200, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["profile", "kind", "subject", "work_class"],
                                               name="one_entry_per_cell")]
        ordering = ["profile", "kind", "subject", "work_class"]
        verbose_name_plural = "profile entries"

    def __str__(self) -> str:
        return f"{self.profile}: {self.kind} {self.subject} / {self.work_class} = {self.decision}"


class DecisionRecord(models.Model):
    """One routing decision: metadata only, never prompt or completion text."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    request_id = models.CharField(max_length=80, db_index=True)
    api_key = models.CharField(max_length=100, blank=True, help_text="Key name and public prefix.")
    key_id = models.PositiveIntegerField(null=True, blank=True, help_text="The API key's id (usage and budgets).")
    endpoint = models.CharField(max_length=32)
    requested_model = models.CharField(max_length=200, blank=True)
    work_class = models.CharField(max_length=32, blank=True)
    confident = models.BooleanField(default=True)
    candidates = models.JSONField(default=list)
    attempts = models.JSONField(default=list)
    notes = models.JSONField(default=list)
    served_by = models.CharField(max_length=64, blank=True, db_index=True)
    fell_back = models.BooleanField(default=False, help_text="Answered by a candidate other than the first.")
    outcome = models.CharField(max_length=32, blank=True)
    status = models.PositiveIntegerField(null=True)
    prompt_tokens = models.PositiveIntegerField(null=True)
    completion_tokens = models.PositiveIntegerField(null=True)
    bytes_out = models.PositiveBigIntegerField(default=0)
    latency_ms = models.FloatField(null=True)
    ttft_ms = models.FloatField(null=True)
    spend_usd = models.DecimalField(max_digits=16, decimal_places=8, null=True,
                                    help_text="What the answer cost at its serve's prices (USD).")

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["key_id", "created_at"], name="decision_key_time")]

    def __str__(self) -> str:
        return f"{self.request_id} -> {self.served_by or self.outcome}"
