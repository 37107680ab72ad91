"""Anvil on several hosts, on one machine: network namespaces for the GPU hosts B and C, this machine for the
control host A (tests/support/many_hosts.py: nginx before two web processes, Redis, PostgreSQL, beat, Prometheus,
an OTLP collector stand-in). Each host's serve is a ``process`` serve running the scripted engine, which its host's
agent starts in its own namespace, listening on that host's address.

* A request through nginx on A reaches the serve on C over the veth link, loaded there on demand, and streams
  back; its trace reaches the collector, and the engine on C receives the trace's traceparent.
* A load of B's serve runs on B (its engine is in B's namespace). B's agent is killed during that load: B's serve
  goes unknown and requests are told why; when the agent comes back, the load it had taken completes, adopting the
  engine already started: one engine, one ``loading`` and one ``loaded`` event.
* A breaker opened through web node 1 is honoured by web node 2.
* Web node 1 is killed under load: requests go on through nginx to node 2, and only those in flight fail.
* Prometheus, started with compose/prometheus.yml, scrapes the web nodes and the agents, and PromQL returns the
  requests per serve.
"""

from __future__ import annotations

import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from serves.models import ModelState, Serve, ServeEvent
from tests.support.many_hosts import ALIAS, HostsStack, hosts_stack
from tests.support.processes import ROOT, free_port
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.many_hosts, pytest.mark.timeout(600)]

SCRIPTED = str(ROOT / "tests" / "support" / "scripted_upstream.py")
TRACE = uuid.uuid4().hex


def engine_command(startup_delay: float = 0, delay_ms: float = 40) -> list[str]:
    """The scripted engine, listening on the host's own address ({bind}) after ``startup_delay`` s."""
    start = (f"import runpy, sys, time; time.sleep({startup_delay}); "
             f"sys.argv = [{SCRIPTED!r}, '--host', sys.argv[1], '--port', sys.argv[2], '--deltas', '8', "
             f"'--delay-ms', '{delay_ms}']; runpy.run_path({SCRIPTED!r}, run_name='__main__')")
    return [sys.executable, "-c", start, "{bind}", "{port}"]


@pytest.fixture(autouse=True)
def stack_database(django_db_blocker: object) -> Iterator[None]:
    with django_db_blocker.unblock():
        yield


@pytest.fixture(scope="module")
def stack(django_db_blocker: object, module_logs: Path) -> Iterator[HostsStack]:
    with django_db_blocker.unblock(), hosts_stack(module_logs) as found:
        serves = Serve.objects.using(ALIAS)
        for host, delay in (("b", 4.0), ("c", 0.0)):
            port = free_port()
            serves.create(name=f"on-{host}", host=host, tier="fast", runtime="process", port=port,
                          base_url=f"http://{found.net[host].address}:{port}/v1", served_model="scripted",
                          command=engine_command(startup_delay=delay), on_demand=True, ready_timeout=60,
                          drain_timeout=5)
        serves.create(name="broken", tier="fast", base_url=f"http://127.0.0.1:{free_port()}/v1",
                      served_model="nothing")
        found.key = found.manage("apikey", "create", "hosts-test").strip().splitlines()[-1]
        yield found


def serve(name: str) -> Serve:
    return Serve.objects.using(ALIAS).get(name=name)


def keepers(stack: HostsStack, host: str, name: str) -> list[int]:
    """The pids of ``name``'s process keepers running in ``host``'s namespace."""
    found = []
    for pid in stack.net[host].pids():
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(part.endswith(b"process_keeper.py") for part in argv) and name.encode() in argv:
            found.append(pid)
    return found


def ask(url: str, key: str, model: str, timeout: float = 60) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", headers={"authorization": f"Bearer {key}"}, timeout=timeout,
                      json={"model": model, "messages": [{"role": "user", "content": "hi"}]})


def test_a_request_through_nginx_is_loaded_and_answered_on_host_c_and_streams_back(stack: HostsStack) -> None:
    client = openai.OpenAI(base_url=f"{stack.nginx}/v1", api_key=stack.key, max_retries=0,
                           timeout=90)
    span = uuid.uuid4().hex[:16]
    arrivals: list[tuple[float, str]] = []
    with client.chat.completions.create(model="on-c", stream=True, messages=[{"role": "user", "content": "hi"}],
                                        extra_headers={"traceparent": f"00-{TRACE}-{span}-01"}) as stream:
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                arrivals.append((time.monotonic(), chunk.choices[0].delta.content))
    assert len(arrivals) == 8, arrivals
    assert arrivals[-1][0] - arrivals[0][0] > 0.15  # 40 ms apart at the engine: relayed as made, not at the end

    assert serve("on-c").model_state == ModelState.LOADED
    assert keepers(stack, "c", "on-c"), "the engine runs in host C's namespace"
    assert ServeEvent.objects.using(ALIAS).filter(serve__name="on-c", state_after=ModelState.LOADED).exists()

    # The engine on C, reached over the veth link, received the trace; the collector has the request's spans.
    seen = httpx.get(f"http://{stack.net['c'].address}:{serve('on-c').port}/_requests", timeout=5).json()
    assert any(TRACE in request["headers"].get("traceparent", "") for request in seen), seen[-1]["headers"]

    def spans() -> set[str]:
        names = {s["name"] for s in stack.otlp.spans if s["trace"] == TRACE}
        return names if {"anvil.request", "anvil.decide", "anvil.attempt", "anvil.upstream"} <= names else set()

    wait_for(spans, 15, "the request's spans at the collector")
    assert {s["service"] for s in stack.otlp.spans if s["trace"] == TRACE} & {"anvil-web1", "anvil-web2"}


def test_a_load_on_host_b_runs_there_and_completes_after_its_agent_is_killed_mid_load(stack: HostsStack) -> None:
    key = stack.key
    stack.manage("serves", "load", "on-b", "--queue")
    pids = wait_for(lambda: keepers(stack, "b", "on-b"), 30, "host B's agent to start the engine in B")
    assert serve("on-b").model_state == ModelState.LOADING  # the engine takes 4 s to listen

    stack.kill_agent("b")
    # A request already waiting for the load when the host went silent is told so too (a short client timeout).
    refused = wait_for(lambda: (answer := ask(stack.nginx, key, "on-b", timeout=5)).status_code == 503 and answer, 15,
                       "the front door to notice that host B went silent")
    assert "host_silent" in refused.json()["error"]["message"], refused.text
    assert ask(stack.nginx, key, "on-c").status_code == 200  # the other host serves on

    stack.start_agent("b")  # takes the queue over: the load the killed agent held comes back at once
    wait_for(lambda: serve("on-b").model_state == ModelState.LOADED, 60, "the redelivered load to finish")
    assert keepers(stack, "b", "on-b") == pids  # the engine started before the kill, adopted: never a second
    events = ServeEvent.objects.using(ALIAS).filter(serve__name="on-b")
    assert events.filter(state_after=ModelState.LOADING).count() == 1
    assert events.filter(state_after=ModelState.LOADED).count() == 1
    assert not events.filter(state_after=ModelState.FAILED).exists()
    answer = wait_for(lambda: (found := ask(stack.nginx, key, "on-b")).status_code == 200 and found, 15,
                      "host B's serve to answer again")
    assert answer.headers["x-anvil-served-by"] == "on-b"


def test_a_breaker_opened_through_one_web_node_is_honoured_by_the_other(stack: HostsStack) -> None:
    key = stack.key
    for _ in range(3):  # ANVIL_BREAKER_FAILURES: nothing listens where "broken" points
        assert ask(stack.web(0), key, "broken").status_code >= 500
    refused = wait_for(lambda: (answer := ask(stack.web(1), key, "broken")).status_code == 503 and
                       "open circuit breakers: broken" in answer.text and answer, 10,
                       "web node 2 to refuse the serve whose breaker node 1 opened")
    assert refused.headers.get("retry-after")


def test_a_web_node_killed_under_load_leaves_the_other_serving_through_nginx(stack: HostsStack) -> None:
    key = stack.key
    wait_for(lambda: ask(stack.nginx, key, "on-c").status_code == 200, 60, "host C's serve to answer")
    results: list[tuple[float, float, bool, str]] = []  # (began, ended, ok, what went wrong)
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                began, detail = time.monotonic(), ""
                try:
                    with http.stream("POST", f"{stack.nginx}/v1/chat/completions",
                                     headers={"authorization": f"Bearer {key}"},
                                     json={"model": "on-c", "stream": True,
                                           "messages": [{"role": "user", "content": "hi"}]}) as answer:
                        lines = list(answer.iter_lines())
                        ok = answer.status_code == 200 and any("[DONE]" in line for line in lines)
                        detail = f"{answer.status_code}: {lines[-3:]}"
                except httpx.HTTPError as exc:
                    ok, detail = False, repr(exc)
                results.append((began, time.monotonic(), ok, detail))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: sum(ok for _, _, ok, _ in results) >= 8, 30, "the load to run through both nodes")
        stack.kill_web(0)
        killed_at = time.monotonic()  # the node is dead: what begins now has only the other
        wait_for(lambda: sum(ok and began > killed_at for began, _, ok, _ in results) >= 12, 60,
                 "requests to go on through the other node")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        if 0 not in stack.webs:
            stack.start_web(0)
    failed = [(began - killed_at, detail) for began, _, ok, detail in results if not ok]
    assert len(failed) <= len(threads), failed  # at most the requests in flight on the killed node
    assert all(began < 0 for began, _ in failed), f"a request that began after the kill failed: {failed}"


def test_prometheus_scrapes_the_nodes_and_counts_requests_per_serve(stack: HostsStack) -> None:
    key = stack.key
    for _ in range(3):
        wait_for(lambda: ask(stack.nginx, key, "on-c").status_code == 200, 60, "host C's serve to answer")

    def query(promql: str) -> list[dict[str, object]]:
        answer = httpx.get(f"{stack.prometheus}/api/v1/query", params={"query": promql}, timeout=5).json()
        assert answer["status"] == "success", answer
        return answer["data"]["result"]

    def per_serve() -> dict[str, float]:
        return {row["metric"].get("serve", ""): float(row["value"][1])  # type: ignore[index,union-attr]
                for row in query('sum by (serve) (anvil_serve_requests_total)')}

    counts = wait_for(lambda: (found := per_serve()).get("on-c", 0) >= 3 and found, 30,
                      "Prometheus to scrape the requests per serve")
    assert counts["on-c"] >= 3
    up = {row["metric"]["instance"]: row["value"][1] for row in query('up{job="anvil-hosts"}')}  # type: ignore[index]
    assert sorted(up.values()) == ["1", "1"], up  # both agents, scraped over the veth links
