"""python manage.py buildbaseline --like CHECKPOINT --out DIR: the GPT-2 the HRM is compared against."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser


class Command(BaseCommand):
    help = ("Build a transformers GPT-2 with an HRM checkpoint's tokenizer, width and per-token depth "
            "(h_cycles x (l_cycles x l_layers + h_layers) blocks), for the A/B baseline engine.")
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--like", type=Path, required=True, help="The HRM checkpoint to match.")
        parser.add_argument("--out", type=Path, required=True)
        parser.add_argument("--seed", type=int, default=0)

    def handle(self, *args: Any, **options: Any) -> None:
        from inference.hrm.baseline import baseline_depth, build_gpt2
        from inference.hrm.checkpoint import CheckpointError, load_checkpoint

        try:
            model, tokenizer = load_checkpoint(options["like"])
            layers = baseline_depth(model.config)
            build_gpt2(options["out"], tokenizer, d_model=model.config.d_model, layers=layers,
                       heads=model.config.n_heads, max_seq_len=model.config.max_seq_len, seed=options["seed"])
        except CheckpointError as error:
            raise CommandError(str(error)) from error
        self.stdout.write(f"GPT-2 baseline: {layers} layers, d_model {model.config.d_model} -> {options['out']}")

