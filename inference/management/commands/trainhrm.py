"""python manage.py trainhrm --out DIR: train the demo HRM on pydoc_data.topics and write a checkpoint."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser


class Command(BaseCommand):
    help = "Train a small HRM on Python's own language reference; writes a checkpoint and loss_curve.png."
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--out", type=Path, required=True)
        parser.add_argument("--steps", type=int, default=600)
        parser.add_argument("--batch", type=int, default=16)
        parser.add_argument("--window", type=int, default=128)
        parser.add_argument("--lr", type=float, default=3e-3)
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--d-model", type=int, default=128)
        parser.add_argument("--vocab", type=int, default=1024)

    def handle(self, *args: Any, **options: Any) -> None:
        import importlib.util

        import torch

        # Checked before training, not after it: the loss curve is the training's report.
        if importlib.util.find_spec("matplotlib") is None:
            raise CommandError("trainhrm draws its loss curve with matplotlib: pip install -e '.[train]'")

        from inference.hrm.config import HRMConfig
        from inference.hrm.training import plot_losses, train

        torch.set_num_threads(max(1, torch.get_num_threads()))
        config = HRMConfig(vocab_size=options["vocab"], d_model=options["d_model"], n_heads=4, h_layers=2,
                           l_layers=2, h_cycles=2, l_cycles=2, max_seq_len=512)
        steps = options["steps"]
        tty = sys.stderr.isatty()

        def progress(step: int, loss: float) -> None:
            if tty or step == steps or step % 50 == 0:
                filled = int(30 * step / steps)
                line = f"[{'#' * filled}{'.' * (30 - filled)}] {step}/{steps} loss {loss:.3f}"
                sys.stderr.write(("\r" if tty else "") + line + ("" if tty and step < steps else "\n"))
                sys.stderr.flush()

        report = train(options["out"], config, steps, options["batch"], options["window"], options["lr"],
                       options["seed"], progress=progress)
        plot_losses(report, options["out"] / "loss_curve.png")
        self.stdout.write(f"checkpoint: {options['out']} ({report.seconds:.0f} s, {steps} steps)")
        self.stdout.write(f"held-out loss {report.held_out_loss:.3f} nats/token; unigram baseline "
                          f"{report.unigram_loss:.3f} ({report.unigram_loss - report.held_out_loss:.3f} lower)")
        for sample in report.samples:
            self.stdout.write(f"sample: {sample!r}")
