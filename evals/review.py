"""Operators review grades: accept an automatic grade, or override it with their own score and a note.

Each action is atomic and updates the candidate profile in the same
transaction, so the diff an operator looks at next already reflects the review.
"""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from evals.errors import ReviewError
from evals.models import Grade
from evals.profile_loop import refresh_candidate


def review_queue() -> QuerySet[Grade]:
    """Automatic grades waiting for an operator, oldest first (judges' grades count only once accepted)."""
    return (Grade.objects.filter(review_status=Grade.Review.PENDING)
            .exclude(source=Grade.Source.OPERATOR)
            .select_related("result", "result__run")
            .order_by("created_at", "pk"))


def _reviewable(grade_id: int) -> Grade:
    grade = Grade.objects.select_for_update().get(pk=grade_id)
    if grade.source == Grade.Source.OPERATOR:
        raise ReviewError("an operator's grade is the review; override it with a new one instead")
    return grade


@transaction.atomic
def accept_grade(grade_id: int, reviewer: AbstractBaseUser) -> Grade:
    """Mark an automatic grade accepted (a judge's grade starts counting). Accepting twice changes nothing."""
    grade = _reviewable(grade_id)
    if grade.review_status == Grade.Review.OVERRIDDEN:
        raise ReviewError("this grade was overridden; the operator's grade stands")
    if grade.review_status == Grade.Review.PENDING:
        grade.review_status = Grade.Review.ACCEPTED
        grade.reviewer = reviewer
        grade.reviewed_at = timezone.now()
        grade.save(update_fields=["review_status", "reviewer", "reviewed_at", "updated_at"])
        refresh_candidate()
    return grade


@transaction.atomic
def override_grade(grade_id: int, reviewer: AbstractBaseUser, score: float, note: str) -> Grade:
    """Replace an automatic grade's score with the operator's; returns the operator's new grade."""
    if not 0.0 <= score <= 1.0:
        raise ReviewError(f"a score is from 0 to 1, not {score!r}")
    if not note.strip():
        raise ReviewError("an override needs a note saying why")
    grade = _reviewable(grade_id)
    now = timezone.now()
    grade.review_status = Grade.Review.OVERRIDDEN
    grade.reviewer = reviewer
    grade.reviewed_at = now
    grade.save(update_fields=["review_status", "reviewer", "reviewed_at", "updated_at"])
    own = Grade.objects.create(result_id=grade.result_id, source=Grade.Source.OPERATOR, grader="operator",
                               score=score, dimensions=grade.dimensions, note=note.strip(),
                               review_status=Grade.Review.ACCEPTED, reviewer=reviewer, reviewed_at=now)
    refresh_candidate()
    return own
