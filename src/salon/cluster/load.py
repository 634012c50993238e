"""A node's load, as placement compares it (sans-I/O): one figure for its signalling *and*
its media work.

The figure is in *load points*:

- 1 per signalling connection (:data:`CONNECTION_POINTS`);
- 1 per consumer in its media workers (:data:`CONSUMER_POINTS`: one track of a stream
  forwarded to one subscriber, which costs the forwarding of every packet of it; the pipes to
  other nodes and the recorders count through the workers' CPU only);
- up to 100 for its media workers' CPU (:data:`CPU_POINTS`): their mean CPU utilisation (0 to
  1: CPU seconds used per second of wall time, over every worker, so 100 means every worker
  busy all the time), smoothed over the last heartbeats (an exponential moving average,
  :data:`CPU_SMOOTHING` of the newest sample each time) and rounded.

So a node whose workers are busy forwarding media (many consumers, or a few heavy ones: high
bitrates, simulcast, recording) is loaded however few connections it has, and one with many
idle connections is too. A node without media (``--no-media``) counts its connections only.
``--placement-margin`` is in these points.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["CONNECTION_POINTS", "CONSUMER_POINTS", "CPU_POINTS", "CPU_SMOOTHING", "NodeLoad", "load_points"]

CONNECTION_POINTS = 1.0
CONSUMER_POINTS = 1.0
#: The points of every media worker busy all the time (the cap of the CPU part).
CPU_POINTS = 100.0
#: The weight of the newest CPU sample in the moving average (the rest: the average so far).
CPU_SMOOTHING = 0.5


def load_points(connections: int, consumers: int, cpu: float) -> int:
    """The load figure of ``connections`` signalling connections, ``consumers`` media consumers
    and a mean worker CPU utilisation ``cpu`` (0 to 1; more is taken as 1, less than 0 as 0)."""
    cpu = min(1.0, max(0.0, cpu))
    return round(connections * CONNECTION_POINTS + consumers * CONSUMER_POINTS + cpu * CPU_POINTS)


@dataclass(slots=True)
class NodeLoad:
    """The smoothed CPU utilisation of a node's media workers, from samples of their CPU time
    (:meth:`sample`), and the node's load figure (:meth:`points`)."""

    smoothing: float = CPU_SMOOTHING
    #: The smoothed mean utilisation of the workers (0 to 1).
    cpu: float = 0.0
    _last: dict[int, float] = field(default_factory=dict)  # worker pid -> CPU seconds
    _at: float | None = None

    def sample(self, now: float, cpu_times: Mapping[int, float]) -> None:
        """The workers' CPU seconds (by pid) at monotonic time ``now``. A worker seen for the
        first time (new, or restarted: a new pid) counts from its next sample; a worker gone
        is forgotten. No workers: utilisation 0."""
        if self._at is not None and now > self._at:
            elapsed = now - self._at
            used = [
                max(0.0, cpu_time - self._last[pid]) / elapsed
                for pid, cpu_time in cpu_times.items()
                if pid in self._last
            ]
            # The mean over every worker now live: one just (re)started counts as idle.
            current = min(1.0, sum(used) / len(cpu_times)) if cpu_times else 0.0
            self.cpu += self.smoothing * (current - self.cpu)
        if not cpu_times:
            self.cpu = 0.0
        self._last = dict(cpu_times)
        self._at = now

    def points(self, connections: int, consumers: int) -> int:
        return load_points(connections, consumers, self.cpu)
