"""Network namespaces that stand in for machines: each a namespace joined to this one by a veth pair.

The addresses come from 198.18.0.0/15, the range RFC 2544 sets aside for benchmarking networks: nothing
outside the machine has them, so no byte of a test leaves it. The machine the test runs on is the control
host; a namespace's side of its pair is ``address``, this side ``gateway`` (the control host as that
namespace sees it). Namespaces reach the control host, and it reaches them; they do not reach each other.
Creating them needs root (CAP_NET_ADMIN); without it the test fails and says so, it never skips.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

NETWORK = "198.18.0.0/15"
COMMAND_TIMEOUT = 20


@dataclass(frozen=True)
class Namespace:
    name: str  # the namespace's name under `ip netns`
    address: str  # this host's address, in the namespace
    gateway: str  # the control host's address on the same link

    def argv(self, argv: list[str]) -> list[str]:
        """``argv`` run inside the namespace (``ip netns exec`` execs it: the pid is the command's own)."""
        return ["ip", "netns", "exec", self.name, *argv]

    def pids(self) -> list[int]:
        done = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True, text=True,
                              timeout=COMMAND_TIMEOUT)
        return [int(pid) for pid in done.stdout.split()]


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    if done.returncode != 0:
        raise AssertionError(f"`ip {' '.join(args)}` failed: {done.stderr.strip()} (network namespaces need root "
                             "and the iproute2 package)")


@contextlib.contextmanager
def namespaces(*hosts: str) -> Iterator[dict[str, Namespace]]:
    """One namespace per name in ``hosts``; on exit every process left in them is killed and they are removed."""
    tag = uuid.uuid4().hex[:4]
    first = random.randrange(0, 500 - len(hosts))  # a /24 each, in 198.18.0.0/15
    made: dict[str, Namespace] = {}
    try:
        for index, host in enumerate(hosts):
            block = first + index
            prefix = f"198.{18 + block // 256}.{block % 256}"
            found = Namespace(f"anvil-{host}-{tag}", f"{prefix}.2", f"{prefix}.1")
            outside, inside = f"av{tag}{index}o", f"av{tag}{index}i"
            _ip("netns", "add", found.name)
            made[host] = found
            _ip("link", "add", outside, "type", "veth", "peer", "name", inside, "netns", found.name)
            _ip("addr", "add", f"{found.gateway}/24", "dev", outside)
            _ip("link", "set", outside, "up")
            _ip("-n", found.name, "addr", "add", f"{found.address}/24", "dev", inside)
            _ip("-n", found.name, "link", "set", inside, "up")
            _ip("-n", found.name, "link", "set", "lo", "up")
        yield made
    finally:
        for found in made.values():
            for pid in found.pids():  # an engine a killed agent left behind
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            # Removing the namespace removes its end of the pair, and with it ours.
            subprocess.run(["ip", "netns", "del", found.name], capture_output=True, timeout=COMMAND_TIMEOUT)
