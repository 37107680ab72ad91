"""python manage.py runeval KIND [--serve NAME | --tier TIER | --base-url URL --model M] [KIND options] [--queue]

One subcommand per registered runner (evals.runs.RUNNERS): planning, bootstrap,
and whatever kinds are registered later. Runs here, with a progress bar when
stderr is a terminal, or with ``--queue`` as a Celery task.

``--tier fast`` targets every enabled serve of the tier: one run each, one after
the other, each named as it starts.

Exit status: 0 done (and the gate, if any, passed); 1 the run failed;
2 bad input (unknown serve, bad target or parameters); 3 the gate failed;
4 the run was cancelled; 130 interrupted with Ctrl-C (the run is recorded cancelled).
With several runs (a tier), the worst of them: failed, then cancelled, then gate failed.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser, OutputWrapper

from evals.errors import BadTarget, EvalError
from evals.models import EvalRun
from evals.progress_feed import ProgressPublisher
from evals.runs import RUNNERS, Progress, create_run, execute_run, runner_module, runner_spec
from evals.targets import Target, resolve_target, tier_targets
from evals.tasks import enqueue_run

EXIT_RUN_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_GATE_FAILED = 3
EXIT_CANCELLED = 4
EXIT_INTERRUPTED = 130


class TerminalProgress:
    """A one-line progress bar redrawn in place; a newline when the run ends."""

    WIDTH = 30
    CLEAR_TO_END = "\x1b[K"  # a shorter line must not leave the end of a longer one behind

    def __init__(self, stream: OutputWrapper) -> None:
        self.stream = stream

    def __call__(self, progress: Progress) -> None:
        filled = int(self.WIDTH * progress.done / progress.total) if progress.total else 0
        line = f"[{'#' * filled}{'.' * (self.WIDTH - filled)}] {progress.done}/{progress.total}"
        if progress.status != "running":
            line += f" {progress.status}\n"
        elif progress.note:
            line += f" {progress.note[:60]}"
        self.stream.write("\r" + self.CLEAR_TO_END + line, ending="")
        self.stream.flush()


class Command(BaseCommand):
    help = "Run an eval: " + ", ".join(sorted(RUNNERS)) + "."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="kind", required=True)
        for kind in sorted(RUNNERS):
            spec = RUNNERS[kind]
            kind_parser = sub.add_parser(kind, help=spec.help)
            if spec.needs_target:
                kind_parser.add_argument("--serve", help="a serve from the serves table")
                kind_parser.add_argument("--tier", help="every enabled serve of this tier (e.g. fast): one run each")
                kind_parser.add_argument("--base-url", help="any OpenAI-compatible endpoint, e.g. http://host:8000/v1")
                kind_parser.add_argument("--model", help="the model id to ask for at --base-url")
            kind_parser.add_argument("--queue", action="store_true",
                                     help="enqueue it for a Celery worker instead of running it here")
            kind_parser.add_argument("--no-progress", action="store_true", help="no progress bar, even on a terminal")
            extra = getattr(runner_module(kind), "add_arguments", None)
            if extra is not None:
                extra(kind_parser)

    def handle(self, *args: Any, **options: Any) -> None:
        kind = options["kind"]
        try:
            spec = runner_spec(kind)
            module = runner_module(kind)
            targets: list[Target | None] = [None]
            if spec.needs_target:
                targets = list(_targets(options))
            to_parameters = getattr(module, "parameters_from_options", None)
            parameters = to_parameters(options) if to_parameters is not None else {}
            runs = [create_run(kind, target=target, parameters=parameters, requested_by="cli") for target in targets]
        except EvalError as exc:
            raise CommandError(_explain(exc), returncode=EXIT_BAD_INPUT) from None
        several = bool(options.get("tier"))  # a tier's runs are named, however many serves it has

        if options["queue"]:
            for run in runs:
                enqueue_run(run.pk)
                self.stdout.write(f"queued {kind} run {run.pk}" + (f" against {run.target_name}" if several else ""))
            return

        show = not options["no_progress"] and self.stderr.isatty()
        # The console's runs page shows a run started here as it goes, like one a worker runs.
        listeners = [ProgressPublisher(), *([TerminalProgress(self.stderr)] if show else [])]
        outcomes: list[tuple[int, str]] = []
        for run in runs:
            if several:
                self.stdout.write(f"== {kind} run {run.pk} against {run.target_name} "
                                  f"(tier {options['tier']}) ==")
            try:
                run = execute_run(run.pk, listeners=listeners)
            except KeyboardInterrupt:
                raise CommandError(f"{kind} run {run.pk} interrupted; recorded as cancelled",
                                   returncode=EXIT_INTERRUPTED) from None
            outcomes.append(self._report(run, several))
        code, message = max(outcomes, key=lambda outcome: SEVERITY[outcome[0]])
        if several:
            self.stdout.write(f"tier {options['tier']}: " + "; ".join(
                f"{run.target_name} {_status_word(code)}" for run, (code, _) in zip(runs, outcomes, strict=True)))
        if code:
            raise CommandError(message, returncode=code)

    def _report(self, run: EvalRun, several: bool = False) -> tuple[int, str]:
        """Print the run's lines; (exit status, message) for it."""
        for line in run.summary.get("lines", []):
            self.stdout.write(line)
        where = f"{run.kind} run {run.pk}" + (f" against {run.target_name}" if several else "")
        if run.status == EvalRun.Status.FAILED:
            outcome = EXIT_RUN_FAILED, f"{where} failed: {run.error}"
        elif run.status == EvalRun.Status.CANCELLED:
            outcome = EXIT_CANCELLED, f"{where} cancelled: {run.error}"
        elif run.gate_passed is False:
            outcome = EXIT_GATE_FAILED, f"{where}: the gate failed"
        else:
            outcome = 0, f"{where} {run.status}" + (", gate passed" if run.gate_passed else "")
        if several and outcome[0]:
            self.stderr.write(outcome[1])
        if not outcome[0]:
            self.stdout.write(outcome[1])
        return outcome


# Which exit status a tier's runs end with: the worst of theirs.
SEVERITY = {0: 0, EXIT_GATE_FAILED: 1, EXIT_CANCELLED: 2, EXIT_RUN_FAILED: 3}


def _status_word(code: int) -> str:
    return {0: "done", EXIT_GATE_FAILED: "gate failed", EXIT_CANCELLED: "cancelled", EXIT_RUN_FAILED: "failed"}[code]


def _targets(options: dict[str, Any]) -> list[Target]:
    tier = options.get("tier")
    if tier is None:
        return [resolve_target(serve=options.get("serve"), base_url=options.get("base_url"),
                               model=options.get("model"))]
    if options.get("serve") or options.get("base_url") or options.get("model"):
        raise BadTarget("give one of --serve, --tier, or --base-url with --model")
    return tier_targets(tier)


def _explain(exc: EvalError) -> str:
    return f"{exc.message}\n  hint: {exc.hint}" if exc.hint else exc.message
