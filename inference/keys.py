"""API keys: minting, hashing, revoking.

A key reads ``anv_<8 id chars>_<43 secret chars>``. The part before the second
underscore is the public prefix (stored, shown, used for lookup); the whole
string is hashed with SHA-256 and compared in constant time by the front door
(``inference/auth.py``). The secret itself exists only in the output of
``create_key`` and is never stored or logged.
"""

from __future__ import annotations

import hashlib
import secrets
import string
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from inference.models import ApiKey, Scope, default_scopes

KEY_SCHEME = "anv"
PREFIX_ALPHABET = string.ascii_lowercase + string.digits
PREFIX_RANDOM_CHARS = 8
SECRET_BYTES = 32  # 256 bits: token_urlsafe gives 43 characters


class ApiKeyError(Exception):
    """Base of the key actions' errors."""


class KeyNameTaken(ApiKeyError):
    pass


class UnknownKey(ApiKeyError):
    pass


@dataclass(frozen=True)
class MintedKey:
    key: ApiKey
    secret: str  # shown once, to the one who created the key


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def prefix_of(secret: str) -> str | None:
    """The public prefix of a presented key, or None when it is not shaped like one of ours."""
    scheme, sep, rest = secret.partition("_")
    if scheme != KEY_SCHEME or not sep:
        return None
    ident, sep, tail = rest.partition("_")
    if not sep or len(ident) != PREFIX_RANDOM_CHARS or not tail:
        return None
    return f"{KEY_SCHEME}_{ident}"


def assign_new_secret(key: ApiKey) -> str:
    """Give ``key`` a fresh prefix and secret hash (unsaved); return the secret."""
    ident = "".join(secrets.choice(PREFIX_ALPHABET) for _ in range(PREFIX_RANDOM_CHARS))
    key.prefix = f"{KEY_SCHEME}_{ident}"
    secret = f"{key.prefix}_{secrets.token_urlsafe(SECRET_BYTES)}"
    key.secret_hash = hash_secret(secret)
    return secret


KEY_SETTINGS = ("weight", "max_queued", "reach", "allow_remote", "rpm", "tpm", "max_concurrent", "budget_usd",
                "budget_period", "budget_alert")


def create_key(name: str, scopes: list[str] | None = None, **settings: Any) -> MintedKey:
    """Mint a key named ``name`` (``scopes``: default inference; ``settings``: any of ``KEY_SETTINGS``, its
    fair share in the serves' queues, reach and rate limits); the returned secret is the only copy."""
    if ApiKey.objects.filter(name=name).exists():
        raise KeyNameTaken(f"An API key named {name!r} already exists.")
    chosen = sorted(set(scopes)) if scopes else default_scopes()
    unknown = sorted(set(chosen) - set(Scope.values))
    if unknown:
        raise ApiKeyError(f"Unknown scope {', '.join(unknown)}; the scopes are {', '.join(Scope.values)}.")
    if set(settings) - set(KEY_SETTINGS):
        raise TypeError(f"unknown key settings: {sorted(set(settings) - set(KEY_SETTINGS))}")
    for _attempt in range(5):
        key = ApiKey(name=name, scopes=chosen, **settings)
        try:
            key.full_clean(exclude=["prefix", "secret_hash"], validate_unique=False)
        except ValidationError as exc:
            raise ApiKeyError("; ".join(f"{field}: {' '.join(problems)}"
                                        for field, problems in exc.message_dict.items())) from None
        secret = assign_new_secret(key)
        try:
            with transaction.atomic():
                key.save(force_insert=True)
        except IntegrityError:
            if ApiKey.objects.filter(name=name).exists():
                raise KeyNameTaken(f"An API key named {name!r} already exists.") from None
            continue  # a prefix collision (1 in 36^8): draw again
        return MintedKey(key=key, secret=secret)
    raise RuntimeError("could not draw a unique key prefix")


def revoke_key(name: str) -> ApiKey:
    """Revoke the key named ``name``; revoking twice keeps the first time."""
    with transaction.atomic():
        try:
            key = ApiKey.objects.select_for_update().get(name=name)
        except ApiKey.DoesNotExist:
            known = ", ".join(ApiKey.objects.values_list("name", flat=True)) or "none"
            raise UnknownKey(f"No API key named {name!r}. Known keys: {known}.") from None
        if key.revoked_at is None:
            key.revoked_at = timezone.now()
            key.save(update_fields=["revoked_at", "updated_at"])
    return key


def restore_key(name: str) -> ApiKey:
    """Undo a revocation: the key (the same secret) works again within one sync interval."""
    with transaction.atomic():
        try:
            key = ApiKey.objects.select_for_update().get(name=name)
        except ApiKey.DoesNotExist:
            raise UnknownKey(f"No API key named {name!r}.") from None
        if key.revoked_at is not None:
            key.revoked_at = None
            key.save(update_fields=["revoked_at", "updated_at"])
    return key


def record_use(key_ids: list[int], when: object = None) -> int:
    """Stamp ``last_used_at`` on the given keys (called in batches, off the hot path)."""
    if not key_ids:
        return 0
    return ApiKey.objects.filter(pk__in=key_ids).update(last_used_at=when or timezone.now())
