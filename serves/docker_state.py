"""Reading a container's state through the Docker SDK (never by parsing CLI output)."""

from __future__ import annotations

from dataclasses import dataclass

import docker
from django.conf import settings
from docker.errors import DockerException, NotFound

from serves.models import DockerState


class DockerUnavailable(Exception):
    """The Docker engine cannot be reached; the message says why."""


@dataclass(frozen=True)
class ContainerState:
    state: DockerState
    container_id: str = ""


def read_state(container: str) -> ContainerState:
    try:
        client = docker.from_env(timeout=settings.ANVIL_DOCKER_TIMEOUT)
    except DockerException as exc:
        raise DockerUnavailable(f"cannot reach the Docker engine: {exc}") from None
    try:
        found = client.containers.get(container)
    except NotFound:
        return ContainerState(DockerState.MISSING)
    except DockerException as exc:
        raise DockerUnavailable(f"cannot read container {container!r}: {exc}") from None
    finally:
        client.close()
    status = found.attrs.get("State", {}).get("Status", found.status)
    try:
        state = DockerState(status)
    except ValueError:
        state = DockerState.UNKNOWN
    return ContainerState(state, found.id)
