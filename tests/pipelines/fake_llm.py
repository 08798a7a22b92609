"""A fake LLM provider over real HTTP: OpenAI-compatible and Anthropic-shaped, with faults.

The server runs ``http.server`` in a thread on 127.0.0.1 (an ephemeral port). It answers

- ``POST /v1/chat/completions`` like OpenAI (and every OpenAI-compatible server: Ollama, vLLM,
  llama.cpp), with a tool call when the request offers tools, else a text message;
- ``POST /v1/messages`` like Anthropic's Messages API, with a ``tool_use`` block likewise.

The answer is ``FakeLLM.answer`` when set (a dict, or a callable of the request body), else an
instance made up from the offered tool's JSON Schema, so any structured-output call succeeds.
Faults are queued with ``FakeLLM.fail(...)`` and consumed one per request, in order:

``slow(seconds)`` (answers late, past the client's timeout), ``status(429, retry_after=2)``,
``status(500)``, ``status(400)``, ``status(401)``, ``malformed()`` (a body that is not JSON),
``wrong_schema()`` (valid JSON tool arguments that miss the required fields),
``bad_json_args()`` (tool arguments that are not JSON), ``refusal()`` (the model declines) and
``cut_off()`` (nothing before the output token limit).

Every request is recorded in ``FakeLLM.requests`` (path, headers, body) for assertions.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Answer = dict[str, Any] | Callable[[dict[str, Any]], dict[str, Any]]


@dataclass
class Fault:
    kind: str
    seconds: float = 0.0
    status: int = 0
    retry_after: float | str | None = None
    echo_auth: bool = False
    body: bytes = b""


def slow(seconds: float) -> Fault:
    return Fault("slow", seconds=seconds)


def status(code: int, *, retry_after: float | str | None = None, echo_auth: bool = False) -> Fault:
    """An error answer: ``retry_after`` as a number of seconds or a header's raw text;
    ``echo_auth`` quotes the request's credentials in the error message, as some servers do."""
    return Fault("status", status=code, retry_after=retry_after, echo_auth=echo_auth)


def empty_choices() -> Fault:
    """A 200 whose ``choices`` is empty (the SDK cannot read an answer from it)."""
    return Fault("empty_choices")


def drip(seconds: float) -> Fault:
    """A good answer whose body trickles in over ``seconds`` (leading blanks, one at a time):
    a client's per-read timeout never trips on it."""
    return Fault("drip", seconds=seconds)


def raw(body: bytes) -> Fault:
    """A 200 with exactly this body."""
    return Fault("raw", body=body)


def malformed() -> Fault:
    return Fault("malformed")


def wrong_schema() -> Fault:
    return Fault("wrong_schema")


def bad_json_args() -> Fault:
    return Fault("bad_json_args")


def refusal() -> Fault:
    """The model declines: OpenAI's ``message.refusal`` (content null), Anthropic's
    ``stop_reason: "refusal"`` with no content."""
    return Fault("refusal")


def cut_off() -> Fault:
    """The answer stopped at the output token limit before anything usable came out
    (``finish_reason: "length"`` / ``stop_reason: "max_tokens"``, no content)."""
    return Fault("cut_off")


def _total(input_tokens: Any, output_tokens: Any) -> Any:
    """``total_tokens`` as a provider would send it; an odd count (null, a fraction, text, a
    test's own junk) passes through as it is, so the client sees what it would see."""
    try:
        return input_tokens + output_tokens
    except TypeError:
        return input_tokens


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    fault: str = ""


@dataclass
class FakeLLM:
    """The server's state; tests tweak ``answer``, queue faults and read ``requests``."""

    answer: Answer | None = None
    faults: deque[Fault] = field(default_factory=deque)
    requests: list[Recorded] = field(default_factory=list)
    input_tokens: int = 120
    output_tokens: int = 40
    port: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def base_url(self) -> str:
        """The OpenAI-style base URL (``…/v1``)."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def anthropic_url(self) -> str:
        """Anthropic's SDK appends ``/v1/messages`` to its base URL itself."""
        return f"http://127.0.0.1:{self.port}"

    def fail(self, *faults: Fault) -> None:
        with self.lock:
            self.faults.extend(faults)

    def reset(self) -> None:
        with self.lock:
            self.faults.clear()
            self.requests.clear()
            self.answer = None

    def next_fault(self) -> Fault | None:
        with self.lock:
            return self.faults.popleft() if self.faults else None

    def make_answer(self, body: dict[str, Any], schema: dict[str, Any] | None) -> dict[str, Any]:
        if callable(self.answer):
            return self.answer(body)
        if self.answer is not None:
            return self.answer
        return example_for(schema or {"type": "object"}, schema or {})


def example_for(schema: dict[str, Any], root: dict[str, Any]) -> Any:
    """A value that validates against ``schema`` (enough of JSON Schema for pydantic's output)."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return example_for(root.get("$defs", {}).get(name, {}), root)
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            options = [s for s in schema[key] if s.get("type") != "null"] or schema[key]
            return example_for(options[0], root)
    if "enum" in schema:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    if "default" in schema:
        return schema["default"]
    kind = schema.get("type", "object")
    if kind == "object":
        props = schema.get("properties", {})
        return {name: example_for(sub, root) for name, sub in props.items()}
    if kind == "array":
        return [example_for(schema.get("items", {}), root)] * max(1, schema.get("minItems", 1))
    if kind == "string":
        return "fake answer"
    if kind == "integer":
        return max(1, int(schema.get("minimum", 1)))
    if kind == "number":
        low, high = schema.get("minimum", 0.0), schema.get("maximum", 1.0)
        return (low + high) / 2
    if kind == "boolean":
        return False
    return None


def _openai_schema(body: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON Schema of a native structured-output request (``response_format``)."""
    fmt = body.get("response_format") or {}
    return (
        (fmt.get("json_schema") or {}).get("schema") if fmt.get("type") == "json_schema" else None
    )


def _openai_tool(body: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    tools = body.get("tools") or []
    if not tools:
        return None
    fn = tools[0].get("function", {})
    return fn.get("name", "final_result"), fn.get("parameters", {})


def _anthropic_tool(body: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    tools = body.get("tools") or []
    if not tools:
        return None
    return tools[0].get("name", "final_result"), tools[0].get("input_schema", {})


def _make_handler(state: FakeLLM) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
            pass

        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                body = {}
            fault = state.next_fault()
            with state.lock:
                state.requests.append(
                    Recorded(
                        path=self.path,
                        headers={k.lower(): v for k, v in self.headers.items()},
                        body=body,
                        fault=fault.kind if fault else "",
                    )
                )
            anthropic = self.path.rstrip("/").endswith("/messages")
            if fault is not None and fault.kind == "slow":
                time.sleep(fault.seconds)
            if fault is not None and fault.kind == "status":
                credentials = self.headers.get("Authorization") or self.headers.get("x-api-key")
                return self._error(fault, anthropic, credentials if fault.echo_auth else None)
            if fault is not None and fault.kind == "empty_choices":
                tokens = state.input_tokens
                usage = {"prompt_tokens": tokens, "completion_tokens": 0, "total_tokens": tokens}
                empty = {"id": "chatcmpl-e", "object": "chat.completion", "created": 0}
                payload = {**empty, "model": "fake", "choices": [], "usage": usage}
                return self._send(200, json.dumps(payload).encode())
            if fault is not None and fault.kind == "raw":
                return self._send(200, fault.body)
            if fault is not None and fault.kind == "malformed":
                return self._send(200, b'{"id": "chatcmpl-x", "choices": [{"message": {"con')
            if fault is not None and fault.kind in ("refusal", "cut_off"):
                return self._send(200, json.dumps(self._empty(body, anthropic, fault)).encode())
            tool = _anthropic_tool(body) if anthropic else _openai_tool(body)
            schema = tool[1] if tool else (None if anthropic else _openai_schema(body))
            answer: Any = state.make_answer(body, schema)
            args = json.dumps(answer)
            if fault is not None and fault.kind == "wrong_schema":
                answer, args = {"unexpected": True}, json.dumps({"unexpected": True})
            if fault is not None and fault.kind == "bad_json_args":
                args = '{"summary": "cut off'
            if anthropic:
                payload = self._anthropic(body, tool, answer, args, fault)
            else:
                payload = self._openai(body, tool, args)
            if fault is not None and fault.kind == "drip":
                return self._drip(json.dumps(payload).encode(), fault.seconds)
            self._send(200, json.dumps(payload).encode())

        def _drip(self, data: bytes, seconds: float) -> None:
            blanks = max(1, int(seconds * 10))
            try:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(blanks + len(data)))
                self.end_headers()
                for _ in range(blanks):
                    self.wfile.write(b" ")
                    self.wfile.flush()
                    time.sleep(seconds / blanks)
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def _openai(self, body: dict[str, Any], tool: Any, args: str) -> dict[str, Any]:
            if tool is not None:
                message: dict[str, Any] = {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": tool[0], "arguments": args},
                        }
                    ],
                }
                finish = "tool_calls"
            else:
                message = {"role": "assistant", "content": args}
                finish = "stop"
            return {
                "id": f"chatcmpl-{len(state.requests)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", "fake"),
                "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                "usage": {
                    "prompt_tokens": state.input_tokens,
                    "completion_tokens": state.output_tokens,
                    "total_tokens": _total(state.input_tokens, state.output_tokens),
                },
            }

        def _anthropic(
            self, body: dict[str, Any], tool: Any, answer: Any, args: str, fault: Fault | None
        ) -> dict[str, Any]:
            if tool is not None and not (fault and fault.kind == "bad_json_args"):
                content: list[dict[str, Any]] = [
                    {"type": "tool_use", "id": "toolu_1", "name": tool[0], "input": answer}
                ]
                stop = "tool_use"
            else:
                content = [{"type": "text", "text": args}]
                stop = "end_turn"
            return {
                "id": f"msg_{len(state.requests)}",
                "type": "message",
                "role": "assistant",
                "model": body.get("model", "fake"),
                "content": content,
                "stop_reason": stop,
                "stop_sequence": None,
                "usage": {"input_tokens": state.input_tokens, "output_tokens": state.output_tokens},
            }

        def _empty(self, body: dict[str, Any], anthropic: bool, fault: Fault) -> dict[str, Any]:
            refused = fault.kind == "refusal"
            usage = {"input_tokens": state.input_tokens, "output_tokens": state.output_tokens}
            if anthropic:
                return {
                    "id": f"msg_{len(state.requests)}",
                    "type": "message",
                    "role": "assistant",
                    "model": body.get("model", "fake"),
                    "content": [],
                    "stop_reason": "refusal" if refused else "max_tokens",
                    "stop_sequence": None,
                    "usage": usage,
                }
            message: dict[str, Any] = {"role": "assistant", "content": None}
            finish = "stop" if refused else "length"
            if refused:
                message["refusal"] = "I can't help with that request."
            return {
                "id": f"chatcmpl-{len(state.requests)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", "fake"),
                "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                "usage": {
                    "prompt_tokens": state.input_tokens,
                    "completion_tokens": state.output_tokens,
                    "total_tokens": _total(state.input_tokens, state.output_tokens),
                },
            }

        def _error(self, fault: Fault, anthropic: bool, credentials: str | None = None) -> None:
            kinds = {
                400: "invalid_request_error",
                401: "authentication_error",
                429: "rate_limit_error",
                500: "api_error",
            }
            kind = kinds.get(fault.status, "api_error")
            message = f"{kind}; you sent {credentials}" if credentials else kind
            if anthropic:
                payload: dict[str, Any] = {
                    "type": "error",
                    "error": {"type": kind, "message": message},
                }
            else:
                payload = {"error": {"message": message, "type": kind, "code": kind}}
            headers = {}
            if isinstance(fault.retry_after, str):
                headers["Retry-After"] = fault.retry_after
            elif fault.retry_after is not None:
                headers["Retry-After"] = f"{fault.retry_after:g}"
            self._send(fault.status, json.dumps(payload).encode(), headers)

        def _send(self, code: int, data: bytes, headers: dict[str, str] | None = None) -> None:
            try:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # The client gave up (a timeout test): nothing to answer.

    return Handler


@contextmanager
def serve() -> Iterator[FakeLLM]:
    """Run the fake provider on 127.0.0.1 for the duration of the block."""
    state = FakeLLM()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(state))
    server.daemon_threads = True
    state.port = server.server_address[1]
    # A short poll interval: shutdown() waits up to one interval, once per test.
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-llm", daemon=True
    )
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
