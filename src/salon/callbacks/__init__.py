"""Session-monitoring and archive callbacks, posted to the application as OpenTok posts them.

:class:`SessionMonitor` (sans-I/O) turns what happens in live sessions into callback bodies;
:class:`CallbackService` stores them in the durable outbox and delivers them, at least once,
in order within a session, with retries (docs/callbacks.md).
"""

from salon.callbacks.delivery import CallbackConfig, CallbackService, backoff, sign
from salon.callbacks.monitor import SESSION_EVENTS, SessionMonitor, callback_reason

__all__ = [
    "SESSION_EVENTS",
    "CallbackConfig",
    "CallbackService",
    "SessionMonitor",
    "backoff",
    "callback_reason",
    "sign",
]
