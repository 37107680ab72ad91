"""python manage.py profile export [FILE] [--profile live|candidate] | import FILE [--profile candidate|live]"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from routing.profile_file import ProfileFileError, export_profile, import_profile


class Command(BaseCommand):
    help = "Move the quality profile in and out of profile.json (schema version 2)."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="verb", required=True)
        export = sub.add_parser("export")
        export.add_argument("file", type=Path, nargs="?")
        export.add_argument("--profile", choices=["live", "candidate"], default="live")
        imported = sub.add_parser("import", help="replaces the profile's entries (default: the candidate)")
        imported.add_argument("file", type=Path)
        imported.add_argument("--profile", choices=["live", "candidate"], default="candidate")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["verb"] == "export":
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
