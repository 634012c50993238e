"""The TURN credentials salon hands out work with a real coturn (``use-auth-secret``).

A throwaway ``turnserver`` runs on 127.0.0.1 (a free port, its own pid file, database and
log in a temporary directory, no config file); the salon server shares its secret. A
client connects over signalling, takes ``ice_servers`` from ``connected`` and allocates a
relay with aioice's TURN client; credentials signed with another secret, or expired, are
refused by coturn with 401.
"""

from __future__ import annotations

import asyncio
import pathlib
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aioice
import aioice.ice
import aioice.stun
import aioice.turn
import pytest

from salon.server.config import ServerConfig
from salon.server.run import ServerThread
from salon.signalling.ice import parse_ice_url, turn_rest_credentials
from tests.conftest import API_KEY, API_SECRET, RunningServer
from tests.wsclient import WsClient

TURNSERVER = shutil.which("turnserver") or "/usr/bin/turnserver"


@dataclass
class Coturn:
    port: int
    secret: str
    log: pathlib.Path

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else "(no log)"


def free_port() -> int:
    """A port of 127.0.0.1 free for UDP and TCP now (coturn listens on both)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port: int = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port


def stun_answers(address: tuple[str, int]) -> bool:
    """Whether a STUN Binding request to ``address`` gets a response within 0.2 s."""
    request = aioice.stun.Message(
        message_method=aioice.stun.Method.BINDING, message_class=aioice.stun.Class.REQUEST
    )
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.2)
        sock.sendto(bytes(request), address)
        try:
            data = sock.recv(2048)
        except OSError:
            return False
    return aioice.stun.parse_message(data).transaction_id == request.transaction_id


def start_coturn(tmp_path: pathlib.Path, server: Coturn) -> subprocess.Popen[bytes] | None:
    """Start turnserver and wait until it answers STUN; None if it did not come up."""
    command = [
        TURNSERVER,
        "-n",  # no configuration file (not /etc/turnserver.conf): everything is here
        *("--listening-ip", "127.0.0.1", "--relay-ip", "127.0.0.1"),
        *("--listening-port", str(server.port)),
        "--use-auth-secret",
        f"--static-auth-secret={server.secret}",
        *("--realm", "salon.test"),
        *("--no-cli", "--no-tls", "--no-dtls", "--allow-loopback-peers"),
        *("--log-file", str(server.log), "--simple-log", "--no-stdout-log"),
        *("--pidfile", str(tmp_path / "turnserver.pid"), "--userdb", str(tmp_path / "turndb")),
    ]
    with (tmp_path / "turnserver.out").open("ab") as output:
        proc = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 15
    while not stun_answers(server.address):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_coturn(proc)
            return None
    return proc


def stop_coturn(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture
def coturn(tmp_path: pathlib.Path) -> Iterator[Coturn]:
    if not pathlib.Path(TURNSERVER).exists():
        pytest.fail("coturn is not installed: apt-get install coturn (scripts/test installs it)")
    for _ in range(3):  # another process may take the free port before turnserver binds it
        server = Coturn(free_port(), secrets.token_hex(20), tmp_path / "turnserver.log")
        proc = start_coturn(tmp_path, server)
        if proc is not None:
            break
    else:
        said = (tmp_path / "turnserver.out").read_text(errors="replace")[-2000:]
        pytest.fail(f"turnserver did not start:\n{said}\n{server.log_tail()}")
    try:
        yield server
    finally:
        stop_coturn(proc)


@pytest.fixture
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """aioice gathers host candidates on 127.0.0.1 only (it skips loopback by default)."""
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])


class Received(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.datagrams: asyncio.Queue[tuple[bytes, Any]] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.datagrams.put_nowait((data, addr))


async def ice_servers_from_salon(tmp_path: pathlib.Path, coturn: Coturn) -> list[dict[str, Any]]:
    config = ServerConfig(
        port=0,
        data_dir=tmp_path / "salon",
        api_key=API_KEY,
        api_secret=API_SECRET,
        media=False,
        ice_servers=(f"turn:127.0.0.1:{coturn.port}",),
        turn_secret=coturn.secret,
    )
    with ServerThread(config) as thread:
        server = RunningServer(thread.url, API_KEY, API_SECRET, thread)
        sid = server.session()
        client = await WsClient.join(server.url, sid, server.token(sid))
        await client.close()
    assert client.connected is not None
    servers: list[dict[str, Any]] = client.connected["ice_servers"]
    return servers


async def test_coturn_accepts_the_credentials_from_connected_and_relays_with_them(
    tmp_path: pathlib.Path, coturn: Coturn, loopback_only: None
) -> None:
    (turn,) = await ice_servers_from_salon(tmp_path, coturn)
    (url,) = turn["urls"]
    parsed = parse_ice_url(url)

    # An ICE agent gathers a relay candidate with them...
    connection = aioice.Connection(
        ice_controlling=True,
        turn_server=(parsed.host, parsed.port),
        turn_username=turn["username"],
        turn_password=turn["credential"],
        use_ipv6=False,
    )
    try:
        await asyncio.wait_for(connection.gather_candidates(), 10)
        relays = [c for c in connection.local_candidates if c.type == "relay"]
        assert [c.host for c in relays] == ["127.0.0.1"], (
            f"{connection.local_candidates}\n{coturn.log_tail()}"
        )
        assert relays[0].port != coturn.port
    finally:
        await connection.close()

    # ...and coturn relays datagrams both ways through an allocation made with them.
    loop = asyncio.get_running_loop()
    peer_transport, peer = await loop.create_datagram_endpoint(Received, local_addr=("127.0.0.1", 0))
    transport, client = await aioice.turn.create_turn_endpoint(
        Received, (parsed.host, parsed.port), turn["username"], turn["credential"]
    )
    try:
        relayed = transport.get_extra_info("sockname")
        transport.sendto(b"to the peer", peer_transport.get_extra_info("sockname"))
        data, source = await asyncio.wait_for(peer.datagrams.get(), 5)
        assert (data, tuple(source)) == (b"to the peer", tuple(relayed))
        peer_transport.sendto(b"to the client", relayed)
        data, _ = await asyncio.wait_for(client.datagrams.get(), 5)
        assert data == b"to the client"
    finally:
        transport.close()
        peer_transport.close()


@pytest.mark.parametrize(
    ("secret", "age", "why"),
    [("another-secret", 0, "signed with another secret"), (None, 90_000, "expired a day and more ago")],
)
async def test_coturn_refuses_a_credential_that_is_forged_or_expired(
    coturn: Coturn, secret: str | None, age: int, why: str
) -> None:
    username, credential = turn_rest_credentials(
        secret or coturn.secret, "c0ffee", now=time.time() - age, ttl=86400
    )
    with pytest.raises(aioice.stun.TransactionFailed, match="401") as info:
        transport, _ = await aioice.turn.create_turn_endpoint(
            asyncio.DatagramProtocol, coturn.address, username, credential
        )
        transport.close()
    assert info.value.response.attributes["ERROR-CODE"][0] == 401, why


async def test_coturn_accepts_a_fresh_credential_minted_with_the_shared_secret(coturn: Coturn) -> None:
    username, credential = turn_rest_credentials(coturn.secret, "c0ffee", now=time.time(), ttl=60)
    transport, _ = await aioice.turn.create_turn_endpoint(
        asyncio.DatagramProtocol, coturn.address, username, credential
    )
    try:
        assert transport.get_extra_info("sockname")[0] == "127.0.0.1"
    finally:
        transport.close()
