"""A request naming a model is answered by that model (its replicas) or by a model its serves allow
(``fallback_to``), never quietly by another: ``model: "ghost"`` once got ``hrm-demo``'s answer."""

from __future__ import annotations

from dataclasses import replace

from routing.decide import decide
from routing.policy import PolicyConfig
from routing.profile import Cell, Profile
from tests.routing.test_policy import serve

CHAT = {"messages": [{"role": "user", "content": "hello there"}]}
ALLOW = Profile(tiers={("fast", "chat"): Cell("allow"), ("heavy", "chat"): Cell("allow")})


def names(decision) -> list[str]:  # type: ignore[no-untyped-def]
    return [candidate.serve.name for candidate in decision.candidates]


def test_a_named_model_is_never_answered_by_another() -> None:
    serves = (serve("ghost"), serve("hrm-demo"), serve("big", tier="heavy"))
    decision = decide({"model": "ghost", **CHAT}, serves, ALLOW, (), PolicyConfig())
    assert names(decision) == ["ghost"] and decision.named and decision.requested_model == "ghost"


def test_replicas_share_an_alias_and_the_least_busy_goes_first() -> None:
    serves = tuple(replace(serve(name), public_model="chat-7b") for name in ("gpu0", "gpu1", "gpu2"))
    loads = {"gpu0": 3, "gpu1": 0, "gpu2": 1}
    decision = decide({"model": "chat-7b", **CHAT}, (*serves, serve("other")), ALLOW, (), PolicyConfig(), loads=loads)
    assert names(decision) == ["gpu1", "gpu2", "gpu0"]
    # A replica's own name means its model: its replicas answer too.
    assert set(names(decide({"model": "gpu2", **CHAT}, serves, ALLOW, (), PolicyConfig()))) == {"gpu0", "gpu1", "gpu2"}


def test_fallback_to_lists_who_may_answer_after_every_replica_in_its_order() -> None:
    main = replace(serve("main", tier="heavy"), fallback_to=("small", "tiny"))
    serves = (main, serve("tiny"), serve("small"), serve("unlisted"))
    decision = decide({"model": "main", **CHAT}, serves, ALLOW, (), PolicyConfig())
    assert names(decision) == ["main", "small", "tiny"]


def test_a_named_model_that_is_not_loaded_is_refused_although_others_could_answer() -> None:
    serves = (serve("cold", model_state="unloaded"), serve("warm"))
    decision = decide({"model": "cold", **CHAT}, serves, ALLOW, (), PolicyConfig())
    assert not decision.candidates and decision.not_loaded == "unloaded"
    loading = (replace(serve("cold-a", model_state="unloaded"), public_model="cold"),
               replace(serve("cold-b", model_state="loading"), public_model="cold"))
    assert decide({"model": "cold", **CHAT}, loading, ALLOW, (), PolicyConfig()).not_loaded == "loading"


def test_a_named_model_loaded_on_demand_is_waited_for_and_a_resident_replica_goes_first() -> None:
    cold = replace(serve("cold", model_state="unloaded"), on_demand=True, public_model="m")
    warm = replace(serve("warm"), public_model="m")
    assert names(decide({"model": "m", **CHAT}, (cold,), ALLOW, (), PolicyConfig())) == ["cold"]
    assert names(decide({"model": "m", **CHAT}, (cold, warm), ALLOW, (), PolicyConfig(),
                        loads={"warm": 50})) == ["warm", "cold"]


def test_a_named_model_the_profile_denies_is_refused_not_substituted() -> None:
    denied = Profile(serves={("only", "chat"): Cell("deny", 0.0, 1)}, tiers={("fast", "chat"): Cell("allow")})
    decision = decide({"model": "only", **CHAT}, (serve("only"), serve("spare")), denied, (), PolicyConfig())
    assert not decision.candidates and [name for name, _ in decision.denied] == ["only"]
    assert not decision.not_loaded


def test_a_named_model_is_not_collapsed_when_the_classifier_is_unsure() -> None:
    serves = (replace(serve("fast-1"), fallback_to=("heavy-1",)), serve("heavy-1", tier="heavy"))
    body = {"model": "fast-1", "messages": [{"role": "user", "content": "x"}]}
    decision = decide(body, serves, ALLOW, (), PolicyConfig())
    assert names(decision) == ["fast-1", "heavy-1"]
