"""A private PostgreSQL cluster for tests that stop and start the database under a live Anvil.

The suite's own database is never stopped: a test that needs PostgreSQL to go away gets a cluster of
its own (``initdb`` in a fresh directory, trust auth on loopback, a free port), started and stopped
with ``pg_ctl``. PostgreSQL refuses to run as root, so when the tests run as root (CI, containers)
every binary runs as the ``postgres`` user through ``runuser``, and the directory is that user's.
It lives under the system temp directory rather than pytest's ``tmp_path``: pytest makes its base
directory ``0700`` for root, which the ``postgres`` user cannot traverse.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.processes import free_port

BINARIES_GLOB = "/usr/lib/postgresql/*/bin"
OWNER = "postgres"
USER = "anvil"  # the cluster's superuser; trust auth, loopback only
COMMAND_TIMEOUT = 60


def postgres_bin() -> Path:
    """The newest installed PostgreSQL's bin directory; a clear failure (never a skip) when there is none."""
    found = sorted(Path("/").glob(BINARIES_GLOB.lstrip("/")),
                   key=lambda p: [int(n) for n in re.findall(r"\d+", p.parent.name)] or [0])
    found = [path for path in found if (path / "initdb").exists() and (path / "pg_ctl").exists()]
    if not found:
        raise AssertionError(f"no PostgreSQL server binaries at {BINARIES_GLOB} (initdb, pg_ctl): install them "
                             "with `apt-get install postgresql` (.ci/run does); this test needs a cluster of its own")
    return found[-1]


@dataclass
class PrivatePostgres:
    bin_dir: Path
    root: Path  # owned by the cluster's user: data/, sockets/, server.log
    port: int
    as_owner: list[str]  # the argv prefix that runs a binary as the cluster's owner

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    @property
    def url(self) -> str:
        return f"postgres://{USER}@127.0.0.1:{self.port}/postgres?connect_timeout=3"

    def _run(self, binary: str, *args: str) -> str:
        argv = [*self.as_owner, str(self.bin_dir / binary), *args]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, cwd=self.root)
        if done.returncode != 0:
            raise AssertionError(f"{binary} {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n"
                                 f"{done.stderr}\n{self.log_tail()}")
        return done.stdout

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "30", "start")

    def stop(self) -> None:
        # fast: open sessions are ended at once (smart would wait for the web process to hang up).
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "30", "stop")

    def running(self) -> bool:
        argv = [*self.as_owner, str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "status"]
        return subprocess.run(argv, capture_output=True, timeout=COMMAND_TIMEOUT, cwd=self.root).returncode == 0


@contextmanager
def private_postgres(log_dir: Path, also_listen: tuple[str, ...] = (),
                     trust_network: str = "") -> Iterator[PrivatePostgres]:
    """A started cluster on a free loopback port; stopped and deleted on exit (its log copied to ``log_dir``).

    ``also_listen``: more addresses to listen on (a test's own veth addresses), and ``trust_network`` the
    network (CIDR) whose clients it trusts beside loopback."""
    bin_dir = postgres_bin()
    root = Path(tempfile.mkdtemp(prefix="anvil-pg-"))
    as_owner: list[str] = []
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam(OWNER)
        except KeyError:
            raise AssertionError(f"running as root and there is no {OWNER!r} user to run PostgreSQL as "
                                 "(the postgresql package creates it)") from None
        runuser = shutil.which("runuser")
        if runuser is None:
            raise AssertionError("running as root and `runuser` is missing: PostgreSQL refuses to run as root")
        os.chown(root, owner.pw_uid, owner.pw_gid)
        as_owner = [runuser, "-u", OWNER, "--"]
    cluster = PrivatePostgres(bin_dir, root, free_port(), as_owner)
    try:
        cluster._run("initdb", "-D", str(cluster.data), "-U", USER, "--auth=trust", "--no-sync",
                     "--encoding=UTF8", "--locale=C")
        sockets = root / "sockets"
        listen = ",".join(("127.0.0.1", *also_listen))
        settings = (f"\nport = {cluster.port}\nlisten_addresses = '{listen}'\n"
                    f"unix_socket_directories = '{sockets}'\nfsync = off\nfull_page_writes = off\n")
        _append_as_owner(cluster, cluster.data / "postgresql.conf", settings)
        if trust_network:
            _append_as_owner(cluster, cluster.data / "pg_hba.conf", f"\nhost all all {trust_network} trust\n")
        _mkdir_as_owner(cluster, sockets)
        cluster.start()
        yield cluster
    finally:
        try:
            if cluster.data.exists() and cluster.running():
                cluster.stop()
        finally:
            if cluster.log.exists():
                shutil.copy(cluster.log, log_dir / f"postgres-{cluster.port}.log")
            shutil.rmtree(root, ignore_errors=True)


def _append_as_owner(cluster: PrivatePostgres, path: Path, text: str) -> None:
    # Written by root, then handed back: postgres must own its configuration files.
    with open(path, "a") as conf:
        conf.write(text)
    stat = cluster.root.stat()
    os.chown(path, stat.st_uid, stat.st_gid)


def _mkdir_as_owner(cluster: PrivatePostgres, path: Path) -> None:
    path.mkdir(mode=0o700)
    stat = cluster.root.stat()
    os.chown(path, stat.st_uid, stat.st_gid)
