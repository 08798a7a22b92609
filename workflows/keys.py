"""API keys: minting, checking and rate limiting the credentials services use on the JSON API.

A key looks like ``sk_3f9a1c2b.Xy…`` (the part before the dot is its visible ``prefix``). Only
a SHA-256 of the whole key is stored. A slow password hash is not needed here: the secret part
carries 256 random bits, so the hash cannot be brute-forced, and a fast hash keeps every request
cheap.

Every API request authenticates, so both halves of that are kept off the database (W7 in
docs/performance.md: the row's look-up and its rate-window ``UPDATE`` were a third of a start):

- ``find_key`` remembers a key it found, by the SHA-256 of the presented key, for
  ``SLUICE_API_KEY_CACHE_SECONDS`` (5 s) in each process. A key deactivated, rotated, deleted
  or edited (scopes, tenant, pipelines, rate limit) is seen at once by the process that changed
  it and by every other process within that time. An unknown key is never remembered: a key
  just minted works at once.
- ``take_request`` counts requests in Redis (the broker's: one counter per API key, expiring
  with its window), shared by every process and host, with no row locked; a key with a large
  limit claims its requests a few at a time (``RedisWindows``). ``last_used_at`` is written at
  most once a minute per key and process (it is a hint for people, not a counter). Without a
  Redis broker (SQLite and ``make run``), or while Redis fails, one conditional ``UPDATE`` of
  the key's row counts the request instead, as the row always did.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import math
import secrets
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from time import monotonic
from typing import Any

import redis
from django.conf import settings
from django.db import transaction
from django.db.models import Case, DateTimeField, F, Q, Value, When
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from django.utils import timezone

from workflows.core import broker
from workflows.models import ApiKey, ApiScope

SCOPES: tuple[str, ...] = tuple(ApiScope.values)
PREFIX_LEN = 8


class ScopeError(ValueError):
    """A scope name that does not exist."""


def hash_key(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def check_scopes(scopes: Iterable[str]) -> list[str]:
    """Return the scopes in canonical order, or raise ``ScopeError`` naming unknown ones."""
    wanted = {s.strip() for s in scopes if s and s.strip()}
    unknown = sorted(wanted - set(SCOPES))
    if unknown:
        raise ScopeError(f"unknown scope(s) {', '.join(unknown)}; known: {', '.join(SCOPES)}")
    return [s for s in SCOPES if s in wanted]


def create_api_key(
    name: str,
    *,
    scopes: Iterable[str],
    tenant: str = "",
    pipelines: Iterable[str] = (),
    rate_limit: int | None = None,
    created_by: str = "",
) -> tuple[ApiKey, str]:
    """Mint a key. Returns the row and the raw key, which is shown once and never stored."""
    key = ApiKey(
        name=name,
        tenant=tenant,
        scopes=check_scopes(scopes),
        pipelines=sorted({p.strip() for p in pipelines if p.strip()}),
        rate_limit=rate_limit,
        created_by=created_by,
    )
    return key, assign_new_secret(key)


def assign_new_secret(key: ApiKey) -> str:
    """Give ``key`` a fresh secret (a new key), save it, and return the raw key.

    A rotated key keeps its prefix: runs, events and decisions name their actor as
    ``api:<prefix>``, and completion webhooks find their signing secret through it.
    """
    while not key.prefix:
        prefix = f"sk_{secrets.token_hex(PREFIX_LEN // 2)}"
        if not ApiKey.objects.filter(prefix=prefix).exists():
            key.prefix = prefix
    raw = f"{key.prefix}.{secrets.token_urlsafe(32)}"
    key.key_hash = hash_key(raw)
    if not key.webhook_secret:
        key.webhook_secret = f"whsec_{secrets.token_urlsafe(32)}"
    key.save()
    return raw


# SHA-256 of a presented key -> (when to look again, the key as found then).
_found: dict[str, tuple[float, ApiKey]] = {}
# Key id -> when this process last wrote its last_used_at (monotonic()).
_used_noted: dict[int, float] = {}
LAST_USED_EVERY = 60.0


def find_key(raw: str | None) -> ApiKey | None:
    """The active key ``raw`` stands for, or None. Compares hashes in constant time.

    A key found is remembered for ``SLUICE_API_KEY_CACHE_SECONDS`` (see the module's docstring);
    the caller gets a copy of its own.
    """
    # A NUL cannot be in a key we minted, and PostgreSQL refuses it in a query (a 500).
    if not raw or "." not in raw or len(raw) > 200 or "\x00" in raw:
        return None
    digest = hash_key(raw)
    now = monotonic()
    hit = _found.get(digest)
    if hit is not None and now < hit[0]:
        return copy.copy(hit[1])
    prefix = raw.split(".", 1)[0]
    key = ApiKey.objects.filter(prefix=prefix, is_active=True).first()
    if key is None or not hmac.compare_digest(key.key_hash, digest):
        _found.pop(digest, None)
        return None
    ttl = float(settings.SLUICE_API_KEY_CACHE_SECONDS)
    if ttl > 0:
        if len(_found) >= 10_000:  # many keys, or many rotations: start over
            _found.clear()
        _found[digest] = (now + ttl, copy.copy(key))
    return key


def forget_keys() -> None:
    """Drop every key this process remembers (a key changed; tests), and its claims."""
    _found.clear()
    _used_noted.clear()
    _windows.forget()


@receiver(post_save, sender=ApiKey)
@receiver(post_delete, sender=ApiKey)
def _key_changed(sender: Any, **kwargs: Any) -> None:
    # Other processes see the change when their copy expires; this one at once, and once more
    # when the change commits (a request in between may have remembered the row before it).
    _found.clear()
    transaction.on_commit(_found.clear)


class KeyGone(Exception):
    """The key's row is gone: deleted since this process remembered the key."""


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    limit: int
    retry_after: int  # whole seconds until the window resets (0 when allowed)


def limit_for(key: ApiKey) -> int:
    return key.rate_limit if key.rate_limit is not None else int(settings.SLUICE_API_RATE_LIMIT)


def take_request(key: ApiKey, now: datetime | None = None) -> RateDecision:
    """Count one request against the key's fixed window; refuse it when the window is spent.

    In Redis when the broker is Redis, else on the key's row (``take_request_in_row``).
    """
    now = now or timezone.now()
    limit = limit_for(key)
    if limit <= 0:  # 0 means unlimited; still note when the key was used.
        _note_use(key, now)
        return RateDecision(True, 0, 0)
    conn = broker.client()
    if conn is not None:
        try:
            decision = _windows.take(conn, key, limit)
        except redis.RedisError as exc:
            broker.failed(exc)  # the row counts until Redis answers again
        else:
            if decision.allowed:
                _note_use(key, now)
            return decision
    return take_request_in_row(key, now)


# Requests against a key's window, atomically (a script runs alone and sees one instant): the
# first INCRBY of a window creates its counter, which gets the period as its lifetime; any
# counter found without one (it cannot happen, but would lock the key out for good) gets it too.
# Returns the count including these requests and the window's milliseconds to go.
_TAKE = """
local n = redis.call('INCRBY', KEYS[1], ARGV[2])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {n, ttl}
"""
# A key with a limit this large claims 1/CLAIM_SHARE of it at a time (at most CLAIM_MAX).
CLAIM_SHARE = 1000
CLAIM_MAX = 100


def window_name(key: ApiKey) -> str:
    """The Redis counter of the key's window. Named by the key's prefix, which no other key
    ever has and rotation keeps (a new secret is not a new allowance)."""
    return f"sluice:ratelimit:{key.prefix}"


@dataclass
class _Claim:
    left: int
    until: float  # monotonic(): when the window the requests were claimed from ends


class RedisWindows:
    """The row's fixed window, kept in Redis: it opens at the key's first request and lasts
    ``SLUICE_API_RATE_PERIOD`` (the counter expires with it). One per process.

    A key whose limit is below ``CLAIM_SHARE`` × 2 counts each request in Redis: exact. A
    busier key's process claims ``limit // CLAIM_SHARE`` requests (at most ``CLAIM_MAX``) in one
    call and spends them without asking again until they run out or the window ends: the key
    still never gets more than its limit, but may be refused up to (processes − 1) ×
    (claim − 1) requests early, 0.1 % of the limit per other process, when its last requests
    of a window find the other processes holding some of it. Only such keys pay one Redis round
    trip per claim instead of per request (W7: a round trip was ~0.3 ms of CPU under load).
    """

    def __init__(self) -> None:
        self._claims: dict[str, _Claim] = {}
        self._lock = threading.Lock()
        self._script: Any = None

    def take(self, conn: Any, key: ApiKey, limit: int) -> RateDecision:
        size = min(CLAIM_MAX, max(1, limit // CLAIM_SHARE))
        if size > 1:
            with self._lock:
                claim = self._claims.get(key.prefix)
                if claim is not None and claim.left > 0 and monotonic() < claim.until:
                    claim.left -= 1
                    return RateDecision(True, limit, 0)
        if self._script is None:
            self._script = conn.register_script(_TAKE)
        period_ms = max(1, round(float(settings.SLUICE_API_RATE_PERIOD) * 1000))
        count, ttl_ms = self._script(keys=[window_name(key)], args=[period_ms, size], client=conn)
        granted = min(size, limit - (int(count) - size))
        if granted <= 0:
            return RateDecision(False, limit, max(1, math.ceil(int(ttl_ms) / 1000)))
        if granted > 1:
            until = monotonic() + int(ttl_ms) / 1000
            with self._lock:
                claim = self._claims.get(key.prefix)
                if claim is not None and monotonic() < claim.until:  # another thread's
                    claim.left += granted - 1
                else:
                    self._claims[key.prefix] = _Claim(granted - 1, until)
        return RateDecision(True, limit, 0)

    def forget(self) -> None:
        with self._lock:
            self._claims.clear()


_windows = RedisWindows()


def _note_use(key: ApiKey, now: datetime) -> None:
    """Write ``last_used_at`` if this process has not for a minute."""
    tick = monotonic()
    noted = _used_noted.get(key.pk)
    if noted is not None and tick - noted < LAST_USED_EVERY:
        return
    _used_noted[key.pk] = tick
    ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)


def take_request_in_row(key: ApiKey, now: datetime | None = None) -> RateDecision:
    """``take_request`` on the key's row, where there is no Redis.

    One conditional ``UPDATE`` (atomic on the row, on SQLite too): if the row's window is over,
    start a new one counting this request; otherwise add one to the count if it is below the
    limit. If it touched no row the window is spent: refuse, saying when it resets (or the row
    is gone: ``KeyGone``, which the API answers as an unknown key). It reads
    nothing from ``key`` but its id and limit, so a remembered copy of the key does as well as
    a fresh one.
    """
    now = now or timezone.now()
    limit = limit_for(key)
    if limit <= 0:  # 0 means unlimited; still note when the key was used.
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
        return RateDecision(True, 0, 0)
    period = timedelta(seconds=float(settings.SLUICE_API_RATE_PERIOD))
    over = Q(window_start__isnull=True) | Q(window_start__lte=now - period)
    if ApiKey.objects.filter(over | Q(window_count__lt=limit), pk=key.pk).update(
        window_start=Case(
            When(over, then=Value(now, output_field=DateTimeField())),
            default=F("window_start"),
        ),
        window_count=Case(When(over, then=Value(1)), default=F("window_count") + 1),
        last_used_at=now,
    ):
        return RateDecision(True, limit, 0)
    start = ApiKey.objects.filter(pk=key.pk).values_list("window_start", flat=True).first()
    if start is None:  # no row: the UPDATE above matches any row whose window has no start
        _found.clear()
        raise KeyGone(key.prefix)
    return RateDecision(False, limit, max(1, math.ceil((start + period - now).total_seconds())))
