"""The errors the client SDK raises, arranged by whose fault they are.

::

    ClientError                         base of every error the SDK raises on purpose
    ├── InvalidStateError               you called something the object's state does not allow
    │                                   (e.g. publish before connect); nothing was sent
    ├── ConnectionFailed                the signalling link could not be opened or was lost
    │   ├── InvalidToken                the server refused the token (``close_code`` says why)
    │   ├── SessionNotFound             the session does not exist on the server
    │   └── ConnectionLost              the link broke while a request was in flight
    ├── RequestRefused                  the server refused a request (``code`` is its error code)
    │   ├── PermissionDenied            the connection's role does not allow it
    │   ├── NotFound                    the stream, subscription or connection does not exist
    │   ├── Conflict                    the request clashes with the session's current state
    │   ├── InvalidRequest              malformed or out of range (incl. a signal over its limit)
    │   ├── MediaUnavailable            the server has no media plane or ran out of ports
    │   ├── MediaRejected               the server refused the SDP offer or an ICE candidate
    │   └── ServerError                 the server failed (its fault, try again)
    └── MediaError                      local media failed (negotiation, encoder, ICE)
        └── SourceError                 a publisher's source cannot produce media (a file
            │                           without the track asked for, unreadable, ended)
            └── DeviceNotFound          no such capture device, or it cannot be opened

A source that cannot start makes :meth:`Session.publish <salon.client.Session.publish>`
raise :class:`SourceError` (sources are opened and probed before anything is sent); one that
fails later, while publishing, is reported as an :class:`~salon.client.events.Error` event.

Requests refused by the server carry its stable error ``code`` (:class:`ErrorCode`, or the
raw string of a code added by a newer server) and its human-readable message, prefixed with
what was asked for: ``"subscribe to stream 78ac...: not_found: no stream 78ac... in this
session"``. Exceptions from dependencies (websockets,
aiortc, PyAV) are translated at the boundary (``raise ... from exc``).
"""

from __future__ import annotations

from salon.protocol import CloseCode, ErrorCode

__all__ = [
    "ClientError",
    "Conflict",
    "ConnectionFailed",
    "ConnectionLost",
    "DeviceNotFound",
    "InvalidRequest",
    "InvalidStateError",
    "InvalidToken",
    "MediaError",
    "MediaRejected",
    "MediaUnavailable",
    "NotFound",
    "PermissionDenied",
    "RateLimited",
    "RequestRefused",
    "ServerError",
    "SessionNotFound",
    "SourceError",
    "error_for_code",
]


class ClientError(Exception):
    """Base class of every error the client SDK raises on purpose."""


class InvalidStateError(ClientError):
    """The call is not allowed in the object's current state (named in the message)."""


class ConnectionFailed(ClientError):
    """The signalling link could not be opened, or the server closed it.

    :ivar close_code: the WebSocket close code, when the server sent one.
    """

    def __init__(self, message: str, *, close_code: int | None = None) -> None:
        super().__init__(message)
        self.close_code = close_code


class InvalidToken(ConnectionFailed):
    """The server refused the token: malformed, badly signed, expired or for another session.

    ``close_code`` is :attr:`CloseCode.INVALID_TOKEN`, :attr:`CloseCode.TOKEN_EXPIRED` or
    :attr:`CloseCode.WRONG_SESSION`.
    """

    @property
    def expired(self) -> bool:
        """Whether the token had expired (get a new one) rather than being invalid."""
        return self.close_code == CloseCode.TOKEN_EXPIRED


class SessionNotFound(ConnectionFailed):
    """The session ID names no session on the server."""


class ConnectionLost(ConnectionFailed):
    """The signalling link broke while the request was in flight: its outcome is unknown."""


class RequestRefused(ClientError):
    """The server refused a request.

    :ivar code: the server's stable error code: an :class:`ErrorCode`, or the raw string of
        a code this SDK does not know (one added by a newer server, docs/protocol.md §14).
        A known code is always the enum member; an unknown one raises the base class
        :class:`RequestRefused`, so ``except RequestRefused`` catches every refusal.
    :ivar server_message: the server's human-readable explanation.
    :ivar action: what was asked, e.g. ``"subscribe to stream 78ac..."``.
    """

    def __init__(self, action: str, code: ErrorCode | str, server_message: str) -> None:
        super().__init__(f"{action}: {code!s}: {server_message}")
        self.action = action
        self.code = code
        self.server_message = server_message


class PermissionDenied(RequestRefused):
    """The connection's role (from its token) does not allow the request."""


class NotFound(RequestRefused):
    """The stream, subscription or connection named by the request does not exist (any more)."""


class Conflict(RequestRefused):
    """The request clashes with the session's current state."""


class InvalidRequest(RequestRefused):
    """The request is malformed or out of range (e.g. a signal over 8192 characters)."""


class MediaUnavailable(RequestRefused):
    """The server cannot carry media for the request (no media plane, out of UDP ports, or a
    stream published without media)."""


class MediaRejected(RequestRefused):
    """The server refused the SDP offer or an ICE candidate (malformed or unsupported)."""


class RateLimited(RequestRefused):
    """The connection sent requests faster than the server's rate limit: slow down and retry.
    (Keeping on sending while refused gets the connection closed.)"""


class ServerError(RequestRefused):
    """The server failed while handling the request: its fault; retrying may work."""


class MediaError(ClientError):
    """Local media failed: negotiation, ICE/DTLS, or a source that cannot produce frames."""


class SourceError(MediaError):
    """A publisher's video or audio source cannot produce media: a media file that cannot be
    read, has no stream of the kind asked for, or ended (``loop=False``); a device that
    cannot be opened."""


class DeviceNotFound(SourceError):
    """The capture device does not exist or cannot be opened (e.g. no ``/dev/video0``, or a
    path that is not a V4L2 camera, or one another program holds)."""


_BY_CODE: dict[ErrorCode, type[RequestRefused]] = {
    ErrorCode.PERMISSION_DENIED: PermissionDenied,
    ErrorCode.NOT_FOUND: NotFound,
    ErrorCode.CONFLICT: Conflict,
    ErrorCode.RESUME_REFUSED: Conflict,
    ErrorCode.ALREADY_CONNECTED: Conflict,
    ErrorCode.INVALID_REQUEST: InvalidRequest,
    ErrorCode.INVALID_MESSAGE: InvalidRequest,
    ErrorCode.UNKNOWN_TYPE: InvalidRequest,
    ErrorCode.MESSAGE_TOO_LARGE: InvalidRequest,
    ErrorCode.SIGNAL_TOO_LARGE: InvalidRequest,
    ErrorCode.NOT_CONNECTED: InvalidRequest,
    ErrorCode.MEDIA_UNAVAILABLE: MediaUnavailable,
    ErrorCode.TRANSPORT_CLOSED: MediaUnavailable,
    ErrorCode.INVALID_SDP: MediaRejected,
    ErrorCode.UNSUPPORTED_MEDIA: MediaRejected,
    ErrorCode.CANDIDATE_REFUSED: MediaRejected,
    ErrorCode.INTERNAL_ERROR: ServerError,
    ErrorCode.RATE_LIMITED: RateLimited,
}


def error_for_code(action: str, code: ErrorCode | str, server_message: str) -> RequestRefused:
    """The typed exception for a server ``error`` reply to the request described by ``action``:
    the subclass for a known code, :class:`RequestRefused` itself for a code this SDK does not
    know (a newer server's), which keeps the raw string as ``code``."""
    cls = _BY_CODE.get(code, RequestRefused) if isinstance(code, ErrorCode) else RequestRefused
    return cls(action, code, server_message)
