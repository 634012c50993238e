"""A TCP proxy in front of the server's HTTP/WebSocket port, to break the signalling path the
ways networks do (media, over UDP, still goes straight to the server).

* :meth:`TcpProxy.drop`: every link reset at both ends at once (the server sees its TCP
  connection go);
* :meth:`TcpProxy.cut`: the client ends reset, the server ends kept open and silent, so the
  server only notices when its heartbeat times out;
* :meth:`TcpProxy.freeze` / :meth:`TcpProxy.thaw`: a silent network, nothing gets through
  either way and new links are refused, until thawed (which resets what was open, as a real
  outage does);
* :meth:`TcpProxy.refuse`: no new links from now on (connection refused).
"""

from __future__ import annotations

import asyncio
import contextlib
import urllib.parse

__all__ = ["TcpProxy"]


class TcpProxy:
    """``async with TcpProxy(server_url) as proxy``: clients connect to :attr:`url`."""

    def __init__(self, target_url: str) -> None:
        split = urllib.parse.urlsplit(target_url)
        assert split.hostname and split.port, target_url
        self._target = (split.hostname, split.port)
        self._server: asyncio.Server | None = None
        self._links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._silent: list[asyncio.StreamWriter] = []
        self._pumps: set[asyncio.Task[None]] = set()
        self.frozen = False
        #: Connections refused while frozen (a client's attempts to reconnect).
        self.refused = 0
        self.url = ""

    async def __aenter__(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.refuse()
        self.drop()
        for upstream in self._silent:
            upstream.transport.abort()
        for pump in self._pumps:
            pump.cancel()
        if self._pumps:
            await asyncio.wait(self._pumps)

    def drop(self) -> None:
        """Reset every link at both ends now."""
        links, self._links = self._links, set()
        for client, upstream in links:
            client.transport.abort()
            upstream.transport.abort()

    def cut(self) -> None:
        """Reset every client end now; keep the server ends open, forwarding nothing."""
        links, self._links = self._links, set()
        for pump in self._pumps:
            pump.cancel()
        for client, upstream in links:
            client.transport.abort()
            self._silent.append(upstream)

    def freeze(self) -> None:
        """Swallow everything, both ways, and refuse new links, until :meth:`thaw`."""
        self.frozen = True

    def thaw(self) -> None:
        self.drop()
        self.frozen = False

    def refuse(self) -> None:
        """Accept no new links (connection refused from now on)."""
        if self._server is not None:
            self._server.close()
            self._server = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.frozen:
            self.refused += 1
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self._links.add((writer, up_writer))
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            pump = asyncio.get_running_loop().create_task(self._pump(source, sink))
            self._pumps.add(pump)
            pump.add_done_callback(self._pumps.discard)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await source.read(65536):
                if self.frozen:
                    continue  # the network swallows it
                if sink.transport.is_closing():
                    return
                sink.write(data)
                await sink.drain()
        if not self.frozen and not sink.transport.is_closing():
            sink.close()  # the other side ended cleanly: pass the close on
