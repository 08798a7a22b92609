"""Django's SMTP backend with a deadline on the whole attempt (``EMAIL_URL=smtp://…``).

Mail leaves through the outbox, one attempt per claim of its row (``workflows.core.outbox``).
Django's SMTP backend only has ``EMAIL_TIMEOUT``, a timeout per socket operation: a mail server
that sends its greeting or its replies a byte at a time never trips it, so an attempt could
outlive its row's claim, and the deliverer that took the row over then sent the message a
second time beside it. This backend cuts the connection when the attempt's deadline passes
(at most 80 % of ``SLUICE_OUTBOX_CLAIM_SECONDS``, as a webhook's attempt is cut): the send
raises, and the outbox tries again later under a new claim.
"""

from __future__ import annotations

import smtplib
import socket
import threading
from collections.abc import Sequence
from typing import Any

from django.core.mail.backends import smtp

from workflows.core import outbox


class MailDeadline(smtplib.SMTPException):
    """The mail server did not finish the attempt before its deadline."""


def attempt_seconds() -> float:
    """How long one attempt may take: 80 % of the outbox claim (at least a second)."""
    return max(1.0, 0.8 * outbox.claim_seconds())


class _Watch:
    """The connections one attempt opened, and whether its deadline passed."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.conns: list[smtplib.SMTP] = []
        self.expired = False

    def add(self, conn: smtplib.SMTP) -> None:
        with self.lock:
            self.conns.append(conn)
            expired = self.expired
        if expired:
            raise MailDeadline("the attempt's deadline passed while connecting")

    def cut(self) -> None:
        """Shut every socket of the attempt: a read blocked on it returns at once."""
        with self.lock:
            self.expired = True
            conns = list(self.conns)
        for conn in conns:
            sock = getattr(conn, "sock", None)
            if sock is None:
                continue
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed


class _Watched:
    """Registers the connection with its attempt's watch as soon as it has a socket."""

    _watch: _Watch

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        sock = super()._get_socket(host, port, timeout)  # type: ignore[misc]
        self.sock = sock
        try:
            self._watch.add(self)  # type: ignore[arg-type]
        except MailDeadline:
            sock.close()
            raise
        return sock


class _SMTP(_Watched, smtplib.SMTP):
    def __init__(self, *args: Any, watch: _Watch, **kwargs: Any) -> None:
        self._watch = watch
        super().__init__(*args, **kwargs)


class _SMTPSSL(_Watched, smtplib.SMTP_SSL):
    def __init__(self, *args: Any, watch: _Watch, **kwargs: Any) -> None:
        self._watch = watch
        super().__init__(*args, **kwargs)


class SMTPBackend(smtp.EmailBackend):
    """``smtp.EmailBackend`` whose ``send_messages`` ends by its deadline, sent or not."""

    _watch: _Watch | None = None

    @property
    def connection_class(self) -> Any:
        base = _SMTPSSL if self.use_ssl else _SMTP
        watch = self._watch or _Watch()
        return lambda *args, **kwargs: base(*args, watch=watch, **kwargs)

    def send_messages(self, email_messages: Sequence[Any]) -> int:
        if not email_messages:
            return 0
        self._watch = watch = _Watch()
        if self.connection is not None:  # opened before (``with get_connection() as c:``)
            watch.conns.append(self.connection)
        seconds = attempt_seconds()
        timer = threading.Timer(seconds, watch.cut)
        timer.daemon = True
        timer.start()
        try:
            return int(super().send_messages(email_messages))
        except (OSError, smtplib.SMTPException) as exc:
            if watch.expired:
                raise MailDeadline(
                    f"the mail server did not finish within {seconds:g}s (80 % of the outbox "
                    f"claim, SLUICE_OUTBOX_CLAIM_SECONDS): {type(exc).__name__}"
                ) from None
            raise
        finally:
            timer.cancel()
            self._watch = None
