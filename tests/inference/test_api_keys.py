"""API keys: hashed at rest, revocable, cached by the front door and refreshed on change."""

from __future__ import annotations

import hashlib
from io import StringIO

import pytest
from asgiref.sync import async_to_sync
from django.core.management import CommandError, call_command

from inference.auth import KeyCache, presented_key
from inference.errors import AuthenticationFailed
from inference.keys import KeyNameTaken, UnknownKey, create_key, prefix_of, revoke_key
from inference.models import ApiKey

# database_sync_to_async closes connections between calls, so these tests need real commits.
pytestmark = pytest.mark.django_db(transaction=True)


class FakeClock:
    """An injected monotonic clock: the cache's sync interval without sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def authenticate(cache: KeyCache, secret: str | None) -> object:
    return async_to_sync(cache.authenticate)(secret)


def test_only_a_sha256_of_the_secret_is_stored() -> None:
    minted = create_key("ci-bot")
    row = ApiKey.objects.get(name="ci-bot")
    assert row.secret_hash == hashlib.sha256(minted.secret.encode()).hexdigest()
    stored = [str(value) for value in ApiKey.objects.values_list().get(pk=row.pk)]
    assert all(minted.secret not in value for value in stored)
    assert minted.secret.startswith(row.prefix + "_")
    assert prefix_of(minted.secret) == row.prefix


def test_two_keys_never_share_a_name() -> None:
    create_key("agent")
    with pytest.raises(KeyNameTaken):
        create_key("agent")


def test_revoking_is_idempotent_and_unknown_names_are_listed() -> None:
    create_key("alpha")
    first = revoke_key("alpha").revoked_at
    assert revoke_key("alpha").revoked_at == first
    with pytest.raises(UnknownKey, match="Known keys: alpha"):
        revoke_key("nope")


def test_create_command_prints_the_secret_alone_on_the_last_line() -> None:
    out, err = StringIO(), StringIO()
    call_command("apikey", "create", "demo", stdout=out, stderr=err)
    lines = out.getvalue().strip().splitlines()
    secret = lines[-1]
    assert len(lines) == 1 and secret.startswith("anv_")
    assert ApiKey.objects.get(name="demo").secret_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert "only its hash" in err.getvalue()


def test_list_and_revoke_commands() -> None:
    create_key("one")
    create_key("two")
    call_command("apikey", "revoke", "two", stdout=StringIO())
    out = StringIO()
    call_command("apikey", "list", stdout=out)
    table = out.getvalue()
    assert "one" in table and "two" in table
    assert [line.split()[-1] for line in table.splitlines()[1:]] == ["active", "revoked"]
    with pytest.raises(CommandError, match="No API key named 'three'"):
        call_command("apikey", "revoke", "three")
    with pytest.raises(CommandError, match="slugs"):
        call_command("apikey", "create", "has space")


def test_key_is_taken_from_bearer_or_x_api_key() -> None:
    assert presented_key([(b"authorization", b"Bearer abc")]) == "abc"
    assert presented_key([(b"authorization", b"bearer  abc ")]) == "abc"
    assert presented_key([(b"x-api-key", b"xyz")]) == "xyz"
    assert presented_key([(b"authorization", b"Basic Zm9vOmJhcg==")]) is None
    assert presented_key([]) is None


def test_cache_accepts_a_key_and_rejects_a_forged_secret_with_the_same_prefix() -> None:
    minted = create_key("client")
    cache = KeyCache(clock=FakeClock())
    principal = authenticate(cache, minted.secret)
    assert principal.name == "client"  # type: ignore[attr-defined]
    forged = minted.key.prefix + "_" + "A" * 43
    with pytest.raises(AuthenticationFailed):
        authenticate(cache, forged)
    with pytest.raises(AuthenticationFailed, match="Authorization: Bearer"):
        authenticate(cache, None)


def test_a_key_minted_after_the_cache_loaded_works_on_its_first_request() -> None:
    clock = FakeClock()
    cache = KeyCache(clock=clock)
    existing = create_key("early")
    authenticate(cache, existing.secret)  # cache loaded
    late = create_key("late")  # no clock movement: only the forced sync can find it
    assert authenticate(cache, late.secret).name == "late"  # type: ignore[attr-defined]


def authenticate_then_settle(cache: KeyCache, secret: str) -> object:
    """One request, then let the background check it may have started finish."""

    async def go() -> object:
        try:
            return await cache.authenticate(secret)
        finally:
            await cache._keys.settle()

    return async_to_sync(go)()


def test_revocation_reaches_the_cache_within_one_sync_interval() -> None:
    clock = FakeClock()
    cache = KeyCache(clock=clock)
    minted = create_key("soon-revoked")
    authenticate(cache, minted.secret)
    revoke_key("soon-revoked")
    authenticate(cache, minted.secret)  # inside the interval the snapshot still holds it
    clock.now += 1.01  # ANVIL_KEY_SYNC_INTERVAL defaults to 1 s
    authenticate_then_settle(cache, minted.secret)  # answered from memory; the check runs behind it
    with pytest.raises(AuthenticationFailed):
        authenticate(cache, minted.secret)


def test_requests_never_wait_on_the_database_once_loaded(django_assert_num_queries: object) -> None:
    clock = FakeClock()
    cache = KeyCache(clock=clock)
    minted = create_key("steady")
    authenticate(cache, minted.secret)
    with django_assert_num_queries(0):  # type: ignore[operator]
        authenticate(cache, minted.secret)  # inside the interval: memory only
    clock.now += 5
    with django_assert_num_queries(1):  # type: ignore[operator]
        authenticate_then_settle(cache, minted.secret)  # one fingerprint query behind the request, no reload


def test_use_is_stamped_off_the_request_path() -> None:
    minted = create_key("stamped")
    assert minted.key.last_used_at is None

    async def use_and_drain() -> None:
        cache = KeyCache(clock=FakeClock())
        await cache.authenticate(minted.secret)
        for task in list(cache._background):
            await task

    async_to_sync(use_and_drain)()
    assert ApiKey.objects.get(name="stamped").last_used_at is not None
