"""structlog set-up: JSON lines (or console) on stdout, one event per line, stdlib logging folded in."""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any, TextIO

import structlog

LEVELS = ("debug", "info", "warning", "error", "critical")
FORMATS = ("json", "console")


class _LockedWriter:
    """A file wrapper whose writes from many threads never interleave within a line."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def msg(self, message: str) -> None:
        with self._lock:
            try:
                self._stream.write(message + "\n")
                self._stream.flush()
            except (OSError, ValueError):
                pass  # stdout closed (a pipe that went away): logging must never kill a thread

    log = debug = info = warn = warning = error = critical = exception = fatal = msg


class _LoggerFactory:
    def __init__(self, stream: TextIO) -> None:
        self._writer = _LockedWriter(stream)

    def __call__(self, *_args: Any) -> _LockedWriter:
        return self._writer


class _ToStructlog(logging.Handler):
    """Routes stdlib records (pykka, cheroot) through structlog so every line is one JSON event."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            log = structlog.get_logger(record.name)
            event = {"event": "library_log", "logger": record.name, "message": record.getMessage()}
            if record.exc_info:
                event["exc_info"] = record.exc_info
            getattr(log, record.levelname.lower(), log.warning)(**event)
        except Exception:  # noqa: BLE001 - a logging handler must never raise
            self.handleError(record)


_FIRST = ("timestamp", "level", "event", "node_id", "job_id")


def _fields_in_reading_order(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    """timestamp, level, event, node_id, job_id first; the rest as bound."""
    ordered = {key: event.pop(key) for key in _FIRST if key in event}
    ordered.update(event)
    return ordered


def configure(level: str = "info", fmt: str = "json", stream: TextIO | None = None) -> None:
    """Configure structlog and stdlib logging for the whole process; call once, before actors start."""
    numeric = logging.getLevelName(level.upper())
    renderer: Any = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _fields_in_reading_order,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=_LoggerFactory(stream or sys.stdout),
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    root.handlers[:] = [_ToStructlog()]
    root.setLevel(numeric)
    # cheroot logs every client hiccup at ERROR; only real trouble should reach users.
    logging.getLogger("cheroot").setLevel(max(numeric, logging.WARNING))
    # pykka logs every exception an ask returns to its caller (a 404 or 409 here) with a traceback.
    logging.getLogger("pykka").setLevel(max(numeric, logging.WARNING))


def get_logger(**bound: Any) -> Any:
    """A structlog logger with `bound` fields (node_id, actor) on every line."""
    return structlog.get_logger().bind(**bound)
