"""What a routing decision costs: resolve, classify, consult the profile, order the candidates.

    .venv/bin/python bench/routing_decision.py

Ten serves over three tiers, a live profile with measured cells, the default keyword rules, and a
realistic agent request (system prompt, five turns, tools). Reported per call: ``decide`` for
``auto`` (the full path), for a pinned serve, and, as the baseline measured in the same run, the
``json.loads`` of the same request body that every request pays anyway.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "anvil_site.settings")

import django  # noqa: E402

django.setup()

from routing.classifier import DEFAULT_RULES, Rule  # noqa: E402
from routing.decide import decide  # noqa: E402
from routing.policy import PolicyConfig  # noqa: E402
from routing.profile import Cell, Profile  # noqa: E402
from serves.catalog import ServeView  # noqa: E402

ITERATIONS = 20_000


def serves() -> tuple[ServeView, ...]:
    out = []
    for i in range(10):
        tier = ("fast", "heavy", "cloud")[i % 3]
        out.append(ServeView(id=i, name=f"serve-{i}", tier=tier, engine="vllm", dialect="openai",
                             base_url=f"http://127.0.0.1:{30000 + i}/v1", served_model=f"m{i}", api_key_env="",
                             context_limit=131072, supports_tools=True, fingerprint="f", extra_body={},
                             is_local=tier != "cloud", state="running", health="ok", created=0))
    return tuple(out)


def body(model: str) -> dict[str, object]:
    messages = [{"role": "system", "content": "You are a careful coding assistant working in a repository."}]
    for turn in range(5):
        messages.append({"role": "user", "content": f"Step {turn}: look at the failing test in module {turn} "
                                                   "and tell me what you would change."})
        messages.append({"role": "assistant", "content": "I would check the fixture setup first. " * 5})
    messages.append({"role": "user", "content": "Now fix the bug in parse_config and add a test."})
    tools = [{"type": "function", "function": {"name": f"tool_{i}", "parameters": {"type": "object"}}}
             for i in range(8)]
    return {"model": model, "messages": messages, "tools": tools, "stream": True}


def per_call(fn, iterations: int = ITERATIONS) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    samples = []
    for _ in range(iterations):
        started = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - started)
    samples.sort()
    return samples[len(samples) // 2] / 1000, samples[int(len(samples) * 0.99)] / 1000


def main() -> None:
    catalog = serves()
    profile = Profile(
        serves={(s.name, wc): Cell("allow", 0.9, 30, "f") for s in catalog[:4] for wc in ("chat", "bounded-edit")},
        tiers={("heavy", "planning"): Cell("allow-with-verify", 0.8, 12)})
    rules = tuple(Rule.build(wc, prio, words) for wc, (prio, words) in DEFAULT_RULES.items())
    config = PolicyConfig()
    auto, pinned = body("auto"), body("serve-4")
    raw = json.dumps(auto).encode()
    baseline = per_call(lambda: json.loads(raw))
    full = per_call(lambda: decide(auto, catalog, profile, rules, config))
    pin = per_call(lambda: decide(pinned, catalog, profile, rules, config))
    decision = decide(auto, catalog, profile, rules, config)
    print(f"request: {len(raw)} bytes, {len(auto['messages'])} messages, 8 tools; "
          f"decision: {decision.work_class}, {len(decision.candidates)} candidates")
    print("| path | p50 | p99 | p50 / baseline |")
    print("|---|---|---|---|")
    for name, (p50, p99) in (("json.loads of the body (baseline)", baseline), ("decide, model=auto", full),
                             ("decide, model=<serve> (pinned)", pin)):
        print(f"| {name} | {p50:.1f} µs | {p99:.1f} µs | {p50 / baseline[0]:.2f}x |")


if __name__ == "__main__":
    main()
