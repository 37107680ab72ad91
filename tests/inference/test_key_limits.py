"""A key's reach, rate limits and budget, with real processes: two Anvil web processes under Daphne on one Redis and one
database, a scripted upstream (usage: 11 prompt tokens, 8 completion tokens) as a local serve and as a
metered ``cloud`` serve, the official SDKs as clients.

* rpm is shared by the web processes: the sixth request in a minute is refused whichever takes it, with a
  Retry-After that says when one comes back, and OpenAI's x-ratelimit-* headers on every answer;
* tokens are reserved (prompt + max_tokens) and corrected to the usage when the request ends; a request
  that reserves more than is left, or more than the whole limit, is refused up front;
* max_concurrent counts across the web processes;
* reach (globs over names, aliases and tiers) holds for named models (403 model_not_allowed in both
  dialects), for auto, and for /v1/models; allow_remote keeps a key off the metered tier even for planning
  work the policy sends there, and a request's own allow_remote narrows, never widens;
* a budget: a serve priced at $100 per million tokens spends a $0.01 budget, then the key gets
  insufficient_quota (OpenAI's 429, Anthropic's spend-limit 400), overshooting by at most one request;
  the spend is in the decision records, /api/usage/ and `apikey usage`.
"""

from __future__ import annotations

import io
import threading
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import anthropic
import httpx
import openai
import pytest
from django.core.management import call_command

from inference.keys import create_key
from inference.models import ApiKey as ApiKeyRow
from routing.decision_log import drain_decisions
from routing.models import DecisionRecord
from serves.models import Serve
from tests.support.breakers import forget_breakers
from tests.support.live import live_anvil, scripted_upstream, until_routed
from tests.support.profiles import allow_tiers
from tests.support.waiting import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

HI = [{"role": "user", "content": "hi"}]
PLAN = [{"role": "user", "content": "Plan the architecture and roadmap for a billing service: design trade-offs."}]


@pytest.fixture(scope="module")
def anvils(django_db_setup: None, django_db_blocker: object, module_logs: Path) -> Iterator[tuple[str, str]]:
    settings = {"ANVIL_SERVE_SYNC_INTERVAL": "0.2", "ANVIL_KEY_SYNC_INTERVAL": "0.2"}
    with live_anvil(module_logs, **settings) as one, live_anvil(module_logs, **settings) as two:
        yield one, two


@pytest.fixture(scope="module")
def slow_upstream(module_logs: Path) -> Iterator[str]:
    with scripted_upstream(module_logs, deltas=8, delay_ms=250) as url:
        yield url


@pytest.fixture
def serves(anvils: tuple[str, str], upstream: str, slow_upstream: str) -> dict[str, Serve]:
    forget_breakers("local", "cloud", "slow")
    allow_tiers("fast", "cloud")
    made = {
        "local": Serve.objects.create(name="local", tier="fast", engine="vllm", base_url=f"{upstream}/v1",
                                      served_model="up-model"),
        "cloud": Serve.objects.create(name="cloud", tier="cloud", engine="openai", base_url=f"{upstream}/v1",
                                      served_model="gpt-up"),
        "slow": Serve.objects.create(name="slow", tier="fast", engine="vllm", base_url=f"{slow_upstream}/v1",
                                     served_model="slow-model"),
        "pricey": Serve.objects.create(name="pricey", tier="fast", engine="vllm", base_url=f"{upstream}/v1",
                                       served_model="up-model", price_input=100, price_output=100),
    }
    plain = create_key(f"plain-{uuid.uuid4().hex[:6]}").secret
    for anvil in anvils:
        until_routed(anvil, plain, {"local": "allow", "slow": "allow", "pricey": "allow"})
        until_routed(anvil, plain, {"cloud": "allow"}, prompt=PLAN[0]["content"])  # metered: planning only
    return made


def key(**settings: object) -> str:
    return create_key(f"k-{uuid.uuid4().hex[:8]}", **settings).secret


def chat(anvil: str, secret: str, **body: object) -> httpx.Response:
    return httpx.post(f"{anvil}/v1/chat/completions", headers={"authorization": f"Bearer {secret}"}, timeout=30,
                      json={"model": "local", "messages": HI, **body})


def test_requests_per_minute_hold_across_web_processes(anvils: tuple[str, str], serves: dict[str, Serve]) -> None:
    secret = key(rpm=5)
    remaining = []
    for n in range(5):
        answer = chat(anvils[n % 2], secret)
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-ratelimit-limit-requests"] == "5"
        remaining.append(int(answer.headers["x-ratelimit-remaining-requests"]))
        assert answer.headers["x-ratelimit-reset-requests"].endswith("s")
    assert remaining == [4, 3, 2, 1, 0]
    for anvil in anvils:  # the sixth, whichever process takes it
        client = openai.OpenAI(base_url=f"{anvil}/v1", api_key=secret, max_retries=0, timeout=30)
        with pytest.raises(openai.RateLimitError) as refused:
            client.chat.completions.create(model="local", messages=HI)
        assert refused.value.body["code"] == "rate_limit_exceeded"  # type: ignore[index]
        assert "5 requests per minute" in refused.value.message
        # One request comes back every 12 s; five were taken within a few seconds.
        assert 8 <= int(refused.value.response.headers["retry-after"]) <= 12
    messages = anthropic.Anthropic(base_url=anvils[1], api_key=secret, max_retries=0, timeout=30)
    with pytest.raises(anthropic.RateLimitError) as in_dialect:
        messages.messages.create(model="local", max_tokens=8, messages=HI)
    assert in_dialect.value.response.headers["retry-after"]
    # Another key is not touched by this one's limit.
    assert chat(anvils[0], key(rpm=5)).status_code == 200


def test_tokens_are_reserved_then_corrected_to_the_usage(anvils: tuple[str, str], serves: dict[str, Serve]) -> None:
    secret = key(tpm=1000)
    too_large = chat(anvils[0], secret, max_tokens=5000)
    assert too_large.status_code == 429 and too_large.json()["error"]["code"] == "tokens_exceed_limit"
    assert "more than this API key's 1000 tokens per minute" in too_large.json()["error"]["message"]
    first = chat(anvils[0], secret, max_tokens=600)
    assert first.status_code == 200
    left = int(first.headers["x-ratelimit-remaining-tokens"])
    assert 370 <= left <= 400  # 1000 less the prompt's estimate and the 600 reserved
    # The answer used 19 tokens: the rest of the reservation goes back, so the same request fits again
    # at once (without the correction it would wait ~13 s for the bucket to refill).
    second: list[httpx.Response] = []
    wait_for(lambda: second.append(chat(anvils[1], secret, max_tokens=600)) or second[-1].status_code == 200, 3,
             "the reservation to be corrected to the usage")
    # 1000 - 19 used - 612 reserved, less the 50 the first process may hold ahead (its grant).
    assert int(second[-1].headers["x-ratelimit-remaining-tokens"]) >= 300
    # Reserving more than is left (~960 after two answers of 19 tokens) is refused up front, with the wait.
    third = chat(anvils[0], secret, max_tokens=985)
    assert third.status_code == 429 and "more than is left" in third.json()["error"]["message"]
    assert int(third.headers["retry-after"]) >= 1


def test_concurrent_requests_are_counted_across_web_processes(anvils: tuple[str, str],
                                                              serves: dict[str, Serve]) -> None:
    secret = key(max_concurrent=1)
    started, done = threading.Event(), threading.Event()

    def hold() -> None:
        with httpx.stream("POST", f"{anvils[0]}/v1/chat/completions", headers={"x-api-key": secret}, timeout=30,
                          json={"model": "slow", "stream": True, "messages": HI}) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if line.startswith("data: {"):
                    started.set()
        done.set()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert started.wait(20)
        refused = chat(anvils[1], secret)
        assert refused.status_code == 429 and "max_concurrent 1" in refused.json()["error"]["message"]
    finally:
        holder.join(30)
    assert done.is_set()
    wait_for(lambda: chat(anvils[1], secret).status_code == 200, 5, "the slot to be given back")


def test_reach_holds_for_named_models_auto_and_the_model_list(anvils: tuple[str, str],
                                                              serves: dict[str, Serve]) -> None:
    secret = key(reach=["tier:fast"])
    client = openai.OpenAI(base_url=f"{anvils[0]}/v1", api_key=secret, max_retries=0, timeout=30)
    with pytest.raises(openai.PermissionDeniedError) as refused:
        client.chat.completions.create(model="cloud", messages=PLAN)
    assert refused.value.body["code"] == "model_not_allowed"  # type: ignore[index]
    assert "may not use the model 'cloud'" in refused.value.message
    messages = anthropic.Anthropic(base_url=anvils[1], api_key=secret, max_retries=0, timeout=30)
    with pytest.raises(anthropic.PermissionDeniedError):
        messages.messages.create(model="cloud", max_tokens=8, messages=HI)
    assert client.chat.completions.create(model="local", messages=HI).model == "local"
    auto = client.chat.completions.with_raw_response.create(model="auto", messages=PLAN)
    assert auto.headers["x-anvil-served-by"] in ("local", "slow")
    with pytest.raises(openai.NotFoundError) as unknown:  # the serves it may name: only those within its reach
        client.chat.completions.create(model="nope", messages=HI)
    assert "local" in unknown.value.message and "cloud" not in unknown.value.message
    listed = {m.id for m in client.models.list(extra_query={"all": "true"})}
    assert listed == {"local", "slow", "pricey"}
    # A glob over names: only "local".
    named = openai.OpenAI(base_url=f"{anvils[1]}/v1", api_key=key(reach=["loc*"]), max_retries=0, timeout=30)
    assert named.chat.completions.with_raw_response.create(
        model="auto", messages=HI).headers["x-anvil-served-by"] == "local"
    with pytest.raises(openai.PermissionDeniedError):
        named.chat.completions.create(model="slow", messages=HI)


def test_allow_remote_keeps_a_key_off_the_metered_tier(anvils: tuple[str, str], serves: dict[str, Serve]) -> None:
    for name in ("local", "slow", "pricey"):  # only the cloud could plan
        serves[name].enabled = False
        serves[name].save()
    allowed, kept_off = key(), key(allow_remote=False)
    wait_for(lambda: chat(anvils[0], allowed, model="auto", messages=PLAN).headers.get("x-anvil-served-by")
             == "cloud", 10, "planning work to go to the cloud tier")
    refused = chat(anvils[0], kept_off, model="auto", messages=PLAN)
    assert refused.status_code >= 400 and "allow_remote" in refused.text, refused.text
    named = chat(anvils[1], kept_off, model="cloud", messages=PLAN)
    assert named.status_code == 403 and named.json()["error"]["code"] == "model_not_allowed"
    # The request's own flag narrows a key that allows remote, and never widens one that does not.
    assert chat(anvils[0], allowed, model="cloud", messages=PLAN, allow_remote=False).status_code == 403
    assert chat(anvils[0], kept_off, model="cloud", messages=PLAN, allow_remote=True).status_code == 403
    assert chat(anvils[0], allowed, model="cloud", messages=PLAN, allow_remote=True).status_code == 200
    assert chat(anvils[0], allowed, model="cloud", messages=PLAN, allow_remote="yes").status_code == 400


def test_a_budget_is_spent_then_refused_with_insufficient_quota(anvils: tuple[str, str],
                                                                serves: dict[str, Serve]) -> None:
    name = f"budget-{uuid.uuid4().hex[:6]}"
    secret = create_key(name, budget_usd=Decimal("0.01"), budget_period="day", budget_alert=50).secret
    client = openai.OpenAI(base_url=f"{anvils[0]}/v1", api_key=secret, max_retries=0, timeout=30)
    answered = 0
    with pytest.raises(openai.RateLimitError) as refused:
        for _ in range(12):  # each answer: 19 tokens at $100 per million = $0.0019
            client.chat.completions.create(model="pricey", messages=HI, max_tokens=8)
            answered += 1
    assert 5 <= answered <= 6, answered  # refused once the spend reached $0.01, not before
    assert refused.value.body["code"] == "insufficient_quota"  # type: ignore[index]
    assert refused.value.response.headers["x-should-retry"] == "false"
    assert "budget" in refused.value.message and "Access resumes at" in refused.value.message
    messages = anthropic.Anthropic(base_url=anvils[1], api_key=secret, max_retries=0, timeout=30)
    with pytest.raises(anthropic.BadRequestError) as in_dialect:  # what Anthropic answers at a spend limit
        messages.messages.create(model="pricey", max_tokens=8, messages=HI)
    assert "You have reached your specified API usage limits" in str(in_dialect.value)
    # The spend is in the decision records, the usage API and the command: at most one request past the budget.
    key_id = ApiKeyRow.objects.get(name=name).pk

    def spent() -> Decimal | None:
        drain_decisions()
        if DecisionRecord.objects.filter(key_id=key_id).count() < answered + 2:  # the two refusals too
            return None
        return sum((r.spend_usd for r in DecisionRecord.objects.filter(key_id=key_id, served_by="pricey")), Decimal(0))

    total = wait_for(spent, 10, "the decision records to be written")
    assert total == Decimal("0.0019") * answered and Decimal("0.01") <= total <= Decimal("0.0121")
    admin = create_key(f"admin-{uuid.uuid4().hex[:6]}", ["admin"]).secret
    report = httpx.get(f"{anvils[0]}/api/usage/", params={"key": name, "group_by": "serve"},
                       headers={"authorization": f"Bearer {admin}"}, timeout=10)
    assert report.status_code == 200, report.text
    rows = {row["group"]: row for row in report.json()["rows"]}
    assert rows["pricey"]["requests"] == answered and rows["pricey"]["completion_tokens"] == 8 * answered
    assert abs(rows["pricey"]["spend_usd"] - float(total)) < 1e-9
    assert report.json()["total"]["errors"] == 2  # the two refusals are recorded, with their status
    assert httpx.get(f"{anvils[0]}/api/usage/", headers={"authorization": f"Bearer {secret}"},
                     timeout=10).status_code == 403  # an inference key cannot read usage
    out = io.StringIO()
    call_command("apikey", "usage", name, stdout=out)
    assert f"Budget: ${total:.4f} of $0.0100 this day" in out.getvalue()
    assert "(over the alert threshold)" in out.getvalue()
