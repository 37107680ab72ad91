"""python manage.py serves …: selection, dry-run, import/export/render, status hints."""

from __future__ import annotations

import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
import yaml
from django.core.management import CommandError, call_command

from serves.models import Serve, ServeEvent
from tests.support.processes import ROOT, child_env, free_port, manage

pytestmark = pytest.mark.django_db(transaction=True)

EXAMPLE = ROOT / "compose" / "serves.toml"


def run_command(*args: str) -> str:
    out = StringIO()
    call_command("serves", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def test_import_then_dry_run_prints_the_compose_commands_and_starts_nothing() -> None:
    assert "4 created" in run_command("import", str(EXAMPLE))
    printed = run_command("up", "--dry-run")
    compose_file = str(EXAMPLE.parent / "docker-compose.yml")
    assert f"-f {compose_file} up -d fast" in printed and f"-f {compose_file} up -d heavy" in printed
    assert f"-f {compose_file} up -d hrm" in printed
    assert "claude" not in printed  # disabled serves are not acted on by default
    assert not ServeEvent.objects.exists()


def test_group_selects_serves() -> None:
    run_command("import", str(EXAMPLE))
    printed = run_command("up", "--dry-run", "--group", "gpu1")
    assert "heavy" in printed and "fast" not in printed


def test_an_unknown_name_exits_2_listing_the_known_ones() -> None:
    run_command("import", str(EXAMPLE))
    result = subprocess.run(manage("serves", "up", "nope", "--dry-run"), cwd=ROOT, env=child_env(),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "unknown serve(s): nope" in result.stderr and "claude, fast, heavy" in result.stderr


def test_a_container_name_selects_its_serve() -> None:
    run_command("import", str(EXAMPLE))
    assert run_command("down", "vllm-gptoss", "--dry-run").startswith("fast:")


def test_a_bad_manifest_is_refused_whole(tmp_path: Path) -> None:
    bad = tmp_path / "serves.toml"
    bad.write_text('[[serve]]\nname = "ok"\nmodel = "m"\nbase_url = "http://127.0.0.1:1/v1"\n[[serve]]\nname = "x"\n')
    with pytest.raises(CommandError, match="serve #2 \\('x'\\), field 'model'.*Nothing was imported"):
        run_command("import", str(bad))
    assert not Serve.objects.exists()


def test_export_to_a_file_round_trips(tmp_path: Path) -> None:
    run_command("import", str(EXAMPLE))
    target = tmp_path / "exported.toml"
    call_command("serves", "export", str(target), stdout=StringIO(), stderr=StringIO())
    assert "unchanged" in run_command("import", str(target)) and "0 changed" in run_command("import", str(target))


def test_render_writes_a_compose_file_with_gpu_pinning() -> None:
    run_command("import", str(EXAMPLE))
    rendered = yaml.safe_load(run_command("render"))
    fast = rendered["services"]["fast"]
    assert fast["container_name"] == "vllm-gptoss" and fast["ipc"] == "host"
    assert fast["environment"]["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    device = fast["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["device_ids"] == ["GPU-00000000-0000-0000-0000-000000000001"]
    assert "--max-model-len" in fast["command"] and "65536" in fast["command"]
    assert "claude" not in rendered["services"]  # a remote API is not a container


def test_compose_files_in_the_repository_are_valid() -> None:
    from serves.compose import compose_command

    for name, env in (("docker-compose.yml", {}), ("docker-compose.experiment.yml", {"MODEL": "m", "GPU_UUID": "g"})):
        result = subprocess.run([*compose_command(), "-f", str(ROOT / "compose" / name), "config", "-q"],
                                env=child_env(**env), capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr


def test_load_shows_the_engine_starting_then_unload_stops_it() -> None:
    script = str(ROOT / "tests" / "support" / "scripted_upstream.py")
    engine = (f"import runpy, sys, time; print('warming up weights', flush=True); time.sleep(1.5); "
              f"runpy.run_path({script!r}, run_name='__main__')")
    Serve.objects.create(name="cli-load", tier="fast", runtime="process", port=free_port(), served_model="scripted",
                         command=[sys.executable, "-c", engine, "--port", "{port}"], ready_timeout=60)
    loaded = subprocess.run(manage("serves", "load", "cli-load"), env=child_env(), capture_output=True, text=True,
                            timeout=120)
    assert loaded.returncode == 0, loaded.stderr
    assert "cli-load: ok: started" in loaded.stdout
    # Not a terminal: the first bar line at once, naming the time budget and the engine's last words.
    assert "cli-load: loading [" in loaded.stderr and "/60 s" in loaded.stderr
    assert "warming up weights" in loaded.stderr
    assert Serve.objects.get(name="cli-load").model_state == "loaded"
    unloaded = subprocess.run(manage("serves", "unload", "cli-load"), env=child_env(), capture_output=True,
                              text=True, timeout=120)
    assert unloaded.returncode == 0 and "cli-load: ok" in unloaded.stdout, unloaded.stderr
    assert Serve.objects.get(name="cli-load").model_state == "unloaded"
