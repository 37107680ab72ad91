"""python manage.py apikey create NAME | list | revoke NAME | usage NAME"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone
from django.utils.text import slugify

from inference.key_budget import spent_in_period
from inference.keys import KEY_SETTINGS, ApiKeyError, create_key, revoke_key
from inference.models import ApiKey, Scope
from inference.usage import totals, usage


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
        create.add_argument("--budget-usd", type=Decimal, default=None,
                            help="Spend allowed per period, in USD (default: no budget).")
        create.add_argument("--period", dest="budget_period", choices=["day", "month"], default="month",
                            help="The budget's period, a calendar day or month in UTC (default month).")
        create.add_argument("--budget-alert", type=int, default=80,
                            help="Percent of the budget at which a warning is logged, once per period (default 80).")
        used = sub.add_parser("usage", help="A key's requests, tokens, spend and errors per day, and its budget.")
        used.add_argument("name")
        used.add_argument("--days", type=int, default=30, help="How many days back (default 30).")
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
            elif action == "usage":
                self._usage(options["name"], options["days"])
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

    def _usage(self, name: str, days: int) -> None:
        key = ApiKey.objects.filter(name=name).first()
        if key is None:
            raise CommandError(f"No API key is named {name!r}; `apikey list` shows them.")
        start = (timezone.now() - dt.timedelta(days=max(days, 1) - 1)).replace(hour=0, minute=0, second=0,
                                                                                microsecond=0)
        rows = usage(key, start=start, group_by="day")
        table = [("DAY", "REQUESTS", "PROMPT TOKENS", "COMPLETION TOKENS", "SPEND USD", "ERRORS")]
        table += [(r["group"], str(r["requests"]), str(r["prompt_tokens"]), str(r["completion_tokens"]),
                   f"{r['spend_usd']:.4f}", str(r["errors"])) for r in rows]
        total = totals(rows)
        table.append(("total", str(total["requests"]), str(total["prompt_tokens"]), str(total["completion_tokens"]),
                      f"{total['spend_usd']:.4f}", str(total["errors"])))
        self._table(table)
        if key.budget_usd is not None:
            spent = spent_in_period(key.pk, key.budget_period)
            share = 100 * spent / key.budget_usd
            flag = "  (over the alert threshold)" if share >= key.budget_alert else ""
            self.stdout.write(f"Budget: ${spent:.4f} of ${key.budget_usd:.4f} this {key.budget_period} "
                              f"({share:.0f}%){flag}.")

    def _table(self, rows: list[tuple[str, ...]]) -> None:
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            self.stdout.write("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())

    def _list(self) -> None:
        rows = [("NAME", "PREFIX", "SCOPES", "REACH", "LIMITS", "CREATED", "LAST USED", "STATE")]
        for key in ApiKey.objects.order_by("name"):
            rows.append(
                (
                    key.name,
                    key.prefix,
                    ",".join(key.scopes),
                    (",".join(key.reach) or "all") + ("" if key.allow_remote else " (no remote)"),
                    ", ".join([f"{name} {getattr(key, name)}" for name in ("rpm", "tpm", "max_concurrent")
                               if getattr(key, name) is not None]
                              + ([f"${key.budget_usd}/{key.budget_period}"] if key.budget_usd is not None else []))
                    or "none",
                    f"{key.created_at:%Y-%m-%d %H:%M}",
                    f"{key.last_used_at:%Y-%m-%d %H:%M}" if key.last_used_at else "never",
                    "revoked" if key.is_revoked else "active",
                )
            )
        if len(rows) == 1:
            self.stdout.write("No API keys. Create one with: python manage.py apikey create NAME")
            return
        self._table(rows)
