"""python manage.py calibration status | set SERVE WORK_CLASS RATE [--judge NAME] | off SERVE [WORK_CLASS] | drain

Live calibration (evals/calibration.py): sample a share of one serve's live requests in one work
class for a judge serve to grade. ``set fast chat 1% --judge heavy`` turns it on; ``off fast``
turns it off and deletes the waiting samples; ``drain`` grades the waiting samples now (the Celery
task ``evals.drain_calibration`` does it every 10 s). Exit status 2: bad input.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from evals.calibration import drain_samples, parse_rate, pending, set_sampling, turn_off
from evals.errors import EvalError
from evals.models import CalibrationSetting

EXIT_BAD_INPUT = 2


class Command(BaseCommand):
    help = "Live calibration: sample a serve's live traffic for a judge to grade."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        sub.add_parser("status", help="every setting, with the samples waiting for the judge")
        on = sub.add_parser("set", help="sample RATE (0.01 or 1%%) of SERVE's WORK_CLASS requests")
        on.add_argument("serve")
        on.add_argument("work_class")
        on.add_argument("rate")
        on.add_argument("--judge", help="the serve that grades the samples (kept from before when not given)")
        off = sub.add_parser("off", help="stop sampling SERVE (one work class, or all) and delete its waiting samples")
        off.add_argument("serve")
        off.add_argument("work_class", nargs="?")
        sub.add_parser("drain", help="grade the waiting samples now")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            getattr(self, f"_{options['action']}")(options)
        except EvalError as exc:
            raise CommandError(f"{exc.message}\n  hint: {exc.hint}" if exc.hint else exc.message,
                               returncode=EXIT_BAD_INPUT) from None

    def _status(self, options: dict[str, Any]) -> None:
        rows = list(CalibrationSetting.objects.select_related("serve", "judge_serve"))
        if not rows:
            self.stdout.write("no calibration settings: nothing is sampled")
        for row in rows:
            judge = row.judge_serve.name if row.judge_serve else "-"
            self.stdout.write(f"{row.serve.name} / {row.work_class}: {row.rate:.2%} judged by {judge}, "
                              f"{pending(row.serve.name, row.work_class)} samples waiting")

    def _set(self, options: dict[str, Any]) -> None:
        row = set_sampling(options["serve"], options["work_class"], parse_rate(options["rate"]),
                           judge=options.get("judge"), by="cli")
        judge = row.judge_serve.name if row.judge_serve else "-"
        self.stdout.write(f"{row.serve.name} / {row.work_class}: sampling {row.rate:.2%}, judged by {judge}"
                          if row.rate else f"{row.serve.name} / {row.work_class}: sampling off, waiting samples "
                          "deleted")

    def _off(self, options: dict[str, Any]) -> None:
        changed = turn_off(options["serve"], options.get("work_class"), by="cli")
        self.stdout.write(f"sampling off for {changed} setting(s) of {options['serve']}; waiting samples deleted")

    def _drain(self, options: dict[str, Any]) -> None:
        report = drain_samples()
        self.stdout.write(f"{report.graded} graded, {report.harness_errors} harness errors, {report.expired} "
                          f"expired, {report.deferred} waiting for their judge"
                          + (" (another drain was under way)" if report.busy else ""))
