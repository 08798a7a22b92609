"""Log records that say which run and step they are about, optionally as JSON lines.

``EngineContextFilter`` copies the engine's log context (``workflows.core.instrument.current()``:
run id, generation, step name and id, set by the executor around advancing a run and running a
step) onto every record. ``JsonFormatter`` writes one JSON object per line, for log shippers
(``SLUICE_LOG_FORMAT=json``; config/settings.py wires both). ``PlainFormatter`` is the
default one-line format.

A message often carries text from outside: a step's exception (with a pipeline input or an LLM
answer in it), a request path. Neither format lets it forge a line or reach a terminal: the
plain format writes control characters (newlines, escape sequences, C1 controls, the Unicode
line and paragraph separators) as escapes (``\\n``, ``\\x1b``), as Django's own request log
does; the JSON format escapes the ones ``json.dumps`` leaves raw, which ``str.splitlines()``
and terminals read as line breaks or escapes. A traceback keeps its lines.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from workflows.core import instrument

CONTEXT_FIELDS = ("run_id", "generation", "step", "step_id")

# C0 controls but tab, DEL and the C1 controls, and the Unicode line and paragraph separators.
_CONTROLS = {
    code: f"\\x{code:02x}"
    for code in (*range(0x00, 0x09), *range(0x0A, 0x20), 0x7F, *range(0x80, 0xA0))
}
_CONTROLS.update({0x0A: "\\n", 0x0D: "\\r", 0x2028: "\\u2028", 0x2029: "\\u2029"})
# What json.dumps(ensure_ascii=False) leaves raw of those (it escapes C0 itself).
_JSON_RAW = {code: f"\\u{code:04x}" for code in (0x7F, *range(0x80, 0xA0), 0x2028, 0x2029)}


def escape_controls(text: str) -> str:
    """``text`` on one line, its control characters written as escapes."""
    return text.translate(_CONTROLS)


class EngineContextFilter(logging.Filter):
    """Adds run_id, generation, step and step_id (None outside the engine) to each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in instrument.current().items():
            if getattr(record, key, None) is None:
                setattr(record, key, value)
        return True


class PlainFormatter(logging.Formatter):
    """The plain format (``SLUICE_LOG_FORMAT=plain``), one line per record but the traceback:
    the message's control characters are escaped (``escape_controls``)."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        record.message = escape_controls(record.message)
        return super().formatMessage(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the engine context, the
    process id, and the formatted exception when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        context = instrument.current()
        for key in CONTEXT_FIELDS:
            value = getattr(record, key, None)
            entry[key] = context[key] if value is None else value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # default=str: a message argument that is not JSON (a UUID, a Decimal) never breaks a line.
        return json.dumps(entry, default=str, ensure_ascii=False).translate(_JSON_RAW)
