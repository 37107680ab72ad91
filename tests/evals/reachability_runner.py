"""A runner that needs a target, for tests of --serve/--base-url and of the hint for a serve that is down."""

from __future__ import annotations

from evals.runs import RunContext, RunOutcome
from evals.targets import check_reachable


def execute(ctx: RunContext) -> RunOutcome:
    assert ctx.target is not None
    check_reachable(ctx.target)
    ctx.record(name="reachable", work_class="chat", verdict="pass", score=1.0)
    return RunOutcome({"lines": [f"{ctx.target.label} answers"]}, gate_passed=True)
