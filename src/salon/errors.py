"""The errors salon raises, arranged by whose fault they are.

::

    SalonError
    ├── ClientError                 the caller sent something we refuse (4xx)
    │   ├── InvalidRequestError     malformed or out-of-range input (400)
    │   ├── AuthenticationError     missing, expired or wrongly signed credentials (403)
    │   │   └── TokenError          a client token that cannot be used to connect
    │   ├── PermissionDeniedError   valid credentials, but the role does not allow it (403)
    │   ├── NotFoundError           unknown project, session, connection or stream (404)
    │   ├── ConflictError           the request clashes with the current state (409)
    │   └── PayloadTooLargeError    a body or signal over its size limit (413)
    └── ServerError                 our fault: a bug or a failed dependency (500)
        └── UnavailableError        another node it needs cannot be reached (503)

Every error carries a stable machine-readable ``code`` (used verbatim in signalling error
messages) and the HTTP ``status`` the REST API answers with. Exceptions from dependencies
(PyJWT, SQLAlchemy, aiortc, ...) are translated into these at the boundary.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "ClientError",
    "ConflictError",
    "InvalidRequestError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "SalonError",
    "ServerError",
    "TokenError",
    "UnavailableError",
]


class SalonError(Exception):
    """Base class of every error salon raises on purpose."""

    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class ClientError(SalonError):
    """The caller's fault: the request is refused and nothing else changes."""

    status = 400
    code = "bad_request"


class InvalidRequestError(ClientError):
    status = 400
    code = "invalid_request"


class AuthenticationError(ClientError):
    status = 403
    code = "authentication_failed"


class TokenError(AuthenticationError):
    """A client token that cannot be used: malformed, badly signed, expired or foreign."""

    code = "invalid_token"


class PermissionDeniedError(ClientError):
    status = 403
    code = "permission_denied"


class NotFoundError(ClientError):
    status = 404
    code = "not_found"


class ConflictError(ClientError):
    status = 409
    code = "conflict"


class PayloadTooLargeError(ClientError):
    status = 413
    code = "payload_too_large"


class ServerError(SalonError):
    """Our fault: a bug, or a dependency that failed."""

    status = 500
    code = "internal_error"


class UnavailableError(ServerError):
    """Another node of the cluster that the request needs cannot be reached (or does not
    answer); the request may work later."""

    status = 503
    code = "node_unavailable"
