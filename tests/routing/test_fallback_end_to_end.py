"""Verification, fallback and circuit breakers through Anvil under Daphne and real upstream processes."""

from __future__ import annotations

import json
import uuid

import httpx
import openai
import pytest
from django.forms.models import model_to_dict

from inference.keys import create_key
from routing.decision_log import drain_decisions
from routing.models import DecisionRecord
from serves.models import Serve
from tests.support.live import until_routed
from tests.support.profiles import allow_tiers
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
GOOD_TEXT = "".join(f"tok{i} " for i in range(8))


@pytest.fixture
def client(anvil: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{anvil}/v1", api_key=create_key(f"k{uuid.uuid4().hex[:6]}").secret,
                         max_retries=0, timeout=30)


def until_anvil_sees(anvil: str, names: set[str]) -> None:
    """Anvil's web process refreshes its serves in the background: wait until it lists exactly these."""
    key = create_key(f"w{uuid.uuid4().hex[:6]}").secret

    def listed() -> bool:
        models = httpx.get(f"{anvil}/v1/models", headers={"x-api-key": key}, timeout=5).json()["data"]
        return {m["id"] for m in models} == names

    wait_for(listed, 10, f"Anvil to list {sorted(names)}")


def two_serves(anvil: str, bad_url: str, good_url: str, extra: tuple[Serve, ...] = ()) -> tuple[str, str]:
    """A cheap serve that misbehaves and a heavier one that answers; both unmeasured: verified."""
    tag = uuid.uuid4().hex[:6]
    first, second = f"first-{tag}", f"second-{tag}"
    Serve.objects.create(name=first, tier="fast", base_url=f"{bad_url}/v1", served_model="bad")
    Serve.objects.create(name=second, tier="heavy", base_url=f"{good_url}/v1", served_model="good")
    until_anvil_sees(anvil, {first, second} | {serve.name for serve in Serve.objects.all()})
    return first, second


def record_for(request_id: str) -> DecisionRecord:
    """The request's decision record, drained from Redis as the Celery task does every second."""

    def written() -> DecisionRecord | None:
        drain_decisions()
        return DecisionRecord.objects.filter(request_id=request_id).first()

    return wait_for(written, 10, "the decision record to be written")


@pytest.mark.parametrize(("failure", "label"), [("error500", None), ("truncated", "truncated"),
                                                ("badjson", "tool-json-invalid")])
def test_the_client_sees_only_the_second_serve(anvil: str, client: openai.OpenAI, bad_upstreams: dict[str, str],
                                                good_upstream: str, failure: str, label: str | None) -> None:
    first, second = two_serves(anvil, bad_upstreams[failure], good_upstream)
    tools = TOOLS if failure == "badjson" else openai.NOT_GIVEN
    content = "weather? [[tool]]" if failure == "badjson" else "hello"
    raw = client.chat.completions.with_raw_response.create(model="auto", tools=tools,
                                                            messages=[{"role": "user", "content": content}])
    answer = raw.parse()
    assert raw.headers["x-anvil-served-by"] == second
    if failure == "badjson":
        assert answer.choices[0].message.tool_calls[0].function.arguments == '{"city": "Paris", "units": "c"}'
    else:
        assert answer.choices[0].message.content == GOOD_TEXT
    record = record_for(raw.headers["x-request-id"])
    assert str(record.id) == raw.headers["x-anvil-decision"]
    assert record.work_class == raw.headers["x-anvil-work-class"]
    assert [a["serve"] for a in record.attempts] == [first, second]
    assert [a["outcome"] for a in record.attempts] == ["fallback", "served"]
    if label:
        assert record.attempts[0]["verify"] == [label]
    else:
        assert record.attempts[0]["status"] == 500
    assert record.served_by == second and record.prompt_tokens == 11 and record.completion_tokens == 8
    stored = json.dumps(model_to_dict(record), default=str)
    assert content not in stored and "weather" not in stored  # metadata only, never the prompt


@pytest.mark.parametrize("failure", ["error500", "truncated", "badjson"])
def test_a_stream_from_a_failed_attempt_never_reaches_the_client(anvil: str, bad_upstreams: dict[str, str],
                                                                  good_upstream: str, failure: str) -> None:
    # Streams are held whole only where a measurement said allow-with-verify (an unmeasured serve
    # gets the prefix check and streams): measure both tiers so.
    allow_tiers("fast", "heavy", decision="allow-with-verify")
    first, second = two_serves(anvil, bad_upstreams[failure], good_upstream)
    key = create_key(f"s{uuid.uuid4().hex[:6]}").secret
    until_routed(anvil, key, {first: "allow-with-verify", second: "allow-with-verify"})
    body = {"model": "auto", "stream": True, "messages": [{"role": "user", "content": "hello"}]}
    if failure == "badjson":
        body.update(tools=TOOLS, messages=[{"role": "user", "content": "weather? [[tool]]"}])
    with httpx.stream("POST", f"{anvil}/v1/chat/completions", json=body, timeout=30,
                      headers={"authorization": f"Bearer {key}"}) as response:
        assert response.headers["x-anvil-served-by"] == second
        text = response.read().decode()
    # Each chunk names the model that answered (the serve's public id, not the engine's own "good"/"bad").
    assert f'"model": "{first}"' not in text and f'"model": "{second}"' in text and '"model": "good"' not in text
    assert text.rstrip().endswith("data: [DONE]")
    record = record_for(response.headers["x-request-id"])
    assert [a["outcome"] for a in record.attempts] == ["fallback", "served"]


def test_a_failing_serve_trips_its_breaker_and_is_skipped(anvil: str, client: openai.OpenAI,
                                                         bad_upstreams: dict[str, str], good_upstream: str) -> None:
    first, second = two_serves(anvil, bad_upstreams["error500"], good_upstream)
    ids = []
    for _ in range(4):
        raw = client.chat.completions.with_raw_response.create(model="auto",
                                                                messages=[{"role": "user", "content": "hi"}])
        ids.append(raw.headers["x-request-id"])
    outcomes = [[a["outcome"] for a in record_for(i).attempts] for i in ids]
    assert outcomes[:3] == [["fallback", "served"]] * 3
    assert outcomes[3] == ["skipped-circuit", "served"]  # three failures opened the circuit


def test_route_explains_without_calling_any_serve(anvil: str, bad_upstreams: dict[str, str],
                                                  good_upstream: str) -> None:
    Serve.objects.create(name="cloud-x", tier="cloud", engine="anthropic", dialect="anthropic",
                         base_url=f"{good_upstream}/v1", served_model="c")
    first, second = two_serves(anvil, bad_upstreams["error500"], good_upstream)
    httpx.delete(f"{good_upstream}/_requests")
    key = create_key(f"r{uuid.uuid4().hex[:6]}").secret

    def explain() -> dict:
        return httpx.post(f"{anvil}/v1/route", headers={"x-api-key": key}, timeout=10, json={
            "model": "anvil/planning", "messages": [{"role": "user", "content": "plan it"}]}).json()

    # An earlier test's profile rows are gone from the database; the web process sees that within
    # ANVIL_PROFILE_SYNC_INTERVAL (wait for it rather than race it).
    explained = wait_for(lambda: (found := explain())["candidates"] and
                         [c["serve"] for c in found["candidates"]] == ["cloud-x"] and found, 10,
                         "the default profile to be back")
    assert explained["work_class"] == "planning"
    assert [c["serve"] for c in explained["candidates"]] == ["cloud-x"]  # locals are denied planning
    assert {e["serve"] for e in explained["excluded"]} >= {first, second}
    assert httpx.get(f"{good_upstream}/_requests").json() == []  # nothing was called
