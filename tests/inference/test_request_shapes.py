"""Malformed bodies get a 400 in the client's dialect naming the field: never a 500, never HTML.

The parametrised cases are the ones a fuzz probe of the landed stack found crashing the front door;
the property test mutates valid bodies at random places with hostile values. Both go through the
real ASGI application in-process (no serve exists, so a well-formed body ends in a 404 or 503).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inference.auth import KEY_CACHE
from inference.keys import create_key
from tests.support.asgi import Answer, call

pytestmark = pytest.mark.django_db(transaction=True)

CHAT = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
MESSAGES = {"model": "auto", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
COMPLETION = {"model": "auto", "prompt": "hi"}
VALID = {"/v1/chat/completions": CHAT, "/v1/messages": MESSAGES, "/v1/completions": COMPLETION, "/v1/route": CHAT}


@pytest.fixture
def key() -> str:
    minted = create_key("shapes").secret
    KEY_CACHE.invalidate()  # this process's cache may still hold the previous test's keys (rate-limited checks)
    return minted


def post(path: str, key: str, body: bytes) -> Answer:
    return call("POST", path, body, {"authorization": f"Bearer {key}", "x-api-key": key,
                                     "content-type": "application/json"})


def assert_dialect_error(path: str, answer: Answer) -> dict[str, Any]:
    assert answer.status != 500, answer.body[:300]
    assert answer.headers["content-type"].startswith("application/json")
    payload = json.loads(answer.body)
    if path.startswith("/v1/messages"):
        assert payload["type"] == "error" and isinstance(payload["error"]["message"], str)
    else:
        assert isinstance(payload["error"]["message"], str) and "param" in payload["error"]
    return payload["error"]


def with_(body: dict[str, Any], **fields: Any) -> bytes:
    return json.dumps({**body, **fields}).encode()


PROBE_CASES = [
    ("/v1/chat/completions", b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", None),
    ("/v1/chat/completions", b'{"model": "auto", "max_tokens": 1' + b"0" * 5000 + b', "messages": []}', None),
    ("/v1/completions", b'{"model": "auto", "prompt": "a\\ud800"}', None),
    ("/v1/messages", with_(MESSAGES, messages=[{"role": "user", "content": ["hi"]}]), "messages[0].content[0]"),
    ("/v1/messages", with_(MESSAGES, tools=[1]), "tools[0]"),
    ("/v1/messages", with_(MESSAGES, messages=[{"role": "user", "content": [{"type": "image", "source": 5}]}]),
     "messages[0].content[0].source"),
    ("/v1/chat/completions", with_(CHAT, reasoning="high"), "reasoning"),
    ("/v1/route", b'{"messages": 5}', "messages"),
    ("/v1/chat/completions", with_(CHAT, tool_choice={"type": "function", "function": ["get_weather"]}),
     "tool_choice.function"),
    ("/v1/chat/completions", with_(CHAT, temperature=float("nan")), "temperature"),
    ("/v1/chat/completions", with_(CHAT, messages=[{"role": "assistant", "content": None,
                                                    "tool_calls": [{"function": "x"}]}]),
     "messages[0].tool_calls[0].function"),
    ("/v1/completions", with_(COMPLETION, prompt=[1, "two"]), "prompt[1]"),
    ("/v1/messages", with_(MESSAGES, thinking={"type": "enabled", "budget_tokens": "lots"}), "thinking.budget_tokens"),
]


@pytest.mark.parametrize(("path", "body", "param"), PROBE_CASES)
def test_the_probes_bodies_get_a_400_in_the_clients_dialect(key: str, path: str, body: bytes,
                                                           param: str | None) -> None:
    answer = post(path, key, body)
    error = assert_dialect_error(path, answer)
    assert answer.status == 400
    if param is not None and not path.startswith("/v1/messages"):
        assert error["param"] == param
    elif param is not None:
        assert f"'{param}'" in error["message"]


def test_fields_anvil_does_not_read_travel_untouched_and_a_nul_model_is_a_404(key: str) -> None:
    # parallel_tool_calls is no Anthropic field: it is not Anvil's to refuse (it goes on to routing, where
    # no serve, or a serve that is not there, answers in the dialect).
    answer = post("/v1/messages", key, with_(MESSAGES, parallel_tool_calls=2147483648))
    assert answer.status not in (400, 500) and assert_dialect_error("/v1/messages", answer)
    answer = post("/v1/chat/completions", key, with_(CHAT, model="x\u0000"))
    assert answer.status == 404 and assert_dialect_error("/v1/chat/completions", answer)["code"] == "model_not_found"


HOSTILE = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
    st.sampled_from(["\ud800", "a\x00b", "auto", "user", "function", "tool_use", "image", "text", ""]),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.sampled_from(["type", "text", "name"]), st.integers(),
                                                         max_size=2),
    st.recursive(st.integers(), lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.text(max_size=3),
                                                                                           inner, max_size=2),
                 max_leaves=8),
)
FIELDS = ["model", "messages", "max_tokens", "stream", "stream_options", "tools", "tool_choice", "temperature",
          "top_p", "top_k", "stop", "n", "seed", "system", "thinking", "reasoning", "reasoning_effort", "prompt",
          "logprobs", "echo", "response_format", "parallel_tool_calls", "metadata", "stop_sequences", "user"]


def mutate(body: Any, path: list[Any], value: Any) -> Any:
    """``body`` with the value at ``path`` (as far as it exists) replaced by ``value``."""
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(body, dict):
        copy = dict(body)
        copy[head if isinstance(head, str) else "messages"] = mutate(body.get(head) if isinstance(head, str)
                                                                     else body.get("messages"), rest, value)
        return copy
    if isinstance(body, list) and body:
        copy = list(body)
        index = head % len(body) if isinstance(head, int) else 0
        copy[index] = mutate(body[index], rest, value)
        return copy
    return value


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(sorted(VALID)), where=st.lists(st.one_of(st.sampled_from(FIELDS + ["role", "content",
                                                                                              "type", "source"]),
                                                                     st.integers(0, 3)), min_size=1, max_size=4),
       value=HOSTILE)
def test_mutated_bodies_never_get_a_500(key: str, path: str, where: list[Any], value: Any) -> None:
    body = mutate(VALID[path], where, value)
    raw = json.dumps(body, allow_nan=True).encode("utf-8", "surrogatepass")
    answer = post(path, key, raw)
    if answer.status == 200:
        assert path == "/v1/route"
        return
    assert_dialect_error(path, answer)
