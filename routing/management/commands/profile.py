"""python manage.py profile export [FILE] [--profile live|candidate] | import FILE [--profile candidate|live]
                         | versions | revert ID [--yes]"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from routing.profile_file import ProfileFileError, export_profile, import_profile


class Command(BaseCommand):
    help = ("Move the quality profile in and out of profile.json (schema version 2); list the live profile's "
            "versions and revert to one.")

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="verb", required=True)
        export = sub.add_parser("export")
        export.add_argument("file", type=Path, nargs="?")
        export.add_argument("--profile", choices=["live", "candidate"], default="live")
        imported = sub.add_parser("import", help="replaces the profile's entries (default: the candidate)")
        imported.add_argument("file", type=Path)
        imported.add_argument("--profile", choices=["live", "candidate"], default="candidate")
        sub.add_parser("versions", help="every version of the live profile, newest first")
        revert = sub.add_parser("revert", help="make an earlier version of the live profile live again")
        revert.add_argument("version", type=int, metavar="ID")
        revert.add_argument("--yes", action="store_true",
                            help="confirm a revert that leaves a work class with no allowed serve, or denies a "
                                 "serve every work class")

    def handle(self, *args: Any, **options: Any) -> None:
        verb = options["verb"]
        if verb == "versions":
            self._versions()
            return
        if verb == "revert":
            self._revert(options["version"], options["yes"])
            return
        if verb == "export":
            text = export_profile(options["profile"])
            if options["file"]:
                options["file"].write_text(text)
            else:
                self.stdout.write(text, ending="")
            return
        try:
            count = import_profile(options["file"].read_text(), options["profile"])
        except (OSError, ProfileFileError) as exc:
            raise CommandError(f"{options['file']}: {exc}. Nothing was imported.") from None
        self.stdout.write(f"imported {count} entries into the {options['profile']} profile")

    def _versions(self) -> None:
        # The versions live with the profile loop (evals), which this command reaches only when asked.
        from evals.profile_loop import current_version, profile_versions

        versions = profile_versions()
        if not versions:
            self.stdout.write("no versions yet: the first promotion keeps the live profile it replaces as one")
            return
        live = current_version(versions)
        for version in versions:
            cells = "rows unknown (made before versions were kept)" if version.entries is None \
                else f"{len(version.entries)} cells"
            counts = version.counts or {}
            change = (f"+{counts.get('added', 0)} ~{counts.get('changed', 0)} -{counts.get('removed', 0)}"
                      if version.action != "kept" else "kept before the change that followed")
            restored = f", restored version {version.restored_from_id}" if version.restored_from_id else ""
            mark = "  <- live" if live is not None and live.pk == version.pk else ""
            self.stdout.write(f"{version.pk:>5}  {version.promoted_at:%Y-%m-%d %H:%M:%S}  {version.action:<8} "
                              f"{version.promoted_by:<20} {cells}; {change}{restored}{mark}")

    def _revert(self, version_id: int, confirmed: bool) -> None:
        from evals.errors import ConfirmationRequired, EvalError
        from evals.profile_loop import revert, revert_plan

        try:
            plan = revert_plan(version_id)
            for change in plan.diff.changes:
                if change.status != "unchanged":
                    before = change.live.decision if change.live else "default"
                    after = change.candidate.decision if change.candidate else "default"
                    self.stdout.write(f"  {change.kind} {change.subject} × {change.work_class}: {before} -> {after}")
            for warning in plan.warnings:
                self.stderr.write(f"warning: {warning.text}")
            done = revert(version_id, reverted_by="cli", expected_token=plan.diff.token, confirmed=confirmed)
        except ConfirmationRequired as exc:
            raise CommandError(f"{exc.message}. Nothing was reverted; run again with --yes to confirm.") from None
        except EvalError as exc:
            raise CommandError(f"{exc.describe()}. Nothing was reverted.") from None
        self.stdout.write(f"reverted the live profile to version {version_id} (now version {done.pk}); routing "
                          "uses it from its next profile check")
