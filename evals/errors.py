"""The evals' one error hierarchy.

Every failure a run, ``manage.py runeval`` or a page reports is an ``EvalError``:
a message for the operator, an optional ``hint`` that says what to do about it
(the command that starts a serve that is down, not a connection error), and,
as in Django REST framework, a ``status_code`` and ``default_code`` so the REST
API and the console map them to responses in one place.
"""

from __future__ import annotations


class EvalError(Exception):
    status_code = 400
    default_code = "eval_error"

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message

    def describe(self) -> str:
        """The message and its hint on one line: what a run's ``error`` field keeps."""
        return f"{self.message} (hint: {self.hint})" if self.hint else self.message


class UnknownRunKind(EvalError):
    default_code = "unknown_run_kind"


class BadParameters(EvalError):
    default_code = "bad_parameters"


class BadTarget(EvalError):
    """--serve and --base-url/--model given together, or neither where a target is needed."""

    default_code = "bad_target"


class UnknownServe(EvalError):
    status_code = 404
    default_code = "unknown_serve"


class TargetUnavailable(EvalError):
    """The serve or endpoint under test does not answer; ``hint`` says how to bring it up."""

    status_code = 503
    default_code = "target_unavailable"


class FixtureError(EvalError):
    """Committed eval data (evals/fixtures/…) is missing or malformed; names the file."""

    status_code = 500
    default_code = "bad_fixture"


class RunStateError(EvalError):
    """An operation that the run's status does not allow (e.g. re-queueing a running run)."""

    status_code = 409
    default_code = "run_state"


class ReviewError(EvalError):
    status_code = 409
    default_code = "review"


class ProfileError(EvalError):
    status_code = 409
    default_code = "profile"


class NothingToPromote(ProfileError):
    default_code = "nothing_to_promote"


class CandidateChanged(ProfileError):
    """The candidate profile changed after the operator reviewed its diff: review it again."""

    default_code = "candidate_changed"


class ConfirmationRequired(ProfileError):
    """A profile change that would lock out a work class or a serve: the operator must confirm it, seeing why."""

    default_code = "confirmation_required"

    def __init__(self, message: str, *, warnings: list[str], hint: str = "") -> None:
        super().__init__(message, hint=hint)
        self.warnings = warnings


class RunCancelled(Exception):
    """Raised between cases when an operator asked the run to stop.

    Deliberately *outside* ``EvalError``: a runner that catches ``EvalError`` to
    record a failed case must not swallow a cancellation by accident.
    """
