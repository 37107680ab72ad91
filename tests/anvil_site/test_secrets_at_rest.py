"""No prompt text and no secret at rest: real traffic through Anvil under Daphne, then every row of the
database (``manage.py dumpdata``), every key and value in the Redis the stack used, and every log the
stack wrote are searched for what that traffic carried.

The prompts carry unique markers (uuid4 hex) through every kind of request: OpenAI and Anthropic, whole
and streamed, translated across dialects, refused by Anvil (a 400, a 401, an unknown model), failed by
the upstream (a 500, a connection cut mid-stream). The serves send upstream keys read from environment
variables (``serves/upstream_keys.py``); the client keys are minted ones. None of the markers, none of
the API key secrets (whole, or their private part) and neither upstream key may be found anywhere.

Live calibration, off unless an operator turns it on, is the one place prompt text may sit in Redis
(with a TTL, ``inference/calibration.py``); nothing here turns it on.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from django.conf import settings

from inference.keys import create_key
from routing.decision_log import drain_decisions
from routing.models import DecisionRecord
from serves.models import Serve
from tests.support.live import live_anvil, scripted_upstream, until_routed
from tests.support.processes import child_env, manage
from tests.support.profiles import allow_tiers
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

OPENAI_KEY_ENV = "ANVIL_UPSTREAM_KEY_SECRETS_OPENAI"
ANTHROPIC_KEY_ENV = "SECRETS_ANTHROPIC_API_KEY"
UPSTREAM_SECRETS = {OPENAI_KEY_ENV: f"sk-up-{uuid.uuid4().hex}", ANTHROPIC_KEY_ENV: f"sk-ant-{uuid.uuid4().hex}"}


@pytest.fixture(scope="module")
def upstream(module_logs: Path) -> Iterator[str]:
    with scripted_upstream(module_logs) as url:
        yield url


@pytest.fixture(scope="module")
def anvil(django_db_setup: None, django_db_blocker: object, module_logs: Path) -> Iterator[str]:
    # The upstream keys reach the web process only through its environment, as in production.
    with live_anvil(module_logs, **UPSTREAM_SECRETS) as url:
        yield url


class Traffic:
    """What was sent: every marker put in a prompt, every client key secret used, every request answered."""

    def __init__(self, anvil: str) -> None:
        self.anvil = anvil
        self.markers: list[str] = []
        self.kept_from_upstream: list[str] = []  # markers in requests Anvil itself refused or only routed
        self.key_secrets: list[str] = []
        self.request_ids: list[str] = []

    def marker(self, reaches_upstream: bool = True) -> str:
        value = uuid.uuid4().hex
        self.markers.append(value)
        if not reaches_upstream:
            self.kept_from_upstream.append(value)
        return value

    def post(self, path: str, key: str, body: dict[str, object], recorded: bool = True) -> httpx.Response:
        """``recorded``: the request reaches routing, so it leaves a decision record."""
        answer = httpx.post(f"{self.anvil}{path}", content=json.dumps(body).encode(), timeout=30, headers={
            "authorization": f"Bearer {key}", "x-api-key": key, "content-type": "application/json"})
        if recorded:
            self.request_ids.append(answer.headers["x-request-id"])
        return answer


def send_everything(traffic: Traffic, key: str) -> None:
    m = traffic.marker
    chat = "/v1/chat/completions"

    def user(text: str) -> list[dict[str, str]]:
        return [{"role": "user", "content": text}]

    # Answered: whole and streamed, in each dialect, to a serve of each dialect (translation both ways).
    for model in ("sec-openai", "sec-anthropic"):
        for stream in (False, True):
            answer = traffic.post(chat, key, {"model": model, "stream": stream, "messages": user(f"hello {m()}"),
                                              "stream_options": {"include_usage": True} if stream else None})
            assert answer.status_code == 200, answer.text[:300]
            answer = traffic.post("/v1/messages", key, {"model": model, "stream": stream, "max_tokens": 32,
                                                        "system": f"be brief {m()}", "messages": user(f"hi {m()}")})
            assert answer.status_code == 200, answer.text[:300]
    answer = traffic.post(chat, key, {"model": "sec-openai", "messages": user(f"weather in Paris {m()} [[tool]]"),
                                      "tools": [{"type": "function", "function": {
                                          "name": "get_weather", "description": f"weather {m()}",
                                          "parameters": {"type": "object"}}}]})
    assert answer.status_code == 200, answer.text[:300]
    assert traffic.post("/v1/completions", key, {"model": "sec-openai", "prompt": f"once {m()}"}).status_code == 200
    answer = traffic.post("/v1/responses", key, {"model": "sec-openai", "input": f"hey {m()}",
                                                 "instructions": f"short {m()}"})
    assert answer.status_code == 200, answer.text[:300]
    assert traffic.post("/v1/route", key, {"messages": user(f"route me {m(False)}")}, recorded=False
                        ).status_code == 200
    # Failed by the upstream: a 500, and a stream whose connection is cut after three deltas.
    assert traffic.post(chat, key, {"model": "sec-openai", "messages": user(f"crash {m()} [[error500]]")}
                        ).status_code >= 500
    cut = traffic.post(chat, key, {"model": "sec-openai", "stream": True,
                                   "messages": user(f"cut {m()} [[midstream]]")})
    assert cut.status_code == 200 and "error" in cut.text
    assert traffic.post("/v1/messages", key, {"model": "sec-anthropic", "max_tokens": 8,
                                              "messages": user(f"refuse {m()} [[error400]]")}).status_code == 400
    # Refused by Anvil: a bad field beside the prompt, a model nobody serves, a key that does not exist.
    assert traffic.post(chat, key, {"model": "sec-openai", "temperature": "hot",
                                    "messages": user(f"bad {m(False)}")}, recorded=False).status_code == 400
    assert traffic.post("/v1/messages", key, {"model": "sec-nobody", "max_tokens": 8,
                                              "messages": user(f"lost {m(False)}")}).status_code == 404
    stranger = f"anv_{uuid.uuid4().hex[:8]}_{uuid.uuid4().hex}"
    traffic.key_secrets.append(stranger)
    assert traffic.post(chat, stranger, {"model": "sec-openai", "messages": user(f"who {m(False)}")},
                        recorded=False).status_code == 401


def redis_dump(url: str) -> bytes:
    """Every key and value in this Redis, whatever its type (SCAN, so a busy server is not blocked)."""
    client = redis.Redis.from_url(url, socket_timeout=10)
    parts: list[bytes] = []
    try:
        for name in client.scan_iter(count=500):
            parts.append(name)
            kind = client.type(name).decode()
            if kind == "string":
                value = client.get(name)
                parts.append(value or b"")
            elif kind == "list":
                parts += client.lrange(name, 0, -1)  # type: ignore[operator]
            elif kind == "hash":
                for field, value in client.hgetall(name).items():  # type: ignore[union-attr]
                    parts += [field, value]
            elif kind == "set":
                parts += list(client.smembers(name))  # type: ignore[arg-type]
            elif kind == "zset":
                parts += [member for member, _ in client.zrange(name, 0, -1, withscores=True)]  # type: ignore[misc]
            elif kind == "stream":
                for _, fields in client.xrange(name):  # type: ignore[union-attr]
                    for field, value in fields.items():
                        parts += [field, value]
    finally:
        client.close()
    return b"\n".join(parts)


def database_dump(tmp_path: Path) -> bytes:
    out = tmp_path / "dump.json"
    subprocess.run([*manage("dumpdata", "--all", "--output", str(out))], env=child_env(), check=True,
                   timeout=120, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return out.read_bytes()


def public_prefix(secret: str) -> str:
    """``anv_XXXXXXXX``: what the records and logs may show (the private part may hold underscores too)."""
    return "_".join(secret.split("_", 2)[:2])


def found_in(haystack: bytes, needles: list[str]) -> list[str]:
    # JSON dumps may escape non-ASCII, never hex or base64url: a plain search is enough for these needles.
    return [needle for needle in needles if needle.encode() in haystack]


def test_no_prompt_marker_and_no_secret_in_the_database_redis_or_logs(anvil: str, upstream: str,
                                                                      module_logs: Path, tmp_path: Path) -> None:
    allow_tiers("fast", "heavy")
    Serve.objects.create(name="sec-openai", tier="fast", base_url=f"{upstream}/v1", served_model="up-model",
                         api_key_env=OPENAI_KEY_ENV)
    Serve.objects.create(name="sec-anthropic", tier="heavy", engine="anthropic", dialect="anthropic",
                         base_url=f"{upstream}/v1", served_model="claude-up", api_key_env=ANTHROPIC_KEY_ENV)
    minted = create_key("secrets-at-rest").secret
    traffic = Traffic(anvil)
    traffic.key_secrets.append(minted)
    until_routed(anvil, minted, {"sec-openai": "allow", "sec-anthropic": "allow"})
    httpx.delete(f"{upstream}/_requests", timeout=5)

    send_everything(traffic, minted)

    # The traffic did carry the markers and the upstream keys: this test would find them if they leaked.
    seen = json.dumps(httpx.get(f"{upstream}/_requests", timeout=5).json())
    assert [marker for marker in traffic.markers if marker not in seen] == traffic.kept_from_upstream
    assert f"Bearer {UPSTREAM_SECRETS[OPENAI_KEY_ENV]}" in seen and UPSTREAM_SECRETS[ANTHROPIC_KEY_ENV] in seen

    secrets = [*traffic.key_secrets, *(secret.removeprefix(public_prefix(secret)) for secret in traffic.key_secrets),
               *UPSTREAM_SECRETS.values()]
    needles = [*traffic.markers, *secrets]
    redis_url = settings.REDIS_URL

    queued = redis_dump(redis_url)  # with the decision records still queued in Redis
    assert found_in(queued, needles) == []

    def drained() -> bool:
        drain_decisions()
        return DecisionRecord.objects.filter(request_id__in=traffic.request_ids).count() == len(traffic.request_ids)

    wait_for(drained, 20, "every request's decision record to reach the database")
    # Each search is checked against what must be there (the request ids, the key's public prefix, the stack's
    # keys), so an empty or wrong dump cannot pass for a clean one.
    rows = database_dump(tmp_path)
    assert found_in(rows, traffic.request_ids) == traffic.request_ids and public_prefix(minted).encode() in rows
    assert found_in(rows, needles) == []
    keys = redis_dump(redis_url)
    assert f"{settings.ANVIL_REDIS_PREFIX}:".encode() in keys
    assert found_in(keys, needles) == []
    logs = sorted(path for path in module_logs.rglob("*") if path.is_file() and path.name.startswith("anvil-"))
    written = b"".join(path.read_bytes() for path in logs)
    assert set(found_in(written, traffic.request_ids)) == set(traffic.request_ids)  # the access lines
    for path in logs:
        assert found_in(path.read_bytes(), needles) == [], path.name
