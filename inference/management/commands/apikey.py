"""python manage.py apikey create NAME | list | revoke NAME"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.text import slugify

from inference.keys import KEY_SETTINGS, ApiKeyError, create_key, revoke_key
from inference.models import ApiKey, Scope


class Command(BaseCommand):
    help = "Create, list and revoke the API keys clients present to the front door."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        create = sub.add_parser("create", help="Mint a key; its secret is printed once, as the last line.")
        create.add_argument("name")
        create.add_argument("--scope", action="append", choices=Scope.values, dest="scopes",
                            help="What the key may do (repeatable): inference (the default), admin, evals.")
        create.add_argument("--weight", type=float, default=1.0,
                            help="Its share of a busy serve's slot-time against other keys (default 1).")
        create.add_argument("--max-queued", type=int, default=None,
                            help="Its requests that may wait in the serves' queues at once (default: no own cap).")
        create.add_argument("--models", action="append", dest="reach", default=[], metavar="GLOB",
                            help='What it may use (repeatable): a glob over model ids and serve names, or '
                            '"tier:NAME" (default: everything).')
        create.add_argument("--no-remote", action="store_false", dest="allow_remote",
                            help="Never reach the metered tiers (ANVIL_METERED_TIERS), whatever a request asks.")
        create.add_argument("--rpm", type=int, default=None, help="Requests per minute (default: no limit).")
        create.add_argument("--tpm", type=int, default=None, help="Tokens per minute (default: no limit).")
        create.add_argument("--max-concurrent", type=int, default=None,
                            help="Requests at once, across web processes (default: no limit).")
        sub.add_parser("list", help="List keys (prefixes only; secrets are never stored).")
        revoke = sub.add_parser("revoke", help="Revoke a key; it stops working within a second.")
        revoke.add_argument("name")

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        try:
            if action == "create":
                self._create(options["name"], options["scopes"],
                             {name: options[name] for name in KEY_SETTINGS if name in options})
            elif action == "list":
                self._list()
            else:
                key = revoke_key(options["name"])
                self.stdout.write(f"Revoked {key.name} ({key.prefix}…) at {key.revoked_at:%Y-%m-%d %H:%M:%S}Z.")
        except ApiKeyError as exc:
            raise CommandError(str(exc)) from None

    def _create(self, name: str, scopes: list[str] | None, settings: dict[str, Any]) -> None:
        if slugify(name) != name:
            raise CommandError(f"Key names are slugs (letters, digits, - and _); try {slugify(name)!r}.")
        for option in ("max_queued", "rpm", "tpm", "max_concurrent"):
            if settings.get(option) is not None and settings[option] < 1:
                raise CommandError(f"--{option.replace('_', '-')} is at least 1.")
        minted = create_key(name, scopes, **settings)
        self.stderr.write(
            f"Created API key {minted.key.name} ({minted.key.prefix}…, scopes {', '.join(minted.key.scopes)}). "
            "Copy the secret below now: Anvil keeps only its hash."
        )
        self.stdout.write(minted.secret)

    def _list(self) -> None:
        rows = [("NAME", "PREFIX", "SCOPES", "REACH", "LIMITS", "CREATED", "LAST USED", "STATE")]
        for key in ApiKey.objects.order_by("name"):
            rows.append(
                (
                    key.name,
                    key.prefix,
                    ",".join(key.scopes),
                    (",".join(key.reach) or "all") + ("" if key.allow_remote else " (no remote)"),
                    ", ".join(f"{name} {getattr(key, name)}" for name in ("rpm", "tpm", "max_concurrent")
                              if getattr(key, name) is not None) or "none",
                    f"{key.created_at:%Y-%m-%d %H:%M}",
                    f"{key.last_used_at:%Y-%m-%d %H:%M}" if key.last_used_at else "never",
                    "revoked" if key.is_revoked else "active",
                )
            )
        if len(rows) == 1:
            self.stdout.write("No API keys. Create one with: python manage.py apikey create NAME")
            return
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            self.stdout.write("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
