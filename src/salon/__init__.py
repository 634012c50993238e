"""salon: self-hosted, OpenTok-compatible video sessions.

The package is split by part of the platform:

- :mod:`salon.server`: the HTTP application (OpenTok-compatible REST API, health, OpenAPI).
- :mod:`salon.protocol`: the signalling wire protocol (typed messages, error and close codes),
  shared by the server and the clients; imports only Pydantic.
- :mod:`salon.signalling`: the WebSocket signalling service (sessions, connections, streams,
  signals).
- :mod:`salon.media`: the media plane (SFU) and its seam to signalling.
- :mod:`salon.store`: persistence of projects and sessions (SQLite by default, PostgreSQL by URL).
- :mod:`salon.cli`: the ``salon`` command.
- :mod:`salon.bench`: the benchmarks behind ``salon bench`` (loaded only when it runs).
"""

import logging

from salon.errors import (
    AuthenticationError,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    SalonError,
    ServerError,
    TokenError,
)
from salon.ids import SessionId, decode_session_id, encode_session_id
from salon.tokens import Role, TokenClaims, generate_token, verify_token

__version__ = "0.1.0"

__all__ = [
    "AuthenticationError",
    "ConflictError",
    "InvalidRequestError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "Role",
    "SalonError",
    "ServerError",
    "SessionId",
    "TokenClaims",
    "TokenError",
    "__version__",
    "decode_session_id",
    "encode_session_id",
    "generate_token",
    "verify_token",
]

logging.getLogger(__name__).addHandler(logging.NullHandler())
