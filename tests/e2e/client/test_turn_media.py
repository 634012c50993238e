"""Media relayed through a real coturn, end to end.

The server hands out TURN credentials for a throwaway coturn (``use-auth-secret``, see
``tests/e2e/test_turn.py``). The publishing client is relay-only (its peer connection's ICE
transport policy is ``relay``: no host candidate, every packet goes through coturn); a direct
subscriber decodes its test pattern, frame numbers checked in order. The publisher gathered
only a relay candidate (an allocation on coturn) and nominated a pair with it.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterator, Sequence

import pytest
from aiortc import RTCConfiguration, RTCIceServer, RTCIceTransportPolicy, RTCPeerConnection
from sdk_helpers import LOOPBACK, Recorder, auto_subscribe, wait_for

from salon.client import Publisher, Session
from salon.client import publisher as publisher_module
from salon.server.config import ServerConfig
from salon.server.run import ServerThread
from salon.signalling.service import SignallingConfig
from tests.conftest import API_KEY, API_SECRET, RunningServer
from tests.e2e.test_turn import Coturn, coturn  # noqa: F401 (the fixture)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def turn_server(tmp_path: pathlib.Path, coturn: Coturn) -> Iterator[RunningServer]:  # noqa: F811
    config = ServerConfig(
        port=0,
        data_dir=tmp_path / "salon",
        api_key=API_KEY,
        api_secret=API_SECRET,
        signalling=SignallingConfig(heartbeat_interval=1.0, heartbeat_timeout=15.0),
        workers=1,
        ice_servers=(f"turn:127.0.0.1:{coturn.port}",),
        turn_secret=coturn.secret,
    )
    with ServerThread(config) as thread:
        yield RunningServer(thread.url, API_KEY, API_SECRET, thread)


def relay_only(ice_servers: Sequence[RTCIceServer]) -> RTCPeerConnection:
    configuration = RTCConfiguration(
        iceServers=list(ice_servers), iceTransportPolicy=RTCIceTransportPolicy.RELAY
    )
    return RTCPeerConnection(configuration=configuration)


async def test_a_relay_only_publisher_is_received_through_coturn(
    turn_server: RunningServer,
    coturn: Coturn,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(publisher_module, "new_peer_connection", relay_only)
    server = turn_server
    sid = server.session()
    seen = Recorder()
    alice = Session(sid, server.token(sid), server.url)  # relay only: no host addresses to pick
    bob = Session(sid, server.token(sid), server.url, ice_addresses=LOOPBACK)
    async with alice, bob:
        auto_subscribe(bob, seen)
        publisher = Publisher("alice", audio=False)
        await alice.publish(publisher)
        await wait_for(lambda: len(seen.indices) >= 30, "30 frames of alice's video at bob", timeout=30)

        # Alice's ICE gathered nothing but relay candidates and nominated a relay pair.
        assert publisher._pc is not None
        (transceiver,) = publisher._pc.getTransceivers()
        connection = transceiver.sender.transport.transport._connection
        assert {c.type for c in connection.local_candidates} == {"relay"}, connection.local_candidates
        (pair,) = connection._nominated.values()
        assert pair.local_candidate.type == "relay" and pair.local_candidate.host == "127.0.0.1"
        assert pair.local_candidate.port != coturn.port
    frames = seen.indices
    assert frames == sorted(frames) and frames[-1] - frames[0] >= 29, frames
