"""A refusal the quality profile causes says so and names the cell; it never reads as open circuit breakers.

The lockout of issue 18: a promoted profile denied the only local serve chat, and requests first got
"Every candidate serve is unavailable (open circuit breakers)". The denied serve never reached the
breakers: the profile filtered it out, the request went to the gated pool (serves that were down),
and their open breakers were all the message said. Now both causes are named.
"""

from __future__ import annotations

import uuid

import httpx
import pytest
from django.conf import settings

from inference.keys import create_key
from inference.serving import refusal
from routing.decide import decide
from routing.models import ProfileEntry
from routing.policy import PolicyConfig
from routing.profile import Cell, Profile
from serves.models import Serve
from tests.routing.test_policy import serve
from tests.support.breakers import forget_breakers
from tests.support.live import until_routed
from tests.support.waiting import wait_for

CHAT = {"messages": [{"role": "user", "content": "hello there"}]}
DENIED = Profile(serves={("only", "chat"): Cell("deny", 0.0, 1, source="evals: preflight run 3")})


def test_a_refusal_caused_by_the_profile_names_the_cell_quality_and_samples() -> None:
    decision = decide({"model": "auto", **CHAT}, (serve("only"),), DENIED, (), PolicyConfig())
    assert not decision.candidates
    error = refusal(decision, "only")
    assert error.status_code == 503 and error.code == "profile_denied"
    assert error.message.startswith("No serve may answer this chat request: the quality profile denies serve "
                                    "only × chat (quality 0.00, 1 samples; evals: preflight run 3).")
    assert "python manage.py profile revert ID" in error.message and "circuit" not in error.message
    assert decision.explain()["denied_by_profile"] == [{"serve": "only", "why": decision.denied[0][1]}]


def test_a_tier_cell_and_the_fail_closed_default_are_named_as_the_profiles_doing() -> None:
    tier = Profile(tiers={("fast", "chat"): Cell("deny", 0.4, 12)})
    decision = decide({"model": "auto", **CHAT}, (serve("only"),), tier, (), PolicyConfig())
    assert "the quality profile denies tier fast × chat, which serve only is in (quality 0.40, 12 samples)" \
        in refusal(decision, "only").message
    planning = decide({"model": "anvil/planning", **CHAT}, (serve("only"),), Profile(), (), PolicyConfig())
    message = refusal(planning, "only").message
    assert "the quality profile's default denies planning to serve only" in message and "fail-closed" in message


def test_breakers_open_on_the_rest_of_the_pool_still_name_the_denied_cell() -> None:
    decision = decide({"model": "auto", **CHAT}, (serve("only"), serve("spare", tier="heavy")), DENIED, (),
                      PolicyConfig())
    assert [c.serve.name for c in decision.candidates] == ["spare"]  # the denied serve is not a candidate
    error = refusal(decision, "", circuits_open=("spare",))
    assert error.message.startswith("Every candidate serve is unavailable (open circuit breakers: spare); retry "
                                    "shortly. Not tried: the quality profile denies serve only × chat (quality 0.00")
    assert (b"retry-after", str(int(settings.ANVIL_BREAKER_COOLDOWN) or 1).encode()) in error.headers


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_through_the_front_door_a_denied_serve_with_a_dead_pool_says_both(anvil: str) -> None:
    tag = uuid.uuid4().hex[:6]
    only, spare = f"only-{tag}", f"spare-{tag}"
    Serve.objects.create(name=only, tier="fast", base_url="http://127.0.0.1:9/v1", served_model="m")
    Serve.objects.create(name=spare, tier="heavy", base_url="http://127.0.0.1:9/v1", served_model="s")  # down
    ProfileEntry.objects.create(profile="live", kind="serve", subject=only, work_class="chat", decision="deny",
                                quality=0.0, samples=1, source="evals: preflight run 3")
    key = create_key(f"k{tag}").secret
    until_routed(anvil, key, {spare: "allow-with-verify"})
    body = {"model": "auto", "max_tokens": 4, **CHAT}

    def chat(model: str = "auto") -> httpx.Response:
        return httpx.post(f"{anvil}/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                          json={**body, "model": model}, timeout=30)

    try:
        # Naming the denied model: the profile's refusal, never the other serve's answer (or its failure).
        named = chat(only)
        assert named.status_code == 503 and named.json()["error"]["code"] == "profile_denied", named.text
        assert spare not in named.json()["error"]["message"].split("Also excluded")[0]
        # The spare is down: each attempt fails until its breaker opens.
        wait_for(lambda: chat().status_code == 503, 30, "the spare's breaker to open")
        answer = chat()
        message = answer.json()["error"]["message"]
        assert answer.status_code == 503, answer.text
        assert f"open circuit breakers: {spare}" in message
        assert f"Not tried: the quality profile denies serve {only} × chat (quality 0.00, 1 samples" in message
    finally:
        forget_breakers(spare)
