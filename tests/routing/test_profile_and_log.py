"""Profile rows: staleness by fingerprint, profile.json, the admin matrix; the decision log's upkeep and contents."""

from __future__ import annotations

import json
from datetime import timedelta
from io import StringIO
from pathlib import Path

import pytest
from asgiref.sync import async_to_sync
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.test import Client
from django.utils import timezone

from routing.decision_log import DecisionLog, drain_decisions
from routing.models import DecisionRecord, ProfileEntry
from routing.staleness import mark_stale_profiles
from routing.tasks import prune_decision_log
from serves.models import Serve

pytestmark = pytest.mark.django_db(transaction=True)


def measured(serve: Serve, work_class: str = "chat", decision: str = "allow") -> ProfileEntry:
    return ProfileEntry.objects.create(profile="live", kind="serve", subject=serve.name, work_class=work_class,
                                       decision=decision, quality=0.9, samples=20, fingerprint=serve.fingerprint(),
                                       identity=serve.identity(), measured_at=timezone.now(), source="test")


def test_a_changed_identity_marks_the_serves_rows_stale_and_says_why() -> None:
    serve = Serve.objects.create(name="fast", tier="fast", base_url="http://127.0.0.1:1/v1", served_model="m",
                                 quantization="awq")
    entry = measured(serve)
    assert mark_stale_profiles() == 0
    serve.quantization = "fp8"
    serve.save()
    assert mark_stale_profiles() == 1
    entry.refresh_from_db()
    assert entry.stale and "quantization: 'awq' -> 'fp8'" in entry.stale_reason
    assert mark_stale_profiles() == 0  # once is enough


def test_profile_json_round_trips_and_bad_files_import_nothing(tmp_path: Path) -> None:
    serve = Serve.objects.create(name="fast", tier="fast", base_url="http://127.0.0.1:1/v1", served_model="m")
    measured(serve)
    ProfileEntry.objects.create(profile="live", kind="tier", subject="heavy", work_class="planning",
                                decision="deny", quality=0.4, samples=3)
    out = tmp_path / "profile.json"
    call_command("profile", "export", str(out))
    document = json.loads(out.read_text())
    assert document["schema_version"] == 2 and len(document["entries"]) == 2
    call_command("profile", "import", str(out), stdout=StringIO())  # into the candidate
    assert ProfileEntry.objects.filter(profile="candidate").count() == 2
    document["entries"].append({"kind": "tier", "subject": "x", "work_class": "chat", "decision": "maybe"})
    out.write_text(json.dumps(document))
    with pytest.raises(CommandError, match=r"entries\[2\].decision.*Nothing was imported"):
        call_command("profile", "import", str(out))
    assert ProfileEntry.objects.filter(profile="candidate").count() == 2


def test_admin_matrix_colours_measured_and_default_verdicts() -> None:
    serve = Serve.objects.create(name="fast", tier="fast", base_url="http://127.0.0.1:1/v1", served_model="m")
    measured(serve, "review", "allow")
    client = Client()
    client.force_login(get_user_model().objects.create_superuser("ops", "", "pw"))
    page = client.get("/admin/routing/profileentry/matrix/").content.decode()
    assert 'data-verdict="allow"' in page  # measured review
    assert 'data-verdict="deny"' in page  # default: planning on an unmeasured local tier
    assert 'data-verdict="allow-with-verify"' in page  # default: chat


def test_decision_log_goes_through_redis_in_batches_and_refuses_anything_but_metadata(redis_server: str) -> None:
    drain_decisions()  # whatever an earlier test left queued
    DecisionRecord.objects.all().delete()
    log = DecisionLog()

    async def write() -> None:
        with pytest.raises(ValueError, match="prompt"):
            log.append({"request_id": "r", "endpoint": "chat", "prompt": "secret plans"})
        for i in range(4500):
            log.append({"request_id": f"r{i}", "endpoint": "chat", "served_by": "fast"})
        assert await log.push() == 4500  # one RPUSH

    async_to_sync(write)()
    assert DecisionRecord.objects.count() == 0  # nothing written by the web process itself
    assert drain_decisions() == 4500
    assert DecisionRecord.objects.count() == 4500
    assert drain_decisions() == 0


def test_decision_log_retention_by_age_and_count() -> None:
    now = timezone.now()
    DecisionRecord.objects.bulk_create([DecisionRecord(request_id=f"old{i}", endpoint="chat",
                                                       created_at=now - timedelta(days=40)) for i in range(5)])
    DecisionRecord.objects.bulk_create([DecisionRecord(request_id=f"new{i}", endpoint="chat",
                                                       created_at=now - timedelta(minutes=i)) for i in range(1200)])
    assert prune_decision_log(max_age_days=30, max_rows=1000) == 205
    assert DecisionRecord.objects.count() == 1000
    assert not DecisionRecord.objects.filter(request_id__startswith="old").exists()
    assert DecisionRecord.objects.filter(request_id="new0").exists()  # the newest are kept


def test_rest_api_lists_decisions_for_operators() -> None:
    DecisionRecord.objects.create(request_id="req_1", endpoint="chat", served_by="fast", work_class="chat")
    client = Client()
    assert client.get("/api/decisions/").status_code == 403
    client.force_login(get_user_model().objects.create_superuser("ops", "", "pw"))
    rows = client.get("/api/decisions/?served_by=fast").json()["results"]
    assert [row["request_id"] for row in rows] == ["req_1"]
