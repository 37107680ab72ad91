"""A serve's api_key_env may name only a variable made for an upstream key, never one of Anvil's settings.

The defect: ``api_key_env = "DATABASE_URL"`` sent the database URL, password included, to the
upstream as a bearer token. Every way in (manifest, admin, model validation) refuses such a
name, a row written before the rule is reported by ``anvil.E009`` and stops start-up, and the
status probe sends no key for it.
"""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core import checks
from django.core.exceptions import ValidationError
from django.test import Client

from serves.manifest import ManifestError, import_manifest
from serves.models import Serve
from serves.probes import probe
from serves.upstream_keys import (
    ForbiddenUpstreamKeyName,
    is_allowed_upstream_key_name,
    read_upstream_key,
    upstream_key_name_problem,
)
from tests.support.admin_forms import submitted_form
from tests.support.processes import ROOT, child_env, manage

ALLOWED = ["OPENAI_API_KEY", "ANTHROPIC_API_KEY", "ANVIL_UPSTREAM_KEY_CLAUDE", "MY_LAB_API_KEY"]
REFUSED = ["DATABASE_URL", "REDIS_URL", "DJANGO_SECRET_KEY", "ANVIL_ADMIN_PASSWORD", "ANVIL_BIND",
           "ANVIL_ADMIN_API_KEY", "DJANGO_API_KEY", "HOME", "PATH", "AWS_SECRET_ACCESS_KEY", "OPENAI_KEY",
           "openai_api_key", "_API_KEY", "ANVIL_UPSTREAM_KEY_", "sk-live-0123456789", "OPENAI API KEY"]


@pytest.mark.parametrize("name", ALLOWED)
def test_names_made_for_upstream_keys_are_allowed(name: str) -> None:
    assert upstream_key_name_problem(name) is None and is_allowed_upstream_key_name(name)


@pytest.mark.parametrize("name", REFUSED)
def test_anvil_settings_and_other_variables_are_refused(name: str) -> None:
    assert upstream_key_name_problem(name) is not None and not is_allowed_upstream_key_name(name)


def test_blank_means_no_key_and_is_allowed_but_not_a_name() -> None:
    assert upstream_key_name_problem("") is None and not is_allowed_upstream_key_name("")
    assert read_upstream_key("") == ""


def test_a_pasted_key_is_not_repeated_in_the_message() -> None:
    problem = upstream_key_name_problem("sk_live_abcdef0123456789")
    assert problem is not None and "sk_live_abcdef0123456789" not in problem


def test_reading_a_refused_name_raises_instead_of_reading_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgres://anvil:hunter2@db/anvil")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-upstream")
    with pytest.raises(ForbiddenUpstreamKeyName, match="DATABASE_URL"):
        read_upstream_key("DATABASE_URL")
    assert read_upstream_key("OPENAI_API_KEY") == "sk-upstream"


MANIFEST = """
[[serve]]
name = "openai"
base_url = "https://api.openai.com/v1"
model = "gpt-4o"
engine = "openai"
api_key_env = "OPENAI_API_KEY"

[[serve]]
name = "leaky"
base_url = "https://evil.example.com/v1"
model = "m"
engine = "openai"
api_key_env = "DATABASE_URL"
"""


@pytest.mark.django_db
def test_manifest_naming_database_url_is_refused_naming_entry_and_field_and_imports_nothing(tmp_path: Path) -> None:
    path = tmp_path / "serves.toml"
    path.write_text(MANIFEST)
    with pytest.raises(ManifestError) as refused:
        import_manifest(path)
    message = str(refused.value)
    assert message.startswith("serve #2 ('leaky'), field 'api_key_env': ")
    assert "DATABASE_URL" in message and "ANVIL_UPSTREAM_KEY_" in message and "_API_KEY" in message
    assert refused.value.field == "api_key_env"
    assert not Serve.objects.exists()  # not even the good entry before it


@pytest.mark.django_db
def test_model_validation_refuses_a_variable_not_named_for_keys() -> None:
    serve = Serve(name="remote", tier="cloud", engine="openai", base_url="https://api.example.com/v1",
                  served_model="m", api_key_env="ANVIL_ADMIN_PASSWORD")
    with pytest.raises(ValidationError) as refused:
        serve.full_clean()
    assert list(refused.value.message_dict) == ["api_key_env"]
    serve.api_key_env = "ANVIL_UPSTREAM_KEY_REMOTE"
    serve.full_clean()


def _add_form(client: Client, api_key_env: str) -> dict[str, object]:
    return submitted_form(
        client.get("/admin/serves/serve/add/"), name="remote", tier="cloud", engine="openai", dialect="openai",
        base_url="https://api.example.com/v1", served_model="m", api_key_env=api_key_env,
    )


@pytest.mark.django_db
def test_admin_form_refuses_an_anvil_setting_as_api_key_env() -> None:
    client = Client()
    client.force_login(get_user_model().objects.create_superuser("ops", "", "pw-for-tests-only"))
    refused = client.post("/admin/serves/serve/add/", _add_form(client, "DJANGO_SECRET_KEY"))
    assert refused.status_code == 200  # the form again, with the error on the field
    errors = refused.context["adminform"].form.errors
    assert list(errors) == ["api_key_env"] and "DJANGO_SECRET_KEY" in errors["api_key_env"][0]
    assert not Serve.objects.exists()
    accepted = client.post("/admin/serves/serve/add/", _add_form(client, "OPENAI_API_KEY"))
    assert accepted.status_code == 302
    assert Serve.objects.get(name="remote").api_key_env == "OPENAI_API_KEY"


def _anvil_errors(**kwargs: object) -> list[checks.CheckMessage]:
    return [m for m in checks.run_checks(tags=["anvil"], **kwargs) if m.id == "anvil.E009"]


def _row_from_before_the_rule(name: str, variable: str) -> Serve:
    serve = Serve.objects.create(name=name, tier="cloud", engine="openai", base_url="http://127.0.0.1:9/v1",
                                 served_model="m")
    Serve.objects.filter(pk=serve.pk).update(api_key_env=variable)  # as an older Anvil could have written it
    serve.refresh_from_db()
    return serve


@pytest.mark.django_db
def test_system_check_reports_existing_rows_with_a_forbidden_name() -> None:
    _row_from_before_the_rule("leaky", "DATABASE_URL")
    _row_from_before_the_rule("fine", "OPENAI_API_KEY")
    found = _anvil_errors(databases=["default"])
    assert len(found) == 1 and found[0].is_serious()
    assert "serve 'leaky'" in found[0].msg and "api_key_env" in found[0].msg and "DATABASE_URL" in found[0].msg
    assert "serves import" in found[0].hint
    assert _anvil_errors() == []  # like Django's own, a check that reads rows runs only when given a database


@pytest.mark.django_db(transaction=True)
def test_launcher_refuses_to_start_while_a_row_names_a_forbidden_variable(tmp_path: Path) -> None:
    _row_from_before_the_rule("leaky", "REDIS_URL")
    result = subprocess.run(manage("runstack"), cwd=ROOT, env=child_env(ANVIL_VAR_DIR=str(tmp_path)),
                            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode == 2, result.stderr
    assert "anvil.E009" in result.stderr and "serve 'leaky'" in result.stderr
    assert not (tmp_path / "redis.sock").exists()  # refused before it started anything


class _Recorder(BaseHTTPRequestHandler):
    seen: list[dict[str, str]] = []

    def do_GET(self) -> None:  # noqa: N802  (http.server's name)
        self.seen.append(dict(self.headers))
        body = json.dumps({"object": "list", "data": [{"id": "m"}]}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def recording_upstream() -> Iterator[tuple[str, list[dict[str, str]]]]:
    """An upstream that answers /v1/models and records the headers it was sent (the protocol boundary)."""
    seen: list[dict[str, str]] = []
    handler = type("Recorder", (_Recorder,), {"seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.mark.django_db
def test_status_probe_sends_no_key_for_a_forbidden_row(recording_upstream: tuple[str, list[dict[str, str]]],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    url, seen = recording_upstream
    monkeypatch.setenv("DATABASE_URL", "postgres://anvil:hunter2@db/anvil")
    monkeypatch.setenv("ANVIL_UPSTREAM_KEY_REMOTE", "sk-upstream")
    serve = _row_from_before_the_rule("leaky", "DATABASE_URL")
    serve.base_url = url
    assert probe(serve).model_ids == ("m",)
    assert not any("hunter2" in value for headers in seen for value in headers.values())
    assert all("authorization" not in (k.lower() for k in headers) for headers in seen)
    serve.api_key_env = "ANVIL_UPSTREAM_KEY_REMOTE"
    seen.clear()
    probe(serve)
    assert seen and all({k.lower(): v for k, v in headers.items()}.get("authorization") == "Bearer sk-upstream"
                        for headers in seen)
