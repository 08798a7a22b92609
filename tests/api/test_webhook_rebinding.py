"""Webhook DNS rebinding: the address that was checked is the address that gets the request.

The callback host is a name only the test's resolver knows. Its first answer is a "public"
address (127.0.0.2, counted as public through ``SLUICE_WEBHOOK_TREAT_AS_PUBLIC`` so traffic
stays on loopback); every later answer is 127.0.0.1, as a rebinding DNS server would give to
the HTTP client's second look-up. A second receiver on 127.0.0.1 must never be contacted.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.api.conftest import Api, Persona
from tests.api.receiver import receiver
from tests.support import Bell
from workflows.core.outbox import deliver_due
from workflows.models import WebhookDelivery
from workflows.webhooks import CallbackUrlError, check_callback_url, pinned_request

pytestmark = pytest.mark.django_db(transaction=True)

HOST = "hooks.example.test"
PUBLIC = "127.0.0.2"


class RebindingResolver:
    """Answers ``HOST`` with ``answers[0]`` first, then ``answers[1]`` forever after."""

    def __init__(self, *answers: list[str]) -> None:
        self.answers = answers
        self.lookups: list[str] = []
        self.real = socket.getaddrinfo

    def __call__(self, host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != HOST:
            return self.real(host, port, *args, **kwargs)
        self.lookups.append(host)
        answer = self.answers[min(len(self.lookups), len(self.answers)) - 1]
        return [
            (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (ip, int(port)))
            for ip in answer
        ]


@pytest.fixture
def guarded(settings: Any) -> None:
    """The production guard, with 127.0.0.2 standing in for a public address."""
    settings.SLUICE_WEBHOOK_ALLOW_PRIVATE = False
    settings.SLUICE_WEBHOOK_TREAT_AS_PUBLIC = [f"{PUBLIC}/32"]


def _install(monkeypatch: pytest.MonkeyPatch, resolver: RebindingResolver) -> None:
    # Both the guard's hook and the socket module: whichever the HTTP client would use to look
    # the name up again answers 127.0.0.1.
    monkeypatch.setattr("workflows.webhooks._getaddrinfo", resolver)
    monkeypatch.setattr(socket, "getaddrinfo", resolver)


def _start(api: Api, service: Persona, url: str) -> None:
    r = api.post(
        "/runs", {"pipeline": "test.chain", "input": {"n": 2}, "callback_url": url}, as_=service
    )
    assert r.status_code == 201, r.content


def test_it_delivers_to_the_checked_address_when_dns_rebinds(
    api: Api, service: Persona, bell: Bell, guarded: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    with receiver(host=PUBLIC) as public, receiver(host="127.0.0.1", port=public.port) as inside:
        _install(monkeypatch, RebindingResolver([PUBLIC], ["127.0.0.1"]))
        resolver = socket.getaddrinfo
        assert isinstance(resolver, RebindingResolver)
        _start(api, service, f"http://{HOST}:{public.port}/hooks/sluice")
        bell.drain()
        assert deliver_due() == 1
    assert inside.requests == [], "the request followed the second DNS answer to 127.0.0.1"
    (req,) = public.requests
    assert req.headers["Host"] == f"{HOST}:{public.port}"
    assert req.path == "/hooks/sluice"
    assert resolver.lookups == [HOST]  # resolved once, by the guard; never by the client
    delivery = WebhookDelivery.objects.get()
    assert delivery.status == "delivered"


def test_it_refuses_a_name_with_any_private_address(
    api: Api, service: Persona, bell: Bell, guarded: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    with receiver(host=PUBLIC) as public, receiver(host="127.0.0.1", port=public.port) as inside:
        _install(monkeypatch, RebindingResolver([PUBLIC, "127.0.0.1"]))
        _start(api, service, f"http://{HOST}:{public.port}/hooks/sluice")
        bell.drain()
        deliver_due()
    assert public.requests == [] and inside.requests == []
    delivery = WebhookDelivery.objects.get()
    assert delivery.status == "refused"
    assert "127.0.0.1" in delivery.attempt_log.get().error


def test_the_treat_as_public_list_is_the_only_exception(guarded: None) -> None:
    assert check_callback_url(f"http://{PUBLIC}/x").addresses == (PUBLIC,)
    with pytest.raises(CallbackUrlError):
        check_callback_url("http://127.0.0.3/x")
    with pytest.raises(CallbackUrlError):
        check_callback_url("http://[::ffff:127.0.0.1]/x")


@pytest.mark.parametrize(
    "url",
    [
        "http://100.100.100.200/latest/meta-data/",  # carrier-grade NAT: a metadata service
        "http://100.64.0.1/",
        "http://[2002:a9fe:a9fe::]/",  # 169.254.169.254 inside 6to4
        "http://[2002:7f00:1::]/",  # 127.0.0.1 inside 6to4
        "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/",  # Teredo to 127.0.0.1
        "http://[64:ff9b::7f00:1]/",  # NAT64 to 127.0.0.1
        "http://2130706433/",  # 127.0.0.1 as one number
        "http://0x7f000001/",
        "http://0177.0.0.1/",
        "http://127.1/",
        "http://localhost./",
        "http://ok.example/\x7f",
        "http://ok.example/a b",
    ],
)
def test_the_guard_refuses_inside_addresses_however_they_are_written(
    guarded: None, url: str
) -> None:
    """Found by review: each of these was accepted when a run started."""
    with pytest.raises(CallbackUrlError):
        check_callback_url(url)


def test_an_international_host_name_is_checked_and_sent_in_its_ascii_form(
    api: Api, service: Persona, bell: Bell, guarded: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It was accepted, then every attempt failed before a request was made, unrecorded, and
    the delivery stayed pending for ever."""
    name = "bücher.example"
    ascii_name = name.encode("idna").decode()
    seen: list[str] = []
    real = socket.getaddrinfo

    def resolver(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host == ascii_name:
            seen.append(host)
            return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (PUBLIC, port))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr("workflows.webhooks._getaddrinfo", resolver)
    assert check_callback_url(f"http://{name}/x").host == ascii_name
    # IDNA 2008, as the HTTP client: "straße" is not "strasse" (another registrant)
    assert check_callback_url("http://straße.de/x").host == "xn--strae-oqa.de"
    with receiver(host=PUBLIC) as public:
        _start(api, service, f"http://{name}:{public.port}/hooks")
        bell.drain()
        deliver_due()
    assert seen and len(public.requests) == 1
    headers = {k.lower(): v for k, v in public.requests[0].headers.items()}
    assert headers["host"] == f"{ascii_name}:{public.port}"
    assert WebhookDelivery.objects.get().status == "delivered"


def test_a_pinned_https_request_keeps_the_host_name_for_sni() -> None:
    from workflows.webhooks import Target

    target = Target(url=f"https://{HOST}/a?b=1", scheme="https", host=HOST, port=443)
    url, headers, extensions = pinned_request(target, "2001:db8::1")
    assert url == "https://[2001:db8::1]:443/a?b=1"
    assert headers == {"Host": HOST}
    assert extensions == {"sni_hostname": HOST}


@pytest.fixture
def certificate(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A self-signed certificate valid for ``HOST`` only (not for any IP address)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(cert), "-subj", f"/CN={HOST}",
            "-addext", f"subjectAltName=DNS:{HOST}",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    yield cert, key


def test_it_verifies_tls_against_the_host_name_on_the_pinned_address(
    api: Api,
    service: Persona,
    bell: Bell,
    guarded: None,
    monkeypatch: pytest.MonkeyPatch,
    certificate: tuple[Path, Path],
) -> None:
    cert, key = certificate
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    client = ssl.create_default_context(cafile=str(cert))
    monkeypatch.setattr("workflows.webhooks._tls_verify", lambda: client)
    with receiver(host=PUBLIC, tls=server) as public:
        _install(monkeypatch, RebindingResolver([PUBLIC], ["127.0.0.1"]))
        _start(api, service, f"https://{HOST}:{public.port}/hooks/sluice")
        bell.drain()
        assert deliver_due() == 1
    (req,) = public.requests
    assert req.headers["Host"] == f"{HOST}:{public.port}"
    assert WebhookDelivery.objects.get().status == "delivered"
