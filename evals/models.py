"""Eval suites and cases, runs and their per-case results, grades, and profile promotions."""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

from routing.models import ProfileEntry, WorkClass
from serves.models import Serve


class RunKind(models.TextChoices):
    PREFLIGHT = "preflight"
    BENCHMARK = "benchmark"
    PLANNING = "planning"
    BOOTSTRAP = "bootstrap"
    JUDGE = "judge"  # a judge serve grades another run's answers (evals/runners/judge.py)
    CALIBRATION = "calibration"  # sampled live traffic graded by a judge (evals/calibration.py)


# What a case's grader spec may name; the graders themselves live with the runners that use them.
GRADER_KINDS = ("exact", "contains", "regex", "json_schema", "tool_call", "code", "plan_rubric", "judge")

UNIT_INTERVAL = [MinValueValidator(0.0), MaxValueValidator(1.0)]


class EvalSuite(models.Model):
    """A named set of cases that one kind of run works through."""

    name = models.SlugField(max_length=100, unique=True)
    kind = models.CharField(max_length=16, choices=RunKind.choices)
    description = models.TextField(blank=True)
    judge_serve = models.ForeignKey(Serve, on_delete=models.SET_NULL, null=True, blank=True,
                                    related_name="judged_suites",
                                    help_text="The serve that grades this suite's answers on a rubric, unless a "
                                    "run names another (it never grades its own answers).")
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["kind", "name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.kind})"


class EvalCase(models.Model):
    """One prompt and how to judge the answer to it."""

    suite = models.ForeignKey(EvalSuite, on_delete=models.CASCADE, related_name="cases")
    name = models.CharField(max_length=200)
    work_class = models.CharField(max_length=32, choices=WorkClass.choices, default=WorkClass.CHAT)
    input = models.JSONField(default=dict, blank=True,
                             help_text='The request: {"messages": [...]} or {"prompt": "..."}, plus "params".')
    expected = models.TextField(blank=True, help_text="The expected answer, where there is one.")
    grader = models.JSONField(default=dict, blank=True,
                              help_text='How the answer is graded, e.g. {"kind": "contains", "value": "42"}. '
                              f"Kinds: {', '.join(GRADER_KINDS)}.")
    enabled = models.BooleanField(default=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["suite", "name"]
        constraints = [models.UniqueConstraint(fields=["suite", "name"], name="one_case_name_per_suite")]

    def __str__(self) -> str:
        return f"{self.suite.name}/{self.name}"

    def clean(self) -> None:
        errors: dict[str, str] = {}
        if not isinstance(self.input, dict):
            errors["input"] = "input is a JSON object."
        if not isinstance(self.grader, dict):
            errors["grader"] = "grader is a JSON object."
        elif self.grader and self.grader.get("kind") not in GRADER_KINDS:
            errors["grader"] = f"grader.kind must be one of {', '.join(GRADER_KINDS)}."
        if errors:
            raise ValidationError(errors)


class EvalRun(models.Model):
    """One run of one kind against one target (or against committed data); its progress and outcome."""

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        # Ran to its end, and its gate failed: its results are measurements like a succeeded run's.
        GATE_FAILED = "gate_failed", "gate failed"
        FAILED = "failed"
        CANCELLED = "cancelled"

    FINISHED = (Status.SUCCEEDED, Status.GATE_FAILED, Status.FAILED, Status.CANCELLED)
    # Runs that went through all their cases: only their results measure anything.
    COMPLETED = (Status.SUCCEEDED, Status.GATE_FAILED)

    kind = models.CharField(max_length=16, choices=RunKind.choices)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    target_serve = models.ForeignKey(Serve, on_delete=models.SET_NULL, null=True, blank=True,
                                     related_name="eval_runs")
    target_name = models.CharField(max_length=64, blank=True,
                                   help_text="The serve's name when the run was made (kept if the serve is deleted).")
    base_url = models.CharField(max_length=300, blank=True)
    model = models.CharField(max_length=200, blank=True)
    parameters = models.JSONField(default=dict, blank=True)
    summary = models.JSONField(default=dict, blank=True)
    gate_passed = models.BooleanField(null=True, blank=True, help_text="Blank: this run has no gate.")
    progress_done = models.PositiveIntegerField(default=0)
    progress_total = models.PositiveIntegerField(default=0)
    progress_note = models.CharField(max_length=200, blank=True, help_text="The case under way.")
    cancel_requested = models.BooleanField(default=False)
    error = models.TextField(blank=True)
    requested_by = models.CharField(max_length=150, blank=True)
    celery_task_id = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True,
                                        help_text="Last sign of life from the worker running it.")
    lease_expires_at = models.DateTimeField(null=True, blank=True,
                                            help_text="The worker running it holds it until then; every heartbeat "
                                            "extends it. Lapsed: the worker is gone, and the run may be taken over.")
    attempt = models.PositiveIntegerField(default=0, help_text="How many times a worker claimed it; more than one: "
                                          "it was taken over after a worker running it was lost.")

    class Meta:
        ordering = ["-created_at", "-pk"]
        indexes = [models.Index(fields=["status", "-created_at"]), models.Index(fields=["kind", "-created_at"])]

    def __str__(self) -> str:
        target = f" on {self.target_label}" if self.target_label else ""
        return f"{self.kind} run {self.pk}{target}: {self.status}"

    @property
    def target_label(self) -> str:
        if self.target_name:
            return self.target_name
        return f"{self.model} @ {self.base_url}" if self.base_url else ""

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at is None:
            return None
        return ((self.finished_at or timezone.now()) - self.started_at).total_seconds()


class EvalResult(models.Model):
    """What one case (or one replayed measurement) gave: the answer, how it went, and its cost."""

    class Verdict(models.TextChoices):
        PASS = "pass"
        FAIL = "fail"
        GRADED = "graded"  # a score, not pass/fail (a plan, a replayed measurement)
        ERROR = "error"  # the serve failed answering (a 5xx): not graded, but the gate counts it
        # The check could not run (its prompt does not fit the context, the serve refused parameters of ours,
        # our own timeout): a fault of the harness, never a grade of the serve.
        HARNESS_ERROR = "harness_error", "harness error"
        # A blank answer cut off by max_tokens says the reasoning budget ran out, not that the model was wrong.
        BUDGET_EXHAUSTED = "budget-exhausted", "reasoning budget exhausted"
        SKIPPED = "skipped"

    run = models.ForeignKey(EvalRun, on_delete=models.CASCADE, related_name="results")
    case = models.ForeignKey(EvalCase, on_delete=models.SET_NULL, null=True, blank=True, related_name="results")
    name = models.CharField(max_length=200)
    subject_kind = models.CharField(max_length=8, choices=ProfileEntry.Kind.choices, default=ProfileEntry.Kind.SERVE,
                                    help_text="Whether the measurement speaks for a serve or a whole tier.")
    subject = models.CharField(max_length=64, blank=True,
                               help_text="The serve (or tier) name this result measures; blank for a bare base URL "
                               "(such results never reach the quality profile).")
    work_class = models.CharField(max_length=32, choices=WorkClass.choices)
    samples = models.PositiveIntegerField(default=1, help_text="How many graded answers this row stands for "
                                          "(1 for a case; more for a replayed measurement).")
    output = models.TextField(blank=True)
    verdict = models.CharField(max_length=20, choices=Verdict.choices)
    score = models.FloatField(null=True, blank=True, validators=UNIT_INTERVAL)
    latency_s = models.FloatField(null=True, blank=True)
    ttft_s = models.FloatField(null=True, blank=True)
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    finish_reason = models.CharField(max_length=32, blank=True)
    error = models.TextField(blank=True)
    details = models.JSONField(default=dict, blank=True, help_text="What the runner found, e.g. per-check outcomes.")
    fingerprint = models.CharField(max_length=32, blank=True, help_text="The serve's identity when measured.")
    identity = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["run", "pk"]
        indexes = [models.Index(fields=["subject_kind", "subject", "work_class"]),
                   models.Index(fields=["run", "verdict"])]
        constraints = [models.CheckConstraint(condition=Q(samples__gte=1), name="result_samples_positive")]

    def __str__(self) -> str:
        return f"{self.name} on {self.subject}: {self.verdict}"


class Grade(models.Model):
    """A score for one result, from a verifier, a judge serve or an operator, and its review."""

    class Source(models.TextChoices):
        VERIFIER = "verifier"
        JUDGE = "judge"
        OPERATOR = "operator"
        CALIBRATION = "calibration"  # a judge's grade of a sampled live answer; counts once accepted

    class Review(models.TextChoices):
        PENDING = "pending"
        ACCEPTED = "accepted"
        OVERRIDDEN = "overridden"

    result = models.ForeignKey(EvalResult, on_delete=models.CASCADE, related_name="grades")
    source = models.CharField(max_length=16, choices=Source.choices)
    grader = models.CharField(max_length=100, blank=True, help_text="Which verifier or rubric, e.g. plan-rubric/1.")
    judge_serve = models.ForeignKey(Serve, on_delete=models.SET_NULL, null=True, blank=True, related_name="judged")
    score = models.FloatField(validators=UNIT_INTERVAL)
    dimensions = models.JSONField(default=dict, blank=True, help_text="{dimension: score 0..1}")
    note = models.TextField(blank=True)
    review_status = models.CharField(max_length=16, choices=Review.choices, default=Review.PENDING)
    reviewer = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                                 related_name="eval_reviews")
    reviewed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["result", "created_at", "pk"]
        indexes = [models.Index(fields=["review_status", "created_at"]), models.Index(fields=["result", "source"])]
        constraints = [models.CheckConstraint(condition=Q(score__gte=0.0) & Q(score__lte=1.0),
                                              name="grade_score_in_unit_interval")]

    def __str__(self) -> str:
        return f"{self.source} {self.score:.2f} on result {self.result_id} ({self.review_status})"


class ProfilePromotion(models.Model):
    """One version of the live quality profile: made by a promotion or a revert, or kept before one.

    ``entries`` is the live profile as this version made it (or, for ``kept``, as it was before
    the change that followed), so any version can be restored; rows from before versions were
    kept have none.
    """

    class Action(models.TextChoices):
        PROMOTE = "promote"
        REVERT = "revert"
        # The live profile as it was before a promotion or revert (imported, or never promoted), kept to restore.
        KEPT = "kept"

    action = models.CharField(max_length=16, choices=Action.choices, default=Action.PROMOTE)
    promoted_by = models.CharField(max_length=150)
    promoted_at = models.DateTimeField(default=timezone.now)
    candidate_token = models.CharField(max_length=64, blank=True,
                                       help_text="Digest of the diff that was promoted or reverted.")
    counts = models.JSONField(default=dict, help_text="{added, changed, removed, unchanged}")
    changes = models.JSONField(default=list, help_text="The cells that were added, changed or removed.")
    entries = models.JSONField(null=True, blank=True, help_text="The live profile's rows as this version made "
                               "them; blank for promotions from before versions were kept.")
    restored_from = models.ForeignKey("self", on_delete=models.SET_NULL, null=True, blank=True,
                                      related_name="restorations", help_text="The version a revert restored.")

    class Meta:
        ordering = ["-promoted_at", "-pk"]
        verbose_name = "profile version"

    def __str__(self) -> str:
        return f"profile version {self.pk} ({self.action} by {self.promoted_by} at {self.promoted_at:%Y-%m-%d %H:%M})"

    @property
    def restorable(self) -> bool:
        return self.entries is not None


class CalibrationSetting(models.Model):
    """Live calibration of one serve in one work class: the share of its live requests sampled for a judge.

    The sampled request/answer pairs live in Redis only (a short TTL, deleted once graded); only the
    judge's scores reach the database (evals/calibration.py). Rate 0 is off.
    """

    serve = models.ForeignKey(Serve, on_delete=models.CASCADE, related_name="calibration_settings")
    work_class = models.CharField(max_length=32, choices=WorkClass.choices)
    rate = models.FloatField(default=0.0, validators=UNIT_INTERVAL,
                             help_text="Share of this serve's live requests in this work class that are sampled, "
                             "0 to 1 (0.01 is 1 %). 0: off.")
    judge_serve = models.ForeignKey(Serve, on_delete=models.SET_NULL, null=True, blank=True,
                                    related_name="calibration_judging",
                                    help_text="The serve that grades the samples (never the sampled serve itself).")
    updated_by = models.CharField(max_length=150, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["serve__name", "work_class"]
        constraints = [
            models.UniqueConstraint(fields=["serve", "work_class"], name="one_calibration_setting_per_cell"),
            models.CheckConstraint(condition=Q(rate__gte=0.0) & Q(rate__lte=1.0), name="calibration_rate_0_to_1"),
        ]

    def __str__(self) -> str:
        return f"calibration of {self.serve.name} / {self.work_class}: {self.rate:.2%}"

    def clean(self) -> None:
        if self.rate and self.judge_serve_id is None:
            raise ValidationError({"judge_serve": "sampling needs a judge serve to grade the samples."})
        if self.judge_serve_id is not None and self.judge_serve_id == self.serve_id:
            raise ValidationError({"judge_serve": "a serve never judges its own answers: choose another judge."})
