"""Observability: Prometheus metrics (:mod:`salon.observability.metrics`), structured JSON logs
(:mod:`salon.observability.logs`) and the event-loop lag probe (:mod:`salon.observability.lag`).

Only :mod:`~salon.observability.metrics` imports ``prometheus_client``; the media workers use
the other two.
"""

from __future__ import annotations

__all__: list[str] = []
