"""Completion webhooks: POST a run's summary to its ``callback_url`` when it ends.

1. ``run_finished`` is sent inside the transaction that ends the run. The receiver below writes
   a ``WebhookDelivery`` (the body, fixed now) and an outbox row keyed by the delivery id, so
   both commit or roll back with the run's own terminal state: a webhook is never announced
   for a run that did not end, nor lost for one that did.
2. After commit a Celery task tries it at once (low latency); the ``workflows.deliver_outbox``
   beat task picks up whatever that missed. The outbox claims a row by compare-and-swap, so
   the two never send the same attempt twice at once.
3. ``deliver`` signs the body (``Sluice-Signature``: HMAC-SHA256 of timestamp and body with the
   starting key's secret; never the default secret for a run whose key has been deleted:
   that delivery fails), sends it with ``Idempotency-Key`` = the delivery id, and records
   the attempt. A non-2xx answer or a network error raises, and the outbox retries with
   backoff and jitter for up to 24 hours.
4. Before each attempt the callback host is resolved once and every address checked; the
   request then goes to a checked address (Host header and TLS name kept), so a DNS answer
   that changes after the check (rebinding) cannot send it into the private network.
"""

from __future__ import annotations

import asyncio
import codecs
import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import ssl
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

import httpx
from celery import shared_task
from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from workflows.core import clock, outbox
from workflows.core.calls import storable_text
from workflows.core.doorbell import send_tasks
from workflows.core.payloads import stored
from workflows.core.signals import run_finished
from workflows.coroutines import run_coroutine
from workflows.models import (
    ApiKey,
    Outbox,
    OutboxStatus,
    Run,
    WebhookAttempt,
    WebhookDelivery,
    WebhookStatus,
)
from workflows.timefmt import api_datetime

log = logging.getLogger(__name__)

KIND = "webhook"
EVENT = "run.finished"
SIGNATURE_HEADER = "Sluice-Signature"
USER_AGENT = "Sluice-Webhooks/1"


class CallbackUrlError(ValueError):
    """A callback URL Sluice will not call."""


class UnresolvedHostError(CallbackUrlError):
    """The callback's host name did not resolve, this time. Refused when a URL is given (a
    start's ``callback_url``); at delivery, an attempt that failed and is tried again later (a
    resolver's hiccup must not drop a webhook for good)."""


class WebhookFailed(Exception):
    """The receiver did not answer 2xx; the outbox retries."""


# --- which URLs may be called -----------------------------------------------------------------


def _embedded(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> list[Any]:
    """``ip`` and the IPv4 addresses an IPv6 address carries (mapped, 6to4, Teredo's server
    and client): a route to any of them is a route inside."""
    found: list[Any] = [ip]
    if isinstance(ip, ipaddress.IPv6Address):
        found += [a for a in (ip.ipv4_mapped, ip.sixtofour) if a is not None]
        if ip.teredo is not None:
            found += list(ip.teredo)
        if ip in _NAT64:  # the well-known NAT64 prefix: the IPv4 address is its last 32 bits
            found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return found


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def _blocked_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    # Not globally routable: private, loopback, link-local, reserved, and the shared address
    # space of carrier-grade NAT (100.64.0.0/10: tailnets, a cloud's metadata service), which
    # is_private leaves out.
    return any(not a.is_global or a.is_multicast or a.is_unspecified for a in _embedded(ip))


def _counted_as_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """``SLUICE_WEBHOOK_TREAT_AS_PUBLIC``: networks the guard treats as public (tests serve a
    "public" receiver on 127.0.0.2 this way, so their traffic stays on loopback)."""
    for network in settings.SLUICE_WEBHOOK_TREAT_AS_PUBLIC:
        try:
            if ip in ipaddress.ip_network(network, strict=False):
                return True
        except (ValueError, TypeError):
            continue
    return False


def _refused(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return _blocked_address(ip) and not _counted_as_public(ip)


def _ipv4_numeric(host: str) -> ipaddress.IPv4Address | None:
    """An IPv4 address written the other ways resolvers read it (``2130706433``,
    ``0x7f000001``, ``0177.0.0.1``, ``127.1``), as WHATWG URL parsing and inet_aton do."""
    if not host or not all(c.isalnum() or c == "." for c in host):
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


@dataclass(frozen=True)
class Target:
    """Where a delivery goes: the URL as given, and the addresses checked for it.

    ``addresses`` is empty when the host is not pinned (``SLUICE_WEBHOOK_ALLOW_PRIVATE``
    without ``resolve``). A literal IP host is its own single address.
    """

    url: str
    scheme: str
    host: str
    port: int
    addresses: tuple[str, ...] = ()


# The resolver, one name so tests can answer for host names that do not exist.
_getaddrinfo = socket.getaddrinfo


def check_callback_url(url: str, *, resolve: bool = False) -> Target:
    """Raise ``CallbackUrlError`` unless ``url`` is an http(s) URL Sluice may call.

    Loopback, private, link-local and reserved addresses are refused unless
    ``SLUICE_WEBHOOK_ALLOW_PRIVATE``. With ``resolve`` the host name is looked up once and every
    address it resolves to must pass: that is what delivery does, right before each attempt,
    and it then connects to one of exactly those addresses (``Target.addresses``), so a DNS
    answer that changes between the check and the connection cannot point it elsewhere.
    """
    if len(url) > 2000:
        raise CallbackUrlError("callback_url is longer than 2000 characters")
    if any(ord(c) < 0x21 or 0x7F <= ord(c) <= 0x9F for c in url):
        raise CallbackUrlError("callback_url contains spaces or control characters")
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
        # The host as it goes on the wire (Host header, TLS name, DNS): its ASCII form as the
        # HTTP client computes it (IDNA 2008: "straße.de" is not "strasse.de").
        wire = httpx.URL(url)  # also refuses what the client could not send
        if not host.isascii():
            host = wire.raw_host.decode("ascii")
    except (ValueError, UnicodeError, httpx.InvalidURL) as exc:
        raise CallbackUrlError(f"callback_url is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise CallbackUrlError("callback_url must be an http or https URL")
    if not host:
        raise CallbackUrlError("callback_url has no host")
    if parts.username or parts.password:
        raise CallbackUrlError("callback_url must not carry credentials")
    port = port or (443 if parts.scheme == "https" else 80)
    target = Target(url=url, scheme=parts.scheme, host=host, port=port)
    allow_private = bool(settings.SLUICE_WEBHOOK_ALLOW_PRIVATE)
    bare = host.rstrip(".")
    if not allow_private and (bare == "localhost" or bare.endswith(".localhost")):
        raise CallbackUrlError(f"callback_url host {host!r} is a loopback name")
    try:
        literal: Any = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    numeric = _ipv4_numeric(bare) if literal is None else None
    if numeric is not None and not allow_private and _refused(numeric):
        raise CallbackUrlError(
            f"callback_url host {host!r} is the address {numeric}, loopback, private or reserved"
        )
    if literal is not None:
        if not allow_private and _refused(literal):
            raise CallbackUrlError(f"callback_url address {host} is loopback, private or reserved")
        return Target(url=url, scheme=parts.scheme, host=host, port=port, addresses=(host,))
    if not resolve:
        return target
    try:
        infos = _getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except UnicodeError as exc:
        raise CallbackUrlError(f"callback_url host {host!r} does not resolve: {exc}") from None
    except OSError as exc:
        raise UnresolvedHostError(f"callback_url host {host!r} does not resolve: {exc}") from None
    addresses: list[str] = []
    for info in infos:
        text = str(info[4][0]).split("%", 1)[0]
        address = ipaddress.ip_address(text)
        if not allow_private and _refused(address):
            raise CallbackUrlError(
                f"callback_url host {host!r} resolves to {address}, a loopback, private or "
                "reserved address"
            )
        if text not in addresses:
            addresses.append(text)
    if not addresses:
        raise UnresolvedHostError(f"callback_url host {host!r} does not resolve")
    return Target(url=url, scheme=parts.scheme, host=host, port=port, addresses=tuple(addresses))


def pinned_request(target: Target, address: str) -> tuple[str, dict[str, str], dict[str, Any]]:
    """The URL, extra headers and httpx extensions that send a request for ``target`` to
    ``address`` (one it was checked with), as if the host name had resolved to it.

    The URL names the address, so the HTTP client does not resolve anything; the ``Host``
    header and the TLS server name (SNI, and the name the certificate is verified against)
    stay the original host name.
    """
    parts = urlsplit(target.url)
    ip = ipaddress.ip_address(address)
    netloc = f"[{address}]" if ip.version == 6 else address
    default_port = 443 if target.scheme == "https" else 80
    netloc += f":{target.port}"
    url = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
    host_header = f"[{target.host}]" if ":" in target.host else target.host
    if target.port != default_port:
        host_header += f":{target.port}"
    extensions: dict[str, Any] = {}
    if target.scheme == "https":
        extensions["sni_hostname"] = target.host
    return url, {"Host": host_header}, extensions


# At most this much of a receiver's answer is read (and kept, as the attempt's excerpt).
EXCERPT_BYTES = 500


@dataclass(frozen=True)
class Answer:
    """What a receiver answered: its status and the start of its body."""

    status_code: int
    excerpt: str


def _post(target: Target, body: bytes, headers: dict[str, str]) -> Answer:
    """POST to the checked addresses of ``target`` in turn, never resolving the host again.

    ``SLUICE_WEBHOOK_TIMEOUT`` bounds the whole attempt, from the first connect to the last
    byte read: httpx's own timeouts are per read, so a receiver dripping its status line and
    headers a byte at a time held the attempt (and the worker) for as long as it liked, past
    the delivery's claim, and the row was sent a second time meanwhile. Only a failure to
    connect (refused, or timed out: a firewall that drops) moves on to the next address, as a
    client does when a name has several, each with its share of the time; any other error,
    or an answer, ends the attempt. The status decides the attempt; of the body only
    ``EXCERPT_BYTES`` are read, uncompressed (``Accept-Encoding: identity``), and only while
    time is left: a receiver answering with gigabytes, or a small gzip that inflates to them,
    holds neither the worker's memory nor the delivery's claim.
    """
    # Never longer than the outbox row's claim: an attempt that outlived it could be sent a
    # second time, at once, by the deliverer that took the row over.
    timeout = min(float(settings.SLUICE_WEBHOOK_TIMEOUT), max(1.0, 0.8 * outbox.claim_seconds()))
    return run_coroutine(
        lambda: _post_within(target, body, headers, timeout), thread_name="sluice-webhook"
    )


async def _post_within(
    target: Target, body: bytes, headers: dict[str, str], timeout: float
) -> Answer:
    deadline = time.monotonic() + timeout
    headers = {**headers, "Accept-Encoding": "identity"}
    addresses: tuple[str | None, ...] = target.addresses or (None,)
    # trust_env=False: an HTTP(S)_PROXY from the environment would resolve the name itself.
    async with httpx.AsyncClient(
        timeout=httpx.Timeout(timeout, connect=max(0.5, timeout / len(addresses))),
        follow_redirects=False,
        trust_env=False,
        verify=_tls_verify(),
    ) as client:
        last: Exception | None = None
        for address in addresses:
            if address is None:
                request = client.build_request("POST", target.url, content=body, headers=headers)
            else:
                url, extra, extensions = pinned_request(target, address)
                request = client.build_request(
                    "POST", url, content=body, headers={**headers, **extra}, extensions=extensions
                )
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                response = await asyncio.wait_for(client.send(request, stream=True), left)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                last = exc
                continue
            except TimeoutError:
                raise httpx.ReadTimeout(
                    f"no answer (status line and headers) within {timeout:g}s"
                ) from None
            return await _answer(response, deadline)
        if last is None:
            raise httpx.ConnectTimeout(f"no address answered within {timeout:g}s")
        raise last


async def _answer(response: httpx.Response, deadline: float) -> Answer:
    """The status and excerpt of a streamed ``response``, which this closes."""
    data = bytearray()
    chunks = response.aiter_raw()
    try:
        while len(data) < EXCERPT_BYTES:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                data += await asyncio.wait_for(anext(chunks), left)
            except (StopAsyncIteration, TimeoutError):
                break
    except httpx.HTTPError:
        pass  # the status arrived; a body cut off or too slow only shortens the excerpt
    finally:
        await response.aclose()
    try:
        codec = codecs.lookup(response.charset_encoding or "utf-8")
    except LookupError:
        codec = codecs.lookup("utf-8")
    # A codec that is no text encoding (``charset=base64``) would fail the decode below.
    encoding = codec.name if getattr(codec, "_is_text_encoding", True) else "utf-8"
    text = bytes(data[:EXCERPT_BYTES]).decode(encoding, errors="replace")
    return Answer(response.status_code, text)


def _tls_verify() -> ssl.SSLContext | bool:
    """Certificate verification for webhook receivers (a hook so tests can trust their CA)."""
    return True


# --- signing ----------------------------------------------------------------------------------


def default_secret() -> str:
    """The secret for runs started without an API key."""
    if settings.SLUICE_WEBHOOK_SECRET:
        return str(settings.SLUICE_WEBHOOK_SECRET)
    return hmac.new(settings.SECRET_KEY.encode(), b"sluice-webhooks", hashlib.sha256).hexdigest()


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``Sluice-Signature`` value: ``t=<unix seconds>,v1=<hex HMAC-SHA256>``.

    The MAC covers ``f"{t}." + body``, so a receiver can refuse replays of old bodies.
    """
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(
    secret: str, header: str, body: bytes, *, tolerance: float = 300, now: float | None = None
) -> bool:
    """Check a ``Sluice-Signature`` header (what a receiver does; see docs/api.md)."""
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        timestamp = int(fields["t"])
    except (ValueError, KeyError):
        return False
    if abs((now if now is not None else time.time()) - timestamp) > tolerance:
        return False
    expected = sign(secret, timestamp, body)
    # As bytes: compare_digest raises a TypeError for a str that is not ASCII (a forged
    # ``v1=é``), which would make a receiver answer 500 instead of refusing the request.
    given = f"t={timestamp},v1={fields.get('v1', '')}".encode("utf-8", "surrogatepass")
    return hmac.compare_digest(expected.encode(), given)


# --- enqueueing -------------------------------------------------------------------------------


def run_summary(run: Run) -> dict[str, Any]:
    """The run as a webhook body shows it (large outputs as a link, like the API)."""
    output, blob_id = stored(run.output)
    output_url = f"/api/runs/{run.pk}/values/{blob_id}" if blob_id is not None else None
    return {
        "id": str(run.pk),
        "pipeline": run.workflow,
        "version": run.version,
        "status": run.status,
        "generation": run.generation,
        "output": output,
        "output_url": output_url,
        "error": run.error,
        "cost": float(run.cost or 0),
        "created_at": api_datetime(run.created_at),
        "started_at": api_datetime(run.started_at),
        "finished_at": api_datetime(run.finished_at),
        "url": f"/api/runs/{run.pk}",
    }


def key_prefix(created_by: str) -> str | None:
    """The prefix of the API key that started a run (``created_by`` is ``api:<prefix>``), or
    None for a run started without a key (from the web, from Python)."""
    return created_by[4:] if created_by.startswith("api:") else None


def key_for_run(run: Run) -> ApiKey | None:
    """The API key that started ``run``, if any and if it still exists."""
    prefix = key_prefix(run.created_by)
    return ApiKey.objects.filter(prefix=prefix).first() if prefix is not None else None


KEY_DELETED = "the API key that started this run was deleted; its webhook secret is gone"


def signing_secret(delivery: WebhookDelivery) -> str | None:
    """The secret that signs ``delivery``: its run's API key's, or the default secret for a run
    started without a key. None when the run was started by a key that has since been deleted
    (``WebhookDelivery.api_key`` is then null): the default secret never stands in for it, as
    the service's receiver would refuse the body, and the tenant would hold bodies signed with
    the secret that authenticates the webhooks of every run started without a key."""
    if delivery.api_key is not None:
        return delivery.api_key.webhook_secret
    created_by = Run.objects.filter(pk=delivery.run_id).values_list("created_by", flat=True)
    prefix = key_prefix(created_by.first() or "")
    if prefix is None:
        return default_secret()
    key = ApiKey.objects.filter(prefix=prefix).only("webhook_secret").first()
    return key.webhook_secret if key is not None else None


def enqueue_webhook(run: Run) -> WebhookDelivery | None:
    """Write the delivery and its outbox row. Call inside the run's terminal transaction."""
    if not run.callback_url:
        return None
    from workflows.core.services import enqueue_outbox

    delivery = WebhookDelivery(run=run, api_key=key_for_run(run), url=run.callback_url, event=EVENT)
    delivery.payload = {
        "id": str(delivery.id),
        "type": EVENT,
        "created_at": api_datetime(timezone.now()),
        "run": run_summary(run),
    }
    delivery.save(force_insert=True)
    row = enqueue_outbox(KIND, str(delivery.id), {"delivery": str(delivery.id)}, run=run)
    if settings.SLUICE_WEBHOOK_DISPATCH_ON_COMMIT:
        transaction.on_commit(lambda: dispatch(row.pk))
    return delivery


def _wants_webhook(run: Run, status: str) -> bool:
    """A completion webhook goes out for every end of a run that has a callback URL."""
    return bool(run.callback_url)


def _on_run_finished(sender: Any, run: Run, **kwargs: Any) -> None:
    if not _wants_webhook(run, run.status):
        return
    # A savepoint: a webhook that cannot be written is logged, and the run still ends.
    try:
        with transaction.atomic():
            enqueue_webhook(run)
    except Exception:
        log.exception("could not enqueue the completion webhook of run %s", run.pk)


def dispatch(outbox_id: int) -> None:
    """Ask a worker to try this row now. The beat delivers it anyway if the message is lost."""
    # The engine's doorbell path: one LPUSH on Redis with a 1 s timeout, never Celery's 30 s
    # on a broker that accepts and does not answer (a web worker held for each delivery).
    try:
        send_tasks([(DELIVER_WEBHOOK, [outbox_id], "default")])
    except Exception as exc:
        log.warning("could not dispatch webhook outbox row %s; the beat will: %s", outbox_id, exc)


DELIVER_WEBHOOK = "workflows.deliver_webhook"


@shared_task(name=DELIVER_WEBHOOK, ignore_result=True)
def deliver_webhook_task(outbox_id: int) -> bool:
    row = Outbox.objects.filter(pk=outbox_id, kind=KIND, status=OutboxStatus.PENDING).first()
    return outbox.deliver_one(row) if row is not None else False


# --- delivering -------------------------------------------------------------------------------


def encode_body(payload: dict[str, Any]) -> bytes:
    """The exact bytes sent: the same on every attempt, so the signature covers one body."""
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()


def _record(
    delivery: WebhookDelivery,
    number: int,
    started: datetime,
    *,
    status_code: int | None,
    latency_ms: float | None,
    error: str = "",
    excerpt: str = "",
    succeeded: bool = False,
    final: str | None = None,
) -> None:
    WebhookAttempt.objects.create(
        delivery=delivery,
        number=number,
        started_at=started,
        status_code=status_code,
        latency_ms=latency_ms,
        error=storable_text(error[:2000]),
        # The receiver's words: a NUL in them (PostgreSQL refuses it in text) is escaped.
        response_excerpt=storable_text(excerpt[:500]),
        succeeded=succeeded,
    )
    fields: dict[str, Any] = {
        "attempts": F("attempts") + 1,
        "last_status_code": status_code,
        "last_error": storable_text(error[:2000]),
    }
    if final is not None:
        fields["status"] = final
        if final == WebhookStatus.DELIVERED:
            fields["delivered_at"] = timezone.now()
    # Only a pending delivery changes: a late duplicate attempt cannot undo a recorded success.
    WebhookDelivery.objects.filter(pk=delivery.pk, status=WebhookStatus.PENDING).update(**fields)


def deliver(row: Outbox) -> None:
    """The outbox handler for ``webhook`` rows: one attempt. Raises to ask for a retry."""
    delivery = WebhookDelivery.objects.select_related("api_key").filter(pk=row.key).first()
    if delivery is None or delivery.status != WebhookStatus.PENDING:
        return  # Deleted with its run, or already settled: nothing to send.
    number = row.attempts
    started = timezone.now()
    secret = signing_secret(delivery)
    if secret is None:
        # Never sent, for good: nothing left can sign it as its receiver expects.
        log.warning("webhook %s not sent: %s", delivery.pk, KEY_DELETED)
        _record(
            delivery,
            number,
            started,
            status_code=None,
            latency_ms=None,
            error=KEY_DELETED,
            final=WebhookStatus.FAILED,
        )
        return
    try:
        target = check_callback_url(delivery.url, resolve=True)
    except UnresolvedHostError as exc:
        # Not a refusal: a resolver's hiccup, or a name whose records are being moved. The
        # attempt is recorded and tried again with the outbox's backoff.
        _failed(delivery, row, number, started, exc, latency_ms=None)
    except CallbackUrlError as exc:
        _record(
            delivery,
            number,
            started,
            status_code=None,
            latency_ms=None,
            error=f"refused: {exc}",
            final=WebhookStatus.REFUSED,
        )
        return
    body = encode_body(delivery.payload)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "Idempotency-Key": str(delivery.id),
        "Sluice-Delivery": str(delivery.id),
        "Sluice-Event": delivery.event,
        SIGNATURE_HEADER: sign(secret, int(time.time()), body),
    }
    t0 = time.perf_counter()
    try:
        response = _post(target, body, headers)
    except Exception as exc:
        # Any failure is an attempt, recorded as such (an HTTP error, and what the client
        # refused before sending: a URL accepted before the guard got stricter, say).
        _failed(delivery, row, number, started, exc, (time.perf_counter() - t0) * 1000)
    latency = (time.perf_counter() - t0) * 1000
    excerpt = response.excerpt
    if 200 <= response.status_code < 300:
        _record(
            delivery,
            number,
            started,
            status_code=response.status_code,
            latency_ms=latency,
            excerpt=excerpt,
            succeeded=True,
            final=WebhookStatus.DELIVERED,
        )
        return
    error = f"HTTP {response.status_code}"
    _record(
        delivery,
        number,
        started,
        status_code=response.status_code,
        latency_ms=latency,
        error=error,
        excerpt=excerpt,
        final=_final_if_expired(row),
    )
    raise WebhookFailed(f"{error} from {delivery.url}")


def _failed(
    delivery: WebhookDelivery,
    row: Outbox,
    number: int,
    started: datetime,
    exc: Exception,
    latency_ms: float | None,
) -> NoReturn:
    """Record an attempt that got no answer, and ask the outbox to try again."""
    error = storable_text(f"{type(exc).__name__}: {exc}")[:2000]
    _record(
        delivery,
        number,
        started,
        status_code=None,
        latency_ms=latency_ms,
        error=error,
        final=_final_if_expired(row),
    )
    raise WebhookFailed(error) from None


def _final_if_expired(row: Outbox) -> str | None:
    """Mirror the outbox giving up (after ``outbox.MAX_AGE``) on the delivery row."""
    return WebhookStatus.FAILED if timezone.now() - row.created_at > outbox.MAX_AGE else None


def retry_now(delivery: WebhookDelivery) -> bool:
    """An operator's "retry now": make a pending, given-up or refused delivery due again.

    A delivery in the middle of an attempt (its outbox row claimed, the claim not run out) is
    left alone: clearing its claim let a second deliverer send it at the same time. A refused
    delivery's outbox row was settled (or since pruned): it is reopened, or written again, so
    that a URL refused by a rule that has changed since is tried once more."""
    now = clock.now()  # the outbox writes its claims on the database's clock
    free = Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now)
    with transaction.atomic():
        if (
            WebhookDelivery.objects.filter(pk=delivery.pk)
            .exclude(status=WebhookStatus.DELIVERED)
            .update(status=WebhookStatus.PENDING)
            == 0
        ):
            return False
        rows = Outbox.objects.filter(key=str(delivery.pk), kind=KIND)
        if not rows.exists():
            from workflows.core.services import enqueue_outbox

            enqueue_outbox(
                KIND, str(delivery.pk), {"delivery": str(delivery.pk)}, run=delivery.run, when=now
            )
            return True
        n = rows.filter(free).update(status=OutboxStatus.PENDING, next_attempt_at=now)
        if not n:
            transaction.set_rollback(True)  # mid-attempt: its own outcome decides
        return bool(n)


outbox.register_outbox_handler(KIND, deliver)
run_finished.connect(
    _on_run_finished, dispatch_uid="sluice-completion-webhooks", wants=_wants_webhook
)
