"""What a serve says about itself: health, the model id it reports, GPU memory."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

import httpx

from serves.models import Health, Serve
from serves.upstream_keys import upstream_auth_headers

PROBE_TIMEOUT = httpx.Timeout(3.0, connect=2.0)
NVIDIA_SMI_TIMEOUT = 10


@dataclass(frozen=True)
class ProbeResult:
    health: Health
    model_ids: tuple[str, ...] = ()
    detail: str = ""
    listed: bool = False  # /models answered: what it says (or leaves out) about the context limit is current
    context_limit: int | None = None  # the served model's max_model_len, where the engine reports it (vLLM)


def reported_context_limit(models: list[object], served_model: str) -> int | None:
    """``max_model_len`` of ``served_model`` in a /models list (vLLM reports it; OpenAI and others do not)."""
    for item in models:
        if isinstance(item, dict) and item.get("id") == served_model:
            value = item.get("max_model_len")
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
            return None
    return None


def probe(serve: Serve) -> ProbeResult:
    """Health (GET server root + health_path) and model ids (GET base_url/models)."""
    base = serve.effective_base_url
    if not base:
        return ProbeResult(Health.UNKNOWN, detail="no base_url or port")
    headers = upstream_auth_headers(serve.dialect, serve.api_key_env)
    with httpx.Client(timeout=PROBE_TIMEOUT, headers=headers) as client:
        health, detail = Health.UNKNOWN, ""
        if serve.is_local and serve.health_path:
            try:
                answer = client.get(serve.server_root + serve.health_path)
                health = Health.OK if answer.status_code == 200 else Health.UNHEALTHY
                if health != Health.OK:
                    detail = f"{serve.health_path} answered {answer.status_code}"
            except httpx.HTTPError as exc:
                return ProbeResult(Health.UNREACHABLE, detail=f"{serve.health_path}: {type(exc).__name__}: {exc}")
        try:
            answer = client.get(base + "/models")
            answer.raise_for_status()
            data = answer.json().get("data", [])
            models = data if isinstance(data, list) else []
            ids = tuple(str(item.get("id", "")) for item in models if isinstance(item, dict))
        except (httpx.HTTPError, ValueError, AttributeError) as exc:
            if health == Health.UNKNOWN:  # remote: /models is the only probe there is
                return ProbeResult(Health.UNREACHABLE, detail=f"/models: {type(exc).__name__}: {exc}")
            return ProbeResult(health, detail=detail or f"/models: {type(exc).__name__}")
        if health == Health.UNKNOWN:
            health = Health.OK
        return ProbeResult(health, ids, detail, listed=True,
                           context_limit=reported_context_limit(models, serve.served_model))


@dataclass(frozen=True)
class GPU:
    index: str
    uuid: str
    used_mib: int
    total_mib: int


def gpus() -> list[GPU]:
    """This host's GPUs as nvidia-smi reports them; [] without nvidia-smi or an answer (never an error)."""
    if shutil.which("nvidia-smi") is None:
        return []
    argv = ["nvidia-smi", "--query-gpu=index,uuid,memory.used,memory.total", "--format=csv,noheader,nounits"]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if result.returncode != 0:
        return []
    found = []
    for line in result.stdout.splitlines():
        parts = [part.strip() for part in line.split(",")]
        if len(parts) == 4 and parts[2].isdigit() and parts[3].isdigit():
            found.append(GPU(parts[0], parts[1], int(parts[2]), int(parts[3])))
    return found


def gpu_of(gpu: str) -> GPU | None:
    """The GPU a serve names (its UUID or index), if nvidia-smi reports it."""
    return next((g for g in gpus() if gpu and gpu in (g.index, g.uuid)), None) if gpu else None


def gpu_memory(gpu: str) -> str:
    """'used/total MiB' of the serve's GPU from nvidia-smi, or 'unknown' (no GPU, no nvidia-smi, no answer)."""
    found = gpu_of(gpu)
    return f"{found.used_mib}/{found.total_mib} MiB" if found else "unknown"
