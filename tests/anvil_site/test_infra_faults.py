"""Infrastructure faults on the production path, end to end: Redis restarted under traffic, PostgreSQL
restarted under a live console, and the HRM worker killed under a live front door.

Every part is real: Anvil under its own Daphne entry point, a Redis server and a PostgreSQL cluster of
the test's own (the suite's are never stopped), scripted upstreams, the HRM worker on the demo
checkpoint, and clients on loopback sending steady traffic. Each test prints its figures (requests
sent, rows written, seconds of outage) for bench/RESULTS.md.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
import pytest
import redis
from django.conf import settings

from anvil_site.launcher import embedded_redis_spec, redis_answers
from inference.keys import create_key
from routing.decision_log import QUEUE_CAP, drain_decisions, dropped_key, queue_key
from routing.models import DecisionRecord
from serves.inference_workers import register_worker
from serves.models import Serve
from tests.support.live import hrm_worker, live_anvil, scripted_upstream, until_routed
from tests.support.private_postgres import PrivatePostgres, private_postgres
from tests.support.processes import child_env, free_port, manage, running
from tests.support.profiles import allow_tiers
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow

REQUEST_TIMEOUT = 10.0  # a client's own patience: every answer must come well within it


def anvil_log(logs_dir: Path, anvil: str) -> str:
    """What the live Anvil at ``anvil`` has written so far (live_anvil names its log by port)."""
    port = anvil.rsplit(":", 1)[1]
    return (logs_dir / f"anvil-{port}.log").read_text(errors="replace")


# --- steady traffic ---------------------------------------------------------------------------------


@dataclass
class Answer:
    request_id: str
    kind: str
    status: int | None  # None: no answer at all (the client timed out or the connection broke)
    seconds: float
    at: float  # monotonic, when it was sent
    served_by: str = ""
    error: str = ""


@dataclass
class Traffic:
    """``clients`` loops sending chat (streamed and not) and messages requests, one at a time each."""

    anvil: str
    key: str
    model: str
    prefix: str
    clients: int = 3
    answers: list[Answer] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    KINDS = ("chat", "chat-stream", "messages")

    def __enter__(self) -> Traffic:
        for n in range(self.clients):
            thread = threading.Thread(target=self._loop, args=(n,), name=f"traffic-{n}", daemon=True)
            thread.start()
            self.threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=REQUEST_TIMEOUT + 5)

    def count(self) -> int:
        with self.lock:
            return len(self.answers)

    def since(self, moment: float) -> list[Answer]:
        with self.lock:
            return [a for a in self.answers if a.at >= moment]

    def _loop(self, n: int) -> None:
        with httpx.Client(base_url=self.anvil, timeout=REQUEST_TIMEOUT) as client:
            i = 0
            while not self.stop.is_set():
                kind = self.KINDS[(n + i) % len(self.KINDS)]
                request_id = f"{self.prefix}-{n}-{i}"
                i += 1
                started = time.monotonic()
                answer = self._send(client, kind, request_id)
                answer.seconds, answer.at = time.monotonic() - started, started
                with self.lock:
                    self.answers.append(answer)

    def _send(self, client: httpx.Client, kind: str, request_id: str) -> Answer:
        headers = {"authorization": f"Bearer {self.key}", "x-request-id": request_id}
        messages = [{"role": "user", "content": f"hello {request_id}"}]
        if kind == "messages":
            path, body = "/v1/messages", {"model": self.model, "max_tokens": 32, "messages": messages}
        else:
            path, body = "/v1/chat/completions", {"model": self.model, "messages": messages,
                                                  "stream": kind == "chat-stream"}
        try:
            with client.stream("POST", path, headers=headers, json=body) as response:
                text = response.read().decode(errors="replace")
        except httpx.HTTPError as exc:
            return Answer(request_id, kind, None, 0, 0, error=f"{type(exc).__name__}: {exc}")
        complete = "[DONE]" in text if kind == "chat-stream" else text.startswith("{")
        problem = "" if response.status_code == 200 and complete else text[:300]
        return Answer(request_id, kind, response.status_code, 0, 0, response.headers.get("x-anvil-served-by", ""),
                      problem)


def failures(answers: list[Answer]) -> list[Answer]:
    return [a for a in answers if a.status != 200 or a.error]


# --- 1. Redis restarted under traffic -----------------------------------------------------------------

OUTAGE_SECONDS = 3.0  # the deliberate window Redis is down: long enough for several failed pushes
ANSWERED_DURING_OUTAGE = 30


@contextmanager
def private_redis(socket_path: Path, data_dir: Path, log: Path) -> Iterator[str]:
    """The launcher's embedded Redis (append-only file, flags and all) on a socket of the test's own."""
    with running(embedded_redis_spec(socket_path, data_dir).argv, {}, log):
        url = f"unix://{socket_path}"
        wait_for(lambda: redis_answers(url), 15, f"the private Redis ({log.name})")
        yield url


@pytest.mark.django_db(transaction=True)
def test_redis_restarted_under_traffic_loses_no_request_and_no_decision_record(
        tmp_path: Path, logs_dir: Path) -> None:
    """Stop Redis under steady traffic for a few seconds, start it again: every request is a 200, and once
    Redis is back and the log is drained there is one DecisionRecord per request sent.

    The traffic is routed to a dead serve first (nothing listens on its port), then to a live one:
    with Redis up the dead serve's breaker opens and it is skipped. While Redis is down the front
    door needs it for nothing on a request's time: breakers degrade to each process's own
    (``routing.web_state.local_breakers``, which saw the same failures, so the dead serve stays
    skipped), the concurrency limits are per process anyway (``inference.admission``), and
    in-flight counts are fire-and-forget. Decision records wait in the web process's queue
    (``routing.decision_log``), pushed again with a backoff of at most ``RETRY_MAX_SECONDS`` (5 s).

    The buffer bound: each web process holds at most ``QUEUE_CAP`` (50,000) records while Redis is
    away; past that the oldest are dropped, counted in the Redis hash ``…:decisions:dropped`` under
    ``queue-full`` and reported by ``/metrics`` as ``anvil_decisions_dropped_total``. At this test's
    rate (~100-300 requests/s from three clients) that is three minutes or more of outage; at a busy
    deployment's, seconds per thousand requests/s. Records Redis already held survive its restart in
    its append-only file (``appendfsync everysec``: a clean stop loses none, a crash at most the last
    second's pushes), and so does the breaker state.
    """
    socket_path, data_dir = tmp_path / "r.sock", tmp_path / "redis-data"
    data_dir.mkdir()
    url = f"unix://{socket_path}"
    dead, live = f"a-dead-{uuid.uuid4().hex[:6]}", f"b-live-{uuid.uuid4().hex[:6]}"
    key = create_key(f"redis-restart-{uuid.uuid4().hex[:6]}").secret
    redis_up = ExitStack()
    with ExitStack() as stack:
        upstream = stack.enter_context(scripted_upstream(logs_dir, deltas=4, delay_ms=2))
        redis_up.enter_context(private_redis(socket_path, data_dir, logs_dir / "redis-1.log"))
        stack.callback(redis_up.close)
        anvil = stack.enter_context(live_anvil(logs_dir, REDIS_URL=url))
        Serve.objects.create(name=dead, tier="fast", base_url=f"http://127.0.0.1:{free_port()}/v1", served_model="m")
        Serve.objects.create(name=live, tier="fast", base_url=f"{upstream}/v1", served_model="m")
        allow_tiers("fast")
        until_routed(anvil, key, {dead: "allow", live: "allow"})

        prefix = f"redis-{uuid.uuid4().hex[:6]}"
        with Traffic(anvil, key, "auto", prefix) as traffic:
            wait_for(lambda: traffic.count() >= 20 and f"circuit opened: serve {dead}" in anvil_log(logs_dir, anvil),
                     30, "traffic before the outage, and the dead serve's breaker open")
            redis_up.close()  # SIGTERM: Redis writes its append-only file and exits
            down_at = time.monotonic()
            assert not redis_answers(url)
            wait_for(lambda: time.monotonic() - down_at >= OUTAGE_SECONDS
                     and len(traffic.since(down_at)) >= ANSWERED_DURING_OUTAGE
                     and "cannot hand records to Redis" in anvil_log(logs_dir, anvil),
                     30, f"{ANSWERED_DURING_OUTAGE} requests answered with Redis down")
            during = traffic.since(down_at)
            redis_up.enter_context(private_redis(socket_path, data_dir, logs_dir / "redis-2.log"))
            up_at = time.monotonic()
            wait_for(lambda: "reachable again" in anvil_log(logs_dir, anvil), 20,
                     "the web process to hand its held records to the restarted Redis")
            back_at = time.monotonic()
            wait_for(lambda: len(traffic.since(back_at)) >= 20, 30, "traffic after the restart")
        answers = list(traffic.answers)

        bad = failures(answers)
        assert not bad, f"{len(bad)} of {len(answers)} requests failed: {bad[:5]}"
        assert {a.served_by for a in answers} == {live}
        assert max(a.seconds for a in during) < 5, "a request waited on the missing Redis"
        sent = {a.request_id for a in answers}

        written: set[str] = set()

        def all_written() -> bool:
            drain_decisions(redis_url=url)
            written.update(DecisionRecord.objects.filter(request_id__startswith=f"{prefix}-")
                           .values_list("request_id", flat=True))
            return written >= sent

        wait_for(all_written, 30, "a decision record for every request sent")
        client = redis.Redis.from_url(url, socket_timeout=5)
        try:
            assert client.llen(queue_key()) == 0
            assert not client.hget(dropped_key(), "queue-full")
        finally:
            client.close()
    rows = DecisionRecord.objects.filter(request_id__startswith=f"{prefix}-")
    assert written == sent and rows.count() == len(sent)  # one row per request: none lost, none twice
    first_attempt = {r.request_id: r.attempts[0]["outcome"] for r in rows if r.attempts[0]["serve"] == dead}

    def dead_tried(group: list[Answer]) -> int:
        return sum(first_attempt.get(a.request_id) not in (None, "skipped-circuit") for a in group)

    after = [a for a in answers if a.at >= back_at]
    assert dead_tried(during) <= 1  # this process's own breaker kept it open (one probe at most)
    assert dead_tried(after) == 0  # the breaker's open state came back with Redis (append-only file)
    log = anvil_log(logs_dir, anvil)
    assert log.count("cannot hand records to Redis") == 1  # one line per outage, not one per push
    assert log.count("circuit breakers: Redis unreachable") == 1 and "Traceback" not in log
    print(f"\nredis restart: {len(sent)} requests sent, all 200 ({len(during)} while Redis was down for "
          f"{up_at - down_at:.1f} s), {len(sent)} decision records written, 0 lost (buffer bound {QUEUE_CAP} per "
          f"web process); slowest answer during the outage {max(a.seconds for a in during):.2f} s; the dead serve "
          f"was tried by {dead_tried(during)} of {len(during)} requests while Redis was down (per-process "
          f"breakers), {dead_tried(after)} of {len(after)} after")


# --- 2. PostgreSQL restarted ----------------------------------------------------------------------------

PAGES = ("/", "/admin/", "/api/keys/")

SETUP = """
import json
from django.contrib.auth import get_user_model
from inference.keys import create_key
from serves.models import Serve
from tests.support.profiles import allow_tiers
Serve.objects.create(name="pg-fast", tier="fast", base_url="{upstream}/v1", served_model="m")
allow_tiers("fast")
get_user_model().objects.create_superuser("ops", "", "correct-horse-battery")
print(json.dumps({{"key": create_key("pg-restart").secret}}))
"""


def in_cluster(cluster: PrivatePostgres, *args: str) -> subprocess.Popen[str]:
    """``manage.py ARGS`` started against the private cluster (its own DATABASE_URL); see ``finished``."""
    return subprocess.Popen(manage(*args), env=child_env(DATABASE_URL=cluster.url), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)


def finished(command: subprocess.Popen[str], what: str) -> str:
    """What ``command`` printed, once it succeeded."""
    try:
        out, err = command.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        command.kill()
        out, err = command.communicate(timeout=10)
    assert command.returncode == 0, f"manage.py {what} failed:\n{out[-2000:]}\n{err[-3000:]}"
    return out


def signed_in(anvil: str) -> httpx.Client:
    """A browser-like client with a staff session (the admin's login form, CSRF and all)."""
    client = httpx.Client(base_url=anvil, timeout=REQUEST_TIMEOUT)
    client.get("/admin/login/")
    answer = client.post("/admin/login/?next=/", data={
        "username": "ops", "password": "correct-horse-battery", "next": "/",
        "csrfmiddlewaretoken": client.cookies["csrftoken"]}, headers={"referer": f"{anvil}/admin/login/"})
    assert answer.status_code == 302 and answer.headers["location"] == "/", answer.text[:500]
    return client


def statements(cluster: PrivatePostgres) -> list[str]:
    return [line for line in cluster.log_tail(10**7).splitlines() if "statement: " in line]


def test_postgres_restarted_requests_flow_on_snapshots_and_pages_answer_503_until_it_returns(
        logs_dir: Path) -> None:
    """A private PostgreSQL cluster (the suite's database is never stopped) is stopped under traffic and
    a signed-in operator's pages, then started again.

    The front door answers every request from its snapshots (keys, serves, profile, rules, sampling
    rates): warm, it sends the database nothing per request, which the cluster's own statement log
    shows. The console, the admin and the REST API answered Django's bare "Server Error (500)" page
    while the database was down, each with a traceback in the log; they answer 503 with Retry-After
    now (``anvil_site/error_pages.py``), one log line each, and the snapshots' failed checks are one
    line per outage (they were a traceback per snapshot per second). Back, the pages answer 200.
    """
    with ExitStack() as stack:
        cluster = stack.enter_context(private_postgres(logs_dir))
        upstream = stack.enter_context(scripted_upstream(logs_dir, deltas=4, delay_ms=2))
        finished(in_cluster(cluster, "migrate", "--no-input", "-v", "0"), "migrate")
        # The rows are made while Anvil starts (two slow starts at once); its snapshots load them when asked.
        setup = in_cluster(cluster, "shell", "-c", SETUP.format(upstream=upstream))
        stack.callback(setup.kill)
        anvil = stack.enter_context(live_anvil(logs_dir, DATABASE_URL=cluster.url))
        key = json.loads(finished(setup, "shell (setup)").splitlines()[-1])["key"]
        until_routed(anvil, key, {"pg-fast": "allow"})
        pages = signed_in(anvil)
        stack.callback(pages.close)
        for path in PAGES:
            assert pages.get(path).status_code == 200, path

        # Warm, the hot path asks the database nothing per request: every statement the web process
        # sends while 40 requests are answered is a snapshot's background fingerprint check.
        with psycopg.connect(f"host=127.0.0.1 port={cluster.port} user=anvil dbname=postgres",
                             autocommit=True) as admin:
            admin.execute("ALTER SYSTEM SET log_statement = 'all'")
            admin.execute("SELECT pg_reload_conf()")
            wait_for(lambda: admin.execute("SHOW log_statement").fetchone() == ("all",), 10, "statement logging")
            before = len(statements(cluster))
            with httpx.Client(base_url=anvil, timeout=REQUEST_TIMEOUT) as client:
                for i in range(40):
                    answer = client.post("/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                                         json={"model": "pg-fast",
                                               "messages": [{"role": "user", "content": f"hi {i}"}]})
                    assert answer.status_code == 200, answer.text
            admin.execute("SELECT 'end of the burst'")
            wait_for(lambda: "end of the burst" in cluster.log_tail(), 10, "the statement log to catch up")
        burst = statements(cluster)[before:]
        per_request = [s for s in burst if "updated_at" not in s and "end of the burst" not in s
                       and "log_statement" not in s]
        assert not per_request, f"the hot path queried the database: {per_request[:5]}"
        fingerprints = len(burst) - len(per_request)

        prefix = f"pg-{uuid.uuid4().hex[:6]}"
        with Traffic(anvil, key, "pg-fast", prefix) as traffic:
            wait_for(lambda: traffic.count() >= 10, 30, "traffic before the outage")
            cluster.stop()
            down_at = time.monotonic()
            outage: dict[str, list[tuple[int, float]]] = {path: [] for path in PAGES}
            for path in PAGES:
                started = time.monotonic()
                answer = pages.get(path)
                outage[path].append((answer.status_code, time.monotonic() - started))
                assert answer.status_code == 503, (path, answer.status_code, answer.text[:500])
                assert answer.headers.get("retry-after"), path
            assert "database" in pages.get("/").text.lower()
            assert pages.get("/api/keys/").json()["detail"]
            assert httpx.get(f"{anvil}/readyz", timeout=REQUEST_TIMEOUT).status_code == 503
            # Long enough for every snapshot's background check to fail, and for traffic to go on regardless.
            wait_for(lambda: len(traffic.since(down_at)) >= 30
                     and "snapshots: the database is unreachable" in anvil_log(logs_dir, anvil),
                     30, "requests answered with PostgreSQL down, past a failed snapshot check")
            during = traffic.since(down_at)
            cluster.start()
            up_at = time.monotonic()
            wait_for(lambda: all(pages.get(path).status_code == 200 for path in PAGES), 20,
                     "the pages to answer again")
            back_at = time.monotonic()
            wait_for(lambda: len(traffic.since(back_at)) >= 10
                     and "snapshots: the database answers again" in anvil_log(logs_dir, anvil),
                     30, "traffic after the restart, on refreshed snapshots")
        answers = list(traffic.answers)
        log = anvil_log(logs_dir, anvil)
    bad = failures(answers)
    assert not bad, f"{len(bad)} of {len(answers)} requests failed: {bad[:5]}"
    # The outage is told in a few lines: once by the snapshots, once per page refused; no tracebacks.
    assert log.count("snapshots: the database is unreachable") == 1 and "Traceback" not in log, log[-3000:]
    assert log.count("database unavailable: GET") >= len(PAGES)
    print(f"\npostgres restart: {len(answers)} requests, all 200 ({len(during)} while PostgreSQL was down for "
          f"{up_at - down_at:.1f} s); pages during the outage: "
          + ", ".join(f"{path} {code} in {seconds * 1000:.0f} ms" for path, [(code, seconds)] in outage.items())
          + f"; pages answered 200 again {back_at - up_at:.1f} s after the start; 0 statements per request "
          f"({fingerprints} background fingerprint checks during a burst of 40 requests)")


# --- 3. The HRM worker killed -----------------------------------------------------------------------------


def breaker_open(serve: str) -> bool:
    """What routing.breaker's scripts keep in Redis for ``serve``: is its circuit open?"""
    client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5)
    try:
        return client.hget(f"{settings.ANVIL_REDIS_PREFIX}:breaker:{serve}", "open") == b"1"
    finally:
        client.close()


def record_for(request_id: str) -> DecisionRecord:
    def written() -> DecisionRecord | None:
        drain_decisions()
        return DecisionRecord.objects.filter(request_id=request_id).first()

    found = wait_for(written, 10, f"the decision record of {request_id}")
    assert found is not None
    return found


def chat(anvil: str, key: str, model: str, **extra: object) -> httpx.Response:
    return httpx.post(f"{anvil}/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                      timeout=REQUEST_TIMEOUT, json={"model": model, "max_tokens": 16,
                                                     "messages": [{"role": "user", "content": "hello"}], **extra})


@pytest.mark.django_db(transaction=True)
def test_hrm_worker_killed_clients_get_the_fallback_or_a_clean_error_and_its_breaker_opens(
        logs_dir: Path) -> None:
    """SIGKILL the HRM worker (``manage.py runinference`` on the demo checkpoint) while it streams.

    The stream it was sending ends with an error event at once (the answer was already the client's:
    no fallback after a commit); the next requests fall back to a healthy scripted serve, and after
    ``ANVIL_BREAKER_FAILURES`` failures its breaker opens and it is skipped without a connection attempt.
    With the fallback disabled, a client gets a 503 in its own dialect, with Retry-After, at once.
    """
    worker_serve, fallback = f"a-hrm-{uuid.uuid4().hex[:6]}", f"b-fallback-{uuid.uuid4().hex[:6]}"
    key = create_key(f"hrm-kill-{uuid.uuid4().hex[:6]}").secret
    with ExitStack() as stack:
        upstream = stack.enter_context(scripted_upstream(logs_dir, deltas=4, delay_ms=2))
        port, worker = stack.enter_context(hrm_worker(logs_dir))
        anvil = stack.enter_context(live_anvil(logs_dir))
        register_worker(worker_serve, port, "hrm-demo", tier="fast", context_limit=512)
        Serve.objects.create(name=fallback, tier="fast", base_url=f"{upstream}/v1", served_model="m")
        allow_tiers("fast")
        until_routed(anvil, key, {worker_serve: "allow", fallback: "allow"})
        answer = chat(anvil, key, "auto")
        assert answer.status_code == 200 and answer.headers["x-anvil-served-by"] == worker_serve, answer.text

        # Killed mid-stream: the answer was already the client's, so no fallback; a clean error event ends it.
        with httpx.stream("POST", f"{anvil}/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                          timeout=REQUEST_TIMEOUT, json={"model": worker_serve, "stream": True, "max_tokens": 400,
                                                         "messages": [{"role": "user", "content": "hello"}]}) as cut:
            assert cut.status_code == 200 and cut.headers["x-anvil-served-by"] == worker_serve
            lines = cut.iter_lines()
            first = next(line for line in lines if line.startswith("data: "))
            assert "delta" in first
            os.killpg(worker.pid, signal.SIGKILL)
            killed_at = time.monotonic()
            rest = [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]
        ended_in = time.monotonic() - killed_at
        assert ended_in < 5, "the stream outlived its dead worker"
        assert rest and rest[-1] != "[DONE]", rest[-3:]
        assert "failed mid-stream" in json.loads(rest[-1])["error"]["message"], rest[-1]
        worker.wait(timeout=10)

        # Not yet committed: each request falls back to the healthy serve, until the breaker opens.
        outcomes = []
        for _ in range(4):
            started = time.monotonic()
            answer = chat(anvil, key, "auto")
            assert time.monotonic() - started < 5
            assert answer.status_code == 200 and answer.headers["x-anvil-served-by"] == fallback, answer.text
            assert answer.json()["choices"][0]["message"]["content"]
            record = record_for(answer.headers["x-request-id"])
            outcomes.append([(a["serve"], a["outcome"]) for a in record.attempts])
        assert outcomes[0][0][0] == worker_serve and outcomes[0][0][1] != "served" and outcomes[0][-1] == (
            fallback, "served")
        assert outcomes[-1] == [(worker_serve, "skipped-circuit"), (fallback, "served")], outcomes
        assert breaker_open(worker_serve)
        assert f"circuit opened: serve {worker_serve}" in anvil_log(logs_dir, anvil)

        # With no fallback left, the client gets a clean error in its own dialect, at once.
        gone = Serve.objects.get(name=fallback)
        gone.enabled = False
        gone.save()  # save(), as the admin does: updated_at moves, so the web process's snapshot reloads

        def fallback_gone() -> bool:
            decision = httpx.post(f"{anvil}/v1/route", headers={"x-api-key": key}, timeout=5, json={
                "model": "auto", "messages": [{"role": "user", "content": "hi"}]}).json()
            return [c["serve"] for c in decision.get("candidates", [])] == [worker_serve]

        wait_for(fallback_gone, 10, "the fallback to leave the catalog")
        openai_error = chat(anvil, key, worker_serve)
        assert openai_error.status_code == 503 and openai_error.headers.get("retry-after")
        assert worker_serve in openai_error.json()["error"]["message"]
        anthropic_error = httpx.post(f"{anvil}/v1/messages", headers={"x-api-key": key}, timeout=REQUEST_TIMEOUT,
                                     json={"model": worker_serve, "max_tokens": 16,
                                           "messages": [{"role": "user", "content": "hello"}]})
        assert anthropic_error.status_code == 503
        assert anthropic_error.json()["type"] == "error" and anthropic_error.json()["error"]["message"]
    print(f"\nhrm worker killed: the stream in flight ended with an error event {ended_in:.2f} s after the kill; "
          f"attempts after it: {outcomes}")
