"""WebSocket signalling: the wire schema, the sans-I/O session state and the asyncio service."""

from salon.signalling.service import SignallingConfig, SignallingService
from salon.signalling.session import Session

__all__ = ["Session", "SignallingConfig", "SignallingService"]
