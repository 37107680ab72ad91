"""The demo worker (a real process, as `make run` starts it) under bad input: every bad body is a
400/422 naming the field, in the route's shape (the seed's ``{"detail", "field"}`` on /generate and
/loglikelihood, OpenAI's ``{"error": {...}}`` on the OpenAI routes), never an HTML 500 and never a
hung scheduler; and the README's SDK example, which sends no max_tokens, is answered."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.live import hrm_worker

pytestmark = pytest.mark.slow

CONTEXT = 512  # models/hrm-demo's max_seq_len
OPENAI_ROUTES = ("/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize")


@pytest.fixture(scope="module")
def url(module_logs: Path) -> Iterator[str]:
    # The demo model with the worker's default limits (max_tokens 1024 against a 512-token context).
    with hrm_worker(module_logs) as (port, _):
        yield f"http://127.0.0.1:{port}"


def post(url: str, path: str, body: Any = None, *, content: bytes | None = None, **headers: str) -> httpx.Response:
    if content is None:
        content = json.dumps(body).encode()  # allow_nan: NaN and Infinity go out as Python's json writes them
    return httpx.post(f"{url}{path}", content=content, timeout=60,
                      headers={"content-type": "application/json", **headers})


def named_field(path: str, answer: httpx.Response) -> str | None:
    """The field an error names, after checking the error has exactly the route's shape."""
    body = answer.json()
    if path in OPENAI_ROUTES:
        assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
        assert body["error"]["message"] and body["error"]["type"], body
        return body["error"]["param"]
    assert set(body) == {"detail", "field"} and body["detail"], body
    return body["field"]


def assert_still_serving(url: str) -> None:
    assert httpx.get(f"{url}/readyz", timeout=5).status_code == 200
    answer = post(url, "/generate", {"prompts": ["The"], "max_tokens": 2, "temperature": 0})
    assert answer.status_code == 200, answer.text


# --- defect 1: values that used to kill the scheduler thread -----------------------------------------


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("field", ["temperature", "top_p"])
def test_nan_and_infinite_sampling_values_are_a_400_naming_the_field(url: str, field: str, value: float) -> None:
    answer = post(url, "/generate", {"prompts": ["hi"], "max_tokens": 3, field: value})
    assert answer.status_code == 400 and named_field("/generate", answer) == field, answer.text
    assert "finite" in answer.json()["detail"]


def test_vanishing_temperature_and_top_p_are_served_not_failed(url: str) -> None:
    answer = post(url, "/generate", {"prompts": ["The", "Hello"], "max_tokens": 3, "temperature": 1e-40,
                                     "top_p": 1e-300})
    assert answer.status_code == 200, answer.text
    answer = post(url, "/generate", {"prompts": ["The"], "max_tokens": 3, "temperature": 1.0, "top_p": 1e-300})
    assert answer.status_code == 200, answer.text


def test_nan_temperature_no_longer_hangs_the_worker(url: str) -> None:
    for route, body in [("/generate", {"prompts": ["hi"], "max_tokens": 3, "temperature": math.nan}),
                        ("/v1/completions", {"prompt": "hi", "max_tokens": 3, "temperature": math.nan}),
                        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                                                  "temperature": math.nan})]:
        answer = post(url, route, body)
        assert answer.status_code == 400 and named_field(route, answer) == "temperature", answer.text
    assert_still_serving(url)


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/v1/completions", {"prompt": [99999], "max_tokens": 3}, "prompt"),
    ("/v1/completions", {"prompt": [-1], "max_tokens": 3}, "prompt"),
    ("/v1/completions", {"prompt": [[5, 6], [7, 1024]], "max_tokens": 3}, "prompt"),
    ("/v1/completions", {"prompt": [99999], "echo": True, "logprobs": 1, "max_tokens": 0}, "prompt"),
    ("/detokenize", {"tokens": [5, 99999]}, "tokens"),
    ("/detokenize", {"tokens": [-3]}, "tokens"),
])
def test_out_of_range_token_ids_are_a_400_naming_the_field(url: str, path: str, body: dict, field: str) -> None:
    answer = post(url, path, body)
    assert answer.status_code == 400 and named_field(path, answer) == field, answer.text
    assert "out of range" in answer.json()["error"]["message"]


def test_an_out_of_range_token_id_no_longer_hangs_the_worker(url: str) -> None:
    assert post(url, "/v1/completions", {"prompt": [99999], "max_tokens": 3}).status_code == 400
    assert_still_serving(url)
    in_range = post(url, "/v1/completions", {"prompt": [0, 1023], "max_tokens": 2, "temperature": 0})
    assert in_range.status_code == 200, in_range.text


# --- defect 2: bad bodies are a 400/422 naming the field, never an HTML 500 ----------------------------


@pytest.mark.parametrize(("path", "body", "status", "field"), [
    ("/generate", {"prompts": ["hi"], "ignore_eos": {"nested": {"object": 1}}}, 422, "ignore_eos"),
    ("/generate", {"prompts": ["hi"], "max_tokens": 10**30}, 400, "max_tokens"),
    ("/generate", {"prompts": ["hi"], "max_tokens": -(10**30)}, 400, "max_tokens"),
    ("/generate", {"prompts": ["hi"], "max_tokens": 2.5}, 422, "max_tokens"),
    ("/generate", {"prompts": ["hi"], "seed": 10**30}, 400, "seed"),
    ("/generate", {"prompts": ["hi"], "seed": math.nan}, 422, "seed"),
    ("/generate", {"prompts": ["hi"], "stop": [["nested"]]}, 422, "stop"),
    ("/generate", {"prompts": ["hi"], "stop": ["x"] * 1000}, 400, "stop"),
    ("/generate", {"prompts": ["hi"] * 1000}, 400, "prompts"),
    ("/generate", {"prompts": [{"text": "hi"}]}, 422, "prompts"),
    ("/generate", {"prompts": ["hi " * 600], "max_tokens": 4}, 400, "prompts"),
    ("/generate", {"prompts": ["hi"], "max_tokens": 600}, 400, "max_tokens"),
    ("/generate", [1, 2, 3], 422, "body"),
    ("/loglikelihood", {"prompts": ["hi"], "continuations": [None]}, 422, "continuations"),
    ("/loglikelihood", {"prompts": ["hi"], "continuations": "x"}, 422, "continuations"),
    ("/loglikelihood", {"prompts": ["hi"], "continuations": ["the " * 600]}, 400, "continuations"),
    ("/loglikelihood", {"prompts": ["hi"] * 65, "continuations": ["x"] * 65}, 400, "prompts"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "text", "text": 3}]}]}, 422,
     "messages[0].content"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}, 422, "stream"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "n": 3}, 400, "n"),
    ("/v1/completions", {"prompt": "hi", "logprobs": math.inf}, 422, "logprobs"),
    ("/v1/completions", {"prompt": [[]]}, 422, "prompt"),
    ("/v1/completions", {"prompt": "hi", "stream": True, "max_tokens": 2, "top_p": -math.inf}, 400, "top_p"),
    ("/tokenize", {"prompt": ["a", "list"]}, 422, "prompt"),
])
def test_bad_fields_are_a_400_or_422_naming_the_field(url: str, path: str, body: Any, status: int,
                                                      field: str) -> None:
    answer = post(url, path, body)
    assert answer.status_code == status and named_field(path, answer) == field, answer.text


@pytest.mark.parametrize("path", ["/generate", "/loglikelihood", "/v1/completions", "/v1/chat/completions"])
@pytest.mark.parametrize(("content", "headers"), [
    (b"{not json", {}),
    (b'{"prompts": ["hi"], "max_tokens": ' + b"9" * 5000 + b"}", {}),  # past Python's int digit limit
    (b'{"prompts": ' + b"[" * 50000 + b"]" * 50000 + b"}", {}),  # nested past the recursion limit
    (b'{"prompts": ["hi"]}', {"content-type": "application/json; charset=no-such-charset"}),
    (b'{"prompts": ["\xff\xfe"]}', {}),  # not UTF-8
])
def test_unreadable_bodies_are_a_400_naming_the_body(url: str, path: str, content: bytes,
                                                     headers: dict[str, str]) -> None:
    answer = post(url, path, content=content, **headers)
    assert answer.status_code == 400 and named_field(path, answer) == "body", answer.text


def test_unknown_paths_and_methods_answer_json_not_html(url: str) -> None:
    missing = post(url, "/nope", {})
    assert missing.status_code == 404 and named_field("/nope", missing) is None
    wrong = httpx.get(f"{url}/v1/chat/completions", timeout=5)
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"


# Values of the wrong type, huge or non-finite numbers, nested objects, empty and huge lists.
WEIRD: list[Any] = [
    None, True, False, 0, 1, -1, 3, 2**31, 2**63, 2**64, -(2**63) - 1, 10**30, -(10**30),
    math.nan, math.inf, -math.inf, 0.5, -0.0, 1e-40, 1e-300, 1e300, 2.0000001,
    "", "text", [], [[]], [{}], [None], ["ok", 3], [1, 2], [-1], [5000], list(range(3000)), ["x"] * 3000,
    {}, {"nested": {"deeper": [1, {"x": None}]}},
]

VALID = {
    "/generate": {"prompts": ["Hello", "The"], "max_tokens": 2, "temperature": 0.7, "top_p": 0.9, "seed": 1,
                  "stop": ["."], "ignore_eos": False},
    "/loglikelihood": {"prompts": ["Hello", "The"], "continuations": [" world", " end"]},
    "/v1/completions": {"prompt": "Hello", "max_tokens": 2, "temperature": 0.7, "top_p": 0.9, "seed": 1,
                        "stop": ["."], "logprobs": 1, "echo": False, "stream": False, "n": 1, "ignore_eos": False},
    "/v1/chat/completions": {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "temperature": 0.7,
                             "top_p": 0.9, "seed": 1, "stop": "x", "stream": False,
                             "stream_options": {"include_usage": True}, "max_completion_tokens": 2},
    "/tokenize": {"prompt": "Hello"},
    "/detokenize": {"tokens": [5, 6, 7]},
}


def fuzz_problem(url: str, path: str, body: dict[str, Any]) -> str | None:
    """What is wrong with the answer to a mutated body, or None: a 200, or a 400/422 naming a field."""
    try:
        answer = post(url, path, body)
    except httpx.TimeoutException:
        return f"{path} {body!r}: no answer (the scheduler is stuck)"
    if answer.status_code == 200:
        return None
    fields = {*VALID[path], "body"} | {f"messages[{i}]{part}" for i in range(3) for part in ("", ".content")}
    try:
        if answer.status_code in (400, 422) and named_field(path, answer) in fields:
            return None
    except (ValueError, AssertionError):
        pass
    return f"{path} {body!r}: {answer.status_code} {answer.headers.get('content-type')} {answer.text[:200]}"


@pytest.mark.parametrize("path", list(VALID))
def test_every_field_with_every_bad_value_is_a_400_or_422_never_a_500(url: str, path: str) -> None:
    problems = []
    for name in [*VALID[path], "unknown_field"]:
        bodies = [{**VALID[path], name: value} for value in WEIRD]
        bodies.append({key: value for key, value in VALID[path].items() if key != name})
        for body in bodies:
            problem = fuzz_problem(url, path, body)
            if problem is not None:
                problems.append(problem)
                if "no answer" in problem:
                    break
    assert not problems, "\n".join(problems)


@st.composite
def mutated(draw: st.DrawFn, path: str) -> dict[str, Any]:
    """A valid body with a few fields replaced by bad values (in combination), or removed."""
    body = dict(VALID[path])
    for name in draw(st.lists(st.sampled_from([*body, "unknown_field"]), min_size=2, max_size=4, unique=True)):
        if draw(st.booleans()) and draw(st.booleans()):
            body.pop(name, None)
        else:
            body[name] = draw(st.sampled_from(WEIRD))
    return body


@settings(max_examples=120, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_bodies_with_several_bad_fields_are_never_a_500(url: str, data: st.DataObject) -> None:
    path = data.draw(st.sampled_from(list(VALID)))
    body = data.draw(mutated(path))
    problem = fuzz_problem(url, path, body)
    assert problem is None, problem


def test_the_worker_serves_on_after_the_fuzz(url: str) -> None:
    assert_still_serving(url)


# --- defect 3: the OpenAI routes answer errors in OpenAI's shape --------------------------------------


def test_openai_route_errors_reach_the_sdk_as_its_own_exceptions(url: str) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", timeout=60, max_retries=0)
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="hrm-demo", messages=[{"role": "user", "content": "hi"}],
                                       temperature=3)
    assert bad.value.body["param"] == "temperature" and bad.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.UnprocessableEntityError) as wrong:
        client.completions.create(model="hrm-demo", prompt="hi", extra_body={"seed": "x"})
    assert wrong.value.body["param"] == "seed" and wrong.value.body["code"] == "invalid_type"
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="hrm-demo", input="hi")


def test_the_seed_routes_keep_detail_and_field(url: str) -> None:
    answer = post(url, "/generate", {"prompts": ["hi"], "temperature": 3})
    assert answer.status_code == 400 and answer.json() == {"detail": "temperature must be in [0, 2]",
                                                           "field": "temperature"}


# --- defect 4: no max_tokens means up to the context ---------------------------------------------------


def test_the_readme_sdk_example_is_answered_without_max_tokens(url: str) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", timeout=120, max_retries=0)
    messages = [{"role": "user", "content": "Hi"}]
    whole = client.chat.completions.create(model="hrm-demo", messages=messages)
    assert whole.choices[0].finish_reason in ("stop", "length")
    assert whole.usage.prompt_tokens + whole.usage.completion_tokens <= CONTEXT
    chunks = list(client.chat.completions.create(model="hrm-demo", messages=messages, stream=True))
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    completion = client.completions.create(model="hrm-demo", prompt="The")
    assert completion.usage.total_tokens <= CONTEXT


def test_a_missing_max_tokens_generates_up_to_the_context(url: str) -> None:
    answer = post(url, "/v1/completions", {"prompt": "The", "ignore_eos": True, "temperature": 0}).json()
    # The worker's own limit (1024) is past the context, so the context is what bounds it.
    assert answer["usage"]["total_tokens"] == CONTEXT and answer["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 600}, "max_tokens"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "max_completion_tokens": 600},
     "max_completion_tokens"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "the " * 600}]}, "messages"),
    ("/v1/completions", {"prompt": "Hi", "max_tokens": 600}, "max_tokens"),
    ("/v1/completions", {"prompt": "the " * 600}, "prompt"),
    ("/v1/completions", {"prompt": "the " * 600, "max_tokens": 4}, "prompt"),
])
def test_an_explicit_max_tokens_past_the_context_is_a_context_length_400(url: str, path: str, body: dict,
                                                                         field: str) -> None:
    answer = post(url, path, body)
    assert answer.status_code == 400 and named_field(path, answer) == field, answer.text
    error = answer.json()["error"]
    assert error["code"] == "context_length_exceeded" and "maximum context length is 512" in error["message"]
