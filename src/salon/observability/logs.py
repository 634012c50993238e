"""Log formats: salon's text lines (the default) or one JSON object per line (``--log-format
json``).

A JSON line has ``time`` (UTC, ISO 8601, milliseconds), ``level``, ``logger``, ``message``,
``node`` (``--node-name``) and ``process`` (``main`` or the media worker's name), plus
``session_id`` and ``connection_id`` when the line is written while handling something of
theirs (:data:`SESSION_ID` / :data:`CONNECTION_ID`: set by the signalling service around a
client's messages and by :class:`LogContext` for REST requests naming a session), and
``exception`` with the traceback. Nothing else from the record goes out: the message is
redacted (:func:`salon.redact.redact`) as in the text format, so no secret or token is
written in either.

The media workers log in the main process's format: :func:`configure` exports it
(``SALON_LOG_FORMAT``, ``SALON_NODE_NAME``) to the workers it starts, which call
:func:`configure_worker`.
"""

from __future__ import annotations

import contextvars
import datetime
import json
import logging
import os
import re
import sys
from typing import TYPE_CHECKING, Literal

from salon.redact import redact

if TYPE_CHECKING:  # the media workers import this module: no Starlette there
    from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = [
    "CONNECTION_ID",
    "SESSION_ID",
    "JsonFormatter",
    "LogContext",
    "configure",
    "configure_worker",
    "use_for_uvicorn",
]

LogFormat = Literal["text", "json"]

#: The session (ID) the code running now works for, if any.
SESSION_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("salon_session_id", default=None)
#: The connection (ID) the code running now works for, if any.
CONNECTION_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "salon_connection_id", default=None
)

#: How the main process tells the media workers it starts how to log.
FORMAT_ENV = "SALON_LOG_FORMAT"
NODE_ENV = "SALON_NODE_NAME"

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_handler: logging.Handler | None = None
"""The root handler :func:`configure` installed in JSON mode (uvicorn's loggers get it too)."""


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module's documentation)."""

    def __init__(self, node: str, process: str = "main") -> None:
        super().__init__()
        self.node = node
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
            "node": self.node,
            "process": self.process,
        }
        session_id, connection_id = SESSION_ID.get(), CONNECTION_ID.get()
        if session_id is not None:
            entry["session_id"] = session_id
        if connection_id is not None:
            entry["connection_id"] = connection_id
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = redact(record.exc_text)
        if record.stack_info:
            entry["stack"] = redact(record.stack_info)
        return json.dumps(entry, ensure_ascii=False)


def configure(log_format: LogFormat, level: str, node: str) -> None:
    """Configure the root logger of ``salon serve`` (stderr) in ``log_format``, and tell the
    media workers started from now on to log the same way."""
    global _handler
    os.environ[FORMAT_ENV] = log_format
    os.environ[NODE_ENV] = node
    if log_format == "json":
        _handler = logging.StreamHandler(sys.stderr)
        _handler.setFormatter(JsonFormatter(node))
        logging.basicConfig(level=level.upper(), handlers=[_handler], force=True)
    else:
        _handler = None
        logging.basicConfig(level=level.upper(), format=TEXT_FORMAT)


def use_for_uvicorn() -> None:
    """In JSON mode, make uvicorn's loggers (which ``uvicorn.Config`` gives text handlers of
    their own) write through the JSON handler; nothing in text mode."""
    if _handler is None:
        return
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        if logger.handlers:
            logger.handlers = [_handler]


def configure_worker(name: str, level: str) -> None:
    """A media worker's logging: the main process's format (``SALON_LOG_FORMAT``), its lines
    marked with the worker's name and pid."""
    if os.environ.get(FORMAT_ENV) == "json":
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter(os.environ.get(NODE_ENV, ""), f"salon-{name}[{os.getpid()}]"))
        logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    else:
        logging.basicConfig(
            level=level.upper(),
            format=f"%(asctime)s salon-{name}[%(process)d] %(levelname)s %(name)s: %(message)s",
        )


_SESSION_PATH = re.compile(r"/session/([^/?]+)")
_CONNECTION_PATH = re.compile(r"/connection/([^/?]+)")


class LogContext:
    """ASGI middleware: a REST request whose path names a session (``…/session/{id}/…``) and
    maybe a connection logs with their IDs (:data:`SESSION_ID`, :data:`CONNECTION_ID`)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        session = _SESSION_PATH.search(scope["path"]) if scope["type"] == "http" else None
        if session is None or session.group(1) == "create":  # POST /session/create
            await self.app(scope, receive, send)
            return
        connection = _CONNECTION_PATH.search(scope["path"])
        tokens = (
            SESSION_ID.set(session.group(1)[:200]),
            CONNECTION_ID.set(connection.group(1)[:200] if connection else None),
        )
        try:
            await self.app(scope, receive, send)
        finally:
            SESSION_ID.reset(tokens[0])
            CONNECTION_ID.reset(tokens[1])
