"""runeval bootstrap: committed history replayed into the candidate profile (never straight into live)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from evals.models import EvalResult, Grade
from evals.runners.bootstrap import FIXTURES
from evals.runs import create_run, execute_run
from routing.models import ProfileEntry
from serves.models import Serve

pytestmark = pytest.mark.django_db


def bootstrap(fixtures: Path | None = None) -> object:
    parameters = {"fixtures": str(fixtures)} if fixtures else {}
    return execute_run(create_run("bootstrap", parameters=parameters).pk)


def candidate(kind: str, subject: str, work_class: str) -> ProfileEntry:
    return ProfileEntry.objects.get(profile="candidate", kind=kind, subject=subject, work_class=work_class)


def write_fixture(directory: Path, name: str, *entries: dict[str, object]) -> None:
    directory.mkdir(exist_ok=True)
    (directory / name).write_text(json.dumps({"schema_version": 1, "source": name, "measured": list(entries)}))


def test_the_committed_history_becomes_the_candidate_profile_and_live_is_untouched() -> None:
    ProfileEntry.objects.create(profile="live", kind="tier", subject="fast", work_class="chat", decision="deny",
                                quality=0.1, samples=1)
    run = bootstrap()
    assert run.status == "succeeded", run.error
    entries = sum(len(json.loads(path.read_text())["measured"]) for path in FIXTURES.glob("*.json"))
    assert EvalResult.objects.filter(run=run).count() == entries
    assert set(Grade.objects.filter(result__run=run).values_list("review_status", flat=True)) == {"accepted"}
    chat = candidate("tier", "fast", "chat")
    assert (chat.decision, chat.quality, chat.samples) == ("allow", 0.91, 240)
    assert candidate("serve", "fast", "planning").decision == "deny"
    assert candidate("tier", "cloud", "planning").decision == "allow"
    # fast/review is in two files: (0.74 x 60 + 0.78 x 20) / 80
    review = candidate("tier", "fast", "review")
    assert (review.quality, review.samples, review.decision) == (0.75, 80, "allow-with-verify")
    live = ProfileEntry.objects.get(profile="live")
    assert (live.decision, live.quality) == ("deny", 0.1)
    assert run.summary["candidate_profile"]["created"] == ProfileEntry.objects.filter(profile="candidate").count()


def test_a_re_run_replaces_the_earlier_replay_instead_of_doubling_its_samples() -> None:
    bootstrap()
    before = {(e.kind, e.subject, e.work_class): (e.decision, e.quality, e.samples)
              for e in ProfileEntry.objects.filter(profile="candidate")}
    bootstrap()
    after = {(e.kind, e.subject, e.work_class): (e.decision, e.quality, e.samples)
             for e in ProfileEntry.objects.filter(profile="candidate")}
    assert after == before


def test_serve_cells_carry_the_serves_identity(tmp_path: Path) -> None:
    serve = Serve.objects.create(name="heavy", tier="heavy", base_url="http://127.0.0.1:1/v1", served_model="q",
                                 quantization="fp8")
    write_fixture(tmp_path, "one.json",
                  {"kind": "serve", "subject": "heavy", "work_class": "review", "quality": 0.9, "samples": 30},
                  {"kind": "serve", "subject": "gone", "work_class": "review", "quality": 0.9, "samples": 30})
    bootstrap(tmp_path)
    heavy = candidate("serve", "heavy", "review")
    assert heavy.fingerprint == serve.fingerprint() and heavy.identity == serve.identity()
    assert heavy.measured_at is not None and "bootstrap run" in heavy.source
    assert candidate("serve", "gone", "review").fingerprint == ""  # no such serve: nothing to stamp


@pytest.mark.parametrize(("entry", "message"), [
    ({"kind": "tier", "subject": "fast", "work_class": "poetry", "quality": 0.9, "samples": 1},
     "bad.json: measured[0].work_class must be one of"),
    ({"kind": "tier", "subject": "fast", "work_class": "chat", "quality": 1.2, "samples": 1},
     "bad.json: measured[0].quality must be a number from 0 to 1"),
    ({"kind": "tier", "subject": "fast", "work_class": "chat", "quality": 0.9, "samples": 0},
     "bad.json: measured[0].samples must be a whole number of at least 1"),
])
def test_a_bad_fixture_fails_the_run_and_replays_nothing(tmp_path: Path, entry: dict[str, object],
                                                         message: str) -> None:
    shutil.copytree(FIXTURES, tmp_path / "data")
    write_fixture(tmp_path / "data", "bad.json", entry)
    run = bootstrap(tmp_path / "data")
    assert run.status == "failed" and run.error.startswith(message)
    assert not EvalResult.objects.exists()
    assert not ProfileEntry.objects.exists()
