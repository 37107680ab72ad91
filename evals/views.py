"""The console's eval pages (staff only): parse the request, call one domain function, render or redirect.

Read models come from ``evals.pages``; changes go through ``evals.launch``,
``evals.runs``, ``evals.review`` and ``evals.profile_loop``. An ``EvalError`` is
shown to the operator as its message and hint.
"""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme, urlencode
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from evals import launch, pages
from evals.errors import EvalError
from evals.forms import OverrideForm, PromoteForm, StartRunForm
from evals.models import EvalRun, Grade
from evals.profile_loop import promote as promote_candidate
from evals.profile_loop import promotion_plan, revert_plan
from evals.profile_loop import revert as revert_live
from evals.review import accept_grade, override_grade
from evals.runs import RUNNERS, cancel_run

STATUSES = [status for status, _ in EvalRun.Status.choices]


def _who(request: HttpRequest) -> str:
    return f"console:{request.user.get_username()}"


def _form_errors(form: forms.Form) -> str:
    return "; ".join(f"{name}: {error}" if name != "__all__" else str(error)
                     for name, errors in form.errors.items() for error in errors)


def _query(**filters: str) -> str:
    """The filters a pager link keeps, ready for ``?{query}page=N``."""
    kept = {name: value for name, value in filters.items() if value}
    return urlencode(kept) + "&" if kept else ""


def _back(request: HttpRequest, default: str) -> HttpResponseRedirect:
    """To the page the form was on (``next``), if it is one of ours."""
    target = request.POST.get("next", "")
    if target and url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()},
                                                  require_https=request.is_secure()):
        return HttpResponseRedirect(target)
    return HttpResponseRedirect(default)


# --- runs ---------------------------------------------------------------------
def _runs(request: HttpRequest, form: StartRunForm, start_error: EvalError | None = None,
          status: int = 200) -> HttpResponse:
    kind, state = request.GET.get("kind", ""), request.GET.get("status", "")
    page, rows = pages.runs_page(request.GET.get("page"), kind=kind, status=state)
    return render(request, "evals/runs.html", {
        "page": page, "rows": rows, "form": form, "start_error": start_error, "kind": kind, "status": state,
        "query": _query(kind=kind, status=state),
        "kinds": sorted(RUNNERS), "statuses": STATUSES, "runners": [RUNNERS[k] for k in sorted(RUNNERS)],
    }, status=status)


@staff_member_required
@require_GET
def runs(request: HttpRequest) -> HttpResponse:
    return _runs(request, StartRunForm())


@staff_member_required
@require_POST
def start_run(request: HttpRequest) -> HttpResponse:
    form = StartRunForm(request.POST)
    if not form.is_valid():
        return _runs(request, form, status=400)
    try:
        run = launch.start_run(form.cleaned_data["kind"], serve=form.cleaned_data["serve"],
                               base_url=form.cleaned_data["base_url"], model=form.cleaned_data["model"],
                               parameters=form.cleaned_data["parameters"], requested_by=_who(request))
    except EvalError as exc:
        return _runs(request, form, start_error=exc, status=exc.status_code)
    messages.success(request, f"Queued {run.kind} run {run.pk}.")
    return redirect("evals:runs")


@staff_member_required
@require_GET
def run(request: HttpRequest, run_id: int) -> HttpResponse:
    found = get_object_or_404(EvalRun.objects.select_related("target_serve"), pk=run_id)
    return render(request, "evals/run.html", {"page": pages.run_page(found, request.GET.get("page"))})


@staff_member_required
@require_POST
def cancel(request: HttpRequest, run_id: int) -> HttpResponse:
    get_object_or_404(EvalRun, pk=run_id)
    found = cancel_run(run_id)
    if found.status == EvalRun.Status.CANCELLED:
        messages.success(request, f"Run {run_id} cancelled.")
    elif found.status == EvalRun.Status.RUNNING:
        messages.success(request, f"Cancel requested for run {run_id}: it stops before its next case.")
    else:
        messages.warning(request, f"Run {run_id} had already finished ({found.status}).")
    return _back(request, reverse("evals:runs"))


# --- the review queue -----------------------------------------------------------
@staff_member_required
@require_GET
def review(request: HttpRequest) -> HttpResponse:
    source = request.GET.get("source", "")
    if source not in (Grade.Source.VERIFIER, Grade.Source.JUDGE):
        source = ""
    return render(request, "evals/review.html", {
        "page": pages.review_page(request.GET.get("page"), source), "source": source,
        "counts": pages.review_counts(), "query": _query(source=source),
    })


@staff_member_required
@require_POST
def accept(request: HttpRequest, grade_id: int) -> HttpResponse:
    get_object_or_404(Grade, pk=grade_id)
    try:
        grade = accept_grade(grade_id, request.user)
    except EvalError as exc:
        messages.error(request, f"Grade {grade_id} not accepted: {exc.describe()}")
    else:
        messages.success(request, f"Accepted grade {grade.pk} ({grade.score:.2f}) of {grade.result.name}.")
    return _back(request, reverse("evals:review"))


@staff_member_required
@require_POST
def override(request: HttpRequest, grade_id: int) -> HttpResponse:
    get_object_or_404(Grade, pk=grade_id)
    form = OverrideForm(request.POST)
    if not form.is_valid():
        messages.error(request, f"Grade {grade_id} not overridden: {_form_errors(form)}")
        return _back(request, reverse("evals:review"))
    try:
        own = override_grade(grade_id, request.user, form.cleaned_data["score"], form.cleaned_data["note"])
    except EvalError as exc:
        messages.error(request, f"Grade {grade_id} not overridden: {exc.describe()}")
    else:
        messages.success(request, f"Overrode grade {grade_id} of {own.result.name} with {own.score:.2f}.")
    return _back(request, reverse("evals:review"))


# --- the profile ------------------------------------------------------------------
@staff_member_required
@require_GET
def profile(request: HttpRequest) -> HttpResponse:
    return render(request, "evals/profile.html", {"page": pages.profile_page()})


def _confirmed(request: HttpRequest) -> bool:
    """The confirmation page's button says yes; a bare POST (an old page, a script) is not a confirmation."""
    return request.POST.get("confirmed") == "yes"


@staff_member_required
@require_http_methods(["GET", "POST"])
def promote(request: HttpRequest) -> HttpResponse:
    """GET: what promoting would change, with its warnings, to confirm. POST (confirmed): promote."""
    if request.method == "GET":
        return render(request, "evals/confirm_profile.html", {
            "page": pages.confirm_page(promotion_plan(), request.GET.get("token", "")), "action": "promote"})
    form = PromoteForm(request.POST)
    if not form.is_valid():
        messages.error(request, f"Not promoted: {_form_errors(form)}")
        return redirect("evals:profile")
    if not _confirmed(request):
        messages.warning(request, "Not promoted yet: confirm the change below.")
        return HttpResponseRedirect(reverse("evals:promote") + "?" + urlencode({"token": form.cleaned_data["token"]}))
    try:
        done = promote_candidate(promoted_by=_who(request), expected_token=form.cleaned_data["token"], confirmed=True)
    except EvalError as exc:
        messages.error(request, f"Not promoted: {exc.describe()}")
    else:
        counts = done.counts
        messages.success(request, f"Promoted the candidate profile to live (version {done.pk}): "
                                  f"{counts.get('added', 0)} cells added, {counts.get('changed', 0)} changed, "
                                  f"{counts.get('removed', 0)} removed. Routing uses it from its next profile "
                                  "check; revert it from the versions below.")
    return redirect("evals:profile")


@staff_member_required
@require_http_methods(["GET", "POST"])
def revert(request: HttpRequest, version_id: int) -> HttpResponse:
    """GET: what restoring version ``version_id`` would change, to confirm. POST (confirmed): revert."""
    if request.method == "GET":
        try:
            plan = revert_plan(version_id)
        except EvalError as exc:
            messages.error(request, f"Cannot revert: {exc.describe()}")
            return HttpResponseRedirect(reverse("evals:profile") + "#versions")
        return render(request, "evals/confirm_profile.html", {"page": pages.confirm_page(plan), "action": "revert"})
    form = PromoteForm(request.POST)
    if not form.is_valid() or not _confirmed(request):
        messages.warning(request, "Not reverted yet: confirm the change below.")
        return redirect("evals:revert", version_id=version_id)
    try:
        done = revert_live(version_id, reverted_by=_who(request), expected_token=form.cleaned_data["token"],
                           confirmed=True)
    except EvalError as exc:
        messages.error(request, f"Not reverted: {exc.describe()}")
    else:
        messages.success(request, f"Reverted the live profile to version {version_id} (now version {done.pk}). "
                                  "Routing uses it from its next profile check.")
    return HttpResponseRedirect(reverse("evals:profile") + "#versions")


@staff_member_required
@require_POST
def reeval(request: HttpRequest, serve: str) -> HttpResponse:
    try:
        queued = launch.queue_reeval(serve, _who(request))
    except EvalError as exc:
        messages.error(request, f"No re-eval of {serve} queued: {exc.describe()}")
    else:
        messages.success(request, f"Queued {queued.kind} run {queued.pk} against {serve}.")
    return HttpResponseRedirect(reverse("evals:profile") + "#stale")
