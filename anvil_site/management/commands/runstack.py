"""python manage.py runstack: the whole Anvil stack in one terminal (what `make run` runs)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

from anvil_site.admin_account import ensure_admin_user
from anvil_site.checks import fail_fast
from anvil_site.environment import describe_database, describe_redis
from anvil_site.launcher import (
    LaunchError,
    StopRequested,
    Supervisor,
    agent_spec,
    beat_spec,
    embedded_redis_spec,
    port_is_free,
    web_spec,
    worker_spec,
)


class Command(BaseCommand):
    help = ("Migrate, then run Redis (embedded, when REDIS_URL is unset), the web process (ANVIL_WEB_SERVER), "
            "a Celery worker and beat.")
    requires_system_checks: list[str] = []  # fail_fast below runs them, with our wording

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--worker-concurrency", type=int, default=settings.ANVIL_WORKER_CONCURRENCY)
        parser.add_argument("--no-beat", action="store_true", help="Do not start Celery beat.")
        parser.add_argument("--host-agent", default=settings.ANVIL_HOST_NAME, metavar="NAME",
                            help="Also run this machine's host agent (manage.py runhost NAME) for the serves whose "
                            "host is NAME (default: ANVIL_HOST_NAME; none when empty).")
        parser.add_argument("--no-hrm", action="store_true",
                            help="Do not start the in-worker HRM engine (also: ANVIL_HRM_CHECKPOINT=off).")

    def handle(self, *args: Any, **options: Any) -> None:
        fail_fast("Anvil")
        bind = settings.ANVIL_BIND
        if not port_is_free(bind.host, bind.port):
            raise CommandError(f"{bind.host}:{bind.port} is already in use. Stop what listens there, "
                               "or set ANVIL_BIND to another address, e.g. ANVIL_BIND=127.0.0.1:8001.")
        supervisor = Supervisor(out=self.stdout._out)
        supervisor.install_signal_handlers()
        code = 1
        try:
            if settings.REDIS_URL_IS_EMBEDDED:
                supervisor.start(embedded_redis_spec(settings.EMBEDDED_REDIS_SOCKET, settings.VAR_DIR))
            supervisor.say("applying migrations")
            call_command("migrate", interactive=False, verbosity=0)
            admin = ensure_admin_user()
            hrm = None if options["no_hrm"] else settings.ANVIL_HRM_CHECKPOINT
            hrm_serve = self._register_hrm(supervisor, hrm) if hrm is not None else None
            supervisor.start(web_spec(settings.ANVIL_WEB_SERVER, bind.host, bind.port, f"{bind.url}/readyz",
                                      behind_proxy=settings.ANVIL_BEHIND_TLS_PROXY))
            supervisor.start(worker_spec(options["worker_concurrency"]))
            if options["host_agent"]:
                supervisor.start(agent_spec(options["host_agent"]))
            if not options["no_beat"]:
                supervisor.start(beat_spec(settings.VAR_DIR))
            if hrm_serve is not None:
                self._load_hrm(supervisor, hrm_serve)
            self._banner(supervisor, admin)
            code = supervisor.wait()
        except StopRequested as exc:  # Ctrl-C or SIGTERM during start-up: a stop, not a failure
            supervisor.say(f"{exc}; stopping the stack")
            code = 0
        except LaunchError as exc:
            supervisor.say(f"cannot start: {exc}", colour="31")
        finally:
            supervisor.stop_all(before_infrastructure=lambda: self._stop_processes(supervisor))
        if code:
            raise SystemExit(code)

    def _register_hrm(self, supervisor: Supervisor, checkpoint: Any) -> int:
        """The demo checkpoint as two on-demand process serves sharing a device with room for one (a request
        for the second swaps them); the worker loads the first once it runs (its id is returned)."""
        import json

        from serves.inference_workers import register_demo_pair

        port, name = settings.ANVIL_HRM_PORT, settings.ANVIL_HRM_SERVE
        if not (checkpoint / "config.json").is_file():
            raise LaunchError(f"ANVIL_HRM_CHECKPOINT={checkpoint} is not a checkpoint (no config.json). Train one "
                              f"with `python manage.py trainhrm --out DIR`, or set ANVIL_HRM_CHECKPOINT=off.")
        config = json.loads((checkpoint / "config.json").read_text())
        context = config.get("max_seq_len") or config.get("n_positions")
        swap_port = settings.ANVIL_HRM_SWAP_PORT
        serves = register_demo_pair((name, f"{name}-swap"), (port, swap_port), str(checkpoint),
                                    tier=settings.ANVIL_HRM_TIER, context_limit=context)
        for serve in serves:
            if serve.current_model_state != "loaded" and not port_is_free("127.0.0.1", serve.port or port):
                # Adopted below if it is this serve's own process from an earlier stack; anything else is in the way.
                from serves.runtimes.process import PROCESSES

                if PROCESSES.record(serve) is None:
                    raise LaunchError(f"127.0.0.1:{serve.port} (ANVIL_HRM_PORT or ANVIL_HRM_SWAP_PORT) is already "
                                      "in use; choose another port.")
        supervisor.say(f"serves {name!r} and {name + '-swap'!r} (engine hrm, process runtime, on demand, sharing "
                       f"device 'demo') registered on ports {port} and {swap_port}")
        return serves[0].pk

    def _load_hrm(self, supervisor: Supervisor, serve_id: int) -> None:
        from serves.models import Serve
        from serves.operations import request_load

        serve = Serve.objects.get(pk=serve_id)
        requested = request_load(serve.name, {}, "runstack")
        state = requested.serve["state"]
        supervisor.say(f"serve {serve.name!r}: {'loading' if requested.accepted else state} "
                       "(GET /v1/admin/models shows its state)")

    def _stop_processes(self, supervisor: Supervisor) -> None:
        """The process serves this stack's host runs stop with it (they outlive a worker, not the stack)."""
        from serves.loading import transition
        from serves.models import ModelState, Serve
        from serves.runtimes.process import PROCESSES, recorded_serves

        try:
            for serve in Serve.objects.filter(name__in=recorded_serves()):
                if PROCESSES.stop(serve):
                    transition(serve, ModelState.UNLOADED, action="unload", requested_by="runstack",
                               detail="stopped with the stack")
                    supervisor.say(f"serve {serve.name} stopped")
        except Exception as exc:  # the database or Redis may be gone already: the processes still must not stay
            supervisor.say(f"stopping process serves: {exc}; stopping every recorded one", colour="31")
            for name in recorded_serves():
                PROCESSES.stop(Serve(name=name, stop_timeout=30))

    def _banner(self, supervisor: Supervisor, admin: Any) -> None:
        bind = settings.ANVIL_BIND
        lines = [
            "",
            f"Anvil is up at {bind.url}/",
            f"  admin      {bind.url}/admin/  (user: {admin.username})",
            f"  API        {bind.url}/api/   schema: {bind.url}/api/schema/",
            f"  front door {bind.url}/v1/    (python manage.py apikey create NAME)",
            f"  probes     {bind.url}/healthz  {bind.url}/readyz  {bind.url}/metrics",
            f"  database   {describe_database(settings.DATABASES['default'])}",
            f"  redis      {describe_redis(settings.REDIS_URL)}"
            + (" (embedded)" if settings.REDIS_URL_IS_EMBEDDED else ""),
        ]
        if admin.generated_password:
            lines.append(f"  admin password (shown once, not stored): {admin.generated_password}")
        elif admin.created:
            lines.append("  admin password: from ANVIL_ADMIN_PASSWORD")
        if not bind.is_loopback:
            lines += [
                "",
                "!" * 72,
                f"!! WARNING: listening on {bind.host}:{bind.port}, reachable beyond this machine.",
                "!! Put Anvil behind TLS, set ALLOWED_HOSTS, and guard the API keys.",
                "!" * 72,
            ]
        lines.append("Press Ctrl-C to stop.")
        for line in lines:
            supervisor.say(line)
