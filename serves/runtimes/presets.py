"""Engine presets: a process serve's argv built from named fields, so an operator writes fields, not command lines.

Each preset reads the serve's ``preset_args`` with a load's live overrides laid over them (llm-pool's
field lists are the reference). Names that a preset does not know are refused, naming the preset's
fields, so a typo is an error at import, not a flag that silently does nothing. ``extra_args`` (a
list) is appended as it is. ``python`` picks the interpreter of a preset that runs a Python module
(an engine in its own venv); ``binary`` a native one (``llama-server``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.conf import settings

from serves.models import Preset, Serve

ROOT = Path(__file__).resolve().parent.parent.parent


class PresetError(ValueError):
    """A preset field that is missing, unknown or of the wrong kind; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


Flags = list[tuple[str, str]]  # (field, flag): a value becomes "flag value"; True becomes "flag"; False/None nothing


def _flags(args: dict[str, Any], table: Flags) -> list[str]:
    out: list[str] = []
    for field, flag in table:
        value = args.get(field)
        if value is None or value is False:
            continue
        if value is True:
            out.append(flag)
        elif isinstance(value, dict | list):
            out += [flag, json.dumps(value, separators=(",", ":"))]
        else:
            out += [flag, str(value)]
    return out


def _vllm(serve: Serve, args: dict[str, Any]) -> list[str]:
    argv = [str(args.get("python") or sys.executable), "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(args.get("model") or serve.model_source or serve.served_model),
            "--served-model-name", serve.served_model, "--host", _bind(), "--port", str(serve.port)]
    argv += _flags(args, [
        ("max_model_len", "--max-model-len"), ("dtype", "--dtype"),
        ("gpu_memory_utilization", "--gpu-memory-utilization"), ("kv_cache_memory_bytes", "--kv-cache-memory-bytes"),
        ("tensor_parallel_size", "--tensor-parallel-size"), ("quantization", "--quantization"),
        ("enable_auto_tool_choice", "--enable-auto-tool-choice"), ("tool_call_parser", "--tool-call-parser"),
        ("reasoning_parser", "--reasoning-parser"), ("speculative_config", "--speculative-config"),
        ("enforce_eager", "--enforce-eager"), ("chat_template", "--chat-template"),
    ])
    return argv


def _llama_cpp(serve: Serve, args: dict[str, Any]) -> list[str]:
    model = str(args.get("model") or serve.model_source or "")
    if not model:
        raise PresetError("model", "the GGUF file to serve")
    if args.get("binary"):  # llama.cpp's own llama-server
        argv = [str(args["binary"]), "-m", model, "--host", _bind(), "--port", str(serve.port),
                "--alias", serve.served_model]
        return argv + _flags(args, [("ctx_size", "-c"), ("n_gpu_layers", "-ngl"), ("mmproj", "--mmproj"),
                                    ("draft_model", "-md"), ("chat_template", "--chat-template"),
                                    ("flash_attn", "--flash-attn"), ("n_threads", "-t")])
    # --interrupt_requests false: llama-cpp-python's server otherwise cuts a stream short whenever another
    # request arrives (bench/pool.py saw streams end mid-answer under two clients); Anvil queues instead.
    argv = [str(args.get("python") or sys.executable), "-m", "llama_cpp.server", "--model", model,
            "--host", _bind(), "--port", str(serve.port), "--model_alias", serve.served_model,
            "--interrupt_requests", "false"]
    return argv + _flags(args, [("ctx_size", "--n_ctx"), ("n_gpu_layers", "--n_gpu_layers"),
                                ("chat_format", "--chat_format"), ("mmproj", "--clip_model_path"),
                                ("n_threads", "--n_threads")])


def _sglang(serve: Serve, args: dict[str, Any]) -> list[str]:
    argv = [str(args.get("python") or sys.executable), "-m", "sglang.launch_server",
            "--model-path", str(args.get("model") or serve.model_source or serve.served_model),
            "--served-model-name", serve.served_model, "--host", _bind(), "--port", str(serve.port)]
    return argv + _flags(args, [("context_length", "--context-length"),
                                ("mem_fraction_static", "--mem-fraction-static"),
                                ("tool_call_parser", "--tool-call-parser"), ("reasoning_parser", "--reasoning-parser"),
                                ("tp_size", "--tp-size")])


def _runinference(serve: Serve, args: dict[str, Any]) -> list[str]:
    if not args.get("checkpoint"):
        raise PresetError("checkpoint", "the checkpoint directory to serve")
    argv = [str(args.get("python") or sys.executable), str(ROOT / "manage.py"), "runinference",
            "--checkpoint", str(args["checkpoint"]), "--host", _bind(), "--port", str(serve.port),
            "--served-model-name", serve.served_model]
    return argv + _flags(args, [("max_tokens", "--max-tokens"), ("max_batch", "--max-batch"),
                                ("max_queue", "--max-queue"), ("autocast", "--autocast")])


BUILDERS: dict[str, Callable[[Serve, dict[str, Any]], list[str]]] = {
    Preset.VLLM: _vllm, Preset.LLAMA_CPP: _llama_cpp, Preset.SGLANG: _sglang, Preset.RUNINFERENCE: _runinference,
}
FIELDS: dict[str, frozenset[str]] = {
    Preset.VLLM: frozenset({"python", "model", "max_model_len", "dtype", "gpu_memory_utilization",
                            "kv_cache_memory_bytes", "tensor_parallel_size", "quantization", "enable_auto_tool_choice",
                            "tool_call_parser", "reasoning_parser", "speculative_config", "enforce_eager",
                            "chat_template", "extra_args"}),
    Preset.LLAMA_CPP: frozenset({"python", "binary", "model", "ctx_size", "n_gpu_layers", "mmproj", "draft_model",
                                 "chat_template", "chat_format", "flash_attn", "n_threads", "extra_args"}),
    Preset.SGLANG: frozenset({"python", "model", "context_length", "mem_fraction_static", "tool_call_parser",
                              "reasoning_parser", "tp_size", "extra_args"}),
    Preset.RUNINFERENCE: frozenset({"python", "checkpoint", "max_tokens", "max_batch", "max_queue", "autocast",
                                    "extra_args"}),
}
# The override that sets each preset's context length (what a load's max_model_len means to it).
CONTEXT_FIELD = {Preset.VLLM: "max_model_len", Preset.LLAMA_CPP: "ctx_size", Preset.SGLANG: "context_length"}


def check_preset_args(preset: str, args: Any) -> None:
    if not preset:
        return
    if preset not in FIELDS:
        raise PresetError("preset", f"unknown preset; the presets are {', '.join(sorted(FIELDS))}")
    if not isinstance(args, dict):
        raise PresetError("preset_args", "an object of named fields")
    unknown = sorted(set(args) - FIELDS[preset])
    if unknown:
        raise PresetError(f"preset_args.{unknown[0]}",
                          f"the {preset} preset has no such field; it knows {', '.join(sorted(FIELDS[preset]))}")
    extra = args.get("extra_args")
    if extra is not None and (not isinstance(extra, list) or not all(isinstance(a, str) for a in extra)):
        raise PresetError("preset_args.extra_args", "a list of strings")


def build_argv(serve: Serve, overrides: dict[str, Any] | None = None) -> list[str]:
    """The argv that starts ``serve``, with ``overrides`` laid over its fields; {port} and {bind} expanded ({dir}
    was, when the manifest was read)."""
    if serve.preset:
        args = {**(serve.preset_args or {}), **(overrides or {})}
        check_preset_args(serve.preset, args)
        argv = BUILDERS[serve.preset](serve, args) + list(args.get("extra_args") or [])
    else:
        if not serve.command:
            raise PresetError("command", "a process serve needs a command or a preset")
        argv = list(serve.command) + list((overrides or {}).get("extra_args") or [])
    return [part.replace("{port}", str(serve.port or "")).replace("{bind}", _bind()) for part in argv]


def _bind() -> str:
    """Where this host's engines listen: loopback on one machine; on a GPU host the address the web nodes reach
    (``ANVIL_ENGINE_BIND`` in the agent's environment, docs/deploy.md)."""
    return settings.ANVIL_ENGINE_BIND
