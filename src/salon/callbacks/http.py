"""A small HTTP/1.1 client for callbacks: ``POST`` a body, read the status, keep the
connection for the next request.

Callbacks need little of HTTP: one method, a small body, a status, no redirects, no cookies.
httpx did that at 2-3 ms of CPU per request with 16 requests in flight (its connection pool
and lock set-up), which capped delivery at a few hundred callbacks per second on one core.
Here the protocol is h11's (the sans-I/O HTTP/1.1 state machine httpx itself is built on:
request framing, response framing by ``Content-Length``, chunks or the end of the
connection, interim answers, keep-alive rules), behind a thin asyncio adapter: TCP or TLS
(the system's CA certificates, the host name checked), a connection reused while the
receiver keeps it alive, one timeout per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import urllib.parse

import h11

__all__ = ["CallbackClient", "CallbackHttpError"]

#: The most of a response body that is read (and discarded); a longer one closes the connection.
_MAX_BODY = 1 << 20
#: The most a response's status line and header fields may take.
_MAX_HEAD = 16384
_READ_SIZE = 65536

_Key = tuple[str, str, int]


class _Stream:
    """One connection to a receiver: its asyncio streams and h11's view of the protocol."""

    __slots__ = ("http", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.http = h11.Connection(h11.CLIENT, max_incomplete_event_size=_MAX_HEAD)


class CallbackHttpError(Exception):
    """The request could not be made or its answer not read; ``str()`` says which way, never
    the URL's path or query."""


class _Stale(Exception):
    """A reused connection was closed by the receiver before it answered."""


class CallbackClient:
    """POSTs with a timeout over keep-alive connections (at most ``max_idle`` kept per host)."""

    def __init__(self, timeout: float, *, max_idle: int = 16) -> None:
        self.timeout = timeout
        self.max_idle = max_idle
        self._idle: dict[_Key, list[_Stream]] = {}
        self._ssl: ssl.SSLContext | None = None
        self._closed = False

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        """POST ``body`` to ``url``; the response's status.

        :raises CallbackHttpError: no connection, a broken one, a malformed answer, or no
            complete answer within the timeout.
        """
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise CallbackHttpError("InvalidURL")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        key = (parts.scheme, parts.hostname, port)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host = parts.netloc.rpartition("@")[2]
        fields = [("Host", host), ("Content-Length", str(len(body))), *headers.items()]
        try:
            request = h11.Request(method="POST", target=target, headers=fields)
        except h11.LocalProtocolError as exc:  # a URL or a header h11 will not send
            raise CallbackHttpError("InvalidURL") from exc
        try:
            async with asyncio.timeout(self.timeout):
                while True:
                    stream = self._take(key)
                    if stream is None:
                        stream = await self._connect(key)
                        return await self._exchange(key, stream, request, body, reused=False)
                    with contextlib.suppress(_Stale):
                        return await self._exchange(key, stream, request, body, reused=True)
        except TimeoutError as exc:
            raise CallbackHttpError("Timeout") from exc
        except (OSError, EOFError, ValueError, _Stale) as exc:
            raise CallbackHttpError(exc.__class__.__name__) from exc
        except h11.ProtocolError as exc:  # a malformed answer
            raise CallbackHttpError("RemoteProtocolError") from exc

    async def aclose(self) -> None:
        self._closed = True
        streams = [stream for streams in self._idle.values() for stream in streams]
        self._idle.clear()
        for stream in streams:
            stream.writer.close()

    def _take(self, key: _Key) -> _Stream | None:
        streams = self._idle.get(key)
        while streams:
            stream = streams.pop()
            if not stream.writer.is_closing() and not stream.reader.at_eof():
                return stream
            stream.writer.close()
        return None

    async def _connect(self, key: _Key) -> _Stream:
        scheme, hostname, port = key
        if scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            return _Stream(
                *await asyncio.open_connection(hostname, port, ssl=self._ssl, server_hostname=hostname)
            )
        return _Stream(*await asyncio.open_connection(hostname, port))

    async def _exchange(
        self, key: _Key, stream: _Stream, request: h11.Request, body: bytes, *, reused: bool
    ) -> int:
        http, keep = stream.http, False
        try:
            try:
                stream.writer.write(
                    http.send(request) + http.send(h11.Data(data=body)) + http.send(h11.EndOfMessage())
                )
                await stream.writer.drain()
                status = await _read_response(stream, reused=reused)
            except ConnectionError as exc:
                if reused:  # the receiver closed an idle connection: a fresh one is tried
                    raise _Stale() from exc
                raise
            if http.our_state is h11.DONE and http.their_state is h11.DONE:
                http.start_next_cycle()
                keep = True
        finally:
            if keep and not self._closed and len(self._idle.setdefault(key, [])) < self.max_idle:
                self._idle[key].append(stream)
            else:
                stream.writer.close()
        return status


async def _read_response(stream: _Stream, *, reused: bool) -> int:
    """The status of the answer (interim answers skipped, the body read and dropped).

    :raises _Stale: a reused connection ended before any of the answer came.
    """
    http, status, received, heard = stream.http, None, 0, False
    while True:
        event = http.next_event()
        if event is h11.NEED_DATA:
            data = await stream.reader.read(_READ_SIZE)
            if not data and not heard and reused:
                raise _Stale()
            heard = heard or bool(data)
            http.receive_data(data)
        elif isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            received += len(event.data)
            if received > _MAX_BODY:  # not worth reading: the status is known, the connection dropped
                assert status is not None
                return status
        elif isinstance(event, h11.EndOfMessage):
            assert status is not None
            return status
        elif isinstance(event, h11.ConnectionClosed):
            raise EOFError("connection closed before an answer")
        # h11.InformationalResponse (1xx): the real answer follows.
