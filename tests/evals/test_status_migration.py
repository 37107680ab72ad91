"""Existing rows learn the new status: a run recorded succeeded with a failed gate becomes gate_failed."""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

pytestmark = pytest.mark.django_db(transaction=True)

BEFORE = [("evals", "0002_run_lease")]
AFTER = [("evals", "0003_gate_failed_harness_error_profile_versions")]


def migrate(targets: list[tuple[str, str]]) -> MigrationExecutor:
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return MigrationExecutor(connection)


def test_a_succeeded_run_with_a_failed_gate_becomes_gate_failed_and_back() -> None:
    old = migrate(BEFORE).loader.project_state(BEFORE).apps.get_model("evals", "EvalRun")
    failed_gate = old.objects.create(kind="preflight", status="succeeded", gate_passed=False).pk
    passed = old.objects.create(kind="preflight", status="succeeded", gate_passed=True).pk
    no_gate = old.objects.create(kind="planning", status="succeeded").pk
    try:
        new = migrate(AFTER).loader.project_state(AFTER).apps.get_model("evals", "EvalRun")
        statuses = dict(new.objects.values_list("pk", "status"))
        assert (statuses[failed_gate], statuses[passed], statuses[no_gate]) == ("gate_failed", "succeeded",
                                                                                 "succeeded")
        back = migrate(BEFORE).loader.project_state(BEFORE).apps.get_model("evals", "EvalRun")
        assert back.objects.get(pk=failed_gate).status == "succeeded"
    finally:
        executor = MigrationExecutor(connection)
        executor.loader.build_graph()
        executor.migrate(executor.loader.graph.leaf_nodes())
