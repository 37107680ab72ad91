"""What up and down do in every container state, and which manifest `up` commands are compose commands."""

from __future__ import annotations

import pytest

from serves.compose import ComposeUp, compose_command, parse_up_command
from serves.lifecycle import PlanKind, plan_down, plan_up
from serves.models import DockerState, Serve


def compose_serve() -> Serve:
    return Serve(name="fast", tier="fast", container="vllm-fast", port=30001, served_model="m",
                 compose_file="/srv/compose.yml", compose_service="fast")


COMPOSE_UP = [*compose_command(), "-f", "/srv/compose.yml", "up", "-d", "fast"]


@pytest.mark.parametrize(
    ("state", "kind", "commands"),
    [
        (DockerState.MISSING, PlanKind.RUN, [COMPOSE_UP]),
        (DockerState.EXITED, PlanKind.RUN, [COMPOSE_UP]),
        (DockerState.CREATED, PlanKind.RUN, [COMPOSE_UP]),
        (DockerState.RUNNING, PlanKind.RUN, [COMPOSE_UP]),  # drift-safe: compose decides to keep or recreate
        (DockerState.PAUSED, PlanKind.RUN, [["docker", "unpause", "vllm-fast"]]),
        (DockerState.DEAD, PlanKind.REFUSE, []),
        (DockerState.RESTARTING, PlanKind.REFUSE, []),
        (DockerState.REMOVING, PlanKind.REFUSE, []),
    ],
)
def test_up_by_state(state: DockerState, kind: PlanKind, commands: list[list[str]]) -> None:
    plan = plan_up(compose_serve(), state)
    assert (plan.kind, plan.commands) == (kind, commands)
    assert plan.explanation


def test_a_dead_container_is_left_for_the_operator_with_a_reason() -> None:
    plan = plan_up(compose_serve(), DockerState.DEAD)
    assert "dead" in plan.explanation and "docker logs vllm-fast" in plan.explanation


@pytest.mark.parametrize("state", [DockerState.RUNNING, DockerState.PAUSED, DockerState.RESTARTING])
def test_down_stops_every_state_that_holds_the_gpu(state: DockerState) -> None:
    plan = plan_down(compose_serve(), state)
    stop = plan.commands[-1]
    assert plan.kind is PlanKind.RUN and stop[:2] == ["docker", "stop"] and stop[-1] == "vllm-fast"


def test_a_paused_container_is_unpaused_before_it_is_stopped() -> None:
    plan = plan_down(compose_serve(), DockerState.PAUSED)
    assert [argv[1] for argv in plan.commands] == ["unpause", "stop"]


@pytest.mark.parametrize("state", [DockerState.EXITED, DockerState.CREATED, DockerState.MISSING, DockerState.DEAD])
def test_down_leaves_states_that_hold_no_gpu(state: DockerState) -> None:
    assert plan_down(compose_serve(), state).kind is PlanKind.NOTHING


def test_remote_upstreams_are_never_started_or_stopped() -> None:
    remote = Serve(name="cloud", tier="cloud", engine="openai", base_url="https://api.example.com/v1", served_model="m")
    assert plan_up(remote, DockerState.REMOTE).kind is PlanKind.NOTHING
    assert plan_down(remote, DockerState.REMOTE).kind is PlanKind.NOTHING


def test_an_untrusted_arbitrary_command_is_refused() -> None:
    serve = Serve(name="x", tier="x", container="c", port=1, served_model="m", up_command="bash go.sh")
    assert plan_up(serve, DockerState.MISSING).kind is PlanKind.REFUSE
    serve.trusted_command = True
    assert plan_up(serve, DockerState.MISSING).commands == [["bash", "go.sh"]]
    assert plan_up(serve, DockerState.EXITED).commands == [["docker", "start", "c"]]
    assert plan_up(serve, DockerState.RUNNING).kind is PlanKind.NOTHING


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("docker compose -f /srv/a.yml up -d fast", ComposeUp("/srv/a.yml", "fast")),
        ("docker compose --file '/srv/with space.yml' up --detach heavy", ComposeUp("/srv/with space.yml", "heavy")),
        ("docker-compose -f a.yml up -d fast", ComposeUp("a.yml", "fast")),
        ("docker compose -f a.yml up fast", None),  # not detached: would block the worker
        ("docker compose -f a.yml up -d fast heavy", None),  # one serve, one service
        ("docker compose -f a.yml -f b.yml up -d fast", None),
        ("docker compose -f a.yml up -d fast; rm -rf /", None),
        ("docker compose -f a.yml down", None),
        ("bash start.sh", None),
        ("docker compose -f 'unterminated up -d fast", None),
    ],
)
def test_only_one_shape_of_up_is_a_compose_command(command: str, expected: ComposeUp | None) -> None:
    assert parse_up_command(command) == expected
