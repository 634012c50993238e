"""The public API is what ``__all__`` says: pin it, so a change to it is a decision."""

from __future__ import annotations

import salon
import salon.callbacks
import salon.server
import salon.signalling
import salon.signalling.schema
import salon.store


def test_salon_exports() -> None:
    assert sorted(salon.__all__) == sorted(
        [
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
    )


def test_every_exported_name_exists() -> None:
    for module in (salon, salon.server, salon.signalling, salon.signalling.schema, salon.store):
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.{name}"


def test_server_and_signalling_exports() -> None:
    assert salon.server.__all__ == ["ServerConfig", "create_app"]
    assert salon.signalling.__all__ == ["Session", "SignallingConfig", "SignallingService"]
    assert salon.store.__all__ == [
        "CallbackEvent",
        "NewCallback",
        "Project",
        "SessionRecord",
        "Store",
        "database_url_for",
    ]
    assert salon.callbacks.__all__ == [
        "SESSION_EVENTS",
        "CallbackConfig",
        "CallbackService",
        "SessionMonitor",
        "backoff",
        "callback_reason",
        "sign",
    ]
