"""Session, connection and stream identifiers.

Session IDs use OpenTok's format, because the official server SDKs decode them
(``opentok.generate_token`` refuses a session ID whose decoded ``~``-separated fields do
not contain the API key):

    "1_" + base64url_nopad("1~{api_key}~{location}~{created_ms}~{random}~~")

Connection and stream IDs are UUID4 strings, as in OpenTok.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import time
import uuid
from dataclasses import dataclass

from salon.errors import InvalidRequestError

__all__ = ["SessionId", "decode_session_id", "encode_session_id", "new_connection_id", "new_stream_id"]

MAX_SESSION_ID_LENGTH = 255


@dataclass(frozen=True, slots=True)
class SessionId:
    """The fields carried inside an OpenTok-format session ID."""

    api_key: str
    location: str
    created_ms: int
    nonce: str


def encode_session_id(
    api_key: str, location: str = "", *, created_ms: int | None = None, nonce: str | None = None
) -> str:
    """Make a new session ID for the project ``api_key``."""
    if "~" in api_key or "~" in location:
        raise InvalidRequestError("api_key and location must not contain '~'")
    if created_ms is None:
        created_ms = int(time.time() * 1000)
    if nonce is None:
        nonce = secrets.token_urlsafe(18)
    raw = f"1~{api_key}~{location}~{created_ms}~{nonce}~~".encode()
    return "1_" + base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def session_id_fields(session_id: str) -> list[str]:
    """Decode a session ID the way the official SDK does, into its ``~``-separated fields.

    :raises InvalidRequestError: if it is not a session ID in OpenTok's format.
    """
    if not isinstance(session_id, str) or not 3 <= len(session_id) <= MAX_SESSION_ID_LENGTH:
        raise InvalidRequestError("invalid session ID")
    body = session_id[2:]
    try:
        text = base64.b64decode(body + "=" * (-len(body) % 4), altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise InvalidRequestError("invalid session ID") from exc
    fields = text.split("~")
    if len(fields) < 5:
        raise InvalidRequestError("invalid session ID")
    return fields


def decode_session_id(session_id: str) -> SessionId:
    """Decode a session ID into its fields.

    :raises InvalidRequestError: if it is not a session ID in OpenTok's format.
    """
    fields = session_id_fields(session_id)
    try:
        created_ms = int(fields[3])
    except ValueError:
        created_ms = 0  # older IDs carry a date string here
    if not fields[1]:
        raise InvalidRequestError("invalid session ID")
    return SessionId(api_key=fields[1], location=fields[2], created_ms=created_ms, nonce=fields[4])


def new_connection_id() -> str:
    return str(uuid.uuid4())


def new_stream_id() -> str:
    return str(uuid.uuid4())
