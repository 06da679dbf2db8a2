"""Logging setup: structlog to stderr as text (coloured on a terminal) or JSON lines."""

from __future__ import annotations

import logging
import sys
from typing import Literal

import stamina.instrumentation
import structlog

LogFormat = Literal["text", "json"]


def configure(*, fmt: LogFormat = "text", level: str = "info") -> None:
    """Configure structlog and the standard logging module once for the process."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    renderer: structlog.typing.Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=max(numeric, logging.WARNING), stream=sys.stderr)
    stamina.instrumentation.set_on_retry_hooks([log_retry])


def log_retry(details: stamina.instrumentation.RetryDetails) -> None:
    """Log a scheduled retry as one readable line (the error's message, not its repr)."""
    structlog.get_logger("ocimirror.retry").warning(
        "retrying",
        attempt=details.retry_num + 1,
        wait=round(details.wait_for, 2),
        error=str(details.caused_by) or type(details.caused_by).__name__,
    )
