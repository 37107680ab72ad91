"""The policy: examples, and properties that must hold for every input (hypothesis)."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from routing.policy import PolicyConfig, PolicyInput, route
from routing.profile import Cell, Profile
from serves.catalog import ServeView

CONFIG = PolicyConfig()
WORK_CLASSES = ["chat", "bounded-edit", "multi-file-refactor", "planning", "review", "long-context"]


def serve(name: str, tier: str = "fast", context: int | None = None, tools: bool = True, state: str = "running",
          local: bool = True, model_state: str = "loaded") -> ServeView:
    return ServeView(id=hash(name) % 1000, name=name, tier=tier, engine="vllm", dialect="openai",
                     base_url="http://127.0.0.1:1/v1", served_model=name, api_key_env="", context_limit=context,
                     supports_tools=tools, fingerprint="f", extra_body={}, is_local=local, state=state,
                     health="ok", created=0, runtime="compose" if local else "remote", model_state=model_state)


def test_unmeasured_local_tiers_are_denied_planning_and_cloud_allowed() -> None:
    serves = (serve("fast-1"), serve("claude", tier="cloud", local=False))
    result = route(serves, Profile(), PolicyInput("planning"), CONFIG)
    assert [c.serve.name for c in result.candidates] == ["claude"]
    assert dict(result.excluded)["fast-1"].startswith("default: unmeasured local tier")


def test_metered_gate_keeps_cloud_out_of_chat() -> None:
    serves = (serve("fast-1"), serve("claude", tier="cloud", local=False))
    result = route(serves, Profile(), PolicyInput("chat"), CONFIG)
    assert [c.serve.name for c in result.candidates] == ["fast-1"]
    assert result.candidates[0].verdict == "allow-with-verify"


def test_cost_order_and_only_loaded_serves() -> None:
    serves = (serve("heavy-1", tier="heavy"), serve("fast-cold", model_state="unloaded"), serve("fast-warm"),
              serve("fast-loading", model_state="loading"))
    profile = Profile(tiers={("fast", "chat"): Cell("allow"), ("heavy", "chat"): Cell("allow")})
    result = route(serves, profile, PolicyInput("chat"), CONFIG)
    assert [c.serve.name for c in result.candidates] == ["fast-warm", "heavy-1"]
    assert dict(result.excluded) == {"fast-cold": "not loaded (unloaded)", "fast-loading": "not loaded (loading)"}


def test_not_confident_collapses_to_the_safer_tier() -> None:
    serves = (serve("fast-1"), serve("heavy-1", tier="heavy"))
    result = route(serves, Profile(), PolicyInput("chat", confident=False), CONFIG)
    assert [c.serve.name for c in result.candidates] == ["heavy-1"]


def test_nothing_fits_the_context_is_too_large() -> None:
    result = route((serve("small", context=100),), Profile(), PolicyInput("chat", needed_tokens=5000), CONFIG)
    assert result.too_large and not result.candidates


def test_a_denied_tier_pin_goes_to_the_gated_pool_with_a_note() -> None:
    serves = (serve("fast-1"), serve("claude", tier="cloud", local=False))
    result = route(serves, Profile(), PolicyInput("chat", pinned_tier="cloud"), CONFIG)
    assert [c.serve.name for c in result.candidates] == ["fast-1"]
    assert any("pin to tier cloud denied" in note for note in result.notes)


def test_a_serve_loaded_on_demand_is_a_candidate_after_every_resident_one() -> None:
    cold = replace(serve("fast-cold", model_state="unloaded"), on_demand=True)
    serves = (cold, serve("heavy-1", tier="heavy"), serve("fast-off", model_state="unloaded"))
    profile = Profile(tiers={("fast", "chat"): Cell("allow"), ("heavy", "chat"): Cell("allow")})
    result = route(serves, profile, PolicyInput("chat"), CONFIG)
    assert [c.serve.name for c in result.candidates] == ["heavy-1", "fast-cold"]
    assert dict(result.excluded) == {"fast-off": "not loaded (unloaded)"}


def test_a_serve_whose_host_is_silent_is_excluded_saying_so_even_when_loaded_on_demand() -> None:
    silent = replace(serve("on-b", model_state="unknown"), on_demand=True, load_error="host_silent", host="b")
    serves = (silent, serve("on-c"))
    profile = Profile(tiers={("fast", "chat"): Cell("allow")})
    result = route(serves, profile, PolicyInput("chat"), CONFIG)
    assert [c.serve.name for c in result.candidates] == ["on-c"]
    assert dict(result.excluded) == {"on-b": "host_silent: its host agent stopped beating"}


def test_a_stale_allow_acts_as_allow_with_verify() -> None:
    profile = Profile(serves={("fast-1", "chat"): Cell("allow", fingerprint="old")})
    result = route((serve("fast-1"),), profile, PolicyInput("chat"), CONFIG)
    assert result.candidates[0].verdict == "allow-with-verify"


# --- properties ------------------------------------------------------------------------

verdicts = st.sampled_from(["allow", "allow-with-verify", "deny"])
tiers = st.sampled_from(["fast", "heavy", "cloud", "other"])


@st.composite
def worlds(draw):  # type: ignore[no-untyped-def]
    names = draw(st.lists(st.text("abcdefgh", min_size=1, max_size=4), min_size=0, max_size=6, unique=True))
    serves = tuple(serve(n, tier=draw(tiers), context=draw(st.none() | st.integers(1, 10_000)),
                         tools=draw(st.booleans()), state=draw(st.sampled_from(["running", "exited"])))
                   for n in names)
    cells = {}
    for s in serves:
        for work_class in WORK_CLASSES:
            if draw(st.booleans()):
                cells[(s.name, work_class)] = Cell(draw(verdicts), fingerprint=draw(st.sampled_from(["f", "old"])))
    request = PolicyInput(draw(st.sampled_from(WORK_CLASSES)), draw(st.booleans()), draw(st.integers(0, 12_000)),
                          draw(st.booleans()), draw(st.none() | tiers))
    return serves, Profile(serves=cells), request


@settings(max_examples=300, deadline=None)
@given(worlds())
def test_never_returns_a_denied_serve(world) -> None:  # type: ignore[no-untyped-def]
    serves, profile, request = world
    for candidate in route(serves, profile, request, CONFIG).candidates:
        verdict, _ = profile.verdict(candidate.serve, request.work_class)
        assert verdict != "deny" and candidate.verdict != "deny"


@settings(max_examples=300, deadline=None)
@given(worlds())
def test_never_empty_while_an_allowed_serve_that_fits_exists(world) -> None:  # type: ignore[no-untyped-def]
    serves, profile, request = world
    result = route(serves, profile, request, CONFIG)
    allowed = [
        s for s in serves
        if not (s.context_limit and request.needed_tokens > s.context_limit)
        and not (request.needs_tools and not s.supports_tools)
        and not (s.tier == "cloud" and request.work_class not in CONFIG.cloud_work_classes)
        and profile.verdict(s, request.work_class)[0] != "deny"
    ]
    assert bool(result.candidates) == bool(allowed)


@settings(max_examples=300, deadline=None)
@given(worlds())
def test_an_allowed_tier_pin_comes_first(world) -> None:  # type: ignore[no-untyped-def]
    serves, profile, request = world
    result = route(serves, profile, request, CONFIG)
    if request.pinned_tier and any(c.serve.tier == request.pinned_tier for c in result.candidates):
        assert result.candidates[0].serve.tier == request.pinned_tier
    unpinned = route(serves, profile, replace(request, pinned_tier=None), CONFIG)
    assert sorted(c.serve.name for c in result.candidates) == sorted(c.serve.name for c in unpinned.candidates)
