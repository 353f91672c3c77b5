"""structlog set-up: JSON lines for journald, a console renderer on a TTY, secrets redacted.

Configured once, by :func:`configure_logging`. Standard-library loggers (aiohttp, SQLAlchemy, pyghmi) go
through structlog's ``ProcessorFormatter`` so every line has the same shape: timestamp, level, event,
logger, and the bound context (task, node, request_id).
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping
from typing import IO, Any

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from bmd.drivers.deploy.refs import scrub_urls

REDACTED = "******"
_SECRET_KEY = re.compile(r"pass(word|wd|phrase)?|secret|token|(^|_|-)key$|^key|credential|authorization", re.I)


def is_secret_key(key: str) -> bool:
    """True for keys whose values must never be shown: passwords, tokens, keys, secrets."""
    return bool(_SECRET_KEY.search(key))


def redact(value: Any) -> Any:
    """Return ``value`` with every secret-looking key's value replaced, at any depth, and the user info and
    query of every URL inside a string redacted (an exception message may embed a signed URL)."""
    if isinstance(value, str):
        return scrub_urls(value)
    if isinstance(value, Mapping):
        return {k: REDACTED if isinstance(k, str) and is_secret_key(k) else redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact(v) for v in value)
    return value


def redact_secrets(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """structlog processor: drop secret values whatever the key's case or nesting; scrub URLs in every
    string, the message (``event``) and a formatted traceback (``exception``) included."""
    for key in list(event_dict):
        if key != "event" and is_secret_key(key):
            event_dict[key] = REDACTED
        else:
            event_dict[key] = redact(event_dict[key])
    return event_dict


def _logger_name(logger: WrappedLogger, _: str, event_dict: EventDict) -> EventDict:
    record = event_dict.get("_record")
    if record is not None:
        event_dict.setdefault("logger", record.name)
    else:
        event_dict.setdefault("logger", getattr(logger, "name", None) or event_dict.pop("_logger_name", "bmd"))
    return event_dict


class NodeNames:
    """Node id → (uuid, name), for the log: an event that names a node by its id (``node=7``) also gets
    ``node_uuid`` and ``node_name``, so a line still names one machine after the node is renamed or gone.
    The service loads it at start-up and the node change feed (``bmd.node_events``) keeps it current."""

    def __init__(self) -> None:
        self._by_id: dict[int, tuple[str, str | None]] = {}

    def set(self, node_id: int, uuid: str, name: str | None) -> None:
        self._by_id[node_id] = (uuid, name)

    def forget(self, node_id: int) -> None:
        self._by_id.pop(node_id, None)

    def get(self, node_id: int) -> tuple[str, str | None] | None:
        return self._by_id.get(node_id)

    def __len__(self) -> int:
        return len(self._by_id)


_node_names: NodeNames | None = None


def use_node_names(names: NodeNames | None) -> None:
    """Name nodes in log events from ``names`` (the service's; None: stop)."""
    global _node_names
    _node_names = names


def add_node_names(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    node = event_dict.get("node")
    if _node_names is not None and isinstance(node, int) and "node_uuid" not in event_dict:
        known = _node_names.get(node)
        if known is not None:
            event_dict["node_uuid"], event_dict["node_name"] = known
    return event_dict


def _shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        add_node_names,
        structlog.stdlib.add_log_level,
        _logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.stdlib.ExtraAdder(),
        redact_secrets,
    ]


def configure_logging(fmt: str = "auto", level: str = "info", stream: IO[str] | None = None) -> None:
    """Configure structlog and the standard library once. ``fmt``: json | console | auto (TTY → console)."""
    stream = stream or sys.stdout
    use_console = fmt == "console" or (fmt == "auto" and stream.isatty())
    renderer: Processor = (
        structlog.dev.ConsoleRenderer(colors=stream.isatty()) if use_console else structlog.processors.JSONRenderer()
    )
    shared = _shared_processors()
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            redact_secrets,  # again: the traceback format_exc_info just rendered may hold a URL
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Chatty libraries stay at warning unless we debug.
    for name in ("aiohttp.access", "sqlalchemy.engine", "pyghmi", "asyncio"):
        logging.getLogger(name).setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
