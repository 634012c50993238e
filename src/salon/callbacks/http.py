"""A small HTTP/1.1 client for callbacks: ``POST`` a body, read the status, keep the
connection for the next request.

Callbacks need little of HTTP: one method, a small body, a status, no redirects, no cookies.
httpx did that at 2-3 ms of CPU per request with 16 requests in flight (its connection pool
and lock set-up), which capped delivery at a few hundred callbacks per second on one core;
this client costs about a tenth of that. It speaks HTTP/1.1 over TCP or TLS (the system's CA
certificates, the host name checked), reuses a connection while the receiver keeps it alive,
and reads a response framed by ``Content-Length``, chunked, or the end of the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import urllib.parse

__all__ = ["CallbackClient", "CallbackHttpError"]

#: The most of a response body that is read (and discarded); a longer one closes the connection.
_MAX_BODY = 1 << 20
_MAX_LINE = 8192
_MAX_HEADERS = 100

_Key = tuple[str, str, int]
_Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


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
        head = [f"POST {target} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
        head += [f"{name}: {value}" for name, value in headers.items()]
        request = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
        try:
            async with asyncio.timeout(self.timeout):
                while True:
                    stream = self._take(key)
                    if stream is None:
                        return await self._exchange(key, await self._connect(key), request, reused=False)
                    with contextlib.suppress(_Stale):
                        return await self._exchange(key, stream, request, reused=True)
        except TimeoutError as exc:
            raise CallbackHttpError("Timeout") from exc
        except (OSError, EOFError, ValueError, _Stale) as exc:
            raise CallbackHttpError(exc.__class__.__name__) from exc

    async def aclose(self) -> None:
        self._closed = True
        streams = [stream for streams in self._idle.values() for stream in streams]
        self._idle.clear()
        for _, writer in streams:
            writer.close()

    def _take(self, key: _Key) -> _Stream | None:
        streams = self._idle.get(key)
        while streams:
            reader, writer = streams.pop()
            if not writer.is_closing() and not reader.at_eof():
                return reader, writer
            writer.close()
        return None

    async def _connect(self, key: _Key) -> _Stream:
        scheme, hostname, port = key
        if scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            return await asyncio.open_connection(
                hostname, port, ssl=self._ssl, server_hostname=hostname, limit=_MAX_LINE * 2
            )
        return await asyncio.open_connection(hostname, port, limit=_MAX_LINE * 2)

    async def _exchange(self, key: _Key, stream: _Stream, request: bytes, *, reused: bool) -> int:
        reader, writer = stream
        keep = False
        try:
            try:
                writer.write(request)
                await writer.drain()
                line = await reader.readline()
            except ConnectionError:
                line = b""
            if not line:
                if reused:  # the receiver closed an idle connection: a fresh one is tried
                    raise _Stale()
                raise EOFError("connection closed before an answer")
            status, keep = await _read_response(reader, line)
        finally:
            if keep and not self._closed and len(self._idle.setdefault(key, [])) < self.max_idle:
                self._idle[key].append(stream)
            else:
                writer.close()
        return status


async def _read_response(reader: asyncio.StreamReader, line: bytes) -> tuple[int, bool]:
    """The status of the response whose status line is ``line`` (its body read and dropped),
    and whether the connection can carry another request."""
    while True:
        version, status = _status_line(line)
        fields = await _header_fields(reader)
        if 100 <= status < 200:  # an interim answer: the real one follows
            line = await reader.readline()
            continue
        break
    connection = fields.get("connection", "").lower()
    keep = version == "HTTP/1.1" and "close" not in connection
    if status in (204, 304):
        return status, keep
    if "chunked" in fields.get("transfer-encoding", "").lower():
        await _read_chunked(reader)
    elif "content-length" in fields:
        length = int(fields["content-length"])
        if length < 0:
            raise ValueError("negative Content-Length")
        if length > _MAX_BODY:
            return status, False
        await reader.readexactly(length)
    else:  # delimited by the end of the connection
        await reader.read(_MAX_BODY)
        keep = False
    return status, keep


def _status_line(line: bytes) -> tuple[str, int]:
    version, _, rest = line.decode("latin-1").strip().partition(" ")
    if not version.startswith("HTTP/1.") or len(rest) < 3 or not rest[:3].isdigit():
        raise ValueError("not an HTTP/1 status line")
    return version, int(rest[:3])


async def _header_fields(reader: asyncio.StreamReader) -> dict[str, str]:
    fields: dict[str, str] = {}
    for _ in range(_MAX_HEADERS):
        line = await reader.readline()
        if not line.endswith(b"\n"):
            raise EOFError("connection closed in the headers")
        if line in (b"\r\n", b"\n"):
            return fields
        name, _, value = line.decode("latin-1").partition(":")
        fields[name.strip().lower()] = value.strip()
    raise ValueError("too many header fields")


async def _read_chunked(reader: asyncio.StreamReader) -> None:
    total = 0
    while True:
        size_line = await reader.readline()
        if not size_line.endswith(b"\n"):
            raise EOFError("connection closed in a chunk")
        size = int(size_line.split(b";")[0].strip(), 16)
        if size == 0:
            await _header_fields(reader)  # trailers, up to the blank line
            return
        total += size
        if total > _MAX_BODY:
            raise ValueError("response body too long")
        await reader.readexactly(size + 2)
