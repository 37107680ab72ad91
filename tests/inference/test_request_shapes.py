"""Malformed bodies get a 400 in the client's dialect naming the field: never a 500, never HTML.

The parametrised cases are the ones a fuzz probe of the landed stack found crashing the front door;
the property test mutates valid bodies at random places with hostile values; then the hostile shapes
(invalid UTF-8, deep nesting, huge numbers, 10,000 code fences). All go through the real ASGI application
in-process (no serve exists, so a well-formed body ends in a 404 or 503), on every endpoint a client
posts to, /generate and /loglikelihood included (relayed to an HRM worker: their errors are the worker's
``{"detail", "field"}``); the one case that needs a serve to answer runs against Anvil under Daphne.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inference.auth import KEY_CACHE
from inference.keys import create_key
from inference.wire.requests import MAX_NESTING
from serves.models import Serve
from tests.support.asgi import Answer, call
from tests.support.live import until_routed
from tests.support.profiles import allow_tiers

pytestmark = pytest.mark.django_db(transaction=True)

CHAT = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
MESSAGES = {"model": "auto", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
COMPLETION = {"model": "auto", "prompt": "hi"}
RESPONSES = {"model": "auto", "input": "hi", "max_output_tokens": 16}
GENERATE = {"prompts": ["hi"], "max_tokens": 2}
LOGLIKELIHOOD = {"prompts": ["hi"], "continuations": [" there"]}
VALID = {"/v1/chat/completions": CHAT, "/v1/messages": MESSAGES, "/v1/completions": COMPLETION, "/v1/route": CHAT,
         "/v1/responses": RESPONSES, "/generate": GENERATE, "/loglikelihood": LOGLIKELIHOOD}
NATIVE = ("/generate", "/loglikelihood")  # the HRM worker's own routes: its {"detail", "field"} errors


@pytest.fixture
def key() -> str:
    minted = create_key("shapes").secret
    KEY_CACHE.invalidate()  # this process's cache may still hold the previous test's keys (rate-limited checks)
    return minted


def post(path: str, key: str, body: bytes) -> Answer:
    return call("POST", path, body, {"authorization": f"Bearer {key}", "x-api-key": key,
                                     "content-type": "application/json"})


def assert_dialect_error(path: str, answer: Answer) -> dict[str, Any]:
    assert answer.status < 500 or answer.status == 503, answer.body[:300]
    assert answer.headers["content-type"].startswith("application/json")
    payload = json.loads(answer.body)
    if path in NATIVE:
        assert set(payload) == {"detail", "field"} and isinstance(payload["detail"], str), payload
        return {"message": payload["detail"], "param": payload["field"]}
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
          "logprobs", "echo", "response_format", "parallel_tool_calls", "metadata", "stop_sequences", "user",
          "input", "instructions", "max_output_tokens", "text", "prompts", "continuations", "ignore_eos"]


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


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
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


# --- hostile shapes, on every endpoint ---------------------------------------------------------------------

PATHS = sorted(VALID)


def raw_with(path: str, field: str, raw_value: str) -> bytes:
    """The endpoint's valid body with ``field`` set to ``raw_value``, written as raw JSON text."""
    body = json.dumps({key: value for key, value in VALID[path].items() if key != field})
    return f'{body[:-1]}, "{field}": {raw_value}}}'.encode()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("body", [
    b'{"model": "auto", "messages": [{"role": "user", "content": "\xff\xfe"}], "prompt": "\xc3(", "input": "\x80"}',
    b'{"model": "auto", "prompts": ["\xed\xa0\x80"]}',  # a surrogate written as UTF-8 bytes: not UTF-8
    b'\xff{"model": "auto"}',
], ids=["in-strings", "utf8-surrogate", "before-the-object"])
def test_invalid_utf8_is_a_400_in_the_clients_dialect(key: str, path: str, body: bytes) -> None:
    answer = post(path, key, body)
    assert answer.status == 400, answer.body[:300]
    assert "not valid JSON" in assert_dialect_error(path, answer)["message"]


@pytest.mark.parametrize("path", PATHS)
def test_a_valid_body_with_no_serve_is_a_clean_error_in_the_dialect(key: str, path: str) -> None:
    answer = post(path, key, json.dumps(VALID[path]).encode())
    if path == "/v1/route":
        assert answer.status == 200 and answer.json()["candidates"] == []  # type: ignore[index]
        return
    assert answer.status == 503, answer.body[:300]
    assert assert_dialect_error(path, answer)["message"]


@pytest.mark.parametrize("path", NATIVE)
def test_generate_for_auto_with_no_serve_is_a_503_not_a_404_with_an_empty_reason(key: str, path: str) -> None:
    # "auto" asks for any serve that answers the path, as no model does; it was refused as a model named
    # 'auto' that "cannot answer /generate ()".
    answer = post(path, key, json.dumps({**VALID[path], "model": "auto"}).encode())
    assert answer.status == 503, answer.body[:300]
    assert assert_dialect_error(path, answer)["message"] == f"No enabled serve answers {path}."


def nested(depth: int, leaf: str) -> str:
    """A JSON object ``depth`` levels deep (this one and its parents count: the body adds one more)."""
    return '{"a": ' * depth + leaf + "}" * depth


@pytest.mark.parametrize("path", PATHS)
def test_a_body_nested_past_the_limit_is_a_400_at_any_depth_even_with_an_escaped_emoji(key: str, path: str) -> None:
    # Just short of the parser's own limit, a body parsed, then failed when Anvil encoded it again: the
    # lone-surrogate check (any \\ud8xx escape, an emoji written as two included) raised RecursionError, a 500.
    depths = [MAX_NESTING - 2, MAX_NESTING - 1, MAX_NESTING, 500, *range(940, 1000), 5000, 100_000]
    for depth in depths:
        for leaf in ('"x"', '"\\ud83d\\ude00"', '"\\ud800"'):
            answer = post(path, key, raw_with(path, "metadata", nested(depth, leaf)))
            error = assert_dialect_error(path, answer) if answer.status != 200 else {"message": ""}
            if depth + 1 > MAX_NESTING:
                assert answer.status == 400 and "nested" in error["message"], (depth, leaf, answer.body[:300])
            else:
                assert "nested" not in error["message"], (depth, leaf, answer.body[:300])


@pytest.mark.parametrize("path", PATHS)
def test_deep_arrays_where_content_goes_are_a_400_not_a_crash(key: str, path: str) -> None:
    for field in ("messages", "prompt", "input", "prompts", "system", "tools"):
        for depth in (MAX_NESTING, 980, 50_000):
            answer = post(path, key, raw_with(path, field, "[" * depth + '"x"' + "]" * depth))
            if answer.status == 200:
                assert path == "/v1/route"
                continue
            assert answer.status == 400, (field, depth, answer.body[:300])
            assert_dialect_error(path, answer)


# 10**400 is an int no float holds: math.isfinite raised OverflowError on it (temperature, top_p: a 500).
HUGE = ["1e400", "-1e400", "1" + "0" * 400, "18446744073709551617", "-18446744073709551617", "1e-400", "1.5e308",
        "9" * 5000]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("field", ["max_tokens", "max_output_tokens", "temperature", "top_p", "top_k", "n", "seed",
                                   "logprobs", "top_logprobs", "budget_tokens", "truncate_prompt_tokens"])
def test_huge_numbers_are_a_400_naming_the_field_or_travel_untouched(key: str, path: str, field: str) -> None:
    for number in HUGE:
        answer = post(path, key, raw_with(path, field, number))
        if answer.status == 200:
            assert path == "/v1/route"
            continue
        error = assert_dialect_error(path, answer)
        if answer.status == 400 and path not in NATIVE and not path.startswith("/v1/messages") \
                and error["param"] is not None:
            assert error["param"] == field, (number, error)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/v1/messages", "/v1/responses"])
@pytest.mark.parametrize("field", ["temperature", "top_p"])
def test_an_integer_past_a_floats_range_is_a_400_naming_the_field(key: str, path: str, field: str) -> None:
    answer = post(path, key, raw_with(path, field, "1" + "0" * 400))
    assert answer.status == 400, answer.body[:300]
    error = assert_dialect_error(path, answer)
    assert error["param"] == field if not path.startswith("/v1/messages") else f"'{field}'" in error["message"]


FENCE = "```python\nprint('hi')\n```\n"


@pytest.mark.parametrize("path", PATHS)
def test_ten_thousand_code_fences_are_answered_at_once(key: str, path: str) -> None:
    # The classifier reads code fences: 10,000 of them (and 10,000 unclosed ones) must not make it crawl.
    for text in (FENCE * 10_000, "```" * 10_000, "```python\n" * 10_000):
        body = {**VALID[path]}
        for field in ("messages", "prompt", "input", "prompts"):
            if field in body:
                body[field] = {"messages": [{"role": "user", "content": text}], "prompt": text, "input": text,
                               "prompts": [text]}[field]
        started = time.monotonic()
        answer = post(path, key, json.dumps(body).encode())
        assert time.monotonic() - started < 5, path
        if answer.status != 200:
            assert assert_dialect_error(path, answer)["message"]
    parts = [{"type": "text", "text": FENCE}] * 10_000  # the same as 10,000 content parts
    answer = post(path, key, with_(VALID[path], messages=[{"role": "user", "content": parts}]))
    assert answer.status == 200 or assert_dialect_error(path, answer)


# --- against a serve: the findings that need an answer to show ------------------------------------------------


@pytest.fixture
def serve(anvil: str, upstream: str, key: str) -> str:
    allow_tiers("fast")
    Serve.objects.create(name="shapes-up", tier="fast", base_url=f"{upstream}/v1", served_model="up-model")
    until_routed(anvil, key, {"shapes-up": "allow"})
    return "shapes-up"


@pytest.mark.slow
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/v1/messages", "/v1/responses"])
def test_a_surrogate_written_as_utf8_bytes_is_a_400_not_a_500_at_the_upstream(anvil: str, serve: str, key: str,
                                                                              path: str) -> None:
    # json.loads decodes bytes with "surrogatepass": ED A0 80 became a lone surrogate that passed every check,
    # then failed where the upstream body is encoded (ensure_ascii=False), a 500 on every endpoint.
    text = b'"hi \xed\xa0\x80"'
    body = b'{"model": "shapes-up", "max_tokens": 5, "messages": [{"role": "user", "content": ' + text + \
        b'}], "prompt": ' + text + b', "input": ' + text + b"}"
    headers = {"authorization": f"Bearer {key}", "x-api-key": key, "content-type": "application/json"}
    answer = httpx.post(f"{anvil}{path}", content=body, timeout=30, headers=headers)
    assert answer.status_code == 400, answer.text[:300]
    assert "not valid UTF-8" in answer.text


@pytest.mark.slow
def test_a_deeply_nested_responses_stream_is_a_400_not_an_empty_200(anvil: str, serve: str, key: str) -> None:
    # A body that only just parsed came back in the stream's response.created echo (its metadata): encoding
    # it raised RecursionError, and so did the error event, so the client got a 200 with an empty body.
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    for depth in range(960, 992, 2):
        body = json.dumps({"model": serve, "input": "hi", "stream": True})[:-1] + \
            f', "metadata": {nested(depth, chr(34) + "x" + chr(34))}}}'
        answer = httpx.post(f"{anvil}/v1/responses", content=body.encode(), headers=headers, timeout=30)
        assert answer.status_code == 400, (depth, answer.status_code, answer.text[:300])
        assert "nested" in answer.json()["error"]["message"]
    shallow = httpx.post(f"{anvil}/v1/responses", headers=headers, timeout=30, json={
        "model": serve, "input": "hi", "stream": True, "metadata": json.loads(nested(MAX_NESTING - 3, '"x"'))})
    assert shallow.status_code == 200 and "response.completed" in shallow.text
