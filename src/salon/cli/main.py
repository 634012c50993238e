"""``salon serve | project | session | token | bench``."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import pathlib
import sys
from collections.abc import Sequence

from salon import __version__
from salon.cli.bench_options import add_bench_parser
from salon.errors import SalonError
from salon.ids import decode_session_id, encode_session_id
from salon.media.ice_policy import parse_networks
from salon.server.config import ServerConfig
from salon.store import Project, Store, database_url_for
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
        "--workers", type=int, metavar="N", help="media worker processes (default: one per CPU core)"
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
    _add_store_options(serve)

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
    from salon.server.run import run_server

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if (args.rtc_min_port is None) != (args.rtc_max_port is None):
        raise SalonError("--rtc-min-port and --rtc-max-port go together")
    port_range = None
    if args.rtc_min_port is not None:
        port_range = (args.rtc_min_port, args.rtc_max_port)
        if not 1 <= port_range[0] <= port_range[1] <= 65535:
            raise SalonError("the RTC port range must be within 1-65535, min <= max")
    if args.workers is not None and args.workers < 1:
        raise SalonError("--workers must be at least 1")
    try:
        parse_networks([*args.ice_allow, *args.ice_deny])
    except ValueError as exc:
        raise SalonError(f"--ice-allow/--ice-deny: {exc}") from None
    config = ServerConfig.from_env(
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
        ice_servers=tuple(args.ice_server) or None,
        turn_secret=_read_secret(args.turn_secret_file) if args.turn_secret_file else None,
        turn_ttl=args.turn_ttl,
        callback_url=args.callback_url,
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
            print(json.dumps(_project_settings(project)))
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
                        {"api_key": project.api_key, "name": project.name, "created_at": project.created_at}
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
