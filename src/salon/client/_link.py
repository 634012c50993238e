"""The signalling link: one WebSocket to the server, requests correlated with their replies.

:class:`SignallingLink` owns one reader task. It answers pings, resolves each request's
future with its reply, hands every other message to ``on_message``, and reports the end of
the link once (``on_closed``) unless :meth:`close` was called. Messages of a type this SDK
does not know (a newer server) are handed raw to ``on_unknown``.

Events are held from the start until :meth:`SignallingLink.release`: the server may send
events right behind ``connected`` (in the same read), and the reader would otherwise hand
them over before :meth:`~SignallingLink.open` has returned ``connected`` to its caller, that
is before the caller has taken in the ``connected`` snapshot they follow. The caller
releases them, in order, once it has; the end of the link is reported after them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import websockets
from pydantic import BaseModel, ValidationError
from websockets.asyncio.client import ClientConnection

from salon.client.errors import (
    ConnectionFailed,
    ConnectionLost,
    InvalidToken,
    SessionNotFound,
    error_for_code,
)
from salon.protocol import (
    ConnectedMessage,
    ConnectRequest,
    ErrorCode,
    ErrorMessage,
    PingMessage,
    PongMessage,
    RedirectMessage,
    ResumeInfo,
    ServerMessage,
    server_message_adapter,
)

__all__ = ["LinkClosed", "Redirected", "ResumeRefused", "SignallingLink", "signalling_url"]

logger = logging.getLogger(__name__)

#: Seconds to wait for a reply before the request fails with :class:`ConnectionLost`.
REQUEST_TIMEOUT = 20.0


def signalling_url(url: str) -> str:
    """``http(s)://host:port`` (or ``ws(s)://...``) → the ``ws(s)://host:port/signalling`` URL."""
    base = url.rstrip("/")
    if base.startswith("http"):
        base = "ws" + base[4:]
    if not base.startswith("ws"):
        raise ValueError(f"the server URL must be http(s):// or ws(s)://, not {url!r}")
    return base if base.endswith("/signalling") else base + "/signalling"


class ResumeRefused(ConnectionFailed):
    """The server refused to resume the connection (``resume_refused``): connect afresh."""


class Redirected(ConnectionFailed):
    """A node of a cluster sent the client to another node (``redirect``, placement by
    load): connect to :attr:`url` instead."""

    def __init__(self, message: str, *, url: str, node: str, close_code: int | None = None) -> None:
        super().__init__(message, close_code=close_code)
        self.url = url
        self.node = node


@dataclass(frozen=True, slots=True)
class LinkClosed:
    """How the link ended."""

    code: int | None
    """The WebSocket close code (1006 when the socket broke without one)."""
    reason: str


class SignallingLink:
    """One WebSocket connection to ``/signalling``."""

    _ids = itertools.count(1)

    def __init__(
        self,
        url: str,
        *,
        on_message: Callable[[ServerMessage], None],
        on_closed: Callable[[LinkClosed], None],
        on_unknown: Callable[[dict[str, Any]], None],
        name: str = "",
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.url = signalling_url(url)
        self._ssl_context = ssl_context
        self._on_message = on_message
        self._on_closed = on_closed
        self._on_unknown = on_unknown
        self._name = name
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[ServerMessage]] = {}
        self._closing = False
        #: Events that came before :meth:`release` (None once released).
        self._held: list[ServerMessage] | None = []
        #: How the link ended, when it did before :meth:`release` (reported then).
        self._closed_early: LinkClosed | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"SignallingLink({self._name})"

    async def open(
        self,
        session_id: str,
        token: str,
        *,
        timeout: float = 10.0,
        resume: ResumeInfo | None = None,
        accept_redirect: bool = False,
    ) -> ConnectedMessage:
        """Open the socket and ``connect``; the token is sent in the first message, never logged.
        With ``resume``, the connection it names is resumed (its secret is never logged).
        With ``accept_redirect``, a node of a cluster may send the client elsewhere.

        :raises Redirected: (with ``accept_redirect``) connect to another node instead.

        :raises InvalidToken: the server refused the token.
        :raises SessionNotFound: no such session.
        :raises ResumeRefused: the server cannot resume that connection.
        :raises ConnectionFailed: the server is unreachable or refused the connection otherwise.
        """
        try:
            async with asyncio.timeout(timeout):
                if self._ssl_context is None:
                    self._ws = await websockets.connect(self.url, max_size=None, compression=None)
                else:
                    self._ws = await websockets.connect(
                        self.url, max_size=None, compression=None, ssl=self._ssl_context
                    )
        except (OSError, TimeoutError, websockets.InvalidHandshake, websockets.InvalidURI) as exc:
            raise ConnectionFailed(f"cannot open {self.url}: {exc or type(exc).__name__}") from exc
        self._reader = asyncio.get_running_loop().create_task(self._read(), name=f"{self!r}-reader")
        request_id = next(self._ids)
        message = ConnectRequest(
            request_id=request_id,
            session_id=session_id,
            token=token,
            client="salon-python",
            resume=resume,
            accept_redirect=accept_redirect,
        )
        try:
            reply = await self._roundtrip(request_id, message, timeout)
        except ConnectionLost as exc:
            await self.close()
            raise ConnectionFailed(f"the server closed the link during connect: {exc}") from exc
        if isinstance(reply, RedirectMessage):
            code = await self._close_code()
            await self.close()
            raise Redirected(
                f"sent to node {reply.node} ({reply.url})", url=reply.url, node=reply.node, close_code=code
            )
        if isinstance(reply, ErrorMessage):
            code = await self._close_code()
            await self.close()
            if reply.code == ErrorCode.INVALID_TOKEN:
                raise InvalidToken(f"the server refused the token: {reply.message}", close_code=code)
            if reply.code == ErrorCode.RESUME_REFUSED:
                raise ResumeRefused(f"the server cannot resume: {reply.message}", close_code=code)
            if reply.code == ErrorCode.NOT_FOUND:
                raise SessionNotFound(f"no session {session_id}: {reply.message}", close_code=code)
            raise ConnectionFailed(f"connect refused: {reply.code!s}: {reply.message}", close_code=code)
        assert isinstance(reply, ConnectedMessage), reply
        return reply

    def release(self) -> None:
        """Start handing events to ``on_message``: first, in order, those that came since
        ``connected``; then, if the link has already ended, report that (``on_closed``).
        Call once, after taking in the ``connected`` that :meth:`open` returned."""
        held, self._held = self._held, None
        for message in held or ():
            self._on_message(message)
        closed, self._closed_early = self._closed_early, None
        if closed is not None and not self._closing:
            logger.info("%r: closed by the server or the network: %s", self, closed)
            self._on_closed(closed)

    async def _close_code(self) -> int | None:
        """The server's close code after a refused connect (it closes right after the error)."""
        if self._reader is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await asyncio.shield(self._reader)
        return self._ws.close_code if self._ws is not None else None

    async def request(
        self, message: BaseModel, *, action: str, timeout: float = REQUEST_TIMEOUT
    ) -> ServerMessage:
        """Send a request (its ``request_id`` is overwritten) and return its reply.

        :raises RequestRefused: (a subclass, by error code) the server refused it.
        :raises ConnectionLost: the link broke before the reply came.
        """
        request_id = next(self._ids)
        reply = await self._roundtrip(
            request_id, message.model_copy(update={"request_id": request_id}), timeout
        )
        if isinstance(reply, ErrorMessage):
            raise error_for_code(action, reply.code, reply.message)
        return reply

    async def _roundtrip(self, request_id: int, message: BaseModel, timeout: float) -> ServerMessage:
        if self._ws is None or self._reader is None or self._reader.done():
            raise ConnectionLost("the signalling link is closed")
        future: asyncio.Future[ServerMessage] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            await self._ws.send(message.model_dump_json())
            async with asyncio.timeout(timeout):
                return await future
        except websockets.ConnectionClosed as exc:
            raise ConnectionLost(f"the signalling link closed: {exc}") from exc
        except TimeoutError as exc:
            raise ConnectionLost(
                f"no reply to {type(message).model_fields['type'].default} in {timeout:g} s"
            ) from exc
        finally:
            self._pending.pop(request_id, None)

    async def _read(self) -> None:
        assert self._ws is not None
        ws = self._ws
        try:
            async for raw in ws:
                self._dispatch(raw if isinstance(raw, str) else raw.decode("utf-8", "replace"), ws)
        except websockets.ConnectionClosed:
            pass
        except OSError as exc:
            logger.info("%r: socket error: %r", self, exc)
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(ConnectionLost(f"the signalling link closed (code {ws.close_code})"))
            if not self._closing:
                closed = LinkClosed(ws.close_code, ws.close_reason or "")
                if self._held is None:
                    logger.info("%r: closed by the server or the network: %s", self, closed)
                    self._on_closed(closed)
                else:  # during open(), or before the caller took in `connected`
                    self._closed_early = closed

    def _dispatch(self, text: str, ws: ClientConnection) -> None:
        try:
            message = server_message_adapter.validate_json(text)
        except ValidationError:
            try:
                raw = json.loads(text)
            except ValueError:
                logger.warning("%r: ignored a message that is not JSON", self)
                return
            if isinstance(raw, dict):
                self._on_unknown(raw)
            return
        if isinstance(message, PingMessage):
            pong = PongMessage(timestamp=message.timestamp).model_dump_json()
            task = asyncio.get_running_loop().create_task(self._send_quietly(ws, pong))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        request_id = getattr(message, "request_id", None)
        if isinstance(request_id, int) and request_id in self._pending:
            future = self._pending[request_id]
            if not future.done():
                future.set_result(message)
            return
        if isinstance(message, ErrorMessage):
            logger.warning("%r: server error without a request: %s: %s", self, message.code, message.message)
            return
        if self._held is not None:
            self._held.append(message)
        else:
            self._on_message(message)

    async def _send_quietly(self, ws: ClientConnection, text: str) -> None:
        with contextlib.suppress(websockets.ConnectionClosed, OSError):
            await ws.send(text)

    def abort(self) -> None:
        """Break the socket without a closing handshake, as a network failure would (tests)."""
        if self._ws is not None:
            self._ws.transport.abort()

    async def close(self) -> None:
        """Close the socket (normal closure) and stop the reader; no ``on_closed``. Idempotent."""
        self._closing = True
        if self._ws is not None:
            with contextlib.suppress(websockets.ConnectionClosed, OSError, TimeoutError):
                async with asyncio.timeout(2.0):
                    await self._ws.close()
            if self._ws.transport is not None and not self._ws.transport.is_closing():
                self._ws.transport.abort()
        tasks = [t for t in (self._reader, *self._tasks) if t is not None and not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
