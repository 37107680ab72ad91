"""Which residents make room for a load: idle before busy, least recently used first, nothing a newly loaded
model's requests still want before ``min_residency`` (unless a request has waited ``max_wait``)."""

from __future__ import annotations

from serves.residency import Device, Resident, plan

GPU = Device("0", 24.0, min_residency=30, max_wait=120)
NOW = 10_000.0


def resident(name: str, gb: float | None, *, last_used: float = 0.0, busy: bool = False, loaded_at: float = 0.0,
             state: str = "loaded") -> Resident:
    return Resident(name, hash(name) % 100, state, gb, loaded_at, last_used or loaded_at, busy)


def test_a_load_that_fits_evicts_nothing() -> None:
    assert plan(8, [resident("a", 8), resident("b", 8)], GPU, NOW).evict == ()


def test_idle_residents_go_first_least_recently_used_first() -> None:
    residents = [resident("busy-old", 8, last_used=1, busy=True), resident("idle-new", 8, last_used=900),
                 resident("idle-old", 8, last_used=500)]
    chosen = plan(10, residents, GPU, NOW)
    assert [r.name for r in chosen.evict] == ["idle-old", "idle-new"] and not chosen.blocked_by
    assert chosen.describe() == "evicting idle-old, idle-new"


def test_a_busy_resident_is_evicted_after_it_drains_when_nothing_else_frees_enough() -> None:
    chosen = plan(20, [resident("busy", 16, busy=True)], GPU, NOW)
    assert [r.name for r in chosen.evict] == ["busy"] and chosen.describe() == "evicting busy after it drains"


def test_min_residency_protects_a_fresh_model_that_requests_want_until_max_wait() -> None:
    fresh = resident("fresh", 20, busy=True, loaded_at=NOW - 5)
    assert plan(10, [fresh], GPU, NOW).blocked_by == ("fresh",)
    assert plan(10, [fresh], GPU, NOW, oldest_wait=121).blocked_by == ()  # no request starves
    idle = resident("fresh", 20, busy=False, loaded_at=NOW - 5)
    assert plan(10, [idle], GPU, NOW).blocked_by == ()  # nothing wants it: it goes at once


def test_an_unknown_footprint_counts_as_the_whole_device_and_too_big_never_fits() -> None:
    assert [r.name for r in plan(1, [resident("unknown", None)], GPU, NOW).evict] == ["unknown"]
    assert plan(None, [], GPU, NOW).evict == ()
    assert plan(30, [], GPU, NOW).no_room == "needs 30 GB; GPU 0 has 24 GB"


def test_an_exclusive_device_holds_one_model() -> None:
    exclusive = Device("0", 80.0, exclusive=True)
    assert [r.name for r in plan(1, [resident("small", 1)], exclusive, NOW).evict] == ["small"]


def test_a_resident_still_loading_is_waited_for_not_killed() -> None:
    assert plan(20, [resident("starting", 20, state="loading")], GPU, NOW, oldest_wait=500).blocked_by == ("starting",)
