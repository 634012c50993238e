"""The stable codes of the signalling protocol: error codes, close codes and reasons.

These values travel on the wire and are part of the protocol: a value is never renamed or
reused within a protocol version (see ``docs/protocol.md``, "Versioning").
"""

from __future__ import annotations

import enum

__all__ = ["CloseCode", "DisconnectReason", "ErrorCode", "StreamReason", "VideoReason"]


class ErrorCode(enum.StrEnum):
    """Stable error codes carried by ``error`` messages."""

    INVALID_MESSAGE = "invalid_message"
    """The message is not valid JSON, or does not match the schema."""
    UNKNOWN_TYPE = "unknown_type"
    """The ``type`` names no client message."""
    MESSAGE_TOO_LARGE = "message_too_large"
    """The message is larger than the server accepts (64 KiB)."""
    SIGNAL_TOO_LARGE = "signal_too_large"
    """A signal's type is over 128 characters or its data over 8192."""
    INVALID_TOKEN = "invalid_token"
    """``connect`` was refused because of its token; the close code says why."""
    NOT_CONNECTED = "not_connected"
    """A request other than ``connect`` came before the connection was established."""
    ALREADY_CONNECTED = "already_connected"
    PERMISSION_DENIED = "permission_denied"
    """The connection's role does not allow the request."""
    NOT_FOUND = "not_found"
    """The stream or connection named by the request does not exist in the session."""
    CONFLICT = "conflict"
    INVALID_REQUEST = "invalid_request"
    MEDIA_UNAVAILABLE = "media_unavailable"
    """The media plane could not serve the request (e.g. an ``sdp`` sent to a server without
    media, or the server ran out of UDP ports)."""
    INVALID_SDP = "invalid_sdp"
    """The SDP offer or ICE candidate is malformed or lacks a mandatory attribute."""
    CANDIDATE_REFUSED = "candidate_refused"
    """A trickled ICE candidate the server will not contact: an address its ICE policy
    refuses (multicast, broadcast, link-local, loopback, a denied network), a name instead of
    an IP (mDNS ``.local``), or one candidate over the per-transport cap."""
    UNSUPPORTED_MEDIA = "unsupported_media"
    """The SDP offer is well formed but asks for something the server does not do."""
    TRANSPORT_CLOSED = "transport_closed"
    """A subscribe offer from a peer connection whose server transport is gone (its media
    worker failed): subscribe again from a new peer connection."""
    INTERNAL_ERROR = "internal_error"
    RESUME_REFUSED = "resume_refused"
    """A ``connect`` with ``resume`` named no connection waiting to be resumed: a wrong
    secret, another token, or its grace period is over (the connection was destroyed).
    Connect afresh (a new connection ID); the socket is closed with 4011."""
    RATE_LIMITED = "rate_limited"
    """The connection sent more requests than its rate limit allows (50 a second, bursts of
    200, by default): the request was not carried out. Slow down."""


class CloseCode(enum.IntEnum):
    """WebSocket close codes the server uses (RFC 6455 private range 4000-4999)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    INTERNAL_ERROR = 1011
    """The server failed (e.g. its database did not answer) while connecting the client."""
    PROTOCOL_ERROR = 4000
    """The first valid message was not a ``connect`` request."""
    INVALID_TOKEN = 4001
    """The token is malformed, badly signed, or of an unknown project."""
    TOKEN_EXPIRED = 4002
    WRONG_SESSION = 4003
    """The token is for another session, or the session does not belong to its project."""
    SESSION_NOT_FOUND = 4004
    CONNECT_TIMEOUT = 4005
    """No ``connect`` request arrived in time."""
    HEARTBEAT_TIMEOUT = 4008
    FORCE_DISCONNECTED = 4009
    SLOW_CONSUMER = 4010
    """The client did not read its messages fast enough."""
    RESUME_REFUSED = 4011
    """A ``connect`` with ``resume`` was refused (``resume_refused``): connect afresh."""
    REPLACED = 4012
    """The connection was resumed on another socket: this one is no longer it."""
    REDIRECTED = 4013
    """A node of a cluster sent the client to another node (``redirect``): connect there."""
    RATE_LIMITED = 4029
    """The client kept sending while its requests were refused as ``rate_limited``."""


class DisconnectReason(enum.StrEnum):
    """Why a connection was destroyed (OpenTok's ``connectionDestroyed`` reasons)."""

    CLIENT_DISCONNECTED = "clientDisconnected"
    NETWORK_DISCONNECTED = "networkDisconnected"
    FORCE_DISCONNECTED = "forceDisconnected"


class StreamReason(enum.StrEnum):
    """Why a stream was destroyed (OpenTok's ``streamDestroyed`` reasons)."""

    CLIENT_DISCONNECTED = "clientDisconnected"
    NETWORK_DISCONNECTED = "networkDisconnected"
    FORCE_DISCONNECTED = "forceDisconnected"
    FORCE_UNPUBLISHED = "forceUnpublished"
    UNPUBLISHED = "unpublished"
    MEDIA_STOPPED = "mediaStopped"


class VideoReason(enum.StrEnum):
    """Why a subscription's video stopped or came back (``video_disabled`` / ``video_enabled``;
    OpenTok's ``videoDisabled`` / ``videoEnabled`` reasons that the server decides)."""

    QUALITY = "quality"
    """The subscriber's link cannot carry even the stream's lowest video layer: the server
    stopped forwarding its video (audio goes on), or forwards it again now that it can."""
