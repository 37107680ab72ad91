"""Promotions are safe: one that leaves a work class with no allowed serve is refused unless confirmed, and a
revert (``manage.py profile revert ID``) restores routing, seen through ``POST /v1/route`` on a live Anvil."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from django.core.management import CommandError, call_command

from evals.errors import ConfirmationRequired
from evals.models import ProfilePromotion
from evals.profile_loop import promote, promotion_plan
from inference.keys import create_key
from routing.models import ProfileEntry
from serves.models import Serve
from tests.support.live import live_anvil, until_routed
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

CHAT = [{"role": "user", "content": "hello there"}]


@pytest.fixture(scope="module")
def anvil(django_db_setup: None, module_logs: Path) -> Iterator[str]:
    with live_anvil(module_logs) as url:
        yield url


def routed(anvil: str, key: str) -> dict[str, object]:
    return httpx.post(f"{anvil}/v1/route", headers={"x-api-key": key}, timeout=5,
                      json={"model": "auto", "messages": CHAT}).json()


def profile(*argv: str) -> str:
    out = io.StringIO()
    call_command("profile", *argv, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def test_a_lockout_needs_confirmation_and_revert_restores_routing(anvil: str) -> None:
    Serve.objects.create(name="only", tier="fast", base_url="http://127.0.0.1:9/v1", served_model="m")
    key = create_key("revert-test").secret
    until_routed(anvil, key, {"only": "allow-with-verify"})  # unmeasured: the default
    ProfileEntry.objects.create(profile="candidate", kind="serve", subject="only", work_class="chat",
                                decision="deny", quality=0.0, samples=5, source="evals: preflight run 1")

    # Refused without confirmation, naming what would be locked out; live and routing untouched.
    plan = promotion_plan()
    with pytest.raises(ConfirmationRequired, match=r"chat: no serve would be allowed to answer it \(only: "):
        promote(promoted_by="ops", expected_token=plan.diff.token)
    assert not ProfileEntry.objects.filter(profile="live").exists() and not ProfilePromotion.objects.exists()
    assert routed(anvil, key)["candidates"][0]["serve"] == "only"  # type: ignore[index]

    # Confirmed: promoted, and routing refuses chat, saying the profile did it.
    promoted = promote(promoted_by="ops", expected_token=plan.diff.token, confirmed=True)
    wait_for(lambda: not routed(anvil, key)["candidates"], 10, "Anvil to load the promoted profile")
    denied = routed(anvil, key)["denied_by_profile"]
    assert denied == [{"serve": "only", "why": "the quality profile denies serve only × chat (quality 0.00, "
                                                "5 samples; evals: preflight run 1)"}]
    refused = httpx.post(f"{anvil}/v1/chat/completions", headers={"authorization": f"Bearer {key}"}, timeout=10,
                         json={"model": "only", "messages": CHAT, "max_tokens": 4})
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "profile_denied"

    # The versions: the empty live profile, kept before the promotion, and the promotion.
    kept = ProfilePromotion.objects.get(action="kept")
    listed = profile("versions")
    assert f"{promoted.pk:>5}" in listed and "promote" in listed and "<- live" in listed
    assert f"{kept.pk:>5}" in listed and "kept" in listed and "0 cells" in listed

    # Revert to the profile before the promotion: routing is back where it was.
    said = profile("revert", str(kept.pk))
    assert "serve only × chat: deny -> default" in said and f"reverted the live profile to version {kept.pk}" in said
    assert not ProfileEntry.objects.filter(profile="live").exists()
    until_routed(anvil, key, {"only": "allow-with-verify"})
    assert routed(anvil, key)["denied_by_profile"] == []
    with pytest.raises(CommandError, match="live profile already"):
        profile("revert", str(kept.pk))

    # Reverting to the promotion again is a lockout too: the command asks for --yes.
    with pytest.raises(CommandError, match="needs confirmation: chat: no serve would be allowed"):
        profile("revert", str(promoted.pk))
    assert not ProfileEntry.objects.filter(profile="live").exists()
    profile("revert", str(promoted.pk), "--yes")
    assert ProfileEntry.objects.get(profile="live").decision == "deny"
