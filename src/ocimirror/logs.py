"""Logging setup: structlog as text (coloured on a terminal) or JSON lines, to stderr,
stdout or a file."""

from __future__ import annotations

import io
import logging
import sys
from typing import Literal, TextIO, cast

import stamina.instrumentation
import structlog

LogFormat = Literal["text", "json"]
LogColor = Literal["auto", "always", "never"]

#: Below DEBUG: docker-sync's TRACE.
TRACE = 5


def configure(
    *,
    fmt: LogFormat = "text",
    level: str = "info",
    color: LogColor = "auto",
    output: str = "stderr",
    time_format: str | None = None,
) -> None:
    """Configure structlog and the standard logging module once for the process.

    `output` is `stderr`, `stdout` or a file path (appended to, line by line);
    `time_format` a strftime format of the local time (None: ISO 8601 in UTC); `level`
    `trace` logs everything `debug` does (docker-sync's lowest level).
    """
    numeric = TRACE if level.lower() == "trace" else logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    stream = _stream(output)
    renderer: structlog.typing.Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        colors = stream.isatty() if color == "auto" else color == "always"
        renderer = structlog.dev.ConsoleRenderer(colors=colors)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt=time_format or "iso", utc=time_format is None),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=max(numeric, logging.WARNING), stream=stream, force=True)
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, MalformedRequests) for f in server_log.filters):
        server_log.addFilter(MalformedRequests())
    stamina.instrumentation.set_on_retry_hooks([log_retry])


class MalformedRequests(logging.Filter):
    """aiohttp's server logs every request it cannot parse (an oversized header, a bad
    chunk, CR in a value) as an ERROR with a traceback quoting the offending bytes: anyone
    could fill the log with tracebacks, and with what they sent (a header's value too).
    Such a record becomes one line naming the kind of fault, nothing of the request."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite a parse failure's record; leave any other alone."""
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and any(
            c.__name__ == "HttpProcessingError" and c.__module__ == "aiohttp.http_exceptions"
            for c in type(exc).__mro__
        ):
            record.msg = "malformed HTTP request refused: %s (HTTP %s)"
            record.args = (type(exc).__name__, getattr(exc, "code", 400))
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


class _Current(io.TextIOBase):
    """`sys.stderr` or `sys.stdout` as it is at each write, not as it was when logging was
    configured: whoever replaces the stream later (a test runner capturing output, an
    embedding program) gets the lines, and a stream closed since is never written to."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self._name = name

    def _target(self) -> TextIO:
        stream: TextIO = getattr(sys, self._name)
        return stream

    def write(self, s: str) -> int:
        """Write to the stream of the moment."""
        return self._target().write(s)

    def flush(self) -> None:
        """Flush the stream of the moment."""
        self._target().flush()

    def isatty(self) -> bool:
        """Whether the stream of the moment is a terminal."""
        return self._target().isatty()


def _stream(output: str) -> TextIO:
    """The stream logs go to: stderr, stdout, or a file opened for appending."""
    if output in ("", "stderr", "-"):
        return cast(TextIO, _Current("stderr"))
    if output == "stdout":
        return cast(TextIO, _Current("stdout"))
    # Open for the life of the process, as stderr is.
    return open(output, "a", buffering=1, encoding="utf-8")


def log_retry(details: stamina.instrumentation.RetryDetails) -> None:
    """Log a scheduled retry as one readable line (the error's message, not its repr)."""
    structlog.get_logger("ocimirror.retry").warning(
        "retrying",
        attempt=details.retry_num + 1,
        wait=round(details.wait_for, 2),
        error=str(details.caused_by) or type(details.caused_by).__name__,
    )
