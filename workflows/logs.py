"""Log records that say which run and step they are about, optionally as JSON lines.

``EngineContextFilter`` copies the engine's log context (``workflows.core.instrument.current()``:
run id, generation, step name and id, set by the executor around advancing a run and running a
step) onto every record. ``JsonFormatter`` writes one JSON object per line, for log shippers
(``SLUICE_LOG_FORMAT=json``; config/settings.py wires both).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from workflows.core import instrument

CONTEXT_FIELDS = ("run_id", "generation", "step", "step_id")


class EngineContextFilter(logging.Filter):
    """Adds run_id, generation, step and step_id (None outside the engine) to each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in instrument.current().items():
            if getattr(record, key, None) is None:
                setattr(record, key, value)
        return True


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
        return json.dumps(entry, default=str, ensure_ascii=False)
