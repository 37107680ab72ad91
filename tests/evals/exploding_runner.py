"""A runner for tests of the run lifecycle: records one result, then fails the way it is told to."""

from __future__ import annotations

from evals.runs import RunContext, RunOutcome


def execute(ctx: RunContext) -> RunOutcome:
    for case in ctx.each(["first", "second"]):
        ctx.record(name=case, subject="fast", work_class="chat", verdict="pass", score=1.0)
        if case == "second":
            failure = ctx.parameters.get("raise", "runtime")
            if failure == "interrupt":
                raise KeyboardInterrupt
            raise RuntimeError("the upstream sent garbage")
    return RunOutcome({"lines": ["unreachable"]})
