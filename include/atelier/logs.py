"""Structured logs: one JSON object per line, with the campaign's context on every line.

Every Atelier component logs through ``get(name)`` (events with key-value fields) or a plain
``logging.getLogger("atelier…")`` (%-messages); both carry the context bound with ``bind`` /
``bound``: ``campaign_id``, ``brand``, ``sku``, ``spec``, ``render_key``, ``provider``, ``attempt``,
``shard``, ``night`` (``CONTEXT_KEYS``). The context lives in structlog's contextvars, so it follows a
thread or an asyncio task and is gone when its ``bound`` block ends.

Where the output goes:

- **Inside Airflow** (tasks, triggerer, scheduler, callbacks) Airflow has already configured structlog
  and routed stdlib logging through it; its processors merge contextvars, so the bound context lands
  in the JSON task log next to Airflow's own ``dag_id``/``run_id``/``ti_id``. ``configure`` is not
  called there.
- **Outside Airflow** (the CLI, the reference service, scripts) ``configure()`` — called once at
  start-up — renders the same JSON to stderr (stdout stays for command output).
- **Neither** (a library import, unit tests): ``get()`` events fall back to stdlib logging as
  ``"event key=value …"`` text (context included), so nothing is printed to stdout behind a
  caller's back; plain stdlib records stay as they are.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TextIO

import structlog

CONTEXT_KEYS = ("campaign_id", "brand", "sku", "spec", "render_key", "provider", "attempt", "shard", "night")

_configured_here = False


def _stdlib_fields(ed: Mapping[str, Any]) -> str:
    """``event key=value …``: the fallback text for a plain stdlib handler (keeps it readable)."""
    extra = " ".join(f"{k}={v}" for k, v in ed.items() if k != "event")
    return f"{ed.get('event', '')} {extra}".rstrip()


def _fallback_render(_logger: Any, _method: str, ed: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    exc_info = ed.pop("exc_info", None)
    if args := ed.pop("positional_args", None):  # log.info("shard %s done", n), as stdlib would
        ed["event"] = str(ed["event"]) % args
    return (_stdlib_fields(ed),), {"exc_info": exc_info} if exc_info else {}


class Logger:
    """A logger that renders through whatever is configured *at call time*: Airflow's structlog in
    an Airflow process, ``configure()``'s JSON outside, stdlib text otherwise. Module-level
    instances are safe to create before any of those is set up."""

    def __init__(self, name: str) -> None:
        self.name = name

    def _backend(self) -> Any:
        if structlog.is_configured():
            return structlog.get_logger(self.name)
        return structlog.wrap_logger(
            logging.getLogger(self.name),
            processors=[structlog.contextvars.merge_contextvars, _fallback_render],
            wrapper_class=structlog.stdlib.BoundLogger,
        )

    def __getattr__(self, method: str) -> Any:
        # the backend's own method, called from the caller's frame: callsite fields (filename,
        # lineno) name the caller, not this module
        return getattr(self._backend(), method)


def get(name: str = "atelier") -> Logger:
    """The logger for an Atelier module: ``log.info("render.failed", sku=…, reason=…)``."""
    return Logger(name)


def _clean(ctx: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in ctx.items() if v is not None}


@contextmanager
def bound(**ctx: Any) -> Iterator[None]:
    """Adds ``ctx`` (None values skipped) to every log line inside the block, in this thread or
    asyncio task; restores the previous values at exit, even on an exception."""
    with structlog.contextvars.bound_contextvars(**_clean(ctx)):
        yield


def bind(**ctx: Any) -> None:
    """Adds ``ctx`` for the rest of this thread/task (an Airflow task process runs one task: its
    entry point may bind for its whole life)."""
    structlog.contextvars.bind_contextvars(**_clean(ctx))


def context() -> dict[str, Any]:
    """The context bound now (to hand to a worker thread: ``with bound(**ctx)`` there)."""
    return structlog.contextvars.get_contextvars()


def _readable_order(_logger: Any, _method: str, ed: dict[str, Any]) -> dict[str, Any]:
    """timestamp, level, event, logger first (as Airflow's task logs), then the fields."""
    head = {k: ed.pop(k) for k in ("timestamp", "level", "event", "logger") if k in ed}
    return {**head, **ed}


def configure(level: str | int = "INFO", stream: TextIO | None = None, force: bool = False) -> None:
    """JSON lines for a process Airflow does not run (CLI, reference service): structlog events and
    stdlib records alike get a timestamp, level, logger name and the bound context. Idempotent;
    leaves a structlog configuration made by someone else (Airflow) alone unless ``force``."""
    global _configured_here
    if structlog.is_configured() and not (_configured_here or force):
        return
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.set_name("atelier-json")
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            # a stdlib call's extra={"sku": …} counts as context too
            foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder(CONTEXT_KEYS)],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                _readable_order,
                structlog.processors.JSONRenderer(default=str),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers = [h for h in root.handlers if h.get_name() != "atelier-json"] + [handler]
    root.setLevel(level)
    _configured_here = True
