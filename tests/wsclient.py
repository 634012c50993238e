"""A minimal signalling client for the protocol tests: raw JSON over a real WebSocket."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import socket
from ssl import SSLContext
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection

Message = dict[str, Any]


class WsClient:
    """Buffers every message; answers pings unless told not to."""

    _ids = itertools.count(1)

    def __init__(self, ws: ClientConnection, *, answer_pings: bool = True) -> None:
        self.ws = ws
        self.answer_pings = answer_pings
        self.messages: list[Message] = []
        self._arrived = asyncio.Event()
        self._reader = asyncio.get_running_loop().create_task(self._read())
        self.connection_id: str | None = None
        self.connected: Message | None = None

    @classmethod
    async def open(cls, url: str, *, ssl: SSLContext | None = None, **kwargs: Any) -> WsClient:
        """``http://`` → ``ws://``, ``https://`` → ``wss://`` (``ssl`` trusts its certificate)."""
        target = url.replace("http", "ws", 1) + "/signalling"
        if ssl is None:
            ws = await websockets.connect(target, max_size=None)
        else:
            ws = await websockets.connect(target, max_size=None, ssl=ssl)
        return cls(ws, **kwargs)

    @classmethod
    async def join(
        cls, url: str, session_id: str, token: str, *, ssl: SSLContext | None = None, **kwargs: Any
    ) -> WsClient:
        client = await cls.open(url, ssl=ssl, **kwargs)
        reply = await client.request({"type": "connect", "session_id": session_id, "token": token})
        assert reply["type"] == "connected", reply
        client.connected = reply
        client.connection_id = reply["connection"]["connection_id"]
        return client

    async def _read(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in self.ws:
                message = json.loads(raw)
                if message["type"] == "ping":
                    if self.answer_pings:
                        await self.ws.send(json.dumps({"type": "pong"}))
                    continue
                self.messages.append(message)
                self._arrived.set()
        self._arrived.set()

    async def send(self, message: Message | str | bytes) -> None:
        """Send a dict as JSON text, a string as a text frame, bytes as a binary frame."""
        await self.ws.send(message if isinstance(message, str | bytes) else json.dumps(message))

    async def request(self, message: Message, timeout: float = 10) -> Message:
        request_id = next(self._ids)
        await self.send({**message, "request_id": request_id})
        return await self.next(lambda m: m.get("request_id") == request_id, timeout)

    async def next(self, match: Any = None, timeout: float = 10) -> Message:
        """The first buffered message matching ``match`` (a type name or a predicate), removed."""
        if isinstance(match, str):
            wanted = match
            match = lambda m: m["type"] == wanted  # noqa: E731
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for i, message in enumerate(self.messages):
                if match is None or match(message):
                    return self.messages.pop(i)
            if self._reader.done():
                raise AssertionError(f"socket closed before a match; buffered: {self.messages}")
            self._arrived.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"timed out waiting; buffered: {self.messages}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)

    async def quiet(self, timeout: float = 10) -> list[Message]:
        """Everything this client received before a control signal it sends itself now, all
        removed from the buffer (usually asserted empty).

        The control must arrive (within ``timeout``), which proves the socket still delivers;
        the server queues a connection's messages in order, so whatever an earlier action sent
        this client is ahead of the control: no guess of how long "nothing" takes.
        """
        assert self.connection_id is not None, "quiet() needs a connected client"
        data = f"quiet-control-{next(self._ids)}"
        request_id = next(self._ids)
        await self.send(
            {
                "type": "signal",
                "request_id": request_id,
                "signal_type": "quiet-control",
                "data": data,
                "to": self.connection_id,
            }
        )

        def is_control(m: Message) -> bool:
            return m["type"] == "signal" and m.get("signal_type") == "quiet-control" and m.get("data") == data

        def is_reply(m: Message) -> bool:
            return m.get("request_id") == request_id

        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not (any(map(is_control, self.messages)) and any(map(is_reply, self.messages))):
            replies = [m for m in self.messages if is_reply(m)]
            assert not replies or replies[0]["type"] == "ack", f"control signal refused: {replies[0]}"
            if self._reader.done():
                raise AssertionError(f"socket closed before the control signal; buffered: {self.messages}")
            self._arrived.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"timed out waiting for the control signal; buffered: {self.messages}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)
        at = next(i for i, m in enumerate(self.messages) if is_control(m))
        found = [m for m in self.messages[:at] if not is_reply(m)]
        self.messages = [m for m in self.messages[at + 1 :] if not is_reply(m)]
        return found

    async def closed(self, timeout: float = 10) -> tuple[int | None, str | None]:
        await asyncio.wait_for(self._reader, timeout)
        return self.ws.close_code, self.ws.close_reason

    async def close(self) -> None:
        await self.ws.close()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


class StuckClient:
    """A real WebSocket client on a raw TCP socket that stops reading once it is connected.

    It does the handshake and ``connect`` itself (reading only what those need), with a small
    receive buffer, then never reads again, while it keeps sending ``pong`` so that the
    server's heartbeat has no reason to drop it: its TCP window fills and stays full.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.connection_id: str | None = None
        self._pongs: asyncio.Task[None] | None = None
        self.send_failed: BaseException | None = None

    @classmethod
    async def join(cls, url: str, session_id: str, token: str, *, rcvbuf: int = 4096) -> StuckClient:
        loop = asyncio.get_running_loop()
        host, port = url.split("//", 1)[1].rsplit(":", 1)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await loop.sock_connect(sock, (host, int(port)))
        client = cls(sock)
        key = base64.b64encode(os.urandom(16)).decode()
        await loop.sock_sendall(
            sock,
            (
                f"GET /signalling HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode(),
        )
        buffer = b""
        while b"\r\n\r\n" not in buffer:
            buffer += await client._recv()
        head, _, buffer = buffer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        await client.send({"type": "connect", "request_id": 1, "session_id": session_id, "token": token})
        while True:
            payload, buffer = await client._frame(buffer)
            message = json.loads(payload)
            if message["type"] != "ping":
                break
        assert message["type"] == "connected", message
        client.connection_id = message["connection"]["connection_id"]
        client._pongs = loop.create_task(client._pong_forever())
        return client

    async def _recv(self) -> bytes:
        data = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(self.sock, 65536), 10)
        if not data:
            raise ConnectionError("the server closed the connection")
        return data

    async def _frame(self, buffer: bytes) -> tuple[bytes, bytes]:
        """One unmasked server frame's payload, and what follows it."""
        while len(buffer) < 2:
            buffer += await self._recv()
        length, start = buffer[1] & 0x7F, 2
        if length == 126:
            while len(buffer) < 4:
                buffer += await self._recv()
            length, start = int.from_bytes(buffer[2:4], "big"), 4
        elif length == 127:
            while len(buffer) < 10:
                buffer += await self._recv()
            length, start = int.from_bytes(buffer[2:10], "big"), 10
        while len(buffer) < start + length:
            buffer += await self._recv()
        return buffer[start : start + length], buffer[start + length :]

    async def send(self, message: Message) -> None:
        payload = json.dumps(message).encode()
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            header = bytes([0x81, 0x80 | n])
        elif n < 65536:
            header = bytes([0x81, 0x80 | 126]) + n.to_bytes(2, "big")
        else:
            header = bytes([0x81, 0x80 | 127]) + n.to_bytes(8, "big")
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        await asyncio.get_running_loop().sock_sendall(self.sock, header + mask + masked)

    async def _pong_forever(self) -> None:
        try:
            while True:
                await self.send({"type": "pong"})
                await asyncio.sleep(0.3)
        except OSError as exc:  # reset by the server: what the tests wait for
            self.send_failed = exc

    async def close(self) -> None:
        if self._pongs is not None:
            self._pongs.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pongs
        self.sock.close()
