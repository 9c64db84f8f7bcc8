"""One place that configures structlog for every labctl process."""

from __future__ import annotations

import logging
import os
import sys

import structlog


def setup(process: str, level: str | None = None, json: bool | None = None) -> None:
    """Log to stderr as key=value lines (or JSON with LABCTL_LOG_JSON=1)."""
    level = (level or os.environ.get("LABCTL_LOG_LEVEL", "info")).upper()
    if json is None:
        json = os.environ.get("LABCTL_LOG_JSON", "") not in ("", "0")
    renderer = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(proc=process)
