"""``salon serve | project | session | token | bench``."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import socket
import sys
from collections.abc import Sequence

from salon import __version__
from salon.archive.recorders import media_recorders
from salon.archive.service import ArchiveConfig
from salon.cli.bench_options import add_bench_parser
from salon.errors import SalonError
from salon.ids import decode_session_id, encode_session_id
from salon.media.ice_policy import parse_networks
from salon.media.plane import DEFAULT_SPREAD_CONSUMERS
from salon.server.config import DEFAULT_PLACEMENT_MARGIN, ServerConfig
from salon.signalling.service import SignallingConfig
from salon.store import Project, Store, database_url_for
from salon.store.store import MAX_GRACE
from salon.tokens import Role, generate_token

__all__ = ["main"]


def _store_url(args: argparse.Namespace) -> str:
    url: str | None = args.database_url or os.environ.get("SALON_DATABASE_URL")
    if url:
        return url
    data_dir = pathlib.Path(args.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    return database_url_for(data_dir)


def _add_store_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", default="salon-data", help="where the embedded database lives")
    parser.add_argument(
        "--database-url", help="e.g. postgresql://user:pass@host/salon (default: SQLite in --data-dir)"
    )


def _add_observability_options(serve: argparse.ArgumentParser) -> None:
    from salon.observability.metrics import DEFAULT_METRICS_ADDRESS

    serve.add_argument(
        "--log-format",
        choices=["text", "json"],
        default="text",
        help="text lines (default), or one JSON object per line with the node name and the "
        "session and connection IDs (media workers too)",
    )
    serve.add_argument(
        "--metrics-address",
        metavar="HOST:PORT",
        help=f"serve Prometheus metrics at http://HOST:PORT/metrics (default {DEFAULT_METRICS_ADDRESS}, "
        "skipped with a warning if taken; port 0 picks a free one; '' or off: not served there)",
    )
    serve.add_argument(
        "--metrics-token",
        metavar="TOKEN",
        help="also serve the metrics at /metrics on the main port, to requests with "
        "Authorization: Bearer TOKEN (at least 16 characters; or SALON_METRICS_TOKEN, which ps "
        "does not show)",
    )


def _add_cluster_options(serve: argparse.ArgumentParser) -> None:
    serve.add_argument(
        "--redis-url",
        help="run as a node of a cluster: its Redis, e.g. redis://host:6379/0 (with a PostgreSQL "
        "--database-url; default: SALON_REDIS_URL, else a single server without Redis)",
    )
    serve.add_argument(
        "--node-address", help="where the other nodes reach this one (default: --announced-address)"
    )
    serve.add_argument(
        "--node-url",
        metavar="URL",
        help="this node's own URL as clients reach it, e.g. https://node2.example.com: the other "
        "nodes send new clients here by load (default: none, the node keeps its clients but is "
        "sent none)",
    )
    serve.add_argument(
        "--placement-margin",
        type=int,
        default=DEFAULT_PLACEMENT_MARGIN,
        metavar="N",
        help="a node whose load (in load points: 1 per connection, 1 per media consumer, up to "
        "100 for its media workers' CPU) is N or more above the least-loaded node's sends new "
        "clients that accept a redirect to another node's --node-url (default "
        f"{DEFAULT_PLACEMENT_MARGIN}; 0: never)",
    )
    serve.add_argument(
        "--node-timeout",
        type=float,
        default=3.0,
        metavar="SECONDS",
        help="a node that has not heartbeated in Redis for this long is taken for dead: its "
        "connections end as networkDisconnected (heartbeats every third of it; 1 to 300, default 3)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="salon", description="Self-hosted, OpenTok-compatible video sessions."
    )
    parser.add_argument("--version", action="version", version=f"salon {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the server (REST API, signalling, media)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument(
        "--media-address",
        action="append",
        default=[],
        help="an IP the media (UDP) sockets listen on (repeatable; default 127.0.0.1)",
    )
    serve.add_argument("--announced-address", help="the public IP announced in ICE candidates (NAT)")
    serve.add_argument("--rtc-min-port", type=int, help="lowest UDP port for media (with --rtc-max-port)")
    serve.add_argument("--rtc-max-port", type=int, help="highest UDP port for media (with --rtc-min-port)")
    serve.add_argument(
        "--ice-allow",
        action="append",
        default=[],
        metavar="CIDR",
        help="a network client ICE candidates may be in even if refused by default "
        "(multicast, broadcast, link-local, loopback...; repeatable)",
    )
    serve.add_argument(
        "--ice-deny",
        action="append",
        default=[],
        metavar="CIDR",
        help="a network client ICE candidates may not be in (repeatable; the most specific "
        "--ice-allow/--ice-deny network decides)",
    )
    serve.add_argument("--no-media", action="store_true", help="signalling only: forward no media")
    serve.add_argument(
        "--no-demo", action="store_true", help="switch off POST /demo/join (the web app's token endpoint)"
    )
    serve.add_argument(
        "--demo-rate-burst",
        type=int,
        metavar="N",
        help="demo joins a client address may make at once (default 5), then one per --demo-rate-interval",
    )
    serve.add_argument(
        "--demo-rate-interval",
        type=float,
        metavar="SECONDS",
        help="seconds per further demo join of a client address (default 10)",
    )
    serve.add_argument(
        "--max-body-size",
        type=int,
        metavar="BYTES",
        help="the largest request body accepted (default 1048576); larger ones get 413 unread",
    )
    serve.add_argument(
        "--forwarded-allow-ips",
        metavar="IPS",
        help="comma-separated addresses/networks of trusted reverse proxies whose X-Forwarded-For "
        "names the client (default: none, the TCP peer is the client; '*' trusts any)",
    )
    serve.add_argument(
        "--workers", type=int, metavar="N", help="media worker processes (default: one per CPU core)"
    )
    serve.add_argument(
        "--router-spread-consumers",
        type=int,
        metavar="N",
        help="consumers one router of a session takes before the session's next connections get "
        f"their media on another worker, piped to the first (default: {DEFAULT_SPREAD_CONSUMERS})",
    )
    serve.add_argument(
        "--ice-server",
        action="append",
        default=[],
        metavar="URL",
        help="a stun:/turn: URL handed to clients (repeatable), e.g. turn:turn.example.com:3478",
    )
    serve.add_argument(
        "--turn-secret-file",
        metavar="PATH",
        help="the TURN shared secret (coturn static-auth-secret) for per-connection TURN credentials; "
        "or SALON_TURN_SECRET (static credentials: SALON_TURN_USERNAME and SALON_TURN_PASSWORD)",
    )
    serve.add_argument(
        "--turn-ttl", type=int, metavar="SECONDS", help="lifetime of minted TURN credentials (default 86400)"
    )
    serve.add_argument(
        "--callback-url",
        metavar="URL",
        help="session-monitoring (and archive) callback URL of the project of SALON_API_KEY (or the first)",
    )
    serve.add_argument(
        "--archive-max-duration",
        type=float,
        default=4 * 3600.0,
        metavar="SECONDS",
        help="an archive stops at this length (default 14400: 4 hours)",
    )
    serve.add_argument(
        "--archive-empty-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="an archive stops when its session has been empty this long (default 60)",
    )
    serve.add_argument(
        "--archive-retention",
        type=float,
        default=3.0,
        metavar="DAYS",
        help="available archives expire, their files removed, this long after they started (default 3)",
    )
    serve.add_argument(
        "--archive-storage",
        metavar="URL",
        help="where archives are kept: the data directory (default), or s3://bucket/prefix "
        "(credentials as boto3 finds them)",
    )
    serve.add_argument("--archive-s3-endpoint", metavar="URL", help="the endpoint of S3-compatible storage")
    serve.add_argument(
        "--public-url",
        metavar="URL",
        help="this server's public base URL, for archive download links (default: the request's)",
    )
    serve.add_argument(
        "--signalling-rate-limit",
        type=float,
        default=50.0,
        metavar="N",
        help="messages per second one signalling connection may send on average; over it requests "
        "get rate_limited (default 50; 0: no limit)",
    )
    serve.add_argument(
        "--signalling-rate-burst",
        type=int,
        default=200,
        metavar="N",
        help="messages a signalling connection may send at once before the rate limit applies; "
        "this many more while refused closes it with 4029 (default 200)",
    )
    serve.add_argument(
        "--signalling-max-per-address",
        type=int,
        default=200,
        metavar="N",
        help="signalling WebSockets open at once from one client IP address; more are refused "
        "with HTTP 429 (default 200; 0: no limit)",
    )
    serve.add_argument(
        "--reconnect-grace",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="keep a connection whose link broke this long, with its streams and subscriptions, "
        "for its client to resume it (same connection and stream IDs; the others see nothing); "
        "then it is destroyed as networkDisconnected (default 30; 0: at once)",
    )
    serve.add_argument(
        "--tls-cert",
        metavar="FILE",
        help="serve HTTPS and WSS with this PEM certificate (chain) (with --tls-key)",
    )
    serve.add_argument("--tls-key", metavar="FILE", help="the PEM private key of --tls-cert")
    serve.add_argument(
        "--tls",
        choices=["self-signed"],
        help="self-signed: serve HTTPS and WSS with a development certificate made under --data-dir "
        "(its path is printed, for clients to trust)",
    )
    # --node-name: this node's name (metrics' node label, JSON logs; a cluster's node name too).
    serve.add_argument(
        "--node-name",
        metavar="NAME",
        help="this node's name, in metrics, logs and the cluster (default: the host name)",
    )
    _add_observability_options(serve)
    _add_store_options(serve)
    _add_cluster_options(serve)

    node = commands.add_parser("node", help="the nodes of a cluster (through its Redis)")
    node_commands = node.add_subparsers(dest="node_command", required=True)
    nlist = node_commands.add_parser("list", help="the nodes, their address, load and draining state")
    nlist.add_argument("--redis-url", help="the cluster's Redis (default: SALON_REDIS_URL)")
    drain = node_commands.add_parser(
        "drain", help="mark a node draining: it refuses new connections, its clients stay"
    )
    drain.add_argument("name", help="the node's name (--node-name)")
    drain.add_argument("--undo", action="store_true", help="take new connections again")
    drain.add_argument("--redis-url", help="the cluster's Redis (default: SALON_REDIS_URL)")

    project = commands.add_parser("project", help="manage projects (API key and secret)")
    project_commands = project.add_subparsers(dest="project_command", required=True)
    create = project_commands.add_parser("create", help="create a project and print its key and secret")
    create.add_argument("--name", default="")
    _add_store_options(create)
    listing = project_commands.add_parser("list", help="list projects (secrets are not shown)")
    _add_store_options(listing)
    update = project_commands.add_parser("update", help="set a project's callback URLs and signature secret")
    update.add_argument("api_key")
    update.add_argument("--callback-url", metavar="URL", help="session-monitoring callbacks ('' to clear)")
    update.add_argument(
        "--archive-callback-url", metavar="URL", help="archive status callbacks (default: --callback-url)"
    )
    update.add_argument(
        "--signature-secret", metavar="S", help="signs each callback (HS256 JWT; '' to clear)"
    )
    _add_store_options(update)
    update.add_argument(
        "--redis-url",
        help="a cluster's Redis: every node drops its cached copy at once (default: SALON_REDIS_URL)",
    )

    delete = project_commands.add_parser(
        "delete", help="delete a project and its sessions: its secret stops working at once"
    )
    delete.add_argument("api_key")
    _add_store_options(delete)
    delete.add_argument(
        "--redis-url",
        help="a cluster's Redis: every node drops its cached copy at once (default: SALON_REDIS_URL)",
    )
    rotate = project_commands.add_parser(
        "rotate-secret", help="give a project a new API secret (printed); the old one works for --grace"
    )
    rotate.add_argument("api_key")
    rotate.add_argument(
        "--grace",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="how long the old secret keeps working (default 300; 0 revokes it at once)",
    )
    _add_store_options(rotate)
    rotate.add_argument(
        "--redis-url",
        help="a cluster's Redis: every node drops its cached copy at once (default: SALON_REDIS_URL)",
    )

    application = commands.add_parser(
        "application", help="manage Vonage applications (an id and an RSA key pair; projects too)"
    )
    application_commands = application.add_subparsers(dest="application_command", required=True)
    acreate = application_commands.add_parser(
        "create", help="create an application: a new id and key pair (the private key goes to a file)"
    )
    acreate.add_argument("--name", default="")
    keys = acreate.add_mutually_exclusive_group()
    keys.add_argument(
        "--private-key",
        metavar="FILE",
        help="where to write the new private key (PEM, PKCS#8, mode 0600; never overwritten; "
        "default: DATA_DIR/<application id>.private.key)",
    )
    keys.add_argument(
        "--public-key", metavar="FILE", help="register this RSA public key (PEM) instead of making a key pair"
    )
    _add_store_options(acreate)
    alist = application_commands.add_parser("list", help="list applications")
    _add_store_options(alist)

    callbacks = commands.add_parser("callbacks", help="the callback outbox")
    callbacks_commands = callbacks.add_subparsers(dest="callbacks_command", required=True)
    status = callbacks_commands.add_parser("status", help="pending, delivered and given-up callbacks")
    status.add_argument("--limit", type=int, default=20, help="given-up callbacks to list (newest first)")
    _add_store_options(status)

    session = commands.add_parser("session", help="manage sessions")
    session_commands = session.add_subparsers(dest="session_command", required=True)
    screate = session_commands.add_parser("create", help="create a session and print its ID")
    screate.add_argument("--api-key", help="the project (default: the only or first project)")
    screate.add_argument("--media-mode", choices=["routed", "relayed"], default="routed")
    screate.add_argument("--archive-mode", choices=["manual", "always"], default="manual")
    screate.add_argument("--location", default="")
    screate.add_argument("--e2ee", action="store_true")
    _add_store_options(screate)

    token = commands.add_parser("token", help="mint a client token for a session")
    token.add_argument("session_id")
    token.add_argument("--role", choices=[r.value for r in Role], default=Role.PUBLISHER.value)
    token.add_argument("--expire", type=int, default=24 * 3600, help="lifetime in seconds (at most 30 days)")
    token.add_argument("--data", default=None, help="connection data (at most 1000 characters)")
    token.add_argument(
        "--layout-class", action="append", default=[], help="initial layout class (repeatable)"
    )
    token.add_argument("--legacy", action="store_true", help="a T1== token instead of the default JWT")
    token.add_argument(
        "--private-key",
        metavar="FILE",
        help="for a session of an application: its private key (PEM); the token is an RS256 JWT",
    )
    _add_store_options(token)

    add_bench_parser(commands)
    from salon.cli.demo import add_demo_parser

    add_demo_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "demo":
            from salon.cli.demo import run_demo

            return run_demo(args)
        if args.command == "node":
            return asyncio.run(_node_command(args))
        if args.command == "bench":
            from salon.bench import run as run_bench

            return run_bench(args)
        return asyncio.run(_store_command(args))
    except SalonError as exc:
        print(f"salon: error: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _serve(args: argparse.Namespace) -> int:
    from salon.observability import logs
    from salon.observability.metrics import DEFAULT_METRICS_ADDRESS, parse_metrics_address
    from salon.redact import install as install_redaction
    from salon.redact import register_secret
    from salon.server.run import run_server

    node_name = args.node_name if args.node_name is not None else socket.gethostname()
    if not node_name.strip() or len(node_name) > 128:
        raise SalonError("--node-name must be 1 to 128 characters")
    metrics_token = args.metrics_token or os.environ.get("SALON_METRICS_TOKEN") or None
    register_secret(metrics_token)
    logs.configure(args.log_format, args.log_level, node_name)
    install_redaction()  # no log level writes a secret or a token
    if metrics_token is not None and (len(metrics_token) < 16 or not metrics_token.isprintable()):
        raise SalonError("--metrics-token must be at least 16 printable characters")
    try:
        metrics_address = parse_metrics_address(
            DEFAULT_METRICS_ADDRESS if args.metrics_address is None else args.metrics_address
        )
    except ValueError as exc:
        raise SalonError(f"--metrics-address: {exc}") from None
    if metrics_address is not None and args.metrics_address is not None:
        _check_metrics_address(metrics_address)  # a chosen address that is taken: one clear line
    if (args.rtc_min_port is None) != (args.rtc_max_port is None):
        raise SalonError("--rtc-min-port and --rtc-max-port go together")
    port_range = None
    if args.rtc_min_port is not None:
        port_range = (args.rtc_min_port, args.rtc_max_port)
        if not 1 <= port_range[0] <= port_range[1] <= 65535:
            raise SalonError("the RTC port range must be within 1-65535, min <= max")
    if args.workers is not None and args.workers < 1:
        raise SalonError("--workers must be at least 1")
    if args.router_spread_consumers is not None and args.router_spread_consumers < 1:
        raise SalonError("--router-spread-consumers must be at least 1")
    if args.max_body_size is not None and args.max_body_size < 1024:
        raise SalonError("--max-body-size must be at least 1024 bytes")
    if args.demo_rate_burst is not None and args.demo_rate_burst < 1:
        raise SalonError("--demo-rate-burst must be at least 1")
    if args.demo_rate_interval is not None and not args.demo_rate_interval > 0:
        raise SalonError("--demo-rate-interval must be above 0")
    try:
        parse_networks([*args.ice_allow, *args.ice_deny])
    except ValueError as exc:
        raise SalonError(f"--ice-allow/--ice-deny: {exc}") from None
    if not args.signalling_rate_limit >= 0:  # NaN too
        raise SalonError("--signalling-rate-limit must be 0 (no limit) or more")
    if args.signalling_rate_burst < 1:
        raise SalonError("--signalling-rate-burst must be at least 1")
    if args.signalling_max_per_address < 0:
        raise SalonError("--signalling-max-per-address must be 0 (no limit) or more")
    if not 0 <= args.reconnect_grace <= 3600:  # NaN too
        raise SalonError("--reconnect-grace must be 0 (no resume) to 3600 seconds")
    if not args.archive_max_duration > 0 or not args.archive_empty_timeout > 0:
        raise SalonError("--archive-max-duration and --archive-empty-timeout must be above 0")
    if not args.archive_retention > 0:
        raise SalonError("--archive-retention must be above 0 days")
    if args.archive_storage and not args.archive_storage.startswith("s3://"):
        raise SalonError(f"--archive-storage must be s3://bucket/prefix, not {args.archive_storage!r}")
    if args.public_url and not args.public_url.startswith(("http://", "https://")):
        raise SalonError(f"--public-url must be http:// or https://, not {args.public_url!r}")
    archives = ArchiveConfig(
        max_duration=args.archive_max_duration,
        empty_timeout=args.archive_empty_timeout,
        retention=args.archive_retention * 86400,
        public_url=args.public_url,
    )
    signalling = SignallingConfig(
        rate_limit=args.signalling_rate_limit,
        rate_burst=args.signalling_rate_burst,
        max_per_address=args.signalling_max_per_address,
        reconnect_grace=args.reconnect_grace,
    )
    redis_url = args.redis_url or os.environ.get("SALON_REDIS_URL") or None
    if redis_url is not None:
        if not redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise SalonError(f"--redis-url must be redis://, rediss:// or unix://, not {redis_url!r}")
        database_url = args.database_url or os.environ.get("SALON_DATABASE_URL") or ""
        if not database_url.startswith(("postgresql://", "postgres://")):
            raise SalonError("a cluster node (--redis-url) needs a shared PostgreSQL --database-url")
    if args.placement_margin < 0:
        raise SalonError("--placement-margin must be 0 (no placement) or more")
    node_url = args.node_url.rstrip("/") if args.node_url else None
    if node_url is not None and not node_url.startswith(("http://", "https://")):
        raise SalonError(f"--node-url must be an http:// or https:// URL, not {args.node_url!r}")
    if not 1.0 <= args.node_timeout <= 300.0:
        raise SalonError(f"--node-timeout must be 1 to 300 seconds, not {args.node_timeout:g}")
    tls_cert, tls_key = _tls_files(args)
    config = ServerConfig.from_env(
        redis_url=redis_url,
        node_address=args.node_address,
        node_url=node_url,
        placement_margin=args.placement_margin,
        node_timeout=args.node_timeout,
        signalling=signalling,
        tls_cert=tls_cert,
        tls_key=tls_key,
        host=args.host,
        port=args.port,
        data_dir=pathlib.Path(args.data_dir),
        database_url=args.database_url,
        media=not args.no_media,
        demo=not args.no_demo,
        listen_addresses=tuple(args.media_address) or None,
        announced_address=args.announced_address,
        port_range=port_range,
        ice_allow=tuple(args.ice_allow) or None,
        ice_deny=tuple(args.ice_deny) or None,
        workers=args.workers,
        router_spread_consumers=args.router_spread_consumers or DEFAULT_SPREAD_CONSUMERS,
        ice_servers=tuple(args.ice_server) or None,
        turn_secret=_read_secret(args.turn_secret_file) if args.turn_secret_file else None,
        turn_ttl=args.turn_ttl,
        callback_url=args.callback_url,
        max_body_size=args.max_body_size,
        demo_rate_burst=args.demo_rate_burst,
        demo_rate_interval=args.demo_rate_interval,
        forwarded_allow_ips=args.forwarded_allow_ips,
        archives=archives,
        archive_storage=args.archive_storage,
        archive_s3_endpoint=args.archive_s3_endpoint,
        archive_recorders={} if args.no_media else media_recorders(),
        node_name=node_name,
        metrics_address=metrics_address,
        metrics_address_is_default=args.metrics_address is None,
        metrics_token=metrics_token,
    )
    if args.callback_url and not args.callback_url.startswith(("http://", "https://")):
        raise SalonError(f"--callback-url must be http:// or https://, not {args.callback_url!r}")
    try:
        config.ice  # noqa: B018 (checks the ICE servers and TURN credentials)
    except ValueError as exc:
        raise SalonError(str(exc)) from None
    # The project check (and the first start's project) before uvicorn runs: a refusal is one
    # clear line here, where inside the app's start-up it would come wrapped in a traceback.
    asyncio.run(_ensure_project(config))
    run_server(config, log_level=args.log_level)
    return 0


def _check_metrics_address(address: tuple[str, int]) -> None:
    host, port = address
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        socket.create_server((host, port), family=family).close()
    except OSError as exc:
        raise SalonError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from None


async def _tell_cluster(args: argparse.Namespace) -> None:
    """A project changed: tell every node of the cluster (if there is one) to drop its copy
    (without a cluster, or if the message is lost, nodes read it again within a second)."""
    url = args.redis_url or os.environ.get("SALON_REDIS_URL")
    if not url:
        return
    from redis.exceptions import RedisError

    from salon.cluster.node import announce_project_change

    try:
        await announce_project_change(url, args.api_key)
    except (RedisError, OSError) as exc:
        raise SalonError(f"changed, but the cluster's Redis could not be told: {exc}") from None


async def _node_command(args: argparse.Namespace) -> int:
    url = args.redis_url or os.environ.get("SALON_REDIS_URL")
    if not url:
        raise SalonError("give the cluster's Redis: --redis-url or SALON_REDIS_URL")
    from redis.exceptions import RedisError

    from salon.cluster.node import list_nodes, set_draining

    try:
        if args.node_command == "list":
            for name, record in await list_nodes(url):
                if record is None:
                    print(f"{name}\t-\t-\tgone\t-")
                else:
                    state = "draining" if record.draining else "up"
                    print(f"{name}\t{record.address}\t{record.load}\t{state}\t{record.url or '-'}")
            return 0
        known = await set_draining(url, args.name, not args.undo)
    except (RedisError, OSError) as exc:
        raise SalonError(f"the cluster's Redis: {exc}") from None
    verb = "takes new connections again" if args.undo else "is draining"
    print(f"node {args.name} {verb}" + ("" if known else " (no such node registered yet)"))
    return 0


def _tls_files(args: argparse.Namespace) -> tuple[pathlib.Path | None, pathlib.Path | None]:
    """The certificate and key to serve TLS with, checked here so a mistake is one clear line."""
    import ssl

    from salon.server.tls import self_signed_certificate

    if args.tls and (args.tls_cert or args.tls_key):
        raise SalonError("--tls self-signed and --tls-cert/--tls-key are alternatives")
    if (args.tls_cert is None) != (args.tls_key is None):
        raise SalonError("--tls-cert and --tls-key go together")
    if args.tls:
        cert, key = self_signed_certificate(
            pathlib.Path(args.data_dir), [args.host, args.announced_address or "", *args.media_address]
        )
        print(
            f"salon: TLS with a self-signed development certificate: {cert.resolve()}\n"
            "  (tell clients to trust it, e.g. REQUESTS_CA_BUNDLE / SSL_CERT_FILE / NODE_EXTRA_CA_CERTS)",
            flush=True,
        )
        return cert, key
    if args.tls_cert is None:
        return None, None
    cert, key = pathlib.Path(args.tls_cert), pathlib.Path(args.tls_key)
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise SalonError(f"the TLS certificate and key are unusable: {exc.reason or exc}") from None
    except OSError as exc:
        raise SalonError(f"cannot read the TLS certificate or key: {exc.strerror or exc}") from None
    return cert, key


async def _ensure_project(config: ServerConfig) -> None:
    from salon.server.app import ensure_project

    if config.database_url is None:
        config.data_dir.mkdir(parents=True, exist_ok=True)
    store = Store(config.store_url)
    await store.open()
    try:
        await ensure_project(store, config, lambda text: print(text, flush=True))
    finally:
        await store.close()


def _read_secret(path: str) -> str:
    """A secret from a file (trailing newline and spaces stripped), so it is not in ``ps``."""
    try:
        secret = pathlib.Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise SalonError(f"cannot read the TURN secret file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:  # its message would quote a byte of the secret
        raise SalonError(f"the TURN secret file {path} is not UTF-8 text") from None
    if not secret:
        raise SalonError(f"the TURN secret file {path} is empty")
    return secret


async def _first_project(store: Store, api_key: str | None) -> Project:
    if api_key:
        project = await store.get_project(api_key)
        if project is None:
            raise SalonError(f"no project {api_key}")
        return project
    env_key = os.environ.get("SALON_API_KEY")
    if env_key:
        return await _first_project(store, env_key)
    projects = await store.list_projects()
    if not projects:
        raise SalonError("no project yet: run `salon project create` or `salon serve` first")
    return projects[0]


async def _create_application(store: Store, args: argparse.Namespace) -> dict[str, object]:
    """``salon application create``: register a public key, or make a key pair and write the
    private key to a new file (0600) that the output names. The private key is never stored."""
    import uuid

    from salon.tokens import new_rsa_key_pair

    if args.public_key:
        project = await store.create_application(args.name, _read_file(args.public_key, "public key"))
        return {"application_id": project.api_key, "name": project.name, "public_key_file": args.public_key}
    application_id = str(uuid.uuid4())
    private_pem, public_pem = new_rsa_key_pair()
    path = args.private_key or os.path.join(args.data_dir, f"{application_id}.private.key")
    written = _write_new_file(path, private_pem)
    try:
        project = await store.create_application(args.name, public_pem, application_id=application_id)
    except BaseException:
        os.unlink(written)
        raise
    return {"application_id": project.api_key, "name": project.name, "private_key_file": written}


def _read_file(path: str, what: str) -> str:
    try:
        return pathlib.Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SalonError(f"cannot read the {what} file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise SalonError(f"the {what} file {path} is not PEM text") from None


def _write_new_file(path: str, text: str) -> str:
    """Write ``text`` to a new file readable by its owner only; never overwrite. Returns its
    absolute path."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise SalonError(f"cannot create the private key file {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(text)
    return os.path.abspath(path)


def _application_token(project: Project, args: argparse.Namespace) -> str:
    import time

    from salon.tokens import generate_application_token

    if not project.is_application:
        raise SalonError(f"{project.api_key} is a project with an API secret, not an application")
    if not args.private_key:
        raise SalonError("the session belongs to an application: give its private key (--private-key FILE)")
    if args.legacy:
        raise SalonError("an application's tokens are RS256 JWTs; --legacy (T1) is for projects")
    private_pem = _read_file(args.private_key, "private key")
    return generate_application_token(
        project.api_key,
        private_pem,
        args.session_id,
        role=args.role,
        expire_time=int(time.time()) + args.expire,
        data=args.data,
        initial_layout_class_list=args.layout_class,
        public_key=project.public_key,
    )


def _project_settings(project: Project) -> dict[str, object]:
    """A project's callback settings, as printed (the signature secret only as set or not)."""
    return {
        "api_key": project.api_key,
        "name": project.name,
        "callback_url": project.callback_url,
        "archive_callback_url": project.archive_callback_url,
        "signed": project.signature_secret is not None,
    }


async def _store_command(args: argparse.Namespace) -> int:
    store = Store(_store_url(args))
    await store.open()
    try:
        if args.command == "project" and args.project_command == "create":
            project = await store.create_project(args.name)
            print(
                json.dumps(
                    {"api_key": project.api_key, "api_secret": project.api_secret, "name": project.name}
                )
            )
        elif args.command == "project" and args.project_command == "delete":
            await store.delete_project(args.api_key)
            await _tell_cluster(args)
            print(json.dumps({"api_key": args.api_key, "deleted": True}))
        elif args.command == "project" and args.project_command == "rotate-secret":
            if not 0 <= args.grace <= MAX_GRACE:  # also refuses nan
                raise SalonError(f"--grace must be 0 to {MAX_GRACE} seconds")
            project = await store.rotate_secret(args.api_key, grace=args.grace)
            await _tell_cluster(args)
            print(
                json.dumps(
                    {
                        "api_key": project.api_key,
                        "api_secret": project.api_secret,
                        "previous_secret_expires_at": project.previous_secret_expires_at,
                    }
                )
            )
        elif args.command == "project" and args.project_command == "update":
            for url in (args.callback_url, args.archive_callback_url):
                if url and not url.startswith(("http://", "https://")):
                    raise SalonError(f"a callback URL must be http:// or https://, not {url!r}")
            project = await store.update_project(
                args.api_key,
                callback_url=args.callback_url,
                archive_callback_url=args.archive_callback_url,
                signature_secret=args.signature_secret,
            )
            await _tell_cluster(args)
            print(json.dumps(_project_settings(project)))
        elif args.command == "application" and args.application_command == "create":
            print(json.dumps(await _create_application(store, args)))
        elif args.command == "application":
            for project in await store.list_projects():
                if project.is_application:
                    print(
                        json.dumps(
                            {
                                "application_id": project.api_key,
                                "name": project.name,
                                "created_at": project.created_at,
                            }
                        )
                    )
        elif args.command == "callbacks":
            counts = await store.callback_counts()
            given_up = [
                {
                    "id": c.id,
                    "api_key": c.api_key,
                    "kind": c.kind,
                    "key": c.order_key,
                    "event": json.loads(c.body).get("event"),
                    "attempts": c.attempts,
                    "error": c.last_error,
                    "created_at": c.created_at,
                    "given_up_at": c.finished_at,
                }
                for c in await store.callbacks("given_up", args.limit)
            ]
            print(json.dumps({**counts, "given_up_callbacks": given_up}))
        elif args.command == "project":
            for project in await store.list_projects():
                print(
                    json.dumps(
                        {
                            "api_key": project.api_key,
                            "name": project.name,
                            "created_at": project.created_at,
                            "application": project.is_application,
                        }
                    )
                )
        elif args.command == "session":
            project = await _first_project(store, args.api_key)
            session_id = encode_session_id(project.api_key, args.location)
            await store.create_session(
                project.api_key,
                session_id,
                media_mode=args.media_mode,
                archive_mode=args.archive_mode,
                location=args.location,
                e2ee=args.e2ee,
            )
            print(session_id)
        elif args.command == "token":
            api_key = decode_session_id(args.session_id).api_key
            project = await _first_project(store, api_key)
            import time

            if project.is_application or args.private_key:
                print(_application_token(project, args))
                return 0
            print(
                generate_token(
                    project.api_key,
                    project.api_secret,
                    args.session_id,
                    role=args.role,
                    expire_time=int(time.time()) + args.expire,
                    data=args.data,
                    initial_layout_class_list=args.layout_class,
                    use_jwt=not args.legacy,
                )
            )
    finally:
        await store.close()
    return 0
