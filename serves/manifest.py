"""serves.toml: import (one transaction, idempotent) and export.

The seed's format — ``[[serve]]`` with name, container, port, model, health,
up, groups; ``{dir}`` is the manifest's folder — plus Anvil's fields under the
model's names (tier, engine, base_url, dialect, gpu, …). The manifest is the
whole truth about a serve's configuration: a field it leaves out is reset to
its default, so export → edit → import never leaves drift behind.

``context_limit`` is the operator's: the limit an engine reports (vLLM's
``max_model_len``) is state the status probe keeps, never written here, and
used only while the manifest leaves ``context_limit`` out.
"""

from __future__ import annotations

import copy
import json
import re
import tomllib
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction

from serves.compose import parse_up_command, up_command_text
from serves.models import MODALITIES, Dialect, Engine, Gpu, Preset, Serve, StreamVerify, Thinking, default_modalities
from serves.runtimes.presets import PresetError, check_preset_args
from serves.upstream_keys import upstream_key_name_problem


class ManifestError(Exception):
    """A manifest that cannot be imported; names the entry and the field."""

    def __init__(self, message: str, entry: str | None = None, field: str | None = None) -> None:
        where = ""
        if entry is not None:
            where = f"serve {entry}"
            if field:
                where += f", field {field!r}"
            where += ": "
        super().__init__(where + message)
        self.entry, self.field = entry, field


# manifest key -> (model field, expected Python type(s))
SEED_KEYS: dict[str, tuple[str, tuple[type, ...]]] = {
    "name": ("name", (str,)),
    "container": ("container", (str,)),
    "port": ("port", (int,)),
    "model": ("served_model", (str,)),
    "health": ("health_path", (str,)),
    "groups": ("groups", (list,)),
}
MODEL_KEYS: dict[str, tuple[str, tuple[type, ...]]] = {
    "tier": ("tier", (str,)),
    "engine": ("engine", (str,)),
    "dialect": ("dialect", (str,)),
    "base_url": ("base_url", (str,)),
    "model_source": ("model_source", (str,)),
    "gpu": ("gpu", (str, int)),
    "context_limit": ("context_limit", (int,)),
    "supports_tools": ("supports_tools", (bool,)),
    "modalities": ("modalities", (list,)),
    "thinking": ("thinking", (str,)),
    "embeddings": ("embeddings", (bool,)),
    "responses_api": ("responses_api", (bool,)),
    "stream_verify": ("stream_verify", (str,)),
    "revision": ("revision", (str,)),
    "quantization": ("quantization", (str,)),
    "extra_body": ("extra_body", (dict,)),
    "engine_args": ("engine_args", (list,)),
    "api_key_env": ("api_key_env", (str,)),
    "queue": ("queue", (str,)),
    "host": ("host", (str,)),
    "enabled": ("enabled", (bool,)),
    "trusted_command": ("trusted_command", (bool,)),
    "compose_file": ("compose_file", (str,)),
    "compose_service": ("compose_service", (str,)),
    # The pool: how a serve is run (serves/runtimes/) and loaded (serves/loading.py).
    "runtime": ("runtime", (str,)),
    "preset": ("preset", (str,)),
    "preset_args": ("preset_args", (dict,)),
    "command": ("command", (list,)),
    "env": ("env", (dict,)),
    "cwd": ("cwd", (str,)),
    "library_path": ("library_path", (str,)),
    "ready_timeout": ("ready_timeout", (int,)),
    "stop_timeout": ("stop_timeout", (int,)),
    "drain_timeout": ("drain_timeout", (int,)),
    "load_constraints": ("load_constraints", (dict,)),
    "vram_gb": ("vram_gb", (int, float)),
    "alias": ("alias", (str,)),
    "fallback_to": ("fallback_to", (list,)),
    "on_demand": ("on_demand", (bool,)),
    "ttl": ("ttl", (int,)),
    "target_inflight": ("target_inflight", (int,)),
    "max_queue": ("max_queue", (int,)),
    "queue_timeout": ("queue_timeout", (int,)),
    "replicas": ("replicas", (int,)),
    "replica_max": ("replica_max", (int,)),
    "price_input": ("price_input", (int, float)),
    "price_output": ("price_output", (int, float)),
}
KNOWN_KEYS = {**SEED_KEYS, **MODEL_KEYS, "up": ("", (str,))}
REQUIRED_KEYS = ("name", "model")

# Every configuration field the manifest owns, with the value a missing key means.
MANAGED_DEFAULTS: dict[str, Any] = {
    "tier": "", "engine": Engine.VLLM, "dialect": "", "base_url": "", "port": None, "served_model": "",
    "model_source": "", "health_path": "/health", "container": "", "compose_file": "", "compose_service": "",
    "up_command": "", "trusted_command": False, "groups": [], "gpu": "", "context_limit": None, "revision": "",
    "quantization": "", "supports_tools": True, "extra_body": {}, "engine_args": [], "api_key_env": "", "queue": "",
    "host": "", "enabled": True, "modalities": default_modalities(), "thinking": Thinking.NONE, "embeddings": False,
    "responses_api": False, "stream_verify": StreamVerify.PROFILE,
    "runtime": "", "preset": Preset.CUSTOM, "preset_args": {}, "command": [], "env": {}, "cwd": "", "library_path": "",
    "ready_timeout": 600, "stop_timeout": 30, "drain_timeout": 30, "load_constraints": {}, "vram_gb": None,
    "alias": "", "fallback_to": [], "on_demand": False, "ttl": None, "target_inflight": None, "max_queue": 100,
    "queue_timeout": 120, "replicas": 0, "replica_max": 1,
    "price_input": 0, "price_output": 0,
}
PRICE_STEP = Decimal("0.000001")
DIALECT_OF_ENGINE = {Engine.ANTHROPIC: Dialect.ANTHROPIC}


@dataclass
class ImportReport:
    created: list[str] = field(default_factory=list)
    changed: dict[str, list[str]] = field(default_factory=dict)
    unchanged: list[str] = field(default_factory=list)
    not_in_manifest: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"created   {name}" for name in self.created]
        out += [f"changed   {name}: {', '.join(fields)}" for name, fields in self.changed.items()]
        out += [f"unchanged {name}" for name in self.unchanged]
        out += [f"left      {name} (in the database, not in the manifest)" for name in self.not_in_manifest]
        total = f"{len(self.created)} created, {len(self.changed)} changed, {len(self.unchanged)} unchanged"
        return out + [total]


def parse_manifest(text: str, manifest_dir: Path) -> list[dict[str, Any]]:
    """Rows (model field -> value) for every ``[[serve]]``; raises ManifestError naming entry and field."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(f"not valid TOML: {exc}") from None
    unknown_top = set(document) - {"serve", "gpu"}
    if unknown_top:
        raise ManifestError(f"unknown top-level key(s) {sorted(unknown_top)}; serves are [[serve]] tables, "
                            "devices [[gpu]] tables")
    entries = document.get("serve", [])
    if not isinstance(entries, list):
        raise ManifestError("'serve' must be an array of tables: write [[serve]]")
    rows: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for index, entry in enumerate(entries, start=1):
        label = f"#{index}" + (f" ({entry['name']!r})" if isinstance(entry.get("name"), str) else "")
        row = _parse_entry(entry, label, manifest_dir)
        if row["name"] in seen:
            raise ManifestError(f"duplicate name, first used by serve #{seen[row['name']]}", label, "name")
        seen[row["name"]] = index
        rows.append(row)
    return rows


GPU_KEYS: dict[str, tuple[type, ...]] = {"id": (str, int), "memory_gb": (int, float), "exclusive": (bool,),
                                         "min_residency": (int,), "max_wait": (int,)}
GPU_DEFAULTS: dict[str, Any] = {"memory_gb": None, "exclusive": False, "min_residency": 30, "max_wait": 120}


def parse_gpus(text: str) -> list[dict[str, Any]]:
    """Rows (Gpu field -> value) for every ``[[gpu]]``: ``id`` (what serves name in ``gpu``), ``memory_gb``
    (blank: nvidia-smi's), ``exclusive``, ``min_residency``, ``max_wait``."""
    try:
        entries = tomllib.loads(text).get("gpu", [])
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(f"not valid TOML: {exc}") from None
    if not isinstance(entries, list):
        raise ManifestError("'gpu' must be an array of tables: write [[gpu]]")
    rows: list[dict[str, Any]] = []
    for index, entry in enumerate(entries, start=1):
        label = f"gpu #{index}"
        for key, value in entry.items():
            types = GPU_KEYS.get(key)
            if types is None:
                raise ManifestError(f"unknown key (known keys: {', '.join(GPU_KEYS)})", label, key)
            if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
                raise ManifestError(f"expected {' or '.join(t.__name__ for t in types)}", label, key)
        if "id" not in entry:
            raise ManifestError("missing (every [[gpu]] needs an id: what serves name in gpu)", label, "id")
        row = {**GPU_DEFAULTS, **{k: v for k, v in entry.items() if k != "id"}, "name": str(entry["id"])}
        if any(row["name"] == seen["name"] for seen in rows):
            raise ManifestError("duplicate id", label, "id")
        rows.append(row)
    return rows


def _parse_entry(entry: dict[str, Any], label: str, manifest_dir: Path) -> dict[str, Any]:
    for key in entry:
        if key not in KNOWN_KEYS:
            known = ", ".join(sorted(KNOWN_KEYS))
            raise ManifestError(f"unknown key (known keys: {known})", label, key)
    for key in REQUIRED_KEYS:
        if key not in entry:
            raise ManifestError("missing (every serve needs name and model)", label, key)
    row = copy.deepcopy(MANAGED_DEFAULTS)  # rows never share a default list or dict
    for key, value in entry.items():
        if key == "up":
            continue
        field_name, types = KNOWN_KEYS[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            expected = " or ".join(t.__name__ for t in types)
            raise ManifestError(f"expected {expected}, got {type(value).__name__}", label, key)
        if key in ("groups", "engine_args", "modalities", "command") and not all(isinstance(item, str)
                                                                                  for item in value):
            raise ManifestError("expected a list of strings", label, key)
        if key == "modalities":  # the model's order, so a reordered list is no change (clean() checks the values)
            value = sorted(value, key=lambda m: MODALITIES.index(m) if m in MODALITIES else len(MODALITIES))
        if key in ("price_input", "price_output"):  # money: the decimal the file says, not a binary float
            value = Decimal(str(value)).quantize(PRICE_STEP)
        row[field_name] = str(value) if key == "gpu" else value
    # Refused before any row is touched: the variable's value would be sent upstream as a bearer token.
    key_name_problem = upstream_key_name_problem(row["api_key_env"])
    if key_name_problem is not None:
        raise ManifestError(key_name_problem, label, "api_key_env")
    for key in ("compose_file", "cwd", "library_path"):
        if row[key]:
            row[key] = _expand_dir(row[key], manifest_dir)
    row["command"] = [_expand_dir(part, manifest_dir) for part in row["command"]]
    row["preset_args"] = {name: _expand_dir(value, manifest_dir) if isinstance(value, str) else value
                          for name, value in row["preset_args"].items()}
    try:
        check_preset_args(row["preset"], row["preset_args"])
    except PresetError as exc:
        raise ManifestError(exc.message, label, exc.field) from None
    if "up" in entry:
        _apply_up(row, _expand_dir(entry["up"], manifest_dir), label)
    if not row["tier"]:
        row["tier"] = row["name"]  # the seed's serves are named after their tier (fast, heavy)
    if not row["dialect"]:
        row["dialect"] = DIALECT_OF_ENGINE.get(row["engine"], Dialect.OPENAI)
    return row


def _expand_dir(value: str, manifest_dir: Path) -> str:
    return value.replace("{dir}", str(manifest_dir))


def _apply_up(row: dict[str, Any], command: str, label: str) -> None:
    parsed = parse_up_command(command)
    if parsed is not None:
        if row["compose_file"] and row["compose_file"] != parsed.file:
            raise ManifestError("names another compose file than compose_file", label, "up")
        row["compose_file"], row["compose_service"] = parsed.file, parsed.service
        return
    if not row["trusted_command"]:
        raise ManifestError(
            "is not `docker compose -f FILE up -d SERVICE`; an arbitrary start command runs only when the serve "
            "is marked trusted_command = true",
            label,
            "up",
        )
    row["up_command"] = command


@transaction.atomic
def import_rows(rows: list[dict[str, Any]], gpus: list[dict[str, Any]] | None = None) -> ImportReport:
    """Create or update one Serve per row (and one Gpu per ``gpus`` row), all or nothing."""
    report = ImportReport()
    for row in gpus or []:
        device = Gpu.objects.filter(name=row["name"]).first() or Gpu(name=row["name"])
        for name, value in row.items():
            setattr(device, name, value)
        try:
            device.full_clean()
        except ValidationError as exc:
            field_name, messages = next(iter(exc.message_dict.items()))
            raise ManifestError("; ".join(messages), f"gpu {row['name']!r}", field_name) from None
        device.save()
    names = [row["name"] for row in rows]
    existing = {serve.name: serve for serve in Serve.objects.select_for_update().filter(name__in=names)}
    for row in rows:
        serve = existing.get(row["name"]) or Serve(name=row["name"])
        changed = [name for name, value in row.items() if getattr(serve, name) != value]
        for name, value in row.items():
            setattr(serve, name, value)
        try:
            serve.full_clean(exclude=["busy_token", "busy_since", "busy_action"])
        except ValidationError as exc:
            field_name, messages = next(iter(exc.message_dict.items()))
            raise ManifestError("; ".join(messages), repr(row["name"]), _manifest_key(field_name)) from None
        if serve.pk is None:
            serve.save()
            report.created.append(serve.name)
        elif changed:
            serve.save()
            report.changed[serve.name] = [_manifest_key(name) for name in changed]
        else:
            report.unchanged.append(serve.name)
    report.not_in_manifest = list(Serve.objects.exclude(name__in=names).values_list("name", flat=True))
    return report


def import_manifest(path: Path) -> ImportReport:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ManifestError(f"cannot read {path}: {exc.strerror}") from None
    return import_rows(parse_manifest(text, path.resolve().parent), parse_gpus(text))


def _manifest_key(field_name: str) -> str:
    for key, (name, _types) in KNOWN_KEYS.items():
        if name == field_name:
            return key
    return field_name


# --- export --------------------------------------------------------------------

EXPORT_ORDER = ["name", "tier", "engine", "dialect", "container", "port", "base_url", "model", "model_source",
                "health", "up", "groups", "gpu", "context_limit", "revision", "quantization", "extra_body",
                "engine_args", "supports_tools", "modalities", "thinking", "embeddings", "responses_api",
                "stream_verify", "api_key_env", "queue", "host", "enabled", "trusted_command", "runtime", "preset",
                "preset_args", "command", "env", "cwd", "library_path", "ready_timeout", "stop_timeout",
                "drain_timeout", "load_constraints", "vram_gb", "alias", "fallback_to", "on_demand", "ttl",
                "target_inflight", "max_queue", "queue_timeout", "replicas", "replica_max",
                "price_input", "price_output"]
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def export_manifest(serves: list[Serve], manifest_dir: Path | None = None, gpus: list[Gpu] | None = None) -> str:
    """serves.toml text for ``serves`` (and ``gpus``); paths under ``manifest_dir`` are written with ``{dir}``."""
    blocks = ["# Anvil serves manifest: `python manage.py serves import FILE` reads it back.\n"]
    for device in gpus or []:
        lines = ["[[gpu]]", f"id = {_toml_value(device.name)}"]
        lines += [f"{key} = {_toml_value(getattr(device, key))}" for key, default in GPU_DEFAULTS.items()
                  if getattr(device, key) != default]
        blocks.append("\n".join(lines) + "\n")
    for serve in serves:
        values: dict[str, Any] = {}
        for key in EXPORT_ORDER:
            value = _export_value(serve, key, manifest_dir)
            if value is None:
                continue
            values[key] = value
        lines = ["[[serve]]"] + [f"{key} = {_toml_value(value)}" for key, value in values.items()]
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)


def _export_value(serve: Serve, key: str, manifest_dir: Path | None) -> Any:
    if key == "up":
        text = up_command_text(serve)
        if manifest_dir is not None and text:
            text = text.replace(str(manifest_dir), "{dir}")
        return text or None
    field_name = KNOWN_KEYS[key][0]
    value = getattr(serve, field_name)
    if key in ("name", "model", "tier"):
        return value
    if key == "dialect" and value == DIALECT_OF_ENGINE.get(serve.engine, Dialect.OPENAI):
        return None
    if value == MANAGED_DEFAULTS[field_name] and key != "engine":
        return None
    return value


def _toml_value(value: Any) -> str:
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")  # TOML reads it back as a float; the import makes it a decimal
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        items = []
        for key, item in value.items():
            name = key if _BARE_KEY.match(key) else json.dumps(key)
            items.append(f"{name} = {_toml_value(item)}")
        return "{ " + ", ".join(items) + " }" if items else "{}"
    if value is None:
        raise ValueError("TOML has no null: remove the key or give it a value")
    raise ValueError(f"cannot write {type(value).__name__} as TOML")
