"""runeval preflight|benchmark --tier (one run per serve of the tier, each named) and benchmark --replay FILE
(a recorded request file, at its recorded pace or a chosen one)."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from django.core.management import CommandError, call_command

from evals.models import EvalRun
from serves.models import Serve
from tests.support.live import scripted_upstream
from tests.support.processes import free_port

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture(scope="module")
def diligent(module_logs: Path) -> Iterator[str]:
    with scripted_upstream(module_logs, force_scenario="diligent") as url:
        yield url


def serve_at(url: str, name: str, tier: str = "quick", enabled: bool = True) -> Serve:
    return Serve.objects.create(name=name, tier=tier, engine="vllm", base_url=f"{url}/v1", served_model=name,
                                enabled=enabled)


def runeval(*args: str) -> str:
    out = io.StringIO()
    call_command("runeval", *args, "--no-progress", stdout=out, stderr=io.StringIO())
    return out.getvalue()


def test_a_tier_runs_against_each_of_its_serves_and_names_them(diligent: str) -> None:
    serve_at(diligent, "a-quick")
    serve_at(diligent, "b-quick")
    serve_at(diligent, "off-quick", enabled=False)  # not part of the tier's targets
    serve_at(diligent, "elsewhere", tier="heavy")
    out = runeval("benchmark", "--tier", "quick", "--part", "quality", "--repeats", "1")
    runs = list(EvalRun.objects.order_by("pk"))
    assert [(r.kind, r.target_name, r.status) for r in runs] == [("benchmark", "a-quick", "succeeded"),
                                                                  ("benchmark", "b-quick", "succeeded")]
    assert f"== benchmark run {runs[0].pk} against a-quick (tier quick) ==" in out
    assert f"== benchmark run {runs[1].pk} against b-quick (tier quick) ==" in out
    assert out.rstrip().endswith("tier quick: a-quick done; b-quick done")


def test_a_tier_exits_with_its_worst_run_and_still_runs_the_others(diligent: str) -> None:
    Serve.objects.create(name="a-down", tier="quick", engine="vllm", base_url=f"http://127.0.0.1:{free_port()}/v1",
                         served_model="m")
    serve_at(diligent, "b-quick")
    with pytest.raises(CommandError, match="benchmark run .* against a-down failed: a-down does not answer") as failed:
        runeval("benchmark", "--tier", "quick", "--part", "quality", "--repeats", "1")
    assert failed.value.returncode == 1
    assert list(EvalRun.objects.order_by("pk").values_list("target_name", "status")) == [
        ("a-down", "failed"), ("b-quick", "succeeded")]


def test_a_tier_with_no_serve_is_refused_naming_the_tiers(diligent: str) -> None:
    serve_at(diligent, "a-quick")
    with pytest.raises(CommandError, match=r"no enabled serve in tier 'nope'\n  hint: tiers: quick") as unknown:
        runeval("preflight", "--tier", "nope")
    assert unknown.value.returncode == 2
    with pytest.raises(CommandError, match="one of --serve, --tier, or --base-url") as both:
        runeval("preflight", "--tier", "quick", "--serve", "a-quick")
    assert both.value.returncode == 2
    assert not EvalRun.objects.exists()


def write_replay(path: Path, lines: list[dict[str, object] | str]) -> Path:
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


def test_a_replay_goes_out_at_its_recorded_pace_with_the_targets_model(diligent: str, tmp_path: Path) -> None:
    serve_at(diligent, "fast", tier="fast")
    # Out of order in the file, and in both time forms: sent in time order, 0.3 s apart.
    recorded = write_replay(tmp_path / "traffic.jsonl", [
        {"ts": 1767268800.6, "model": "gpt-x", "messages": [{"role": "user", "content": "replayed #3"}]},
        "# exported from the proxy",
        {"at": "2026-01-01T12:00:00+00:00", "model": "gpt-x", "max_tokens": 16,
         "messages": [{"role": "user", "content": "replayed #1"}]},
        "",
        {"ts": 1767268800.3, "model": "gpt-x", "messages": [{"role": "user", "content": "replayed #2"}]},
        {"ts": 1767268800.9, "model": "gpt-x", "prompt": "replayed #4"},
    ])
    httpx.delete(f"{diligent}/_requests", timeout=5)
    out = runeval("benchmark", "--serve", "fast", "--replay", str(recorded), "--part", "capacity")
    assert "replay: 4 requests from" in out and "recorded over 0.9 s" in out
    run = EvalRun.objects.get()
    [level] = run.summary["capacity"]
    assert level["label"] == "replay (recorded pace)" and level["completed"] == 4 and level["failed"] == 0
    assert level["duration_s"] >= 0.85  # the last left 0.9 s after the first
    seen = [entry for entry in httpx.get(f"{diligent}/_requests", timeout=5).json()]
    assert [entry["path"] for entry in seen] == ["/v1/chat/completions"] * 3 + ["/v1/completions"]
    bodies = [entry["body"] for entry in seen]
    assert [b.get("messages", [{}])[0].get("content", b.get("prompt")) for b in bodies] == [
        "replayed #1", "replayed #2", "replayed #3", "replayed #4"]
    assert all(b["model"] == "fast" and b["stream"] is True and "ts" not in b and "at" not in b for b in bodies)
    assert bodies[0]["max_tokens"] == 16 and bodies[0]["stream_options"] == {"include_usage": True}
    # Only the path is kept with the run: the recorded bodies are someone's traffic.
    assert run.parameters["replay"] == str(recorded) and "replayed #" not in json.dumps(run.summary)
    assert run.summary["replay"]["requests"] == 4 and len(run.summary["replay"]["sha256"]) == 64


def test_a_replay_at_a_chosen_rate_and_a_file_that_cannot_be_replayed(diligent: str, tmp_path: Path) -> None:
    serve_at(diligent, "fast", tier="fast")
    untimed = write_replay(tmp_path / "untimed.jsonl", [
        {"messages": [{"role": "user", "content": f"replayed #{n}"}]} for n in range(5)])
    runeval("benchmark", "--serve", "fast", "--replay", str(untimed), "--rate", "50", "--concurrency", "2",
            "--part", "capacity")
    levels = {level["label"]: level for level in EvalRun.objects.get().summary["capacity"]}
    assert sorted(levels) == ["replay c=2", "replay rate=50/s"]
    assert all(level["completed"] == 5 for level in levels.values())

    refusals = {
        untimed: "has no recorded times",
        write_replay(tmp_path / "bad.jsonl", [{"ts": 1, "prompt": "a"}, "not json"]): "bad.jsonl, line 2: not a JSON",
        write_replay(tmp_path / "mixed.jsonl", [{"ts": 1, "prompt": "a"}, {"prompt": "b"}]): "line 2: no ts or at",
        write_replay(tmp_path / "anthropic.jsonl", [{"system": "x", "input": "y"}]): "chat completions body",
        tmp_path / "missing.jsonl": "cannot be read",
    }
    for path, why in refusals.items():
        with pytest.raises(CommandError, match=why) as refused:
            runeval("benchmark", "--serve", "fast", "--replay", str(path), "--part", "capacity")
        assert refused.value.returncode == 2
    assert EvalRun.objects.count() == 1
