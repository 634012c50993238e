"""Errors raised by the media plane, arranged by whose fault they are.

::

    InvalidRequestError (salon.errors)
    └── MediaError                  the client's media request cannot be honoured (400)
        ├── InvalidSdpError         the offer is malformed or lacks a mandatory attribute
        ├── CandidateRefusedError   a trickled ICE candidate the server will not contact
        └── UnsupportedError        well-formed, but asks for something we do not do
                                    (no common codec, no rtcp-mux, ...)
    ConflictError (salon.errors)
    └── MediaStateError             the router / transport / producer is already closed (409)
    ServerError (salon.errors)
    └── MediaResourceError          our side ran out of something (UDP ports) (500)

Exceptions from aiortc/aioice/pylibsrtp are translated into these where they cross into
salon's API; inside the packet path they are logged and the packet is dropped.
"""

from __future__ import annotations

from salon.errors import ConflictError, InvalidRequestError, ServerError

__all__ = [
    "CandidateRefusedError",
    "InvalidSdpError",
    "MediaError",
    "MediaResourceError",
    "MediaStateError",
    "UnsupportedError",
]


class MediaError(InvalidRequestError):
    """The client's media request (an SDP offer, a subscription) cannot be honoured."""

    code = "media_error"


class InvalidSdpError(MediaError):
    """The SDP offer is malformed or lacks a mandatory attribute (ICE, DTLS fingerprint)."""

    code = "invalid_sdp"


class UnsupportedError(MediaError):
    """A well-formed request for something the SFU does not support (e.g. no common codec)."""

    code = "unsupported_media"


class MediaStateError(ConflictError):
    """An operation on a media object that is already closed."""

    code = "media_closed"


class MediaResourceError(ServerError):
    """The SFU ran out of a local resource, such as UDP ports in the configured range."""

    code = "media_resource_exhausted"


class CandidateRefusedError(MediaError):
    """A trickled ICE candidate the server will not send checks to: a refused address
    (multicast, broadcast, link-local, a denied network...), a name instead of an IP, or one
    candidate too many for the transport (:mod:`salon.media.ice_policy`)."""

    code = "candidate_refused"
