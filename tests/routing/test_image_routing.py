"""Images go only to serves that take them: what the summary sees, what the policy excludes, and the flag
the front door turns into a 400 modality_unsupported."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from routing.decide import decide, summarize
from routing.policy import PolicyConfig, PolicyInput, route
from routing.profile import Cell, Profile
from serves.catalog import ServeView

CONFIG = PolicyConfig()
PIXEL = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
ALLOW_CHAT = Profile(tiers={("fast", "chat"): Cell("allow"), ("heavy", "chat"): Cell("allow")})


def serve(name: str, tier: str = "fast", modalities: tuple[str, ...] = ("text",), state: str = "running",
          context: int | None = None) -> ServeView:
    return ServeView(id=hash(name) % 1000, name=name, tier=tier, engine="vllm", dialect="openai",
                     base_url="http://127.0.0.1:1/v1", served_model=name, api_key_env="", context_limit=context,
                     supports_tools=True, fingerprint="f", extra_body={}, is_local=True, state=state, health="ok",
                     created=0, modalities=modalities)


OPENAI_IMAGE = {"model": "auto", "messages": [{"role": "user", "content": [
    {"type": "text", "text": "what is this?"},
    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}"}}]}]}
ANTHROPIC_IMAGE = {"model": "auto", "max_tokens": 8, "messages": [{"role": "user", "content": [
    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PIXEL}},
    {"type": "text", "text": "what is this?"}]}]}
ANTHROPIC_TOOL_RESULT_IMAGE = {"model": "auto", "max_tokens": 8, "messages": [
    {"role": "user", "content": "take a screenshot"},
    {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "shot", "input": {}}]},
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PIXEL}}]}]}]}
RESPONSES_IMAGE = {"model": "auto", "input": [{"role": "user", "content": [
    {"type": "input_text", "text": "what is this?"},
    {"type": "input_image", "image_url": f"data:image/png;base64,{PIXEL}"}]}]}
RESPONSES_BARE_IMAGE = {"model": "auto", "input": [{"type": "input_image", "image_url": "https://example.com/a.png"}]}


@pytest.mark.parametrize("body", [OPENAI_IMAGE, ANTHROPIC_IMAGE, ANTHROPIC_TOOL_RESULT_IMAGE, RESPONSES_IMAGE,
                                  RESPONSES_BARE_IMAGE],
                         ids=["openai-image_url", "anthropic-image", "anthropic-tool_result", "responses",
                              "responses-bare-item"])
def test_image_content_is_seen_in_every_dialect(body: dict[str, Any]) -> None:
    assert summarize(body).has_images


def test_text_alone_is_not_image_content() -> None:
    assert not summarize({"messages": [{"role": "user", "content": [{"type": "text", "text": "an image_url"}]}]}
                         ).has_images
    assert not summarize({"input": "describe an image", "instructions": "be brief"}).has_images


def test_responses_input_is_read_as_the_users_text() -> None:
    summary = summarize({"input": [{"role": "user", "content": [{"type": "input_text", "text": "review this"}]}],
                         "instructions": "you review code"})
    assert summary.last_user_text == "review this" and "you review code" in summary.system_text
    assert summarize({"input": "plan the migration"}).last_user_text == "plan the migration"


def test_an_images_base64_does_not_count_as_context() -> None:
    huge = {"model": "auto", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 2_000_000}}]}]}
    summary = summarize(huge)
    assert summary.total_chars < 10_000
    decision = decide(huge, (serve("vision", modalities=("text", "image"), context=8192),), ALLOW_CHAT, (), CONFIG)
    assert [c.serve.name for c in decision.candidates] == ["vision"] and decision.work_class == "chat"


def test_images_go_only_to_serves_that_take_them() -> None:
    serves = (serve("text-only"), serve("vision", tier="heavy", modalities=("text", "image")))
    result = route(serves, ALLOW_CHAT, PolicyInput("chat", needs_images=True), CONFIG)
    assert [c.serve.name for c in result.candidates] == ["vision"]
    assert dict(result.excluded)["text-only"] == "images: the serve takes text only, not images"
    assert not result.modality_unsupported
    text = route(serves, ALLOW_CHAT, PolicyInput("chat"), CONFIG)
    assert [c.serve.name for c in text.candidates] == ["text-only", "vision"]  # text goes anywhere, cheapest first


def test_images_no_serve_takes_are_modality_unsupported_naming_each_serve() -> None:
    serves = (serve("fast-1"), serve("heavy-1", tier="heavy"))
    decision = decide(OPENAI_IMAGE, serves, ALLOW_CHAT, (), CONFIG)
    assert decision.modality_unsupported and not decision.candidates and not decision.too_large
    assert {name for name, _ in decision.excluded} == {"fast-1", "heavy-1"}
    assert decision.explain()["modality_unsupported"] is True


def test_images_to_a_named_text_only_model_go_to_its_fallback_that_takes_them_or_nowhere() -> None:
    serves = (serve("text-only"), serve("vision", tier="heavy", modalities=("text", "image")))
    decision = decide({**ANTHROPIC_IMAGE, "model": "text-only"}, serves, ALLOW_CHAT, (), CONFIG)
    assert not decision.candidates and decision.modality_unsupported  # a 400: no other model in its place
    allowed = (replace(serves[0], fallback_to=("vision",)), serves[1])
    decision = decide({**ANTHROPIC_IMAGE, "model": "text-only"}, allowed, ALLOW_CHAT, (), CONFIG)
    assert [c.serve.name for c in decision.candidates] == ["vision"]
    assert dict(decision.excluded)["text-only"].startswith("images: the serve takes text only")


def test_an_image_serve_that_is_denied_is_no_candidate_but_not_a_modality_refusal() -> None:
    serves = (serve("text-only"), serve("vision", tier="heavy", modalities=("text", "image")))
    profile = Profile(tiers={("fast", "chat"): Cell("allow"), ("heavy", "chat"): Cell("deny")})
    decision = decide(OPENAI_IMAGE, serves, profile, (), CONFIG)
    assert not decision.candidates and not decision.modality_unsupported  # a 503: a serve could, the policy says no


@pytest.mark.parametrize("kind", [["image_url"], {"image": 1}, 3, None])
def test_a_content_part_whose_type_is_not_a_string_is_not_an_image_and_raises_nothing(kind: object) -> None:
    # Found by the fuzz test (a list as "type" raised TypeError: unhashable, a 500).
    body = {"messages": [{"role": "user", "content": [{"type": kind, "image_url": {"url": "data:,"}}]}]}
    assert not summarize(body).has_images
