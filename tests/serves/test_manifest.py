"""serves.toml import (idempotent, all or nothing, errors naming entry and field) and export."""

from __future__ import annotations

from pathlib import Path

import pytest

from serves.manifest import ManifestError, export_manifest, import_manifest, import_rows, parse_manifest
from serves.models import Serve
from tests.support.processes import ROOT

pytestmark = pytest.mark.django_db

EXAMPLE = ROOT / "compose" / "serves.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "serves.toml"
    path.write_text(text)
    return path


REMOTE = '[[serve]]\nname = "a"\nmodel = "m"\nbase_url = "http://127.0.0.1:9/v1"\n'

SEED_ENTRY = """
[[serve]]
name = "fast"
container = "vllm-gptoss"
port = 30001
model = "gpt-oss-20b"
health = "/health"
up = "docker compose -f {dir}/docker-compose.yml up -d fast"
"""


def test_the_seed_format_imports_with_dir_expanded_and_defaults_filled(tmp_path: Path) -> None:
    report = import_manifest(write(tmp_path, SEED_ENTRY))
    assert report.created == ["fast"]
    serve = Serve.objects.get(name="fast")
    assert serve.compose_file == f"{tmp_path}/docker-compose.yml" and serve.compose_service == "fast"
    assert serve.tier == "fast" and serve.engine == "vllm" and serve.dialect == "openai"
    assert serve.effective_base_url == "http://127.0.0.1:30001/v1" and serve.server_root == "http://127.0.0.1:30001"


def test_import_is_idempotent_and_reports_changes_by_field(tmp_path: Path) -> None:
    assert import_manifest(EXAMPLE).created == ["fast", "heavy", "hrm-demo", "claude"]
    again = import_manifest(EXAMPLE)
    assert again.unchanged == ["fast", "heavy", "hrm-demo", "claude"] and not again.created and not again.changed
    edited = EXAMPLE.read_text().replace("context_limit = 65536", "context_limit = 32768")
    edited = edited.replace('groups = ["gpu0", "coding"]\n', "").replace("{dir}", str(EXAMPLE.parent))
    report = import_manifest(write(tmp_path, edited))
    assert report.changed == {"fast": ["groups", "context_limit"]}
    assert report.unchanged == ["heavy", "hrm-demo", "claude"]
    fast = Serve.objects.get(name="fast")
    assert fast.context_limit == 32768 and fast.groups == []  # a key left out is reset, not kept


def test_a_remote_upstream_has_a_base_url_and_no_container() -> None:
    import_manifest(EXAMPLE)
    claude = Serve.objects.get(name="claude")
    assert not claude.is_local and claude.dialect == "anthropic" and claude.enabled is False
    assert claude.api_key_env == "ANTHROPIC_API_KEY"  # the name of the variable, never a key


def test_export_then_import_changes_nothing() -> None:
    import_manifest(EXAMPLE)
    exported = export_manifest(list(Serve.objects.all()), EXAMPLE.parent)
    assert "{dir}/docker-compose.yml" in exported
    report = import_rows(parse_manifest(exported, EXAMPLE.parent))  # as if read back from compose/
    assert sorted(report.unchanged) == ["claude", "fast", "heavy", "hrm-demo"] and not report.changed


@pytest.mark.parametrize(
    ("text", "entry", "field"),
    [
        ('[[serve]]\nname = "a"\nmodel = "m"\nport = 1\ncontainer = "c"\nmodle = "x"\n', "#1 ('a')", "modle"),
        ('[[serve]]\nname = "a"\nport = 1\n', "#1 ('a')", "model"),
        ('[[serve]]\nname = "a"\nmodel = "m"\nport = "8000"\nbase_url = "http://h/v1"\n', "#1 ('a')", "port"),
        ('[[serve]]\nname = "a"\nmodel = "m"\nbase_url = "http://h/v1"\n'
         '[[serve]]\nname = "a"\nmodel = "n"\nbase_url = "http://h/v1"\n', "#2 ('a')", "name"),
        ('[[serve]]\nname = "a"\nmodel = "m"\ncontainer = "c"\nport = 1\nup = "bash start.sh"\n', "#1 ('a')", "up"),
        ('[[serve]]\nname = "a b"\nmodel = "m"\nbase_url = "http://h/v1"\n', "'a b'", "name"),
        ('[[serve]]\nname = "a"\nmodel = "m"\nengine = "tgi"\nbase_url = "http://h/v1"\n', "'a'", "engine"),
        (REMOTE + 'modalities = "image"\n', "#1 ('a')", "modalities"),
        (REMOTE + 'modalities = ["text", "video"]\n', "'a'", "modalities"),
        (REMOTE + 'modalities = []\n', "'a'", "modalities"),
        (REMOTE + 'thinking = "always"\n', "'a'", "thinking"),
        (REMOTE + 'stream_verify = "maybe"\n', "'a'", "stream_verify"),
        (REMOTE + 'embeddings = "yes"\n', "#1 ('a')", "embeddings"),
    ],
)
def test_bad_entries_are_refused_naming_entry_and_field(tmp_path: Path, text: str, entry: str, field: str) -> None:
    with pytest.raises(ManifestError) as caught:
        import_manifest(write(tmp_path, text))
    assert caught.value.entry == entry and caught.value.field == field, str(caught.value)


def test_bad_toml_is_refused_with_its_position(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="not valid TOML.*line 2"):
        import_manifest(write(tmp_path, '[[serve]]\nname = "a\n'))


def test_nothing_is_half_imported(tmp_path: Path) -> None:
    text = ('[[serve]]\nname = "good"\nmodel = "m"\nbase_url = "http://127.0.0.1:9/v1"\n'
            '[[serve]]\nname = "bad"\nmodel = "m"\ncontainer = "c"\n')  # a container with no port
    with pytest.raises(ManifestError, match="serve 'bad', field 'port'"):
        import_manifest(write(tmp_path, text))
    assert not Serve.objects.exists()


def test_an_arbitrary_up_command_imports_only_when_trusted(tmp_path: Path) -> None:
    text = ('[[serve]]\nname = "script"\nmodel = "m"\ncontainer = "c"\nport = 9000\n'
            'up = "/opt/start-model.sh --port 9000"\ntrusted_command = true\n')
    import_manifest(write(tmp_path, text))
    serve = Serve.objects.get(name="script")
    assert serve.up_command == "/opt/start-model.sh --port 9000" and not serve.uses_compose


CAPABLE = """
[[serve]]
name = "vision"
tier = "heavy"
base_url = "http://127.0.0.1:30002/v1"
model = "qwen2-vl"
modalities = ["image", "text"]
thinking = "template"
embeddings = true
responses_api = true
stream_verify = "prefix"
"""


def test_capabilities_round_trip_through_export_and_import(tmp_path: Path) -> None:
    assert import_manifest(write(tmp_path, CAPABLE)).created == ["vision"]
    serve = Serve.objects.get(name="vision")
    assert serve.modalities == ["text", "image"]  # kept in one order
    assert (serve.thinking, serve.embeddings, serve.responses_api, serve.stream_verify) == (
        "template", True, True, "prefix")
    exported = export_manifest([serve])
    for line in ('modalities = ["text", "image"]', 'thinking = "template"', "embeddings = true",
                 "responses_api = true", 'stream_verify = "prefix"'):
        assert line in exported
    report = import_rows(parse_manifest(exported, tmp_path))
    assert report.unchanged == ["vision"] and not report.changed


def test_capabilities_left_out_are_a_plain_text_serves_and_are_not_exported(tmp_path: Path) -> None:
    import_manifest(write(tmp_path, CAPABLE))
    plain = "\n".join(line for line in CAPABLE.splitlines() if line.split(" = ")[0] in (
        "[[serve]]", "name", "tier", "base_url", "model"))
    report = import_manifest(write(tmp_path, plain))
    assert report.changed == {"vision": ["modalities", "thinking", "embeddings", "responses_api", "stream_verify"]}
    serve = Serve.objects.get(name="vision")
    assert (serve.modalities, serve.thinking, serve.embeddings, serve.responses_api, serve.stream_verify) == (
        ["text"], "", False, False, "profile")
    exported = export_manifest([serve])
    assert not any(key in exported for key in ("modalities", "thinking", "embeddings", "responses_api",
                                               "stream_verify"))


def test_a_reordered_modalities_list_is_no_change(tmp_path: Path) -> None:
    import_manifest(write(tmp_path, CAPABLE))
    report = import_manifest(write(tmp_path, CAPABLE.replace('["image", "text"]', '["text", "image"]')))
    assert report.unchanged == ["vision"]


def test_the_probed_context_limit_is_not_the_manifests(tmp_path: Path) -> None:
    import_manifest(write(tmp_path, CAPABLE))
    Serve.objects.filter(name="vision").write_state(context_limit_probed=32768)
    serve = Serve.objects.get(name="vision")
    assert "context_limit" not in export_manifest([serve])  # state, not configuration
    assert import_manifest(write(tmp_path, CAPABLE)).unchanged == ["vision"]
    assert Serve.objects.get(name="vision").context_limit_probed == 32768  # an import leaves the probe's value
