"""Server configuration."""

from __future__ import annotations

import os
import pathlib
import socket
from dataclasses import dataclass, field

from salon.archive.service import ArchiveConfig, RecorderFactory
from salon.callbacks.delivery import CallbackConfig
from salon.media.plane import DEFAULT_SPREAD_CONSUMERS
from salon.server.limits import DEFAULT_MAX_BODY_SIZE
from salon.signalling.ice import DEFAULT_TURN_TTL, IceSettings
from salon.signalling.service import SignallingConfig
from salon.store import database_url_for

#: ``--placement-margin``: a node with this many load points (:mod:`salon.cluster.load`) more
#: than the least-loaded node of its cluster sends new clients elsewhere
#: (:mod:`salon.cluster.placement`).
DEFAULT_PLACEMENT_MARGIN = 10

__all__ = ["ServerConfig"]


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Everything ``salon serve`` can be told.

    :param data_dir: where the embedded SQLite database lives.
    :param database_url: overrides the embedded database, e.g. ``postgresql://user@host/salon``.
    :param api_key: with ``api_secret``, a project that must exist (``SALON_API_KEY`` /
        ``SALON_API_SECRET``); otherwise a project is created on first start.
    :param media: forward media (the SFU, in worker processes); False for a signalling-only server,
        which refuses SDP offers with ``media_unavailable``.
    :param listen_addresses: the IPs the media transports gather host candidates on.
    :param announced_address: the public IP written into the candidates instead (NAT / 1:1).
    :param port_range: the inclusive UDP port range of the media sockets (default: ephemeral).
    :param ice_allow: networks (CIDR) client ICE candidates may be in even where the defaults
        refuse them (:mod:`salon.media.ice_policy`: multicast, broadcast, unspecified,
        link-local, and loopback unless the server listens on loopback).
    :param ice_deny: networks (CIDR) client ICE candidates may not be in; the most specific
        of the allowed and denied networks decides.
    :param workers: the number of media worker processes (default: ``os.cpu_count()``).
    :param router_spread_consumers: consumers a session's router takes before the session's
        next connections get their media on another worker, piped (``--router-spread-consumers``).
    :param ice_servers: ``stun:``/``turn:`` URLs handed to clients in ``connected``.
    :param turn_secret: the TURN REST shared secret (coturn ``static-auth-secret``) that
        per-connection TURN credentials are minted with (``SALON_TURN_SECRET``); never logged.
    :param turn_ttl: the lifetime of a minted TURN credential, seconds (default 24 h).
    :param demo: serve ``POST /demo/join`` for the bundled web app (anyone reaching the
        server can then join any room); False (``--no-demo``) answers 404 there.
    :param turn_username: with ``turn_password``, static TURN credentials instead of a secret
        (``SALON_TURN_USERNAME`` / ``SALON_TURN_PASSWORD``).
    :param callback_url: set as the session-monitoring (and archive) callback URL of the
        project of ``api_key`` (or the first project) at start-up (``--callback-url``).
    :param callbacks: how callbacks are delivered (timeouts, retries).
    :param max_body_size: the largest request body any HTTP route accepts, bytes; larger ones
        get 413 before they are read (``--max-body-size``, default 1 MiB).
    :param demo_rate_burst: with ``demo_rate_interval``, the demo endpoint's rate limit per
        client address: ``demo_rate_burst`` joins at once, then one per ``demo_rate_interval``
        seconds; more get 429.
    :param forwarded_allow_ips: the addresses of trusted reverse proxies (comma-separated IPs
        or networks, ``*`` for any) whose ``X-Forwarded-For``/``X-Forwarded-Proto`` headers
        are believed (``--forwarded-allow-ips``); None believes no one, so the client address
        is the TCP peer's.
    :param tls_cert: with ``tls_key``, serve HTTPS and WSS with this PEM certificate (chain)
        and key (``--tls-cert``/``--tls-key``, or ``--tls self-signed``).
    :param signalling: signalling timings and limits (:class:`SignallingConfig`): heartbeat,
        outbox size, close grace, the per-connection request rate limit (``rate_limit``,
        ``rate_burst``; ``--signalling-rate-limit``, ``--signalling-rate-burst``) and the
        WebSockets allowed per client address (``max_per_address``;
        ``--signalling-max-per-address``).
    :param archives: archive limits: maximum duration (``--archive-max-duration``), how long
        an empty session's archives go on (60 s), retention (``--archive-retention``), the
        public base URL of download links (``--public-url``).
    :param archive_storage: where finished archives go: None for the data directory, or
        ``s3://bucket/prefix`` (``--archive-storage``; credentials as boto3 finds them).
    :param archive_s3_endpoint: the S3 endpoint URL (``--archive-s3-endpoint``), for
        S3-compatible storage other than AWS.
    :param archive_recorders: what makes the recorder of each output mode (``"individual"``,
        ``"composed"``), given the media plane once it runs; a mode without one records
        nothing and its archives fail.
    :param node_name: this node's name (``--node-name``, default the host name): the ``node``
        label of every metric and the ``node`` of every JSON log line.
    :param metrics_address: where to serve Prometheus metrics, (host, port) (``--metrics-address``,
        port 0 picks a free one); None serves none there (:mod:`salon.observability.metrics`).
    :param metrics_address_is_default: ``metrics_address`` is the default, not chosen: if it is
        taken (another server on the machine) the server starts without it, with a warning.
    :param metrics_token: serve the metrics at ``GET /metrics`` on the main HTTP server too, to
        a request with ``Authorization: Bearer`` and this token (``--metrics-token`` or
        ``SALON_METRICS_TOKEN``); never logged.
    :param debug_endpoints: serve ``GET /debug/processes`` (``SALON_DEBUG_ENDPOINTS=1``;
        :mod:`salon.server.debug`), for ``salon bench soak``.
    """

    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: pathlib.Path = pathlib.Path("salon-data")
    database_url: str | None = None
    #: ``salon serve --redis-url``: run as a node of a cluster (:mod:`salon.cluster`), with
    #: ``node_name`` (default: the host name) and ``node_address`` (where other nodes reach it).
    redis_url: str | None = None
    node_address: str | None = None
    #: The node's URL as clients reach it (``--node-url``) and how much more loaded than the
    #: least-loaded node it may be before it sends new clients elsewhere
    #: (``--placement-margin``, :mod:`salon.cluster.placement`).
    node_url: str | None = None
    placement_margin: int = DEFAULT_PLACEMENT_MARGIN
    #: ``--node-timeout``: seconds without a heartbeat after which a node is taken for dead.
    node_timeout: float = 3.0
    api_key: str | None = None
    api_secret: str | None = None
    signalling: SignallingConfig = field(default_factory=SignallingConfig)
    media: bool = True
    listen_addresses: tuple[str, ...] = ("127.0.0.1",)
    announced_address: str | None = None
    port_range: tuple[int, int] | None = None
    ice_allow: tuple[str, ...] = ()
    ice_deny: tuple[str, ...] = ()
    workers: int | None = None
    router_spread_consumers: int = DEFAULT_SPREAD_CONSUMERS
    ice_servers: tuple[str, ...] = ()
    turn_secret: str | None = field(default=None, repr=False)
    turn_ttl: int = DEFAULT_TURN_TTL
    turn_username: str | None = None
    turn_password: str | None = field(default=None, repr=False)
    demo: bool = True
    callback_url: str | None = None
    callbacks: CallbackConfig = field(default_factory=CallbackConfig)
    max_body_size: int = DEFAULT_MAX_BODY_SIZE
    demo_rate_burst: int = 5
    demo_rate_interval: float = 10.0
    forwarded_allow_ips: str | None = None
    tls_cert: pathlib.Path | None = None
    tls_key: pathlib.Path | None = None
    debug_endpoints: bool = False
    archives: ArchiveConfig = field(default_factory=ArchiveConfig)
    archive_storage: str | None = None
    archive_s3_endpoint: str | None = None
    archive_recorders: dict[str, RecorderFactory] = field(default_factory=dict, repr=False)
    node_name: str = field(default_factory=socket.gethostname)
    metrics_address: tuple[str, int] | None = None
    metrics_address_is_default: bool = False
    metrics_token: str | None = field(default=None, repr=False)

    @property
    def store_url(self) -> str:
        return self.database_url or database_url_for(self.data_dir)

    @property
    def ice(self) -> IceSettings:
        """The ICE servers and TURN credentials, checked (:class:`ValueError` if inconsistent)."""
        return IceSettings(
            tuple(self.ice_servers),
            turn_secret=self.turn_secret,
            turn_ttl=self.turn_ttl,
            turn_username=self.turn_username,
            turn_password=self.turn_password,
        )

    @classmethod
    def from_env(cls, **overrides: object) -> ServerConfig:
        """Defaults, then ``SALON_*`` environment variables, then ``overrides``."""
        values: dict[str, object] = {}
        if os.environ.get("SALON_API_KEY") and os.environ.get("SALON_API_SECRET"):
            values["api_key"] = os.environ["SALON_API_KEY"]
            values["api_secret"] = os.environ["SALON_API_SECRET"]
        if os.environ.get("SALON_DATABASE_URL"):
            values["database_url"] = os.environ["SALON_DATABASE_URL"]
        if os.environ.get("SALON_TURN_SECRET"):
            values["turn_secret"] = os.environ["SALON_TURN_SECRET"]
        if os.environ.get("SALON_TURN_USERNAME") or os.environ.get("SALON_TURN_PASSWORD"):
            values["turn_username"] = os.environ.get("SALON_TURN_USERNAME")
            values["turn_password"] = os.environ.get("SALON_TURN_PASSWORD")
        if os.environ.get("SALON_METRICS_TOKEN"):
            values["metrics_token"] = os.environ["SALON_METRICS_TOKEN"]
        if os.environ.get("SALON_DEBUG_ENDPOINTS") == "1":
            values["debug_endpoints"] = True
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]
