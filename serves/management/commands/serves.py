"""python manage.py serves up|down|status [NAME…] [--group G] [--dry-run] | load NAME [--set K=V …] | unload NAME |
import FILE | export [FILE] | render

``load`` and ``unload`` drive the model states (serves/loading.py) and wait for the outcome, with a
live line on a terminal; ``--queue`` hands them to the serve's host worker instead. ``up`` and ``down``
stay the compose lifecycle's verbs."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from anvil_site.task_queue import QueueUnavailable
from serves.actions import OperationResult, do_lifecycle, do_status
from serves.compose import render_compose
from serves.lifecycle import start_hint
from serves.loading import InvalidLoadRequest, do_load, do_unload
from serves.manifest import ManifestError, export_manifest, import_manifest
from serves.models import DockerState, Gpu, Serve
from serves.operations import LoadConflict, request_load, request_unload
from serves.tasks import enqueue

UNKNOWN_NAME_EXIT = 2


class Command(BaseCommand):
    help = "Bring model serves up and down, show their state, and move them in and out of serves.toml."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="verb", required=True)
        for verb, text in (("up", "start serves (drift-safe docker compose up -d)"),
                           ("down", "stop serves (frees their GPUs)"),
                           ("status", "docker state, health, reported model, GPU memory")):
            p = sub.add_parser(verb, help=text)
            p.add_argument("names", nargs="*", help="serve names or container names (default: all enabled)")
            p.add_argument("--group", help="only serves in this group")
            if verb != "status":
                p.add_argument("--dry-run", action="store_true", help="print what would run; start nothing")
                p.add_argument("--queue", action="store_true", help="enqueue Celery tasks instead of running here")
        p = sub.add_parser("load", help="load a serve's model and wait until it is ready (or failed)")
        p.add_argument("name")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                       help="a live-only override within the serve's load_constraints (repeatable; JSON values)")
        p.add_argument("--queue", action="store_true", help="enqueue a Celery task instead of loading here")
        p = sub.add_parser("unload", help="drain a serve's requests, then stop it")
        p.add_argument("name")
        p.add_argument("--queue", action="store_true", help="enqueue a Celery task instead of unloading here")
        p = sub.add_parser("import", help="create or update serves from a serves.toml (all or nothing)")
        p.add_argument("file", type=Path)
        p = sub.add_parser("export", help="write the serves as serves.toml (stdout when no FILE)")
        p.add_argument("file", type=Path, nargs="?")
        p = sub.add_parser("render", help="write a docker-compose.yml for the local serves")
        p.add_argument("--out", type=Path, help="file to write (default: stdout)")

    def handle(self, *args: Any, **options: Any) -> None:
        verb = options["verb"]
        if verb == "import":
            self._import(options["file"])
        elif verb == "export":
            self._export(options["file"])
        elif verb == "render":
            self._write(render_compose(list(Serve.objects.all())), options["out"])
        elif verb in ("load", "unload"):
            self._load_or_unload(verb, options)
        else:
            serves = self._select(options["names"], options.get("group"))
            if verb == "status":
                self._status(serves)
            elif options["queue"] and not options["dry_run"]:
                try:
                    enqueue(verb, [serve.pk for serve in serves], "cli")
                except QueueUnavailable as exc:
                    raise CommandError(f"serves {verb}: nothing was queued: {exc}") from None
                self.stdout.write(f"queued {verb} for {', '.join(s.name for s in serves) or 'no serves'}")
            else:
                self._lifecycle(verb, serves, options["dry_run"])

    # --- selection ------------------------------------------------------------
    def _select(self, names: list[str], group: str | None) -> list[Serve]:
        every = list(Serve.objects.all())
        if names:
            by_name = {serve.name: serve for serve in every}
            by_container = {serve.container: serve for serve in every if serve.container}
            unknown = [name for name in names if name not in by_name and name not in by_container]
            if unknown:
                known = ", ".join(sorted(by_name)) or "none (import a serves.toml first)"
                self.stderr.write(f"unknown serve(s): {', '.join(unknown)}. Known serves: {known}")
                sys.exit(UNKNOWN_NAME_EXIT)
            chosen = [by_name.get(name) or by_container[name] for name in names]
        else:
            chosen = [serve for serve in every if serve.enabled]
        if group:
            chosen = [serve for serve in chosen if serve.in_group(group)]
        return chosen

    # --- verbs -----------------------------------------------------------------
    def _load_or_unload(self, verb: str, options: dict[str, Any]) -> None:
        serve = self._select([options["name"]], None)[0]
        overrides = _parse_overrides(options.get("overrides") or []) if verb == "load" else {}
        if options["queue"]:
            try:
                if verb == "load":
                    requested = request_load(serve.name, overrides, "cli")
                else:
                    requested = request_unload(serve.name, "cli")
            except (InvalidLoadRequest, LoadConflict, QueueUnavailable) as exc:
                raise CommandError(f"serves {verb} {serve.name}: {exc}") from None
            queued = "queued" if requested.accepted else "nothing to do"
            self.stdout.write(f"{serve.name}: {queued} ({requested.serve['state']})")
            return
        if verb == "load":
            bar = LoadBar(serve.name, sys.stderr)
            result = do_load(serve.pk, overrides, "cli", progress=bar)
            bar.close()
        else:
            result = do_unload(serve.pk, "cli")
        self._print(result, False)
        if result.outcome in ("failed", "refused", "busy"):
            raise CommandError(f"serves {verb} {serve.name}: {result.outcome}")

    def _lifecycle(self, verb: str, serves: list[Serve], dry_run: bool) -> None:
        failed = False
        for serve in serves:
            result = do_lifecycle(serve.pk, verb, "cli", dry_run=dry_run)
            self._print(result, dry_run)
            failed |= result.outcome in ("failed", "refused", "busy")
        if failed:
            raise CommandError(f"serves {verb}: not every serve could be handled (see above)")

    def _print(self, result: OperationResult, dry_run: bool) -> None:
        if dry_run:
            command = " && ".join(shlex.join(argv) for argv in result.commands) or "(nothing to run)"
            self.stdout.write(f"{result.serve}: {command}\n    # {result.detail}")
        else:
            self.stdout.write(f"{result.serve}: {result.outcome}: {result.detail}")
            if result.outcome == "failed" and result.output_tail:
                self.stdout.write("    " + result.output_tail.strip().replace("\n", "\n    "))

    def _status(self, serves: list[Serve]) -> None:
        rows = [("SERVE", "TIER", "STATE", "HEALTH", "MODEL", "GPU MEMORY")]
        hints = []
        for serve in serves:
            do_status(serve.pk, "cli")
            serve.refresh_from_db()
            rows.append((serve.name, serve.tier, serve.state, serve.health, serve.reported_model or "-",
                         serve.gpu_memory or "unknown"))
            if serve.state in (DockerState.MISSING, DockerState.EXITED, DockerState.CREATED):
                hints.append(f"{serve.name} is down; start it with: {start_hint(serve)}")
            elif serve.state_detail and serve.health != "ok":
                hints.append(f"{serve.name}: {serve.state_detail}")
        widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            self.stdout.write("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        for hint in hints:
            self.stdout.write(hint)

    def _import(self, path: Path) -> None:
        try:
            report = import_manifest(path)
        except ManifestError as exc:
            raise CommandError(f"{path}: {exc}. Nothing was imported.") from None
        for line in report.lines():
            self.stdout.write(line)

    def _export(self, path: Path | None) -> None:
        manifest_dir = path.resolve().parent if path else Path.cwd()
        self._write(export_manifest(list(Serve.objects.all()), manifest_dir, list(Gpu.objects.all())), path)

    def _write(self, text: str, path: Path | None) -> None:
        if path is None:
            self.stdout.write(text, ending="")
        else:
            path.write_text(text)
            self.stderr.write(f"wrote {path}")


class LoadBar:
    """The terminal's view of a load: the share of ``ready_timeout`` spent and the engine's last log line.

    An engine does not say how far along it is, so the bar is the time budget, and the log line is
    the progress. Redrawn in place on a terminal; otherwise a line at once, then whenever the engine
    says something new (at most every second), and every 10 s regardless."""

    EVERY = 10.0
    NEWS_EVERY = 1.0

    def __init__(self, name: str, stream: Any) -> None:
        self.name, self.stream = name, stream
        self.tty = stream.isatty()
        self.shown_at: float | None = None
        self.shown_line = ""

    def __call__(self, waited: float, limit: float, line: str) -> None:
        if not self.tty and self.shown_at is not None:
            since = waited - self.shown_at
            if since < self.EVERY and (line == self.shown_line or since < self.NEWS_EVERY):
                return
        self.shown_at, self.shown_line = waited, line
        filled = int(30 * min(waited / limit, 1.0)) if limit else 0
        text = f"{self.name}: loading [{'#' * filled}{'.' * (30 - filled)}] {waited:.0f}/{limit:.0f} s  {line[-70:]}"
        self.stream.write(("\r\x1b[K" + text) if self.tty else text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self.shown_at is not None:
            self.stream.write("\n")
            self.stream.flush()


def _parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``--set max_model_len=2048 --set extra_args='["--enforce-eager"]'``: values read as JSON, else text."""
    import json

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise CommandError(f"--set takes KEY=VALUE, got {pair!r}")
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw
    return out
