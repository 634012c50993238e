"""Running the application under uvicorn (uvloop, websockets), in a process or a thread."""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import socket
import threading
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

import uvicorn
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import InvalidState
from websockets.extensions.base import Extension
from websockets.extensions.permessage_deflate import PerMessageDeflate, ServerPerMessageDeflateFactory
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State

from salon.media.collector import Collector
from salon.observability.logs import use_for_uvicorn as use_json_logs_for_uvicorn
from salon.redact import install as install_redaction
from salon.redact import register_secret
from salon.server.app import create_app
from salon.server.config import ServerConfig
from salon.signalling.service import ABORT_EXTENSION, SignallingService

__all__ = ["Server", "ServerThread", "run_server"]

#: At shutdown, how long the signalling links have to write their 1001 close frames before
#: uvicorn closes what is left.
GOING_AWAY_TIMEOUT = 2.0

_T = TypeVar("_T")

#: WebSocket frames larger than this close the socket (1009); requests over 64 KiB get an error.
WS_MAX_SIZE = 1024 * 1024
#: Seconds a TLS connection closed at shutdown may take to finish its TLS close.
TLS_CLOSE_GRACE = 1.0


#: Messages shorter than this (bytes) are sent uncompressed even when the client negotiated
#: permessage-deflate, which RFC 7692 allows (section 6.1, the RSV1 bit unset): deflating a
#: ping, a signal or a join announcement costs more CPU than the few bytes it saves, and it is
#: done once per receiver (each has its own compression context).
COMPRESS_MIN_SIZE = 512


class _PlainSmallMessages(PerMessageDeflate):
    """permessage-deflate that leaves small single-frame messages uncompressed."""

    def encode(self, frame: Frame) -> Frame:
        if frame.fin and frame.opcode in (Opcode.TEXT, Opcode.BINARY) and len(frame.data) < COMPRESS_MIN_SIZE:
            return frame
        return super().encode(frame)


class _PlainSmallMessagesFactory(ServerPerMessageDeflateFactory):
    def process_request_params(
        self, params: Sequence[tuple[str, str | None]], accepted_extensions: Sequence[Extension]
    ) -> tuple[list[tuple[str, str | None]], PerMessageDeflate]:
        response, extension = super().process_request_params(params, accepted_extensions)
        extension.__class__ = _PlainSmallMessages  # the same state; only encode differs
        return response, extension


class WebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol, letting the application abort the TCP connection.

    The scope gets the :data:`~salon.signalling.service.ABORT_EXTENSION` extension: a
    signalling link whose close does not finish in time (a client that never reads, its TCP
    window full) aborts the connection instead of waiting forever for the buffer to drain.
    Its ``close_received`` tells whether the client sent a close frame: uvicorn reports a TCP
    connection lost without one as code 1005, as it does an empty close frame, and signalling
    keeps the connection of a broken link for a resume.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # uvicorn's permessage-deflate settings, small messages left plain.
        self.conn.available_extensions = [
            _PlainSmallMessagesFactory(**vars(f)) if type(f) is ServerPerMessageDeflateFactory else f
            for f in self.conn.available_extensions or []
        ]

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None:
            scope["extensions"][ABORT_EXTENSION] = {
                "abort": self.abort_if_open,
                "close_received": self.close_received,
                "send_texts": self.send_texts,
                "write_now": self.write_now,
            }

    def close_received(self) -> bool:
        return self.conn.close_rcvd is not None

    def write_now(self, text: str) -> bool:
        """Write one text message at once if the socket takes it without waiting (open, its
        buffer under the high-water mark); False otherwise (nothing written: the caller queues
        it). A broadcast then costs no task switch per receiver."""
        if not self.writable.is_set() or self.disconnected or self.close_sent or self.transport.is_closing():
            return False
        try:
            self.conn.send_text(text.encode())
        except InvalidState:
            return False
        self.transport.write(b"".join(self.conn.data_to_send()))
        return True

    async def send_texts(self, texts: list[str]) -> None:
        """Several text messages in one write to the socket (one system call instead of one
        per message: a client with a backlog, e.g. the join announcements of a busy session,
        costs fewer). Waits while the transport's buffer is over its high-water mark, as
        uvicorn's ``send`` does; raises :class:`ConnectionError` once the socket is gone or
        closing."""
        await self.writable.wait()
        if self.disconnected or self.close_sent or self.transport.is_closing():
            raise ConnectionError("the WebSocket is closed")
        try:
            for text in texts:
                self.conn.send_text(text.encode())
        except InvalidState:
            raise ConnectionError("the WebSocket is closed") from None
        self.transport.write(b"".join(self.conn.data_to_send()))

    def shutdown(self) -> None:
        """uvicorn's shutdown sends close 1012 on a WebSocket the application did not close;
        one already past OPEN (the client's close frame arrived, answered by websockets) must
        get no second close frame (websockets raises ``InvalidState``, which ended the server
        thread with an exception): its transport is only closed."""
        if (
            self.handshake_complete
            and self.initial_response is None
            and not self.close_sent
            and self.conn.state is not State.OPEN
        ):
            self.stop_keepalive()
            self.transport.close()
            return
        super().shutdown()

    def abort_if_open(self) -> None:
        """Abort the TCP connection unless it is gone: also when it is closing but its write
        buffer never drains (the peer does not read)."""
        if not self.disconnected and self.transport is not None:
            self.transport.abort()


class Server(uvicorn.Server):
    """A uvicorn server that reports its bound address once it serves (port 0 works)."""

    def __init__(self, config: uvicorn.Config, on_ready: Callable[[str], None] | None = None) -> None:
        super().__init__(config)
        self.on_ready = on_ready
        self.url: str | None = None
        self.ready = threading.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.should_exit:
            self.ready.set()
            return
        host, port = self.servers[0].sockets[0].getsockname()[:2]
        host = f"[{host}]" if ":" in host else host
        scheme = "https" if self.config.is_ssl else "http"
        self.url = f"{scheme}://{host}:{port}"
        if self.on_ready is not None:
            self.on_ready(self.url)
        self.ready.set()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Stop accepting connections, close every signalling WebSocket with 1001 (going
        away) after what is queued for it, then shut down as uvicorn does (whose own close of
        a WebSocket still open would say 1012)."""
        for server in self.servers:
            server.close()
        state = getattr(self.config.app, "state", None)
        service = getattr(state, "signalling", None)
        if isinstance(service, SignallingService):
            await service.going_away(GOING_AWAY_TIMEOUT)
        if self.config.is_ssl:
            asyncio.get_running_loop().call_later(TLS_CLOSE_GRACE, self._abort_closing_tls)
        await super().shutdown(sockets)

    def _abort_closing_tls(self) -> None:
        """An idle keep-alive TLS connection closed at shutdown waits for the client's
        close_notify, which an idle HTTP client (``requests``) never sends: asyncio would wait
        30 s. Abort those still closing once the grace period is over."""
        for connection in list(self.server_state.connections):
            transport = getattr(connection, "transport", None)
            if isinstance(transport, asyncio.Transport) and transport.is_closing():
                transport.abort()


def uvicorn_config(
    config: ServerConfig, *, log_level: str = "info", announce: Callable[[str], None] = print
) -> uvicorn.Config:
    register_secret(config.api_secret, config.turn_secret, config.turn_password, config.metrics_token)
    uv_config = uvicorn.Config(
        create_app(config, announce=announce),
        host=config.host,
        port=config.port,
        loop="uvloop",
        ws=WebSocketProtocol,
        ws_max_size=WS_MAX_SIZE,
        ws_ping_interval=None,
        lifespan="on",
        log_level=log_level,
        access_log=log_level == "debug",
        server_header=False,
        # X-Forwarded-For is believed only from the proxies named by --forwarded-allow-ips
        # (uvicorn's own default would believe any local process).
        proxy_headers=config.forwarded_allow_ips is not None,
        forwarded_allow_ips=config.forwarded_allow_ips,
        ssl_certfile=config.tls_cert,
        ssl_keyfile=config.tls_key,
    )
    install_redaction()  # after uvicorn configured its loggers
    use_json_logs_for_uvicorn()  # --log-format json: uvicorn's lines too
    return uv_config


def freeze_startup_objects() -> None:
    """Move what start-up made (imports, the application, the store's metadata) out of the
    cyclic garbage collector's way: :func:`gc.freeze` after a full collection.

    Python runs a full collection only when the objects that survived since the last one
    exceed a quarter of the long-lived ones; with start-up's hundreds of thousands of objects
    counted, that waited for hundreds of connections, and meanwhile their garbage (connections,
    WebSockets, sessions, all in reference cycles) kept the process's memory growing:
    ``salon bench soak`` measured about 10 kB per cycle in the main process, dropping by
    4 MB at each full collection. Frozen objects are neither counted nor walked, so full
    collections come sooner and walk only what the server made since. For ``salon serve``
    (a process of its own) only: a process that starts servers repeatedly, a test run, would
    freeze its earlier servers' garbage for good."""
    gc.collect()
    gc.freeze()
    # The next automatic full collection waits for a quarter of the long-lived objects
    # counted at the last full one: count again, now without the frozen ones.
    gc.collect()


def run_server(config: ServerConfig, *, log_level: str = "info") -> None:
    uv_config = uvicorn_config(config, log_level=log_level)
    app: Any = uv_config.app  # the FastAPI application create_app made

    def ready(url: str) -> None:
        freeze_startup_objects()
        # A closed WebSocket's objects (uvicorn's protocol, the link, its session state) are
        # garbage in reference cycles: collect them soon, at most every COLLECT_INTERVAL s,
        # as the media workers do for closed transports.
        service = getattr(app.state, "signalling", None)
        if isinstance(service, SignallingService):
            service.on_link_closed = Collector().request
        print(f"salon serving on {url}", flush=True)

    server = Server(uv_config, on_ready=ready)
    server.run()


class ServerThread:
    """The real server on its own thread and event loop: for tests, benchmarks and examples.

    ::

        with ServerThread(ServerConfig(port=0, data_dir=tmp)) as server:
            print(server.url)
    """

    def __init__(
        self,
        config: ServerConfig,
        *,
        log_level: str = "warning",
        announce: Callable[[str], None] = lambda text: None,
    ) -> None:
        self.server = Server(uvicorn_config(config, log_level=log_level, announce=announce))
        self._thread = threading.Thread(target=self._run, name="salon-server", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self.server.serve()

    def run_coroutine(self, coroutine: Coroutine[Any, Any, _T]) -> concurrent.futures.Future[_T]:
        """Run ``coroutine`` on the server's own event loop (thread-safe); ``await
        asyncio.wrap_future(...)`` the result from another loop. For tests that inspect the
        server's state, e.g. its media workers' counters."""
        if self._loop is None:
            coroutine.close()
            raise RuntimeError("the server is not running")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    @property
    def url(self) -> str:
        assert self.server.url is not None
        return self.server.url

    @property
    def metrics_url(self) -> str | None:
        """Where the server serves its metrics (``ServerConfig.metrics_address``), if anywhere."""
        app: Any = self.server.config.loaded_app
        state = getattr(getattr(app, "app", app), "state", None)  # under uvicorn's middleware
        return getattr(state, "metrics_url", None)

    @property
    def app_state(self) -> object:
        return self.server.config.loaded_app  # pragma: no cover

    def __enter__(self) -> ServerThread:
        self._thread.start()
        if not self.server.ready.wait(30) or self.server.url is None:
            self.server.should_exit = True
            raise RuntimeError("the server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self._thread.join(15)
