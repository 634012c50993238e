"""The media worker sends connectivity checks only to the candidates its ICE policy allows.

The real server listens on 127.0.0.1 and is configured with ``ice_deny=("127.0.0.2/31",)``
(``--ice-deny``): 127.0.0.2 and 127.0.0.3 are refused, the rest of loopback allowed. Test
sockets listen on 127.0.0.2, 127.0.0.3 and, as the control that proves a listener would
hear the checks, on 127.0.0.1. A publisher's offer carries, besides its own candidate, one on
the 127.0.0.1 listener (accepted: checks arrive there) and one on 127.0.0.3 (dropped
silently); it then trickles one on 127.0.0.2 and an mDNS name (refused with
``candidate_refused``). The call connects and the refused listeners never receive a datagram.

Also here, on a bare transport: at most ``max_remote_candidates`` remote candidates,
signalled or learnt as peer-reflexive from incoming checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import random
import socket
from collections.abc import Iterator

import pytest
from aioice import stun
from peers import Publisher, Subscriber, wait_for

from salon.media.errors import CandidateRefusedError, MediaError
from salon.media.sdp import RemoteTransportParameters
from salon.media.transport import WebRtcTransport, WebRtcTransportOptions
from salon.server.config import ServerConfig
from salon.server.run import ServerThread
from salon.signalling.service import SignallingConfig
from tests.conftest import API_KEY, API_SECRET, RunningServer
from tests.wsclient import WsClient

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def deny_server(tmp_path: pathlib.Path) -> Iterator[RunningServer]:
    config = ServerConfig(
        port=0,
        data_dir=tmp_path,
        api_key=API_KEY,
        api_secret=API_SECRET,
        signalling=SignallingConfig(heartbeat_interval=1.0, heartbeat_timeout=15.0),
        workers=1,
        ice_deny=("127.0.0.2/31",),
    )
    with ServerThread(config) as thread:
        yield RunningServer(thread.url, API_KEY, API_SECRET, thread)


@contextlib.contextmanager
def listener(host: str) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    sock.setblocking(False)
    try:
        yield sock
    finally:
        sock.close()


def received(sock: socket.socket) -> list[bytes]:
    out = []
    with contextlib.suppress(BlockingIOError):
        while True:
            out.append(sock.recv(65536))
    return out


def candidate(host: str, port: int, foundation: str, priority: int = 2130706431) -> str:
    return f"candidate:{foundation} 1 udp {priority} {host} {port} typ host"


def with_candidates(sdp: str, *lines: str) -> str:
    """``sdp`` with ``a=<line>`` for each of ``lines`` after its first candidate."""
    kept = sdp.split("\r\n")
    first = next(i for i, text in enumerate(kept) if text.startswith("a=candidate:"))
    kept[first + 1 : first + 1] = [f"a={line}" for line in lines]
    return "\r\n".join(kept)


async def test_refused_candidates_are_never_contacted_and_trickled_ones_get_an_error(
    deny_server: RunningServer,
) -> None:
    server = deny_server
    sid = server.session()
    alice = await WsClient.join(server.url, sid, server.token(sid))
    bob = await WsClient.join(server.url, sid, server.token(sid))
    pub, sub = Publisher(), Subscriber()
    with (
        listener("127.0.0.2") as denied,
        listener("127.0.0.3") as denied_in_offer,
        listener("127.0.0.1") as allowed,
    ):
        try:
            # Besides its own, the offer carries the control and a refused candidate, both
            # with priorities above the publisher's: the worker checks its pairs in priority
            # order, 20 ms apart, and the publisher only starts its own checks (so ICE can
            # only complete) once it has the answer, set after the control was heard.
            offer = with_candidates(
                await pub.offer(),
                candidate("127.0.0.1", allowed.getsockname()[1], "10", priority=2147483647),
                candidate("127.0.0.3", denied_in_offer.getsockname()[1], "7", priority=2147483646),
            )
            reply = await alice.request({"type": "publish", "sdp": offer})
            assert reply["type"] == "published", reply
            stream_id = reply["stream"]["stream_id"]

            async def trickle(value: str | None) -> dict[str, object]:
                return await alice.request(
                    {"type": "ice_candidate", "stream_id": stream_id, "candidate": value}
                )

            refused = await trickle(candidate("127.0.0.2", denied.getsockname()[1], "8", 2147483646))
            assert refused["type"] == "error" and refused["code"] == "candidate_refused", refused
            assert "127.0.0.2" in str(refused["message"]), refused
            mdns = await trickle(candidate("4f3c2a1b-9d8e-4c7b-a6f5-0e1d2c3b4a59.local", 5000, "9"))
            assert mdns["type"] == "error" and mdns["code"] == "candidate_refused", mdns

            # The allowed listener hears the worker's STUN binding requests (the control).
            checks: list[bytes] = []
            await wait_for(
                lambda: bool(checks.extend(received(allowed)) or checks),
                10,
                "a check to the allowed candidate",
            )
            assert checks[0][:2] == b"\x00\x01", checks[0][:20]  # a STUN Binding request
            await asyncio.sleep(0.3)  # the checks next in priority order would go out now
            await pub.answer(reply["answer"])

            # The call connects on the publisher's own candidate and media flows.
            created = await bob.next("stream_created", timeout=15)
            reply = await bob.request(
                {"type": "subscribe", "stream_id": created["stream"]["stream_id"], "sdp": await sub.offer()}
            )
            assert reply["type"] == "subscribed", reply
            await sub.answer(reply["answer"])
            await wait_for(lambda: len(sub.media.indices) >= 10, 15, "the subscriber to decode 10 frames")
            # The refused listeners heard nothing.
            assert received(denied) == [] and received(denied_in_offer) == []
        finally:
            await asyncio.gather(pub.close(), sub.close())
            await alice.close()
            await bob.close()


async def test_a_transport_takes_at_most_max_remote_candidates() -> None:
    transport = await WebRtcTransport.create(WebRtcTransportOptions(max_remote_candidates=4))
    try:
        for port in range(40000, 40004):
            await transport.add_remote_candidate(candidate("127.0.0.1", port, str(port)))
        with pytest.raises(CandidateRefusedError, match="4 remote candidates"):
            await transport.add_remote_candidate(candidate("127.0.0.1", 40004, "x"))
        # From an offer (not trickled): dropped without an error.
        await transport.add_remote_candidate(candidate("127.0.0.1", 40005, "y"), trickled=False)
        with pytest.raises(CandidateRefusedError, match="link-local"):
            await transport.add_remote_candidate(candidate("169.254.169.254", 80, "z"))
        remote = transport.ice_transport.getRemoteCandidates()
        assert sorted(c.port for c in remote) == [40000, 40001, 40002, 40003]
        assert transport.stats.candidates_refused == 3
    finally:
        await transport.close()


async def test_peer_reflexive_candidates_count_against_the_cap() -> None:
    """Authenticated checks from many addresses (a client's, or a replay of them) each teach
    aioice a peer-reflexive candidate: at most ``max_remote_candidates`` are learnt, the
    requests from further addresses are dropped before aioice (and counted)."""
    transport = await WebRtcTransport.create(WebRtcTransportOptions(max_remote_candidates=2))
    local = transport.local_parameters()
    (port,) = transport.local_ports
    senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(5)]
    try:
        transport.start(
            RemoteTransportParameters(
                ice_ufrag="peer",
                ice_pwd="p" * 22,
                ice_lite=False,
                fingerprints=(("sha-256", "AA:BB"),),
                candidates=(),
                candidates_complete=False,
            )
        )
        await wait_for(lambda: transport.ice_transport.state == "checking", 5, "the ICE checks to start")
        await asyncio.sleep(0.1)  # connect() has paired its candidates: checks are handled now
        for sock in senders:
            sock.bind(("127.0.0.1", 0))
            request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
            request.attributes["USERNAME"] = f"{local.ice_ufrag}:peer"
            request.attributes["PRIORITY"] = 1862270975
            request.attributes["ICE-CONTROLLING"] = 1
            request.add_message_integrity(local.ice_pwd.encode())
            request.add_fingerprint()
            sock.sendto(bytes(request), ("127.0.0.1", port))
        await wait_for(lambda: transport.stats.candidates_refused >= 3, 5, "3 checks dropped over the cap")
        remote = transport.ice_transport.getRemoteCandidates()
        assert len(remote) == 2 and {c.type for c in remote} == {"prflx"}, remote
        assert {c.port for c in remote} <= {s.getsockname()[1] for s in senders}
    finally:
        for sock in senders:
            sock.close()
        await transport.close()


async def test_mangled_trickled_candidates_raise_only_media_errors() -> None:
    """Candidates cut, spliced and garbled at random (seeded): each is added, refused
    (``candidate_refused``) or malformed (``invalid_sdp``), never anything else. The
    transport is not started, so nothing is sent to what it accepts."""
    rng = random.Random(3)
    valid = "candidate:842163049 1 udp 1677729535 198.51.100.7 61234 typ srflx raddr 192.168.1.20 rport 61234"
    words = [*valid.split(), "", "0", "-1", "99999", "::1", "fe80::1%eth0", "x.local", "tcp", "€", "\0"]
    transport = await WebRtcTransport.create(WebRtcTransportOptions(max_remote_candidates=1000))
    try:
        outcomes: set[str] = set()
        for _ in range(300):
            parts = valid.split()
            for _ in range(rng.randrange(1, 4)):
                parts[rng.randrange(len(parts))] = rng.choice(words)
            if rng.random() < 0.3:
                parts = parts[: rng.randrange(len(parts))]
            try:
                await transport.add_remote_candidate(" ".join(parts))
            except MediaError as exc:
                outcomes.add(exc.code)
            else:
                outcomes.add("added")
        assert outcomes == {"added", "invalid_sdp", "candidate_refused"}, outcomes
    finally:
        await transport.close()
