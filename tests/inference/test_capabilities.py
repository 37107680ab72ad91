"""Capabilities at the front door, through Anvil under Daphne with the official SDKs: images reach only
serves that take them (else a 400 modality_unsupported, before any upstream call), and /v1/models says
what each serve can take."""

from __future__ import annotations

import uuid

import anthropic
import httpx
import openai
import pytest

from inference.keys import create_key
from serves.models import Serve
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

PIXEL = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
OPENAI_IMAGE = [{"role": "user", "content": [
    {"type": "text", "text": "what is in this picture?"},
    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}"}}]}]
ANTHROPIC_IMAGE = [{"role": "user", "content": [
    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PIXEL}},
    {"type": "text", "text": "what is in this picture?"}]}]


@pytest.fixture
def key() -> str:
    return create_key(f"caps-{uuid.uuid4().hex[:6]}").secret


@pytest.fixture
def clients(anvil: str, key: str) -> tuple[openai.OpenAI, anthropic.Anthropic]:
    return (openai.OpenAI(base_url=f"{anvil}/v1", api_key=key, max_retries=0, timeout=30),
            anthropic.Anthropic(base_url=anvil, api_key=key, max_retries=0, timeout=30))


def make_serves(anvil: str, key: str, upstream: str, **vision: object) -> dict[str, str]:
    """A text-only serve on the cheap tier, and (given its fields) another on the heavy tier; waits until
    Anvil's web process lists them."""
    httpx.delete(f"{upstream}/_requests")
    tag = uuid.uuid4().hex[:6]
    names = {"text": f"text-{tag}"}
    Serve.objects.create(name=names["text"], tier="fast", base_url=f"{upstream}/v1", served_model="scripted")
    if vision:
        names["vision"] = f"vision-{tag}"
        Serve.objects.create(name=names["vision"], tier="heavy", base_url=f"{upstream}/v1", served_model="scripted",
                             **vision)

    def listed() -> bool:
        models = httpx.get(f"{anvil}/v1/models", headers={"x-api-key": key}, timeout=5).json()["data"]
        return {m["id"] for m in models} == set(names.values())

    wait_for(listed, 10, f"Anvil to list {sorted(names.values())}")
    return names


def upstream_requests(upstream: str) -> list[dict[str, object]]:
    return httpx.get(f"{upstream}/_requests", timeout=5).json()


def test_an_image_to_text_only_serves_is_a_400_modality_unsupported_in_each_dialect(
        anvil: str, upstream: str, key: str, clients: tuple[openai.OpenAI, anthropic.Anthropic]) -> None:
    names = make_serves(anvil, key, upstream)
    oa, an = clients
    with pytest.raises(openai.BadRequestError) as refused:
        oa.chat.completions.create(model="auto", messages=OPENAI_IMAGE)
    assert refused.value.code == "modality_unsupported" and refused.value.param == "messages"
    assert names["text"] in refused.value.message  # says which serve could not take it, and why
    with pytest.raises(openai.BadRequestError) as streamed:
        oa.chat.completions.create(model=names["text"], messages=OPENAI_IMAGE, stream=True)
    assert streamed.value.code == "modality_unsupported"
    with pytest.raises(anthropic.BadRequestError) as refused_anthropic:
        an.messages.create(model="auto", max_tokens=16, messages=ANTHROPIC_IMAGE)
    error = refused_anthropic.value.body["error"]
    assert error["type"] == "invalid_request_error" and "modality_unsupported" in error["message"]
    assert upstream_requests(upstream) == []  # refused before any upstream call
    answer = oa.chat.completions.create(model="auto", messages=[{"role": "user", "content": "hello"}])
    assert answer.choices[0].message.content  # text still goes to the text serve


def test_an_image_goes_to_the_serve_that_takes_images(
        anvil: str, upstream: str, key: str, clients: tuple[openai.OpenAI, anthropic.Anthropic]) -> None:
    names = make_serves(anvil, key, upstream, modalities=["text", "image"])
    oa, an = clients
    raw = oa.chat.completions.with_raw_response.create(model="auto", messages=OPENAI_IMAGE)
    assert raw.headers["x-anvil-served-by"] == names["vision"] and raw.parse().choices[0].message.content
    raw_text = oa.chat.completions.with_raw_response.create(model="auto",
                                                            messages=[{"role": "user", "content": "hello"}])
    assert raw_text.headers["x-anvil-served-by"] == names["text"]  # the cheaper tier, when it can take it
    raw_anthropic = an.messages.with_raw_response.create(model="auto", max_tokens=16, messages=ANTHROPIC_IMAGE)
    assert raw_anthropic.headers["x-anvil-served-by"] == names["vision"]
    assert raw_anthropic.parse().content[0].text
    sent = [request for request in upstream_requests(upstream) if request["path"] == "/v1/chat/completions"]
    images = [request for request in sent if "image_url" in str(request["body"])]
    assert len(images) == 2 and all(r["body"]["model"] == "scripted" for r in images)
    decision = httpx.post(f"{anvil}/v1/route", headers={"x-api-key": key}, timeout=5,
                          json={"model": "auto", "messages": OPENAI_IMAGE}).json()
    assert [c["serve"] for c in decision["candidates"]] == [names["vision"]]
    assert decision["excluded"] == [{"serve": names["text"], "why": "images: the serve takes text only, not images"}]


def test_models_say_what_each_serve_can_take_and_retrieve_finds_one(
        anvil: str, upstream: str, key: str, clients: tuple[openai.OpenAI, anthropic.Anthropic]) -> None:
    names = make_serves(anvil, key, upstream, modalities=["text", "image"], thinking="template",
                        responses_api=True, embeddings=True, context_limit=32768, supports_tools=False)
    oa, _ = clients
    listed = {model.id: model.to_dict() for model in oa.models.list()}
    assert set(listed) == set(names.values())
    vision = listed[names["vision"]]
    assert vision["object"] == "model" and vision["owned_by"] == "anvil"
    assert vision["anvil"] == {
        "tier": "heavy", "engine": "vllm", "served_model": "scripted", "state": "loaded", "runtime": "remote",
        "load_error": None, "health": "unknown",
        "capabilities": {"modalities": ["text", "image"], "tools": False, "thinking": "template", "embeddings": True,
                         "responses_api": True, "context_limit": 32768}}
    assert listed[names["text"]]["anvil"]["capabilities"] == {
        "modalities": ["text"], "tools": True, "thinking": None, "embeddings": False, "responses_api": False,
        "context_limit": None}
    one = oa.models.retrieve(names["vision"])
    assert one.to_dict() == vision
    assert oa.models.retrieve("scripted").id in names.values()  # a served model's name routes too
    with pytest.raises(openai.NotFoundError) as missing:
        oa.models.retrieve("no-such-model")
    assert missing.value.code == "model_not_found" and missing.value.param == "model"
    listed_again = httpx.get(f"{anvil}/v1/models/", headers={"x-api-key": key}, timeout=5).json()
    assert listed_again["object"] == "list" and len(listed_again["data"]) == 2
