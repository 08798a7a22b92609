"""A webhook receiver over real HTTP: a tiny ``http.server`` on 127.0.0.1 in a thread."""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """Answers each POST with the next status of ``script`` (then 200), recording it."""

    script: list[int] = field(default_factory=list)
    requests: list[Received] = field(default_factory=list)
    port: int = 0
    host: str = "127.0.0.1"
    # The 2xx answer's body, and a pause before each of its bytes (a receiver that drips it).
    body: bytes = b'{"ok": true}'
    drip_seconds: float = 0.0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/hooks/sluice"


@contextmanager
def receiver(
    script: list[int] | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    tls: ssl.SSLContext | None = None,
    body: bytes | None = None,
    drip_seconds: float = 0.0,
) -> Iterator[Receiver]:
    """Serve on ``host:port`` (port 0: any free one), over TLS with a server context ``tls``."""
    state = Receiver(script=list(script or []), host=host, drip_seconds=drip_seconds)
    if body is not None:
        state.body = body
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            with lock:
                state.requests.append(Received(self.path, dict(self.headers.items()), body))
                status = state.script.pop(0) if state.script else 200
            payload = state.body if status < 300 else b'{"error": "try later"}'
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            try:
                if not state.drip_seconds:
                    self.wfile.write(payload)
                for i in range(len(payload) if state.drip_seconds else 0):
                    time.sleep(state.drip_seconds)
                    self.wfile.write(payload[i : i + 1])
                    self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client stopped reading: what a bounded reader does

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    state.port = server.server_address[1]
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
