"""Real containers for lifecycle tests: an image built here and compose projects running our fake serve.

No registry is reachable, so the image is empty (``docker import`` of an empty
tar) and its services bind-mount the host's system and Python read-only and
run the host's Python on the host network, on loopback only.
"""

from __future__ import annotations

import io
import sys
import tarfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest
import yaml
from docker.errors import DockerException, NotFound

from tests.support.processes import ROOT, free_port

HOST_IMAGE = "anvil/host:local"
FAKE_SERVE = ROOT / "tests" / "support" / "fake_serve.py"


def docker_client() -> docker.DockerClient:
    """The Docker engine, or a loud failure naming why: these tests never skip silently."""
    try:
        client = docker.from_env(timeout=30)
        client.ping()
    except DockerException as exc:
        pytest.fail(f"the Docker engine is required for the lifecycle tests and cannot be reached: {exc}. "
                    "Start it: dockerd --bridge=none --iptables=false --ip6tables=false (.ci/run does).",
                    pytrace=False)
    return client


def ensure_host_image(client: docker.DockerClient) -> None:
    try:
        client.images.get(HOST_IMAGE)
        return
    except NotFound:
        pass
    empty = io.BytesIO()
    with tarfile.open(fileobj=empty, mode="w"):
        pass
    repository, tag = HOST_IMAGE.split(":")
    client.api.import_image_from_data(empty.getvalue(), repository=repository, tag=tag)


@dataclass
class ComposeProject:
    directory: Path
    service: str
    container: str
    port: int
    model: str

    @property
    def file(self) -> Path:
        return self.directory / "docker-compose.yml"

    def write(self, environment: dict[str, str] | None = None, restart: str = "no") -> None:
        python = str(Path(sys.base_prefix) / "bin" / "python3")
        mounts = ["/usr", "/lib", "/lib64", "/bin", "/etc"]
        volumes = [f"{path}:{path}:ro" for path in mounts if Path(path).exists()]
        volumes += [f"{sys.base_prefix}:{sys.base_prefix}:ro", f"{ROOT}:{ROOT}:ro"]
        service = {
            "image": HOST_IMAGE,
            "container_name": self.container,
            "network_mode": "host",
            "volumes": volumes,
            "command": [python, str(FAKE_SERVE), "--port", str(self.port), "--model", self.model],
            "environment": environment or {},
            "restart": restart,
            "stop_grace_period": "2s",
        }
        self.file.write_text(yaml.safe_dump({"services": {self.service: service}}, sort_keys=False))


def new_project(tmp_path: Path, tag: str = "") -> ComposeProject:
    suffix = uuid.uuid4().hex[:8]
    directory = tmp_path / f"project-{suffix}"
    directory.mkdir()
    project = ComposeProject(directory, f"fake{tag}", f"anvil-test-{suffix}", free_port(), f"fake-model-{suffix}")
    project.write()
    return project


def remove_container(client: docker.DockerClient, name: str) -> None:
    try:
        client.containers.get(name).remove(force=True)
    except NotFound:
        pass
