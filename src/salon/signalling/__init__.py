"""WebSocket signalling: the sans-I/O session state and the asyncio service (the wire schema is
:mod:`salon.protocol`)."""

from salon.signalling.service import SignallingConfig, SignallingService
from salon.signalling.session import Session

__all__ = ["Session", "SignallingConfig", "SignallingService"]
