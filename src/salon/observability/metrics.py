"""Prometheus metrics of one node (``prometheus_client``).

Served on a metrics address of its own (``--metrics-address``, loopback by default: a thread
running ``prometheus_client``'s HTTP server), and optionally at ``GET /metrics`` on the main
HTTP server to a request with ``Authorization: Bearer`` and the metrics token
(``--metrics-token``, compared in constant time; without it: 401).

Everything is gathered when Prometheus scrapes (:class:`SalonCollector`, a custom collector):
the live sessions, connections, streams and subscriptions from the signalling service, the
counters it keeps of the messages it received and sent and of the errors it answered, the
callback outbox and the archives, and from each media worker, asked over its channel with a
short timeout (:data:`WORKER_TIMEOUT`), its consumers, media counters, CPU time and event-loop
lag. Nothing is counted per packet in the main process: the workers keep cumulative counters
(:mod:`salon.media.totals`) that the scrape reads. A worker that does not answer in time is
reported ``salon_worker_up 0`` and the rest of the scrape goes on.

Every series has a ``node`` label (``--node-name``, default the host name), so the series of
the nodes of a cluster stay apart whatever Prometheus's ``instance`` label says. The metric
names, types, labels and help texts are all in :data:`METRICS` (docs/deployment.md,
"Monitoring", lists them).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, GCCollector, ProcessCollector, generate_latest
from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import start_http_server
from prometheus_client.registry import Collector

from salon import __version__
from salon.media.channel import DumpRequest, WorkerDump
from salon.media.totals import COUNTERS
from salon.observability.lag import LAG_BUCKETS, LoopLag

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from salon.archive.service import ArchiveService
    from salon.callbacks import CallbackService
    from salon.media.plane import SfuMediaPlane
    from salon.signalling.service import SignallingService
    from salon.store import Store

__all__ = [
    "DEFAULT_METRICS_ADDRESS",
    "METRICS",
    "MetricsServer",
    "SalonCollector",
    "parse_metrics_address",
    "router",
]

logger = logging.getLogger(__name__)

#: Where ``salon serve`` serves its metrics unless told otherwise (loopback only).
DEFAULT_METRICS_ADDRESS = "127.0.0.1:9464"
#: Seconds one media worker has to answer a scrape's request for its counters.
WORKER_TIMEOUT = 2.0
#: Seconds the database has to count the callback outbox during a scrape.
STORE_TIMEOUT = 2.0
#: Seconds a scrape waits for the server's event loop to gather everything.
GATHER_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class MetricInfo:
    name: str
    """As exposed, without the ``_total`` suffix ``prometheus_client`` adds to counters."""
    kind: str
    """``gauge``, ``counter`` or ``histogram``."""
    help: str
    labels: tuple[str, ...] = ()
    """Besides ``node``, which every series has."""


def _metric(name: str, kind: str, help: str, *labels: str) -> MetricInfo:
    return MetricInfo(name, kind, help, labels)


#: Every metric salon exports (besides prometheus_client's ``process_*`` and ``python_gc_*``
#: of the main process), by key.
METRICS: dict[str, MetricInfo] = {
    "build": _metric("salon_build_info", "gauge", "Always 1; the version of salon", "version"),
    "scrape_complete": _metric(
        "salon_scrape_complete",
        "gauge",
        "1 if everything was gathered in time; 0 if the event loop or a part did not answer",
    ),
    "sessions": _metric("salon_sessions", "gauge", "Live sessions (with at least one connection)"),
    "connections": _metric(
        "salon_connections",
        "gauge",
        "This node's connections of the live sessions (suspended ones included)",
    ),
    "suspended": _metric(
        "salon_connections_suspended", "gauge", "Connections whose link broke, waiting for a resume"
    ),
    "streams": _metric(
        "salon_streams", "gauge", "Streams published in the live sessions by this node's connections"
    ),
    "subscriptions": _metric("salon_subscriptions", "gauge", "Subscriptions in the live sessions"),
    "signalling_received": _metric(
        "salon_signalling_messages_received", "counter", "Valid client messages, by type", "type"
    ),
    "signalling_sent": _metric(
        "salon_signalling_messages_sent", "counter", "Server messages queued to clients, by type", "type"
    ),
    "signalling_errors": _metric(
        "salon_signalling_errors", "counter", "Error replies sent to clients, by error code", "code"
    ),
    "callbacks_pending": _metric(
        "salon_callbacks_pending",
        "gauge",
        "Callbacks waiting to be delivered (the outbox's pending ones plus those not yet stored)",
    ),
    "callbacks_given_up": _metric(
        "salon_callbacks_given_up", "gauge", "Callbacks given up after every attempt failed (in the outbox)"
    ),
    "archives_active": _metric("salon_archives_active", "gauge", "Archives recording now"),
    "archives_started": _metric("salon_archives_started", "counter", "Archives started"),
    "workers": _metric("salon_workers", "gauge", "Media worker processes configured"),
    "worker_up": _metric(
        "salon_worker_up", "gauge", "1 if the media worker answered the scrape in time", "worker"
    ),
    "worker_restarts": _metric("salon_worker_restarts", "counter", "Media workers restarted after dying"),
    "worker_cpu": _metric(
        "salon_worker_cpu_seconds", "counter", "CPU time used by the media worker process", "worker"
    ),
    "worker_rss": _metric(
        "salon_worker_resident_memory_bytes", "gauge", "Resident memory of the media worker", "worker"
    ),
    "routers": _metric("salon_routers", "gauge", "Routers (one per session) on the media worker", "worker"),
    "transports": _metric("salon_transports", "gauge", "WebRTC transports on the media worker", "worker"),
    "producers": _metric("salon_producers", "gauge", "Producers (published tracks) on the worker", "worker"),
    "consumers": _metric("salon_consumers", "gauge", "Consumers (subscribed tracks) on the worker", "worker"),
    "loop_lag": _metric(
        "salon_event_loop_lag_seconds",
        "histogram",
        "How late the event loop ran a timer, sampled every 0.25 s (process: main or the worker)",
        "process",
    ),
    "loop_lag_max": _metric(
        "salon_event_loop_lag_max_seconds",
        "gauge",
        "The largest event-loop lag of the last 10 to 20 seconds",
        "process",
    ),
    "packets_received": _metric(
        "salon_media_packets_received", "counter", "RTP packets received from publishers", "worker"
    ),
    "bytes_received": _metric(
        "salon_media_bytes_received", "counter", "RTP bytes received from publishers", "worker"
    ),
    "packets_forwarded": _metric(
        "salon_media_packets_forwarded", "counter", "RTP packets forwarded to subscribers", "worker"
    ),
    "bytes_forwarded": _metric(
        "salon_media_bytes_forwarded", "counter", "RTP payload bytes forwarded to subscribers", "worker"
    ),
    "packets_lost": _metric(
        "salon_media_packets_lost", "counter", "Publishers' packets found missing (NACKed)", "worker"
    ),
    "packets_recovered": _metric(
        "salon_media_packets_recovered",
        "counter",
        "Missing publishers' packets that arrived after a NACK (RTX or retransmission)",
        "worker",
    ),
    "packets_unrecovered": _metric(
        "salon_media_packets_unrecovered", "counter", "Missing publishers' packets given up", "worker"
    ),
    "nacks_received": _metric(
        "salon_media_nacks_received", "counter", "NACKs received from subscribers", "worker"
    ),
    "packets_retransmitted": _metric(
        "salon_media_packets_retransmitted",
        "counter",
        "Packets sent again to subscribers (answering their NACKs)",
        "worker",
    ),
    "key_frame_requests": _metric(
        "salon_media_key_frame_requests",
        "counter",
        "Key-frame requests (PLI/FIR): received from subscribers, sent to publishers",
        "worker",
        "direction",
    ),
    "datagrams_dropped": _metric(
        "salon_media_datagrams_dropped",
        "counter",
        "Datagrams the worker's transports dropped",
        "worker",
        "kind",
    ),
    "pipe_packets": _metric(
        "salon_pipe_packets", "counter", "RTP packets through pipes between routers", "worker", "direction"
    ),
    "pipe_bytes": _metric(
        "salon_pipe_bytes", "counter", "RTP bytes through pipes between routers", "worker", "direction"
    ),
}

#: WorkerDump.media key → metric key, for the counters with the worker as only label.
_MEDIA_COUNTERS = {
    "packets_received": "packets_received",
    "bytes_received": "bytes_received",
    "packets_forwarded": "packets_forwarded",
    "bytes_forwarded": "bytes_forwarded",
    "packets_lost": "packets_lost",
    "packets_recovered": "packets_recovered",
    "packets_unrecovered": "packets_unrecovered",
    "nacks_received": "nacks_received",
    "packets_retransmitted": "packets_retransmitted",
}
assert set(_MEDIA_COUNTERS) <= set(COUNTERS)


@dataclass(slots=True)
class WorkerSample:
    """One media worker slot as a scrape found it (``dump`` None: not running, or no answer)."""

    name: str
    dump: WorkerDump | None


@dataclass(slots=True)
class Snapshot:
    """Everything one scrape reports, gathered on the server's event loop."""

    complete: bool = True
    sessions: int = 0
    connections: int = 0
    suspended: int = 0
    streams: int = 0
    subscriptions: int = 0
    received: dict[str, int] = field(default_factory=dict)
    sent: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    callbacks_pending: int | None = None
    callbacks_given_up: int | None = None
    archives_active: int = 0
    archives_started: int = 0
    workers_configured: int = 0
    worker_restarts: int = 0
    workers: list[WorkerSample] = field(default_factory=list)
    main_lag: tuple[list[int], float, float] = ([], 0.0, 0.0)


class SalonCollector(Collector):
    """The custom collector of one server: gathers a :class:`Snapshot` on the server's event
    loop (from whichever thread Prometheus's request is served on) and turns it into metric
    families. Made in the server's lifespan, on its event loop."""

    def __init__(
        self,
        node: str,
        signalling: SignallingService,
        *,
        media: SfuMediaPlane | None = None,
        callbacks: CallbackService | None = None,
        archives: ArchiveService | None = None,
        store: Store | None = None,
    ) -> None:
        self.node = node
        self.signalling = signalling
        self.media = media
        self.callbacks = callbacks
        self.archives = archives
        self.store = store
        self.loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self.lag = LoopLag()
        self.lag.start()

    def close(self) -> None:
        self.lag.stop()

    # -- gathering (on the event loop) -------------------------------------------------------

    async def gather(self) -> Snapshot:
        snapshot = Snapshot()
        service = self.signalling
        sessions = list(service.sessions.values())
        snapshot.sessions = len(sessions)
        for session in sessions:
            # In a cluster a session's copy also lists the other nodes' connections (and their
            # streams): a node counts its own (``node`` None), so the nodes' series add up.
            own = {cid for cid, c in session.connections.items() if c.node is None}
            snapshot.connections += len(own)
            snapshot.suspended += sum(1 for cid in own if session.connections[cid].suspended)
            snapshot.streams += sum(1 for s in session.streams.values() if s.connection_id in own)
            snapshot.subscriptions += len(session.subscriptions)
        stats = service.stats
        snapshot.received, snapshot.sent = dict(stats.received), dict(stats.sent)
        snapshot.errors = dict(stats.errors)
        if self.archives is not None:
            snapshot.archives_active = self.archives.active_count
            snapshot.archives_started = self.archives.started_total
        snapshot.main_lag = (self.lag.buckets(), self.lag.sum, self.lag.max)
        parts = [self._gather_workers(snapshot), self._gather_callbacks(snapshot)]
        snapshot.complete = all(await asyncio.gather(*parts))
        return snapshot

    async def _gather_workers(self, snapshot: Snapshot) -> bool:
        if self.media is None:
            return True
        pool = self.media.pool
        snapshot.workers_configured = pool.count
        snapshot.worker_restarts = pool.restarts
        names = [f"worker-{slot}" for slot in range(pool.count)]
        handles = [pool.workers.get(slot) for slot in range(pool.count)]

        async def ask(index: int) -> WorkerDump | None:
            handle = handles[index]
            if handle is None or handle.state.value != "ready":
                return None
            request = DumpRequest(id=handle.next_id(), media=True)
            try:
                async with asyncio.timeout(WORKER_TIMEOUT):
                    return await handle.request(request, WorkerDump)
            except Exception as exc:  # a dead, closing or hung worker: reported as down
                logger.warning("metrics: %s did not report (%s)", names[index], exc.__class__.__name__)
                return None

        dumps = await asyncio.gather(*(ask(i) for i in range(pool.count)))
        snapshot.workers = [WorkerSample(name, dump) for name, dump in zip(names, dumps, strict=True)]
        return all(d is not None for d in dumps)

    async def _gather_callbacks(self, snapshot: Snapshot) -> bool:
        if self.callbacks is None or self.store is None:
            return True
        try:
            async with asyncio.timeout(STORE_TIMEOUT):
                counts = await self.store.callback_counts()
        except Exception as exc:
            logger.warning("metrics: cannot count the callback outbox (%s)", exc.__class__.__name__)
            return False
        snapshot.callbacks_pending = counts["pending"] + self.callbacks.queued
        snapshot.callbacks_given_up = counts["given_up"]
        return True

    # -- exposition (any thread but the event loop's) ----------------------------------------

    def collect(self) -> Iterable[Metric]:
        snapshot: Snapshot | None = None
        if threading.get_ident() == self._loop_thread:
            logger.error("metrics: collected on the event loop's thread, which would wait for itself")
        elif not self.loop.is_closed():
            future = asyncio.run_coroutine_threadsafe(self.gather(), self.loop)
            try:
                snapshot = future.result(GATHER_TIMEOUT)
            except Exception as exc:  # the loop is stopping, or too busy to answer in time
                logger.warning("metrics: gathering failed (%s)", exc.__class__.__name__)
                future.cancel()
        return list(families(self.node, snapshot))


def _family(key: str) -> Any:
    info = METRICS[key]
    labels = ["node", *info.labels]
    if info.kind == "gauge":
        return GaugeMetricFamily(info.name, info.help, labels=labels)
    if info.kind == "counter":
        return CounterMetricFamily(info.name, info.help, labels=labels)
    return HistogramMetricFamily(info.name, info.help, labels=labels)


def _histogram(buckets: Sequence[int]) -> list[tuple[str, float]]:
    bounds = [*(repr(b) for b in LAG_BUCKETS), "+Inf"]
    counts = list(buckets) if len(buckets) == len(bounds) else [0] * len(bounds)
    return [(bound, float(count)) for bound, count in zip(bounds, counts, strict=True)]


def families(node: str, snapshot: Snapshot | None) -> Iterator[Metric]:
    """The metric families of ``snapshot`` (None: the scrape could not gather anything)."""
    build = _family("build")
    build.add_metric([node, __version__], 1)
    yield build
    complete = _family("scrape_complete")
    complete.add_metric([node], 1 if snapshot is not None and snapshot.complete else 0)
    yield complete
    if snapshot is None:
        return
    for key in ("sessions", "connections", "suspended", "streams", "subscriptions"):
        family = _family(key)
        family.add_metric([node], getattr(snapshot, key))
        yield family
    for key, counts in (
        ("signalling_received", snapshot.received),
        ("signalling_sent", snapshot.sent),
        ("signalling_errors", snapshot.errors),
    ):
        family = _family(key)
        for label, value in sorted(counts.items()):
            family.add_metric([node, label], value)
        yield family
    if snapshot.callbacks_pending is not None and snapshot.callbacks_given_up is not None:
        for key, value in (
            ("callbacks_pending", snapshot.callbacks_pending),
            ("callbacks_given_up", snapshot.callbacks_given_up),
        ):
            family = _family(key)
            family.add_metric([node], value)
            yield family
    for key, value in (
        ("archives_active", snapshot.archives_active),
        ("archives_started", snapshot.archives_started),
        ("workers", snapshot.workers_configured),
        ("worker_restarts", snapshot.worker_restarts),
    ):
        family = _family(key)
        family.add_metric([node], value)
        yield family
    yield from _worker_families(node, snapshot)


def _worker_families(node: str, snapshot: Snapshot) -> Iterator[Metric]:
    fams = {key: _family(key) for key in METRICS if "worker" in METRICS[key].labels or key.startswith("loop")}
    buckets, total, peak = snapshot.main_lag
    fams["loop_lag"].add_metric([node, "main"], _histogram(buckets), total)
    fams["loop_lag_max"].add_metric([node, "main"], peak)
    for sample in snapshot.workers:
        name, dump = sample.name, sample.dump
        fams["worker_up"].add_metric([node, name], 0 if dump is None else 1)
        if dump is None:
            continue
        fams["worker_cpu"].add_metric([node, name], dump.cpu_time)
        fams["worker_rss"].add_metric([node, name], dump.rss)
        for key in ("routers", "transports", "producers", "consumers"):
            fams[key].add_metric([node, name], getattr(dump, key))
        fams["loop_lag"].add_metric([node, name], _histogram(dump.loop_lag_buckets), dump.loop_lag_sum)
        fams["loop_lag_max"].add_metric([node, name], dump.loop_lag_max)
        media = dump.media
        for media_key, key in _MEDIA_COUNTERS.items():
            fams[key].add_metric([node, name], media.get(media_key, 0))
        fams["key_frame_requests"].add_metric(
            [node, name, "from_subscribers"], media.get("key_frame_requests_received", 0)
        )
        fams["key_frame_requests"].add_metric(
            [node, name, "to_publishers"], media.get("key_frame_requests_sent", 0)
        )
        for kind, count in sorted(dump.datagrams_dropped.items()):
            fams["datagrams_dropped"].add_metric([node, name, kind], count)
        # Pipes between routers (salon.media.totals.PIPE_COUNTERS): out of the publishers'
        # workers, into the subscribers'.
        for direction in ("in", "out"):
            fams["pipe_packets"].add_metric(
                [node, name, direction], media.get(f"pipe_packets_{direction}", 0)
            )
            fams["pipe_bytes"].add_metric([node, name, direction], media.get(f"pipe_bytes_{direction}", 0))
    yield from fams.values()


def registry_for() -> CollectorRegistry:
    """A registry of its own (several servers may run in one process, in tests) with the main
    process's ``process_*`` and ``python_gc_*`` metrics; the server registers its
    :class:`SalonCollector` there once its services exist."""
    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def parse_metrics_address(text: str) -> tuple[str, int] | None:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6; port 0 picks a free one) → (host, port); ``''``
    or ``off`` → None (no metrics address). :class:`ValueError` if malformed."""
    text = text.strip()
    if text in ("", "off"):
        return None
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"the metrics address must be HOST:PORT, '' or off, not {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"write an IPv6 metrics address as [ADDRESS]:PORT, not {text!r}")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"the metrics port must be 0 to 65535, not {port!r}")
    return host, int(port)


class MetricsServer:
    """``prometheus_client``'s HTTP server for ``registry`` on its own thread: ``GET /metrics``
    (any path, in fact) at ``address``. :meth:`close` is idempotent."""

    def __init__(self, registry: CollectorRegistry, address: tuple[str, int]) -> None:
        self._server: WSGIServer
        self._server, self._thread = start_http_server(address[1], address[0], registry)
        bound, port = self._server.server_address[:2]
        host = bound.decode() if isinstance(bound, bytes) else str(bound)
        host = f"[{host}]" if ":" in host else host
        self.url = f"http://{host}:{port}/metrics"

    def close(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(5)


# -- GET /metrics on the main HTTP server ----------------------------------------------------

router = APIRouter()


def _authorised(request: Request, token: str) -> bool:
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    # Compared in constant time (as bytes: compare_digest wants ASCII for str).
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """The node's metrics, to a request with the metrics token (``--metrics-token``)."""
    token: str = request.app.state.metrics_token
    if not _authorised(request, token):
        return JSONResponse(
            {
                "code": "authentication_failed",
                "message": "GET /metrics needs Authorization: Bearer and the metrics token",
            },
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )
    registry: CollectorRegistry = request.app.state.metrics_registry
    return Response(await asyncio.to_thread(generate_latest, registry), media_type=CONTENT_TYPE_LATEST)
