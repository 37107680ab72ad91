"""The hosts the console lists under the models board: each agent's beat, its GPUs and what it has loaded.

Whether a host is alive is read from its Redis beat, as the front door reads it (``serves/hosts.py``); the row's
``last_heartbeat`` is written every 30 s, so it says when, not whether.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from console.board import live_host_names
from serves.models import Host, ModelState, Serve


def host_rows() -> list[dict[str, Any]]:
    """A row per known host, and one per host a serve names that never beat (so a typo shows)."""
    names = set(Host.objects.values_list("name", flat=True)) | set(
        Serve.objects.exclude(host="").values_list("host", flat=True))
    alive = live_host_names(names)
    resident: dict[str, list[str]] = defaultdict(list)
    named: set[str] = set()
    for serve in Serve.objects.exclude(host="").only("name", "host", "model_state", "enabled").order_by("name"):
        named.add(serve.host)
        if serve.enabled and serve.current_model_state == ModelState.LOADED:
            resident[serve.host].append(serve.name)
    rows = []
    for host in Host.objects.all():
        rows.append({"name": host.name, "alive": host.name in alive, "last_heartbeat": host.last_heartbeat,
                     "gpus": host.gpus or [], "resident": resident.get(host.name, []), "pid": host.pid})
    for name in sorted(named - {row["name"] for row in rows}):
        rows.append({"name": name, "alive": name in alive, "last_heartbeat": None, "gpus": [],
                     "resident": resident.get(name, []), "pid": None})
    return rows
