"""The callbacks' HTTP/1.1 client against real sockets on 127.0.0.1: framing, keep-alive,
connections the receiver closed, timeouts and errors."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from salon.callbacks.http import CallbackClient, CallbackHttpError

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


class Server:
    """Counts connections; reads requests (head and body) and lets ``handler`` answer."""

    def __init__(self) -> None:
        self.connections = 0
        self.requests: list[tuple[bytes, bytes]] = []
        self.handler: Handler = answer(b"HTTP/1.1 204 No Content\r\n\r\n")
        self.server: asyncio.Server | None = None

    async def read_request(self, reader: asyncio.StreamReader) -> bool:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        self.requests.append((head, await reader.readexactly(length)))
        return True

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        connection = self.connections
        try:
            while True:
                try:
                    await self.read_request(reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                await self.handler(reader, writer, connection)
                if writer.is_closing():
                    return
        finally:
            writer.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/cb?key=k3y"


def answer(response: bytes, *, close: bool = False) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, connection: int) -> None:
        writer.write(response)
        await writer.drain()
        if close:
            writer.close()

    return handler


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    s = Server()
    s.server = await asyncio.start_server(s.serve, "127.0.0.1", 0)
    yield s
    s.server.close()


@pytest.fixture
async def client() -> AsyncIterator[CallbackClient]:
    c = CallbackClient(5.0)
    yield c
    await c.aclose()


async def test_posts_the_body_and_reuses_the_connection(server: Server, client: CallbackClient) -> None:
    server.handler = answer(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
    for i in range(3):
        assert await client.post(server.url, b'{"n":%d}' % i, {"Content-Type": "application/json"}) == 200
    assert server.connections == 1
    head, body = server.requests[2]
    assert body == b'{"n":2}'
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /cb?key=k3y HTTP/1.1"
    port = server.url.split(":")[2].split("/")[0]
    assert {f"Host: 127.0.0.1:{port}", "Content-Length: 7", "Content-Type: application/json"} <= set(lines)


async def test_chunked_answers_and_interim_answers_are_read_whole(
    server: Server, client: CallbackClient
) -> None:
    server.handler = answer(
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;x=y\r\nhello\r\n6\r\n world\r\n0\r\nTrailer: t\r\n\r\n"
    )
    assert await client.post(server.url, b"{}", {}) == 202
    assert await client.post(server.url, b"{}", {}) == 202
    assert server.connections == 1  # the body was consumed exactly: the connection is reusable


async def test_an_answer_ending_with_the_connection_is_not_reused(
    server: Server, client: CallbackClient
) -> None:
    server.handler = answer(b"HTTP/1.0 500 Oops\r\n\r\nthe body runs to the end", close=True)
    assert await client.post(server.url, b"{}", {}) == 500
    server.handler = answer(b"HTTP/1.1 503 Busy\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
    assert await client.post(server.url, b"{}", {}) == 503
    assert await client.post(server.url, b"{}", {}) == 503
    assert server.connections == 3


async def test_a_kept_connection_the_receiver_closed_is_replaced(
    server: Server, client: CallbackClient
) -> None:
    # The receiver answers as if it kept the connection alive, then closes it anyway.
    server.handler = answer(b"HTTP/1.1 204 No Content\r\n\r\n", close=True)
    for _ in range(3):
        assert await client.post(server.url, b"{}", {}) == 204
    assert server.connections == 3 and len(server.requests) == 3


async def test_a_receiver_that_does_not_answer_times_out(server: Server) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, connection: int) -> None:
        await asyncio.sleep(30)

    server.handler = silent
    client = CallbackClient(0.5)
    started = time.monotonic()
    with pytest.raises(CallbackHttpError, match=r"^Timeout$"):
        await client.post(server.url, b"{}", {})
    assert time.monotonic() - started < 5
    await client.aclose()


async def test_no_receiver_and_malformed_answers_are_errors(server: Server, client: CallbackClient) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: the connection is refused
        with pytest.raises(CallbackHttpError, match="ConnectionRefusedError"):
            await client.post(f"http://127.0.0.1:{port}/cb", b"{}", {})
    server.handler = answer(b"SMTP ready\r\n\r\n")
    with pytest.raises(CallbackHttpError, match="RemoteProtocolError"):
        await client.post(server.url, b"{}", {})
    server.handler = answer(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", close=True)
    with pytest.raises(CallbackHttpError, match="RemoteProtocolError"):  # the body cut short
        await client.post(server.url, b"{}", {})
    with pytest.raises(CallbackHttpError, match="InvalidURL"):
        await client.post("ftp://127.0.0.1/cb", b"{}", {})
