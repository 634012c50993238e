"""Keeping secrets and tokens out of the logs, at every log level.

:func:`install` makes every log record (of any logger: salon's, uvicorn's, SQLAlchemy's...)
redacted as it is made: anything shaped like a client token or a JWT (``T1==…``, ``eyJ…``) and
every secret :func:`register_secret` was told of (API secrets, as projects are read from the
store; the TURN secret and password) become ``[redacted]``, in the message and in the
traceback. It also keeps the loggers known to write request data verbatim at DEBUG (the SQL
result rows and driver calls, WebSocket frames) at INFO at most.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

__all__ = ["install", "redact", "register_secret"]

REDACTED = "[redacted]"

#: A client token (``T1==`` + base64) or anything starting like a JWT (base64url of ``{"``),
#: even cut short, as a log line may quote part of one.
_TOKENS = re.compile(r"T1==[A-Za-z0-9+/=]+|eyJ[A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]*){0,2}")

#: The signature of a download URL (an archive's ``url``: salon's own, or S3 presigned): it
#: downloads the archive without other credentials while it lasts.
_URL_SIGNATURES = re.compile(r"((?:[?&]|\b)(?:signature|X-Amz-Signature|Signature)=)[^&\s\"']+")

#: Loggers whose DEBUG output is request data itself: SQLAlchemy's result rows (a project's
#: row holds its secret), the SQLite driver's calls with their parameters, WebSocket frames
#: (a ``connect`` carries a token). They log at INFO at most, whatever the level.
QUIET_AT_DEBUG = ("sqlalchemy.engine", "sqlalchemy.pool", "aiosqlite", "websockets")

#: How the ``websockets`` protocol logs a frame (to ``uvicorn.error`` under uvicorn, at DEBUG):
#: the payload is replaced by its size.
_FRAME_FORMATS = ("< %s", "> %s")

_secrets: set[str] = set()
_lock = threading.Lock()
_installed = False


def register_secret(*values: str | None) -> None:
    """Never log these values (shorter than 8 characters: ignored, they would redact words)."""
    new = {v for v in values if v and len(v) >= 8}
    if new - _secrets:
        with _lock:
            _secrets.update(new)


def redact(text: str) -> str:
    """``text`` with tokens and registered secrets replaced by ``[redacted]``."""
    text = _TOKENS.sub(REDACTED, text)
    text = _URL_SIGNATURES.sub(r"\1" + REDACTED, text)
    for secret in tuple(_secrets):
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


_formatter = logging.Formatter()


def install() -> None:
    """Redact every log record from now on (process-wide), and keep the loggers of
    :data:`QUIET_AT_DEBUG` at INFO at most. Call it again after (re)configuring logging."""
    global _installed
    for name in QUIET_AT_DEBUG:
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() < logging.INFO:
            logger.setLevel(logging.INFO)
    with _lock:
        if _installed:
            return
        _installed = True
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        if record.msg in _FRAME_FORMATS and isinstance(record.args, tuple) and len(record.args) == 1:
            frame = record.args[0]
            data, opcode = getattr(frame, "data", None), getattr(frame, "opcode", None)
            if isinstance(data, bytes | bytearray | memoryview) and opcode is not None:
                name = getattr(opcode, "name", str(opcode))
                record.args = (f"{name} [{len(data)} bytes, not logged]",)
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: the handler reports it as usual
            return record
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(_formatter.formatException(record.exc_info))
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return record

    logging.setLogRecordFactory(factory)
