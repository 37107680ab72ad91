"""What a serve says it can take: the fields and their checks, the admin's form, the context limit the
status probe reads from the engine (and how the operator's wins), and state writes that the catalog sees."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.test import Client

from serves.catalog import load_enabled
from serves.models import Serve
from serves.probes import reported_context_limit
from serves.tasks import sweep_status
from tests.support.admin_forms import submitted_form
from tests.support.live import hrm_worker

pytestmark = pytest.mark.django_db


def remote(name: str = "r", **fields: object) -> Serve:
    return Serve.objects.create(name=name, tier="fast", base_url="http://127.0.0.1:9/v1", served_model="m", **fields)


def test_a_new_serve_is_a_plain_text_serve() -> None:
    remote()
    view = load_enabled()[0]
    assert (view.modalities, view.thinking, view.embeddings, view.responses_api, view.stream_verify) == (
        ("text",), "", False, False, "profile")
    assert not view.takes_images


@pytest.mark.parametrize(("field", "value"), [
    ("modalities", ["text", "video"]), ("modalities", []), ("modalities", "text"), ("modalities", ["text", "text"]),
    ("thinking", "always"), ("stream_verify", "sometimes"),
])
def test_capability_values_outside_their_set_are_refused_naming_the_field(field: str, value: object) -> None:
    serve = Serve(name="x", tier="fast", base_url="http://127.0.0.1:9/v1", served_model="m", **{field: value})
    with pytest.raises(ValidationError) as caught:
        serve.full_clean()
    assert set(caught.value.message_dict) == {field}


def test_the_operators_context_limit_wins_and_only_it_is_in_the_fingerprint() -> None:
    serve = remote()
    unprobed = serve.fingerprint()
    Serve.objects.filter(pk=serve.pk).write_state(context_limit_probed=32768)
    serve.refresh_from_db()
    assert serve.fingerprint() == unprobed  # a probe never makes measurements stale
    assert serve.effective_context_limit == 32768 and load_enabled()[0].context_limit == 32768
    serve.context_limit = 8192  # the operator may hold a serve below what the engine can do
    serve.save()
    assert serve.fingerprint() != unprobed
    assert load_enabled()[0].context_limit == 8192


def test_reported_context_limit_is_the_served_models_max_model_len() -> None:
    listed = [{"id": "other", "max_model_len": 4096}, {"id": "m", "object": "model", "max_model_len": 32768}]
    assert reported_context_limit(listed, "m") == 32768
    assert reported_context_limit(listed, "absent") is None
    assert reported_context_limit([{"id": "m"}], "m") is None  # OpenAI and most others do not say
    assert reported_context_limit([{"id": "m", "max_model_len": True}], "m") is None
    assert reported_context_limit([{"id": "m", "max_model_len": "8k"}], "m") is None


def test_a_state_write_bumps_updated_at_only_when_the_catalog_sees_a_change() -> None:
    serve = remote(state="unknown")
    stamp = Serve.objects.get(pk=serve.pk).updated_at
    Serve.objects.filter(pk=serve.pk).write_state(state="unknown", state_detail="checked again")
    assert Serve.objects.get(pk=serve.pk).updated_at == stamp  # an unchanged sweep reloads no snapshot
    assert Serve.objects.get(pk=serve.pk).state_detail == "checked again"
    Serve.objects.filter(pk=serve.pk).write_state(state="running", state_detail="up")
    after = Serve.objects.get(pk=serve.pk)
    assert after.state == "running" and after.updated_at > stamp


@pytest.mark.slow
def test_the_status_sweep_records_the_engines_context_limit_without_staling_profiles(module_logs: Path) -> None:
    with hrm_worker(module_logs) as (port, _):
        base = f"http://127.0.0.1:{port}/v1"
        reported = httpx.get(f"{base}/models", timeout=5).json()["data"][0]["max_model_len"]
        serve = Serve.objects.create(name="hrm", tier="fast", base_url=base, served_model="hrm-demo",
                                     supports_tools=False)
        fingerprint = serve.fingerprint()
        sweep_status()
        serve.refresh_from_db()
        assert (serve.health, serve.context_limit_probed) == ("ok", reported)
        assert serve.fingerprint() == fingerprint
        assert load_enabled()[0].context_limit == reported
        stamp = serve.updated_at
        sweep_status()  # nothing changed: the catalog's snapshots have nothing to reload
        assert Serve.objects.get(pk=serve.pk).updated_at == stamp
        Serve.objects.filter(pk=serve.pk).update(context_limit=64)
        sweep_status()
        assert load_enabled()[0].context_limit == 64  # the operator's value wins over the engine's
        assert Serve.objects.get(pk=serve.pk).context_limit_probed == reported
    sweep_status()  # the engine is gone: its last reported limit is kept, not forgotten
    gone = Serve.objects.get(pk=serve.pk)
    assert gone.health == "unreachable" and gone.context_limit_probed == reported


def test_the_admin_edits_capabilities_with_checkboxes() -> None:
    client = Client()
    client.force_login(get_user_model().objects.create_superuser("ops", "", "pw-for-tests-only"))
    serve = remote("vision", context_limit=4096)
    url = f"/admin/serves/serve/{serve.pk}/change/"
    shown = client.get(url)
    page = shown.content.decode()
    assert 'type="checkbox" name="modalities" value="image"' in page and 'name="stream_verify"' in page
    form = submitted_form(
        shown, modalities=["text", "image"], thinking="template", embeddings=True, stream_verify="strict",
        context_limit="",
    )
    answer = client.post(url, form)
    assert answer.status_code == 302, answer.content.decode()[:3000]
    serve.refresh_from_db()
    assert serve.modalities == ["text", "image"] and serve.thinking == "template" and serve.embeddings
    assert serve.stream_verify == "strict" and not serve.responses_api
    assert serve.context_limit is None  # cleared: the probed limit applies again
    refused = client.post(url, {**form, "modalities": ["video"]})
    assert refused.status_code == 200 and "Select a valid choice" in refused.content.decode()
