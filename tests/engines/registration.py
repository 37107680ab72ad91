"""Adding a running engine to Anvil as an operator would: a Serve row, no measurements."""

from __future__ import annotations

from typing import Any

import httpx

from serves.models import Serve
from tests.support.breakers import forget_breakers
from tests.support.engines import EnginePeer
from tests.support.waiting import wait_for


def register(anvil: str, key: str, peer: EnginePeer, name: str, engine: str, **fields: Any) -> Serve:
    """A Serve row for ``peer`` (plus any other ``fields``), returned once Anvil's web process routes
    to it (it reloads serves in the background). No quality profile is loaded, so the serve is
    unmeasured: a fresh install."""
    forget_breakers(name)  # a failure in an earlier test stays in that test
    serve = Serve.objects.create(name=name, tier="fast", engine=engine, base_url=peer.base_url,
                                 served_model=peer.served_model, **fields)

    def routed() -> bool:
        decision = httpx.post(f"{anvil}/v1/route", headers={"x-api-key": key}, timeout=5, json={
            "model": name, "messages": [{"role": "user", "content": "hi"}]}).json()
        first = (decision.get("candidates") or [{}])[0]
        assert first.get("serve") == name and first.get("verdict") != "deny", decision  # named on timeout
        return True

    wait_for(routed, 15, f"Anvil to route to {name}")
    return serve
