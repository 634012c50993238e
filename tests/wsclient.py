"""A minimal signalling client for the protocol tests: raw JSON over a real WebSocket."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
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

    async def send(self, message: Message | str) -> None:
        await self.ws.send(message if isinstance(message, str) else json.dumps(message))

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

    async def quiet(self, seconds: float = 0.3) -> list[Message]:
        """Whatever arrives within ``seconds`` (usually asserted empty)."""
        await asyncio.sleep(seconds)
        found, self.messages = self.messages, []
        return found

    async def closed(self, timeout: float = 10) -> tuple[int | None, str | None]:
        await asyncio.wait_for(self._reader, timeout)
        return self.ws.close_code, self.ws.close_reason

    async def close(self) -> None:
        await self.ws.close()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
