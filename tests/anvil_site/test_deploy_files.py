"""The deployment files an operator runs (docs/deploy.md) against the real thing where it exists here:

* every metric the Grafana dashboard queries is one a live Anvil exports at /metrics (after a request through
  a serve), so the dashboard cannot drift from the exporter;
* Prometheus scrapes the web nodes, the host agents and the engines;
* the production compose file is valid to Compose itself (``docker compose config``), with exactly one beat,
  Redis with its append-only file, and two web processes behind nginx;
* nginx streams: no buffering, HTTP/1.1 to the upstreams, and only a request not yet answered is retried.
"""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from pathlib import Path

import httpx
import pytest
import yaml

from inference.keys import create_key
from serves.compose import compose_command
from serves.models import Serve
from tests.support.breakers import forget_breakers
from tests.support.live import live_anvil, scripted_upstream, until_routed
from tests.support.processes import ROOT
from tests.support.profiles import allow_tiers

COMPOSE = ROOT / "compose"


def promql_metrics(expression: str) -> set[str]:
    """The metric names a PromQL expression reads (the name before a selector, a histogram's _bucket included)."""
    words = set(re.findall(r"\b(anvil_[a-z_]+)\b", expression))
    return {word.removesuffix("_bucket") for word in words}


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_every_metric_the_dashboard_queries_is_exported(module_logs: Path) -> None:
    dashboard = json.loads((COMPOSE / "grafana" / "anvil.json").read_text())
    wanted = {name for panel in dashboard["panels"] for target in panel["targets"]
              for name in promql_metrics(target["expr"])}
    assert {"anvil_serve_requests_total", "anvil_serve_ttft_seconds", "anvil_serve_queue_depth",
            "anvil_swaps_total", "anvil_serve_inflight"} <= wanted
    with scripted_upstream(module_logs) as upstream, live_anvil(module_logs, ANVIL_SERVE_SYNC_INTERVAL="0.2") as anvil:
        forget_breakers("metered-one")
        allow_tiers("fast")
        Serve.objects.create(name="metered-one", tier="fast", base_url=f"{upstream}/v1", served_model="up-model")
        key = create_key(f"deploy-{uuid.uuid4().hex[:6]}").secret
        until_routed(anvil, key, {"metered-one": "allow"})
        answer = httpx.post(f"{anvil}/v1/chat/completions", headers={"x-api-key": key}, timeout=30,
                            json={"model": "metered-one", "stream": True,
                                  "messages": [{"role": "user", "content": "hi"}]})
        assert answer.status_code == 200
        exported = httpx.get(f"{anvil}/metrics", timeout=10).text
    families = set(re.findall(r"^# TYPE (\S+) ", exported, re.M))
    # A counter family is named without _total in the TYPE line; a histogram's series add _bucket.
    names = families | {f"{family}_total" for family in families}
    assert wanted <= names, sorted(wanted - names)
    assert re.search(r'^anvil_serve_requests_total\{outcome="served",serve="metered-one"\} 1\.0$', exported, re.M)
    assert re.search(r'^anvil_serve_ttft_seconds_count\{serve="metered-one"\} 1\.0$', exported, re.M)


def test_prometheus_scrapes_web_nodes_agents_and_engines() -> None:
    config = yaml.safe_load((COMPOSE / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert {"anvil-web", "anvil-hosts", "engines"} <= set(jobs)
    assert all(job["static_configs"][0]["targets"] for job in jobs.values())


def test_the_production_compose_file_is_valid_and_has_one_beat() -> None:
    env = {"POSTGRES_PASSWORD": "example", "DJANGO_SECRET_KEY": "example-secret-key-" + "x" * 40,
           "PATH": "/usr/bin:/bin"}
    rendered = subprocess.run([*compose_command(), "-f", str(COMPOSE / "docker-compose.prod.yml"), "config",
                               "--format", "json"], capture_output=True, text=True, timeout=60, env=env)
    assert rendered.returncode == 0, rendered.stderr
    services = json.loads(rendered.stdout)["services"]
    beats = [name for name, service in services.items() if "beat" in (service.get("command") or [])]
    assert beats == ["beat"]
    assert {"web1", "web2", "nginx", "postgres", "redis", "prometheus", "grafana"} <= set(services)
    assert "--appendonly" in services["redis"]["command"]
    missing = subprocess.run([*compose_command(), "-f", str(COMPOSE / "docker-compose.prod.yml"), "config"],
                             capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert missing.returncode != 0 and "POSTGRES_PASSWORD" in missing.stderr  # secrets are never defaulted


def test_nginx_streams_and_retries_only_what_was_not_answered() -> None:
    conf = (COMPOSE / "nginx.conf").read_text()
    for directive in ("proxy_buffering off;", "proxy_http_version 1.1;", "keepalive", "server web1:8000",
                      "server web2:8000", "proxy_next_upstream error timeout;"):
        assert directive in conf, directive
