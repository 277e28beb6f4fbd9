"""Structured logging: one event per line, with task_id / step bound in context, in one format
for every service -- structlog's own events and the standard library's records alike (uvicorn's
server and access logs, grpc's, a library's warnings): both end in the same renderer, JSON lines
with CORRAL_LOG_JSON=true, key=value text otherwise."""

from __future__ import annotations

import logging
import sys

import structlog


def _drop_color(_logger: object, _name: str, event: structlog.typing.EventDict) -> structlog.typing.EventDict:
    """uvicorn's records carry their message again with terminal colours: not for a log line."""
    event.pop("color_message", None)
    return event


def configure_logging(service: str, level: str = "info", json: bool = False) -> None:
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(
            colors=False,
            # Plain text: rich's pretty tracebacks (with locals) took ~100 ms each on the event
            # loop, and 200 cut-off requests blocked the gateway for seconds.
            exception_formatter=structlog.dev.plain_traceback,
        )
    )
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso"),
    ]
    # The standard library's records: rendered by the same processors, with the logger's name.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name, structlog.stdlib.ExtraAdder(), _drop_color],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        # uvicorn's own handlers (if a config gave it some) would print its format: its records go to root.
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service)
