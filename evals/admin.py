from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html

from evals import calibration
from evals.errors import EvalError
from evals.models import CalibrationSetting, EvalCase, EvalResult, EvalRun, EvalSuite, Grade, ProfilePromotion
from evals.review import accept_grade
from evals.runs import cancel_run, rerun
from evals.tasks import enqueue_run

STATUS_COLOURS = {"queued": "#5b6475", "running": "#3b5bdb", "succeeded": "#1f7a3d", "failed": "#b42318",
                  "cancelled": "#b54708", "gate_failed": "#b42318"}
REVIEW_COLOURS = {"pending": "#b54708", "accepted": "#1f7a3d", "overridden": "#3b5bdb"}


def _badge(text: str, colour: str) -> str:
    return format_html('<span style="color:#fff;background:{};border-radius:8px;padding:1px 8px">{}</span>',
                       colour, text)


class ReadOnlyInline(admin.TabularInline):
    extra = 0
    max_num = 0
    can_delete = False
    show_change_link = True

    def get_readonly_fields(self, request: HttpRequest, obj: object = None) -> list[str]:
        return list(self.fields or [])


class EvalCaseInline(admin.TabularInline):
    model = EvalCase
    extra = 0
    fields = ["name", "work_class", "enabled"]
    show_change_link = True


@admin.register(EvalSuite)
class EvalSuiteAdmin(admin.ModelAdmin):
    list_display = ["name", "kind", "case_count", "updated_at"]
    list_filter = ["kind"]
    search_fields = ["name", "description"]
    inlines = [EvalCaseInline]

    @admin.display(description="cases")
    def case_count(self, suite: EvalSuite) -> int:
        return suite.cases.count()


@admin.register(EvalCase)
class EvalCaseAdmin(admin.ModelAdmin):
    list_display = ["name", "suite", "work_class", "grader_kind", "enabled"]
    list_filter = ["suite", "work_class", "enabled"]
    search_fields = ["name", "expected"]

    @admin.display(description="grader")
    def grader_kind(self, case: EvalCase) -> str:
        return str((case.grader or {}).get("kind", "-"))


class EvalResultInline(ReadOnlyInline):
    model = EvalResult
    fields = ["name", "subject", "work_class", "verdict", "score", "samples", "latency_s", "error"]


@admin.register(EvalRun)
class EvalRunAdmin(admin.ModelAdmin):
    list_display = ["id", "kind", "target", "status_badge", "progress", "gate", "requested_by", "created_at",
                    "duration"]
    list_filter = ["kind", "status", "gate_passed"]
    search_fields = ["target_name", "model", "base_url", "requested_by"]
    date_hierarchy = "created_at"
    actions = ["cancel", "run_again"]
    inlines = [EvalResultInline]
    readonly_fields = ["kind", "status", "target_serve", "target_name", "base_url", "model", "parameters", "summary",
                       "gate_passed", "progress_done", "progress_total", "progress_note", "cancel_requested",
                       "error", "requested_by", "celery_task_id", "created_at", "started_at", "finished_at",
                       "heartbeat_at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # runs start from `runeval`, a schedule or the console, which check their parameters

    @admin.display(description="target")
    def target(self, run: EvalRun) -> str:
        return run.target_label or "-"

    @admin.display(description="status", ordering="status")
    def status_badge(self, run: EvalRun) -> str:
        return _badge(run.status, STATUS_COLOURS.get(run.status, "#5b6475"))

    @admin.display(description="progress")
    def progress(self, run: EvalRun) -> str:
        return format_html('<progress value="{}" max="{}"></progress> {}/{}', run.progress_done,
                           max(run.progress_total, 1), run.progress_done, run.progress_total)

    @admin.display(description="gate", boolean=True)
    def gate(self, run: EvalRun) -> bool | None:
        return run.gate_passed

    @admin.display(description="duration")
    def duration(self, run: EvalRun) -> str:
        seconds = run.duration_seconds
        return "-" if seconds is None else f"{seconds:.1f} s"

    @admin.action(description="Cancel selected runs", permissions=["change"])
    def cancel(self, request: HttpRequest, queryset: QuerySet[EvalRun]) -> None:
        runs = [cancel_run(run.pk) for run in queryset]
        self.message_user(request, "Cancel requested for runs " + ", ".join(str(r.pk) for r in runs)
                          + "; a running run stops before its next case.", messages.SUCCESS)

    @admin.action(description="Run selected runs again", permissions=["change"])
    def run_again(self, request: HttpRequest, queryset: QuerySet[EvalRun]) -> None:
        made = []
        for run in queryset:
            new = rerun(run.pk, f"admin:{request.user.get_username()}")
            enqueue_run(new.pk)
            made.append(str(new.pk))
        self.message_user(request, f"Queued runs {', '.join(made)}.", messages.SUCCESS)


class GradeInline(ReadOnlyInline):
    model = Grade
    fields = ["source", "grader", "score", "dimensions", "note", "review_status", "reviewer", "reviewed_at"]


@admin.register(EvalResult)
class EvalResultAdmin(admin.ModelAdmin):
    list_display = ["id", "run", "name", "subject", "work_class", "verdict", "score", "samples", "latency_s",
                    "completion_tokens", "finish_reason"]
    list_filter = ["run__kind", "verdict", "work_class", "subject_kind", "subject"]
    search_fields = ["name", "subject", "error"]
    list_select_related = ["run"]
    inlines = [GradeInline]
    readonly_fields = ["run", "case", "name", "subject_kind", "subject", "work_class", "samples", "output", "verdict",
                       "score", "latency_s", "ttft_s", "prompt_tokens", "completion_tokens", "finish_reason", "error",
                       "details", "fingerprint", "identity", "created_at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(Grade)
class GradeAdmin(admin.ModelAdmin):
    list_display = ["id", "result", "source", "grader", "score", "review_badge", "reviewer", "created_at"]
    list_filter = ["source", "review_status", "result__work_class", "result__run__kind"]
    search_fields = ["note", "grader", "result__name", "result__subject"]
    list_select_related = ["result", "reviewer"]
    actions = ["accept"]
    readonly_fields = ["result", "source", "grader", "judge_serve", "score", "dimensions", "note", "review_status",
                       "reviewer", "reviewed_at", "created_at", "updated_at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # an operator's grade is made by overriding one (the review queue), which notes why

    @admin.display(description="review", ordering="review_status")
    def review_badge(self, grade: Grade) -> str:
        return _badge(grade.review_status, REVIEW_COLOURS.get(grade.review_status, "#5b6475"))

    @admin.action(description="Accept selected grades", permissions=["change"])
    def accept(self, request: HttpRequest, queryset: QuerySet[Grade]) -> None:
        accepted, refused = 0, []
        for grade in queryset:
            try:
                accept_grade(grade.pk, request.user)
                accepted += 1
            except EvalError as exc:
                refused.append(f"grade {grade.pk}: {exc}")
        self.message_user(request, f"Accepted {accepted} grades.", messages.SUCCESS)
        for line in refused:
            self.message_user(request, line, messages.WARNING)


@admin.register(ProfilePromotion)
class ProfilePromotionAdmin(admin.ModelAdmin):
    list_display = ["promoted_at", "promoted_by", "counts"]
    readonly_fields = ["promoted_by", "promoted_at", "candidate_token", "counts", "changes"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(CalibrationSetting)
class CalibrationSettingAdmin(admin.ModelAdmin):
    """Live calibration's switch: saved and deleted through evals/calibration.py, so turning sampling off
    (rate 0, or deleting the row) deletes the waiting samples."""

    list_display = ["serve", "work_class", "rate_percent", "judge_serve", "waiting", "updated_by", "updated_at"]
    list_filter = ["work_class", "serve"]
    fields = ["serve", "work_class", "rate", "judge_serve"]
    actions = ["turn_off"]

    @admin.display(description="rate", ordering="rate")
    def rate_percent(self, row: CalibrationSetting) -> str:
        return f"{row.rate:.2%}" if row.rate else "off"

    @admin.display(description="samples waiting")
    def waiting(self, row: CalibrationSetting) -> int:
        return calibration.pending(row.serve.name, row.work_class)

    def save_model(self, request: HttpRequest, obj: CalibrationSetting, form: object, change: bool) -> None:
        try:
            saved = calibration.set_sampling(obj.serve.name, obj.work_class, obj.rate,
                                             judge=obj.judge_serve.name if obj.judge_serve else None,
                                             by=f"admin:{request.user.get_username()}")
        except EvalError as exc:  # the form's clean() catches the same; a race may not
            self.message_user(request, str(exc), messages.ERROR)
            return
        obj.pk = saved.pk

    def delete_model(self, request: HttpRequest, obj: CalibrationSetting) -> None:
        calibration.forget_setting(obj.pk)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[CalibrationSetting]) -> None:
        for row in queryset:
            calibration.forget_setting(row.pk)

    @admin.action(description="Turn sampling off (deletes the waiting samples)", permissions=["change"])
    def turn_off(self, request: HttpRequest, queryset: QuerySet[CalibrationSetting]) -> None:
        for row in queryset.select_related("serve"):
            calibration.set_sampling(row.serve.name, row.work_class, 0.0,
                                     by=f"admin:{request.user.get_username()}")
        self.message_user(request, f"Sampling off for {queryset.count()} settings; waiting samples deleted.",
                          messages.SUCCESS)
