"""python manage.py runinference --checkpoint DIR --port P: one model (an HRM, or a transformers
baseline), served on loopback."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

DRAIN_SECONDS = 30.0
WORKER_VARIABLES = frozenset({"ANVIL_DEVICE", "ANVIL_TORCH_THREADS", "ANVIL_LOG_LEVEL"})


class Command(BaseCommand):
    help = ("Serve a checkpoint: /generate, /loglikelihood, /v1/completions, /v1/chat/completions, /v1/models, "
            "/healthz, /readyz, /metrics.")
    requires_system_checks: list[str] = []  # the worker needs neither the database nor Redis

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--checkpoint", type=Path, required=True,
                            help="An HRM checkpoint, or a transformers model directory (the baseline engine).")
        parser.add_argument("--port", type=int, required=True)
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--served-model-name", default=None)
        parser.add_argument("--max-batch", type=int, default=16)
        parser.add_argument("--max-queue", type=int, default=256)
        parser.add_argument("--max-tokens", type=int, default=1024)
        parser.add_argument("--autocast", choices=["bf16", "fp16"], default=None,
                            help="Mixed precision on CUDA (ANVIL_DEVICE=cuda); ignored on the CPU.")

    def handle(self, *args: Any, **options: Any) -> None:
        # torch is imported here, in the worker, never by the web process.
        from inference.hrm.checkpoint import CheckpointError
        from inference.hrm.validation import Limits
        from inference.hrm.worker import Worker, chat_template, load_engine

        # The worker needs neither the database nor Redis, so it checks only its own variables.
        problems = [p for p in settings.ANVIL_SETTING_PROBLEMS if p.variable in WORKER_VARIABLES]
        if problems:
            raise CommandError("; ".join(f"{p.message} {p.hint}".strip() for p in problems))
        device = settings.ANVIL_DEVICE
        directory: Path = options["checkpoint"]
        limits = Limits(options["max_tokens"], options["max_batch"], options["max_queue"])
        try:
            engine = load_engine(directory, device=device, limits=limits, autocast=options["autocast"])
        except (CheckpointError, OSError, ValueError) as exc:
            raise CommandError(f"cannot load {directory}: {exc}") from None
        name = options["served_model_name"] or directory.resolve().name
        worker = Worker(engine, name, limits, chat_template(directory), threads=settings.ANVIL_TORCH_THREADS or None)
        asyncio.run(self._serve(worker, options["host"], options["port"]))

    async def _serve(self, worker: Any, host: str, port: int) -> None:
        from aiohttp import web

        from inference.hrm.errors import Unavailable
        from inference.hrm.server import Server

        worker.start()
        runner = web.AppRunner(Server(worker).app(), access_log=None, handler_cancellation=True)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        try:
            await worker.warm_up()
            self.stdout.write(f"serving {worker.name} on http://{host}:{port} (ready)", ending="\n")
            self.stdout.flush()
            await worker.run_until(stop)
        except Unavailable as exc:  # the scheduler thread died: exit non-zero so the supervisor restarts us
            await runner.cleanup()
            raise CommandError(str(exc)) from None
        self.stdout.write("draining in-flight requests")
        await worker.drain(DRAIN_SECONDS)
        await runner.cleanup()
