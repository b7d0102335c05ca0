"""structlog set-up: one event per line, key=value on a terminal, JSON otherwise."""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Callable

import structlog

_forward: Callable[..., None] | None = None


def forward_to(publish: Callable[..., None] | None) -> None:
    """Send every log event to publish(topic, **fields) too (live "log" events)."""
    global _forward
    _forward = publish


def _forward_event(_, __, event_dict: dict) -> dict:
    # Only from the event loop's thread: subscribers' queues are not thread-safe.
    if _forward is not None and threading.current_thread() is threading.main_thread():
        fields = json.loads(json.dumps(event_dict, default=str))
        _forward("log", **{k: v for k, v in fields.items() if k not in ("topic", "seq", "time")})
    return event_dict


def configure(level: str = "info", stream=None) -> None:
    stream = stream or sys.stderr
    on_terminal = stream.isatty()
    renderer = (structlog.dev.ConsoleRenderer(colors=True) if on_terminal
                else structlog.processors.JSONRenderer(sort_keys=False))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _forward_event,
            *([] if on_terminal else [structlog.processors.dict_tracebacks]),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=True,
    )
