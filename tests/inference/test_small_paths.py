"""The rest of the surface clients call: trailing slashes, unknown paths, Server-Timing, embeddings and
Anthropic's count_tokens, each relayed through routing with a decision record."""

from __future__ import annotations

import uuid

import anthropic
import httpx
import openai
import pytest

from inference.keys import create_key
from routing.decision_log import drain_decisions
from routing.models import DecisionRecord
from serves.models import Serve
from tests.support.live import until_routed
from tests.support.profiles import allow_tiers
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture
def key() -> str:
    return create_key(f"paths-{uuid.uuid4().hex[:6]}").secret


@pytest.fixture
def names(anvil: str, key: str, upstream: str) -> dict[str, str]:
    tag = uuid.uuid4().hex[:5]
    chat, embed, anth = f"chat-{tag}", f"embed-{tag}", f"anth-{tag}"
    Serve.objects.create(name=chat, tier="fast", engine="openai", base_url=f"{upstream}/v1", served_model="up")
    Serve.objects.create(name=embed, tier="fast", base_url=f"{upstream}/v1", served_model="embedder", embeddings=True)
    Serve.objects.create(name=anth, tier="heavy", engine="anthropic", dialect="anthropic",
                         base_url=f"{upstream}/v1", served_model="claude-up")
    allow_tiers("fast", "heavy")
    until_routed(anvil, key, {chat: "allow", anth: "allow"})
    return {"chat": chat, "embed": embed, "anthropic": anth}


def test_a_trailing_slash_is_the_same_path(anvil: str, key: str, names: dict[str, str]) -> None:
    headers = {"authorization": f"Bearer {key}"}
    answer = httpx.post(f"{anvil}/v1/chat/completions/", headers=headers, timeout=20,
                        json={"model": names["chat"], "messages": [{"role": "user", "content": "hi"}]})
    assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"].startswith("tok0")
    assert httpx.get(f"{anvil}/v1/models/", headers=headers, timeout=10).status_code == 200


def test_unknown_paths_answer_json_in_the_clients_dialect(anvil: str, key: str) -> None:
    openai_side = httpx.post(f"{anvil}/v1/chat/complete", headers={"authorization": f"Bearer {key}"}, timeout=10)
    assert openai_side.status_code == 404 and openai_side.json()["error"]["code"] == "unknown_route"
    anthropic_side = httpx.get(f"{anvil}/v1/messages/batches", headers={"x-api-key": key}, timeout=10)
    assert anthropic_side.status_code == 404 and anthropic_side.json()["type"] == "error"


def test_every_response_carries_server_timing(anvil: str, key: str, names: dict[str, str]) -> None:
    answer = httpx.post(f"{anvil}/v1/chat/completions", headers={"authorization": f"Bearer {key}"}, timeout=20,
                        json={"model": names["chat"], "messages": [{"role": "user", "content": "hi"}]})
    phases = dict(part.strip().split(";dur=") for part in answer.headers["server-timing"].split(","))
    assert set(phases) == {"decide", "upstream", "total"}
    assert 0 <= float(phases["decide"]) <= float(phases["total"]) and float(phases["upstream"]) > 0
    refused = httpx.post(f"{anvil}/v1/chat/completions", headers={"authorization": f"Bearer {key}"}, timeout=20,
                         json={"model": "nope", "messages": [{"role": "user", "content": "hi"}]})
    assert "total;dur=" in refused.headers["server-timing"]


def test_embeddings_reach_only_serves_that_declare_them(anvil: str, key: str, names: dict[str, str],
                                                       upstream: str) -> None:
    client = openai.OpenAI(base_url=f"{anvil}/v1", api_key=key, max_retries=0, timeout=20)

    def served() -> object:
        return client.embeddings.create(model=names["embed"], input=["a", "bbbb"])

    result = wait_for(served, 10, "Anvil to see the embeddings serve")
    assert [row.embedding[0] for row in result.data] == [0.1, 0.4]
    assert httpx.get(f"{upstream}/_requests").json()[-1]["body"]["model"] == "embedder"
    with pytest.raises(openai.NotFoundError, match="cannot answer /v1/embeddings"):
        client.embeddings.create(model=names["chat"], input="a")

    def recorded() -> bool:
        drain_decisions()
        return DecisionRecord.objects.filter(endpoint="embeddings", served_by=names["embed"]).exists()

    wait_for(recorded, 10, "the embeddings request's decision record")


def test_count_tokens_is_answered_by_the_serve_that_would_answer(anvil: str, key: str, names: dict[str, str],
                                                                 upstream: str) -> None:
    client = anthropic.Anthropic(base_url=anvil, api_key=key, max_retries=0, timeout=20)
    counted = client.messages.count_tokens(model=names["anthropic"],
                                           messages=[{"role": "user", "content": "hello"}])
    assert counted.input_tokens == 13  # the Anthropic upstream's own count
    assert httpx.get(f"{upstream}/_requests").json()[-1]["path"] == "/v1/messages/count_tokens"
    with pytest.raises(anthropic.BadRequestError, match="cannot count its tokens"):
        client.messages.count_tokens(model=names["chat"], messages=[{"role": "user", "content": "hello"}])
