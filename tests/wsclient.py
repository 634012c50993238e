"""A minimal signalling client for the protocol tests: raw JSON over a real WebSocket."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
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
    async def open(cls, url: str, **kwargs: Any) -> WsClient:
        ws = await websockets.connect(url.replace("http", "ws", 1) + "/signalling", max_size=None)
        return cls(ws, **kwargs)

    @classmethod
    async def join(cls, url: str, session_id: str, token: str, **kwargs: Any) -> WsClient:
        client = await cls.open(url, **kwargs)
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
