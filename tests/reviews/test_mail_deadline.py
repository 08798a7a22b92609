"""An e-mail attempt ends by its deadline: a mail server that answers a byte at a time never
trips ``EMAIL_TIMEOUT`` (a timeout per read), and an attempt that outlived its outbox row's
claim was sent a second time by the deliverer that took the row over."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.core import mail
from django.core.mail import EmailMessage

from workflows.mail import MailDeadline


class SMTPServer:
    """A minimal SMTP server on 127.0.0.1 (an ephemeral port). ``drip`` is the pause between
    the bytes of every reply: a server that is alive but slow."""

    def __init__(self, drip: float = 0.0) -> None:
        self.drip = drip
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received: list[bytes] = []
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def _reply(self, conn: socket.socket, line: bytes) -> None:
        for byte in line + b"\r\n":
            if self.stop.is_set():
                return
            conn.sendall(bytes([byte]))
            if self.drip:
                time.sleep(self.drip)

    def _session(self, conn: socket.socket) -> None:
        reader = conn.makefile("rb")
        try:
            self._reply(conn, b"220 fake ESMTP")
            data = False
            body: list[bytes] = []
            for line in reader:
                if data:
                    if line.rstrip(b"\r\n") == b".":
                        data = False
                        self.received.append(b"".join(body))
                        body = []
                        self._reply(conn, b"250 queued")
                    else:
                        body.append(line)
                    continue
                verb = line[:4].upper()
                if verb == b"DATA":
                    data = True
                    self._reply(conn, b"354 go on")
                elif verb == b"QUIT":
                    self._reply(conn, b"221 bye")
                    return
                else:
                    self._reply(conn, b"250 ok")
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


@pytest.fixture
def smtp_mailer(settings: Any) -> Iterator[Any]:
    servers: list[SMTPServer] = []

    def use(drip: float = 0.0, claim: float = 2.5) -> SMTPServer:
        server = SMTPServer(drip)
        servers.append(server)
        settings.SLUICE_OUTBOX_CLAIM_SECONDS = claim
        settings.MAILERS = {
            "default": {
                "BACKEND": "workflows.mail.SMTPBackend",
                "OPTIONS": {"host": "127.0.0.1", "port": server.port, "timeout": 1.0},
            }
        }
        return server

    yield use
    for server in servers:
        server.close()
    mail.mailers._mailers = {}  # type: ignore[attr-defined]


def message() -> EmailMessage:
    return EmailMessage("Gate open", "Please review.", "sluice@localhost", ["rev@example.com"])


def test_a_prompt_server_gets_the_message(smtp_mailer: Any) -> None:
    server = smtp_mailer()
    assert message().send() == 1
    assert len(server.received) == 1 and b"Please review." in server.received[0]


def test_a_dripping_server_is_cut_at_the_attempts_deadline(smtp_mailer: Any) -> None:
    """Each byte comes within EMAIL_TIMEOUT (1 s), so only the attempt's deadline ends it:
    80 % of a 2.5 s claim is 2 s."""
    server = smtp_mailer(drip=0.05)
    began = time.monotonic()
    with pytest.raises(MailDeadline, match="did not finish within 2s"):
        message().send()
    took = time.monotonic() - began
    assert 1.9 < took < 3.0, took
    assert server.received == []
