"""The upstream fault matrix (issue 17 §8): every fault a serve can throw at the front door, as each client sees it.

Rows are faults: an HTTP 500, a refused connection, a serve silent before its first byte, one silent mid-answer,
one that dies after five pieces, malformed SSE, invalid JSON. Columns are what stands behind the faulted serve:
a healthy fallback or nothing, with an ``allow`` verdict (bytes as they come) or ``allow-with-verify`` (held and
checked first). Each cell is four requests: OpenAI chat and Anthropic messages (the official SDKs), streamed and
whole. What a client must see:

* before the commit, the healthy fallback's answer (``x-anvil-served-by`` names it), or without one a clean error in
  its dialect: JSON, never HTML, never a traceback;
* after the commit (a stream already flowing), what was sent, then an error event in its dialect;
* never a byte of a failed verified attempt;
* nothing waits past the short clocks set below.

One Anvil under Daphne and two scripted upstreams serve the whole module; which serves a request may use is set by
the quality profile per work class (a preset names the work class), so "alone" and "with a fallback" are routing
facts, checked against ``/v1/route`` before the first request. Every request carries its own X-Request-Id, and the
last test counts the decision records written against the requests sent.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import anthropic
import httpx
import openai
import pytest
import redis
from django.conf import settings

from inference.keys import create_key
from inference.models import ApiKey
from routing.decision_log import drain_decisions
from routing.models import DecisionRecord, ProfileEntry
from serves.models import Serve
from tests.support.breakers import forget_breakers
from tests.support.live import SCRIPTED_UPSTREAM, live_anvil, scripted_upstream
from tests.support.processes import child_env, free_port, running
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.slow]

CLOCK = 1.5  # seconds: connect, first byte, whole answer, inter-token
BREAKER_FAILURES = 5  # above the four concurrent failures of one cell, so a cell never trips its own breaker
BREAKER_COOLDOWN = 2.0
DEADLINE = 2 * CLOCK + 3  # the longest any faulted request may take (a clock, then a fallback's answer; slack for load)
HEALTHY_TEXT = "".join(f"tok{i} " for i in range(8))  # the fallback's answer (scripted upstream, 8 deltas)
PARTIAL = [f"part{i} " for i in range(8)]  # what a faulted serve begins to say

SENT: list[str] = []  # every request id this module sent, for the count of decision records
TOOK: list[tuple[float, str]] = []  # (seconds, what) of every faulted request


# --- the stack -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stack:
    anvil: str
    key: str
    faulty: str  # a serve on the marker-driven upstream: the prompt's [[fault]] says how it breaks
    refused: str  # a serve whose base_url is a closed port
    refused_port: int
    healthy: str  # the fallback: an upstream that always answers


@dataclass(frozen=True)
class Column:
    name: str
    model: str  # a preset: it names the work class, and the profile says which serves may answer it
    prompt: str  # before the fault's marker
    fallback: bool
    verified: bool


COLUMNS = {
    "allow+fallback": Column("allow+fallback", "anvil/chat", "", fallback=True, verified=False),
    "allow-alone": Column("allow-alone", "anvil/review", "", fallback=False, verified=False),
    "verify+fallback": Column("verify+fallback", "anvil/quick-edit", "", fallback=True, verified=True),
    "verify-alone": Column("verify-alone", "anvil/long-context", "", fallback=False, verified=True),
    # The refused serve's columns: a connection that never opens fails before any commit rule applies.
    "refused+fallback": Column("refused+fallback", "anvil/planning", "", fallback=True, verified=False),
    "refused-alone": Column("refused-alone", "auto", "Please refactor this. ", fallback=False, verified=True),
}
# Work class -> (faulty, refused, healthy) verdicts; every other serve of the module is denied it.
ALLOW, VERIFY, DENY = "allow", "allow-with-verify", "deny"
CELLS = {
    "chat": (ALLOW, DENY, ALLOW),
    "review": (ALLOW, DENY, DENY),
    "bounded-edit": (VERIFY, DENY, ALLOW),
    "long-context": (VERIFY, DENY, DENY),
    "planning": (DENY, ALLOW, ALLOW),
    "multi-file-refactor": (DENY, VERIFY, DENY),
}
ROUTES = {  # column -> (its work class, the candidates /v1/route must list, in order)
    "allow+fallback": ("chat", ("faulty", "healthy")),
    "allow-alone": ("review", ("faulty",)),
    "verify+fallback": ("bounded-edit", ("faulty", "healthy")),
    "verify-alone": ("long-context", ("faulty",)),
    "refused+fallback": ("planning", ("refused", "healthy")),
    "refused-alone": ("multi-file-refactor", ("refused",)),
}
FAULTS = ("error500", "refused", "hangfirst", "hangmid", "die5", "badsse", "notjson")
MATRIX = [(fault, column) for fault in FAULTS
          for column in (("refused+fallback", "refused-alone") if fault == "refused"
                         else ("allow+fallback", "allow-alone", "verify+fallback", "verify-alone"))]


@pytest.fixture(scope="module")
def db(django_db_setup: None, django_db_blocker: object) -> Iterator[None]:
    """pytest-django's ``db``, replaced for this module: one set of rows for all its tests, committed (the Anvil
    process reads them) and removed by ``stack`` at the end, rather than a transaction per test. The name stays
    ``db``: it is how pytest-django knows these tests need the test database set up."""
    with django_db_blocker.unblock():  # type: ignore[attr-defined]
        yield


@pytest.fixture(scope="module")
def stack(db: None, module_logs: Path) -> Iterator[Stack]:
    tag = uuid.uuid4().hex[:6]
    names = {"faulty": f"fm-faulty-{tag}", "refused": f"fm-refused-{tag}", "healthy": f"fm-healthy-{tag}"}
    refused_port = free_port()  # nothing listens there (until the breaker test brings the serve back)
    env = {"ANVIL_UPSTREAM_CONNECT_TIMEOUT": str(CLOCK), "ANVIL_UPSTREAM_FIRST_BYTE_TIMEOUT": str(CLOCK),
           "ANVIL_UPSTREAM_WHOLE_ANSWER_TIMEOUT": str(CLOCK), "ANVIL_UPSTREAM_INTER_TOKEN_TIMEOUT": str(CLOCK),
           "ANVIL_BREAKER_FAILURES": str(BREAKER_FAILURES), "ANVIL_BREAKER_COOLDOWN": str(BREAKER_COOLDOWN),
           "ANVIL_BREAKER_PROBE_TTL": "5", "ANVIL_SERVE_SYNC_INTERVAL": "0.2", "ANVIL_PROFILE_SYNC_INTERVAL": "0.2"}
    minted = create_key(f"fault-matrix-{tag}")
    try:
        with scripted_upstream(module_logs) as marked, scripted_upstream(module_logs, force_scenario="text") as good, \
                live_anvil(module_logs, **env) as anvil:
            Serve.objects.create(name=names["faulty"], tier="fast", base_url=f"{marked}/v1", served_model="m")
            Serve.objects.create(name=names["refused"], tier="fast", base_url=f"http://127.0.0.1:{refused_port}/v1",
                                 served_model="m")
            Serve.objects.create(name=names["healthy"], tier="heavy", base_url=f"{good}/v1", served_model="m")
            for work_class, verdicts in CELLS.items():
                for role, verdict in zip(("faulty", "refused", "healthy"), verdicts, strict=True):
                    ProfileEntry.objects.create(profile="live", kind="serve", subject=names[role],
                                                work_class=work_class, decision=verdict, quality=0.9, samples=10,
                                                source="test_fault_matrix")
            built = Stack(anvil, minted.secret, names["faulty"], names["refused"], refused_port, names["healthy"])
            for column, (work_class, roles) in ROUTES.items():
                wait_until_routed(built, COLUMNS[column], work_class, tuple(names[role] for role in roles))
            yield built
    finally:
        DecisionRecord.objects.filter(request_id__in=SENT).delete()
        ProfileEntry.objects.filter(source="test_fault_matrix").delete()
        Serve.objects.filter(name__in=names.values()).delete()
        ApiKey.objects.filter(pk=minted.key.pk).delete()
        forget_breakers(*names.values())


def wait_until_routed(stack: Stack, column: Column, work_class: str, expected: tuple[str, ...]) -> None:
    """Anvil's web process refreshes serves and profile in the background: wait until it routes as the column says."""
    def routed() -> bool:
        decision = httpx.post(f"{stack.anvil}/v1/route", headers={"x-api-key": stack.key}, timeout=5, json={
            "model": column.model, "messages": [{"role": "user", "content": column.prompt + "hi"}]}).json()
        candidates = tuple(c["serve"] for c in decision.get("candidates") or ())
        return (decision.get("work_class"), candidates) == (work_class, expected)

    wait_for(routed, 15, f"Anvil to route column {column.name} to {expected}")


@pytest.fixture
def clean_breakers(stack: Stack) -> Iterator[None]:
    """Each cell starts with closed breakers: its failures are its own."""
    forget_breakers(stack.faulty, stack.refused, stack.healthy)
    yield
    forget_breakers(stack.faulty, stack.refused, stack.healthy)


# --- what a client sees ----------------------------------------------------------------------------------


@dataclass
class Seen:
    """One request as its client saw it, whichever SDK made it."""

    dialect: str
    stream: bool
    request_id: str
    status: int | None = None  # the HTTP status of the response
    served_by: str = ""
    text: str = ""  # the answer's text as it reached the client, whole or partial
    finished: bool = False  # the answer ended as a complete answer ends (a finish reason, message_stop)
    error: str = ""  # the SDK's error, "" when there was none
    error_class: str = ""
    body: str = ""  # the error response's body, where there was one
    seconds: float = 0.0

    def __str__(self) -> str:
        return (f"{self.dialect} {'stream' if self.stream else 'whole'}: status={self.status} "
                f"served_by={self.served_by!r} text={self.text!r} finished={self.finished} "
                f"error={self.error_class}: {self.error[:300]!r} body={self.body[:300]!r} took {self.seconds:.2f} s")


def ask(stack: Stack, dialect: str, stream: bool, model: str, prompt: str) -> Seen:
    request_id = f"fm-{uuid.uuid4().hex}"
    SENT.append(request_id)
    seen = Seen(dialect, stream, request_id)
    headers = {"x-request-id": request_id}
    messages = [{"role": "user", "content": prompt}]
    started = time.monotonic()
    try:
        if dialect == "openai":
            _ask_openai(stack, seen, model, messages, headers)
        else:
            _ask_anthropic(stack, seen, model, messages, headers)
    except (openai.APIStatusError, anthropic.APIStatusError) as exc:
        seen.status = seen.status or exc.status_code
        seen.error, seen.error_class = str(exc), type(exc).__name__
        if exc.status_code >= 400:
            seen.body = exc.response.text
    except Exception as exc:  # what the SDK raised is what the client saw
        seen.error, seen.error_class = str(exc), type(exc).__name__
    seen.seconds = time.monotonic() - started
    return seen


def _ask_openai(stack: Stack, seen: Seen, model: str, messages: list[dict[str, str]],
                headers: dict[str, str]) -> None:
    client = openai.OpenAI(base_url=f"{stack.anvil}/v1", api_key=stack.key, max_retries=0, timeout=20)
    completions = client.chat.completions
    if seen.stream:
        with completions.with_streaming_response.create(model=model, messages=messages, stream=True,
                                                        extra_headers=headers) as response:
            seen.status, seen.served_by = response.status_code, response.headers.get("x-anvil-served-by", "")
            for chunk in response.parse():
                for choice in chunk.choices:
                    seen.text += choice.delta.content or ""
                    seen.finished = seen.finished or bool(choice.finish_reason)
        return
    raw = completions.with_raw_response.create(model=model, messages=messages, extra_headers=headers)
    seen.status, seen.served_by = raw.status_code, raw.headers.get("x-anvil-served-by", "")
    answer = raw.parse()
    if isinstance(answer, str):  # the SDK hands over a body that is not JSON as text: not an answer
        seen.error, seen.error_class = f"not a completion: {answer[:200]!r}", "str"
        return
    seen.text = answer.choices[0].message.content or ""
    seen.finished = bool(answer.choices[0].finish_reason)


def _ask_anthropic(stack: Stack, seen: Seen, model: str, messages: list[dict[str, str]],
                   headers: dict[str, str]) -> None:
    client = anthropic.Anthropic(base_url=stack.anvil, api_key=stack.key, max_retries=0, timeout=20)
    if seen.stream:
        with client.messages.with_streaming_response.create(model=model, max_tokens=64, messages=messages,
                                                            stream=True, extra_headers=headers) as response:
            seen.status, seen.served_by = response.status_code, response.headers.get("x-anvil-served-by", "")
            for event in response.parse():
                if event.type == "content_block_delta" and event.delta.type == "text_delta":
                    seen.text += event.delta.text
                seen.finished = seen.finished or event.type == "message_stop"
        return
    raw = client.messages.with_raw_response.create(model=model, max_tokens=64, messages=messages,
                                                   extra_headers=headers)
    seen.status, seen.served_by = raw.status_code, raw.headers.get("x-anvil-served-by", "")
    answer = raw.parse()
    seen.text = "".join(block.text for block in answer.content if block.type == "text")
    seen.finished = answer.stop_reason is not None


CLIENTS = [(dialect, stream) for dialect in ("openai", "anthropic") for stream in (True, False)]


def ask_all(stack: Stack, model: str, prompt: str) -> list[Seen]:
    """The four clients at once (the cell's clocks run side by side)."""
    with ThreadPoolExecutor(len(CLIENTS)) as pool:
        return list(pool.map(lambda client: ask(stack, *client, model, prompt), CLIENTS))


def records_for(request_ids: list[str]) -> dict[str, DecisionRecord]:
    def written() -> dict[str, DecisionRecord] | None:
        drain_decisions()
        found = {r.request_id: r for r in DecisionRecord.objects.filter(request_id__in=request_ids)}
        return found if len(found) == len(request_ids) else None

    return wait_for(written, 15, f"the decision records of {request_ids}")


# --- the matrix ------------------------------------------------------------------------------------------


def when_it_breaks(fault: str, column: Column, dialect: str, stream: bool) -> str:
    """'before' or 'after' the attempt committed. Before: nothing reached the client yet, so a fallback can
    answer. A verified answer is held whole, and a whole answer is read whole, so only a stream of an allowed
    serve is past its commit once its headers came: for a fault that leaves the headers unsent, that is never."""
    if column.verified or not stream or fault in ("error500", "refused", "hangfirst"):
        return "before"
    return "after"


def error_status(fault: str) -> int:
    return 504 if fault.startswith("hang") else 502


def assert_clean_error_body(seen: Seen) -> None:
    """A whole error response in the client's own dialect: JSON, never an HTML page or a traceback."""
    assert seen.body, seen
    assert "<html" not in seen.body.lower() and "Traceback" not in seen.body, seen
    payload = json.loads(seen.body)
    if seen.dialect == "anthropic":
        assert payload["type"] == "error" and payload["error"]["message"], seen
    else:
        assert payload["error"]["message"] and payload["error"]["type"], seen


@pytest.mark.usefixtures("clean_breakers")
@pytest.mark.parametrize(("fault", "column_name"), MATRIX, ids=[f"{f}-{c}" for f, c in MATRIX])
def test_an_upstream_fault_is_a_fallback_before_the_commit_and_a_clean_error_after(
        stack: Stack, fault: str, column_name: str) -> None:
    column = COLUMNS[column_name]
    faulted = stack.refused if fault == "refused" else stack.faulty
    marker = "" if fault == "refused" else f" [[{fault}]]"
    seen = ask_all(stack, column.model, f"{column.prompt}Say something.{marker}")
    records = records_for([s.request_id for s in seen])
    problems = []
    for client in seen:
        shape = "stream" if client.stream else "whole"
        TOOK.append((client.seconds, f"{fault} {column.name} {client.dialect} {shape}"))
        try:
            check_cell(stack, fault, column, faulted, client, records[client.request_id])
        except AssertionError as exc:  # every client of the cell is checked: the report names each that failed
            problems.append(str(exc))
    assert not problems, "\n".join(problems)
    # Each failed attempt counted against the faulted serve's breaker, after its commit as before it.
    assert breaker_state(faulted).get("failures") == str(len(CLIENTS)), breaker_state(faulted)


def check_cell(stack: Stack, fault: str, column: Column, faulted: str, client: Seen, record: DecisionRecord) -> None:
    where = when_it_breaks(fault, column, client.dialect, client.stream)
    context = f"{fault} × {column.name}, {where} the commit: {client}; attempts {record.attempts}"
    assert client.seconds < DEADLINE, f"waited past the clocks: {context}"
    assert record.attempts[0]["serve"] == faulted, context
    if column.verified:  # not one byte of a failed verified attempt
        assert "part" not in client.text, context
    if where == "before" and column.fallback:
        assert (client.status, client.served_by, client.error) == (200, stack.healthy, ""), context
        assert (client.text, client.finished) == (HEALTHY_TEXT, True), context
        assert record.attempts[0]["outcome"] in ("fallback", "timeout", "unreachable"), context
        assert (record.served_by, record.attempts[-1]["outcome"]) == (stack.healthy, "served"), context
    elif where == "before":
        assert client.status == error_status(fault) and client.served_by == "", context
        assert_clean_error_body(client)
        assert faulted in client.error and client.text == "", context
        assert (record.served_by, record.outcome, record.status) == ("", "error", client.status), context
    else:  # the stream was flowing: what came is the faulted serve's, then an error event in its dialect
        assert (client.status, client.served_by) == (200, faulted), context
        assert client.text and "".join(PARTIAL).startswith(client.text), context
        assert not client.finished and f"Serve {faulted} failed mid-stream" in client.error, context
        assert "<html" not in client.error.lower() and "Traceback" not in client.error, context
        assert record.served_by == faulted and record.outcome in ("error", "timeout", "unreachable"), context


# --- the defects the matrix found, each on its own ------------------------------------------------------


def sse_events(response: httpx.Response) -> list[tuple[str, str]]:
    """(event name, data) of each event of a stream, as the wire carried it."""
    events = []
    for block in response.text.split("\n\n"):
        lines = [line for line in block.splitlines() if line]
        if lines:
            name = next((line[7:] for line in lines if line.startswith("event: ")), "")
            events.append((name, "\n".join(line[6:] for line in lines if line.startswith("data: "))))
    return events


@pytest.mark.usefixtures("clean_breakers")
def test_a_stream_that_stops_without_its_end_is_a_failed_stream_never_a_finished_or_verified_answer(
        stack: Stack) -> None:
    prompt = [{"role": "user", "content": "Say something. [[badsse]]"}]  # part0, a proxy's page, then the end
    allowed, verified = COLUMNS["allow-alone"].model, COLUMNS["verify-alone"].model
    openai_stream = httpx.post(f"{stack.anvil}/v1/chat/completions", headers={"authorization": f"Bearer {stack.key}"},
                               timeout=20, json={"model": allowed, "stream": True, "messages": prompt})
    anthropic_stream = httpx.post(f"{stack.anvil}/v1/messages", headers={"x-api-key": stack.key}, timeout=20,
                                  json={"model": allowed, "stream": True, "max_tokens": 64, "messages": prompt})
    held = httpx.post(f"{stack.anvil}/v1/chat/completions", headers={"authorization": f"Bearer {stack.key}"},
                      timeout=20, json={"model": verified, "stream": True, "messages": prompt})
    SENT.extend(r.headers["x-request-id"] for r in (openai_stream, anthropic_stream, held))
    # Allowed, the stream flowed: what came, then an error event, never [DONE] nor a made-up message_stop.
    events = sse_events(openai_stream)
    assert json.loads(events[0][1])["choices"][0]["delta"]["content"] == "part0 "
    assert "ended before the answer did" in json.loads(events[-1][1])["error"]["message"]
    assert ("", "[DONE]") not in events
    names = [name for name, _ in sse_events(anthropic_stream)]
    assert names[-1] == "error" and "message_stop" not in names, names
    # Verified, held whole: the cut answer is never replayed as if it were one.
    assert held.status_code == 502 and "part0" not in held.text, held.text
    assert "ended before the answer did" in held.json()["error"]["message"]


@pytest.mark.usefixtures("clean_breakers")
@pytest.mark.parametrize("fault", ["hangmid", "die5", "notjson", "badsse"])
def test_a_whole_answer_from_an_allowed_serve_is_read_whole_before_it_commits_so_a_broken_body_falls_back(
        stack: Stack, fault: str) -> None:
    def whole(column: str) -> httpx.Response:
        return httpx.post(f"{stack.anvil}/v1/chat/completions", headers={"authorization": f"Bearer {stack.key}"},
                          timeout=20, json={"model": COLUMNS[column].model,
                                            "messages": [{"role": "user", "content": f"Say something. [[{fault}]]"}]})

    with ThreadPoolExecutor(2) as pool:
        rescued, alone = pool.map(whole, ["allow+fallback", "allow-alone"])
    SENT.extend(r.headers["x-request-id"] for r in (rescued, alone))
    assert rescued.status_code == 200 and rescued.headers["x-anvil-served-by"] == stack.healthy, rescued.text
    assert rescued.json()["choices"][0]["message"]["content"] == HEALTHY_TEXT
    assert alone.status_code == error_status(fault) and alone.headers["content-type"] == "application/json"
    assert stack.faulty in alone.json()["error"]["message"] and "part" not in alone.text


# --- the circuit breaker ---------------------------------------------------------------------------------


def breaker_state(serve: str) -> dict[str, str]:
    client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5)
    try:
        raw = client.hgetall(f"{settings.ANVIL_REDIS_PREFIX}:breaker:{serve}")
    finally:
        client.close()
    return {k.decode(): v.decode() for k, v in raw.items()}


@pytest.mark.usefixtures("clean_breakers")
def test_the_breaker_opens_on_repeated_failures_probes_once_when_cool_and_closes_once_the_serve_answers(
        stack: Stack, module_logs: Path) -> None:
    alone, with_fallback = COLUMNS["refused-alone"], COLUMNS["refused+fallback"]

    def request(column: Column, dialect: str = "openai", stream: bool = False) -> Seen:
        seen = ask(stack, dialect, stream, column.model, f"{column.prompt}Say something.")
        if stack.refused_port not in served:  # a faulted request (the serve is down)
            TOOK.append((seen.seconds, f"breaker {column.name} {dialect}"))
        assert seen.seconds < DEADLINE, seen
        return seen

    def tried(*seen: Seen) -> list[list[tuple[str, str]]]:
        records = records_for([s.request_id for s in seen])
        return [[(a["serve"], a["outcome"]) for a in records[s.request_id].attempts] for s in seen]

    def cooled() -> None:
        opened = float(breaker_state(stack.refused)["opened"])
        wait_for(lambda: time.time() - opened > BREAKER_COOLDOWN, BREAKER_COOLDOWN + 5, "the cooldown to pass")

    refused, healthy = stack.refused, stack.healthy
    served: set[int] = set()  # the refused serve's port, once it listens again
    # Closed: every request tries the serve, and each failure counts. Then open, within the cooldown: the serve is
    # skipped without a try; alone, that is a 503 in the client's dialect; with a fallback, the fallback answers.
    failing = [request(alone) for _ in range(BREAKER_FAILURES)]
    skipped = [request(alone, dialect) for dialect in ("openai", "anthropic")]
    fallen_back = request(with_fallback)
    assert breaker_state(refused)["open"] == "1"
    assert [s.status for s in failing] == [502] * BREAKER_FAILURES, [str(s) for s in failing]
    for seen in skipped:
        assert seen.status == 503 and "open circuit breakers" in seen.error and refused in seen.error, seen
        assert_clean_error_body(seen)
    assert (fallen_back.status, fallen_back.served_by, fallen_back.text) == (200, healthy, HEALTHY_TEXT), fallen_back
    assert tried(*failing, *skipped, fallen_back) == (
        [[(refused, "unreachable")]] * BREAKER_FAILURES + [[(refused, "skipped-circuit")]] * 2
        + [[(refused, "skipped-circuit"), (healthy, "served")]])

    # Half-open, the serve still down: after the cooldown one probe goes through; it fails, the breaker opens
    # again, and the next request is skipped.
    cooled()
    probe, after = request(alone), request(alone)
    assert (probe.status, after.status) == (502, 503), (str(probe), str(after))
    assert tried(probe, after) == [[(refused, "unreachable")], [(refused, "skipped-circuit")]]

    # The serve comes back on its port. After the cooldown, of four streams at once exactly one reaches it (the
    # probe: its answer takes 2.5 s, and the breaker stays half-open meanwhile); once it has answered, the
    # breaker is closed and requests go to the serve again.
    argv = [sys.executable, str(SCRIPTED_UPSTREAM), "--port", str(stack.refused_port), "--force-scenario", "text",
            "--delay-ms", "350"]
    with running(argv, child_env(), module_logs / "refused-serve-back.log"):
        back = f"http://127.0.0.1:{stack.refused_port}"
        wait_for(lambda: httpx.get(f"{back}/health", timeout=1).status_code == 200, 30, "the serve to come back")
        served.add(stack.refused_port)
        cooled()
        with ThreadPoolExecutor(4) as pool:
            burst = list(pool.map(lambda _: request(with_fallback, stream=True), range(4)))
        assert [(s.status, s.text) for s in burst] == [(200, HEALTHY_TEXT)] * 4, [str(s) for s in burst]
        firsts = sorted(attempts[0] for attempts in tried(*burst))
        assert firsts == [(refused, "served")] + [(refused, "skipped-circuit")] * 3, firsts
        assert len(httpx.get(f"{back}/_requests", timeout=5).json()) == 1
        wait_for(lambda: breaker_state(refused) == {}, 5, "the probe's success to close the breaker")
        closed = [request(alone, dialect) for dialect in ("openai", "anthropic")]
        assert [(s.status, s.served_by, s.text) for s in closed] == [(200, refused, HEALTHY_TEXT)] * 2, closed
        assert tried(*closed) == [[(refused, "served")]] * 2


# --- nothing lost ----------------------------------------------------------------------------------------


def test_every_request_sent_left_exactly_one_decision_record(stack: Stack) -> None:
    if not SENT:
        pytest.skip("nothing was sent: this counts the requests of the tests above")
    records = records_for(SENT)
    rows = DecisionRecord.objects.filter(request_id__in=SENT).count()
    slowest, what = max(TOOK)
    cells = len(MATRIX) * len(CLIENTS)
    print(f"\nfault matrix: {len(FAULTS)} faults, {len(MATRIX)} fault × column pairs, {cells} cells; "
          f"requests sent {len(SENT)}, decision rows written {rows} (lost {len(SENT) - len(records)}); "
          f"slowest faulted request {slowest:.2f} s ({what})")
    assert rows == len(records) == len(SENT)

