"""``salon serve``'s media options, through the real command line: ``--media-address``,
``--rtc-min-port``/``--rtc-max-port``, ``--announced-address`` and ``--ice-allow``/``--ice-deny``.

A server started with a UDP port range answers a real aiortc publisher with host candidates on
the media address and inside the range, and the stream's media connects (others hear
``stream_created`` only then). A server with an announced address writes that address into
its candidates in place of the bound one (the answer is read, not applied: the announced
address here is another loopback address with nothing listening).
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import random
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import opentok
import pytest
from peers import Publisher, wait_for

from salon.cli import main
from tests.conftest import API_KEY, API_SECRET
from tests.wsclient import WsClient

pytestmark = pytest.mark.timeout(90)

CANDIDATE = re.compile(r"^a=candidate:\S+ 1 udp \d+ (\S+) (\d+) typ host", re.MULTILINE)


def free_udp_range(size: int) -> tuple[int, int]:
    """A run of ``size`` UDP ports on 127.0.0.1 that are free right now."""
    for _ in range(50):
        low = random.randrange(20000, 60000 - size)
        sockets: list[socket.socket] = []
        try:
            for port in range(low, low + size):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
        return low, low + size - 1
    raise AssertionError("no free UDP port range")


@contextlib.contextmanager
def serve(data_dir: str, *options: str) -> Iterator[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SALON_")}
    env |= {"SALON_API_KEY": API_KEY, "SALON_API_SECRET": API_SECRET}
    command = [sys.executable, "-m", "salon", "serve", "--port", "0", "--data-dir", data_dir]
    proc = subprocess.Popen(
        [*command, "--workers", "1", "--log-level", "warning", *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if line.startswith("salon serving on "):
                yield line.split()[-1]
                return
            if not line and proc.poll() is not None:
                break
        raise AssertionError("the server did not start")
    finally:
        proc.terminate()
        proc.communicate(timeout=15)


async def publish(url: str) -> tuple[str, str, WsClient, Publisher]:
    """Connect to a new session and send a publish offer: (session ID, answer, client, peer)."""
    sdk = opentok.Client(API_KEY, API_SECRET, api_url=url)
    session_id = sdk.create_session(media_mode=opentok.MediaModes.routed).session_id
    client = await WsClient.join(url, session_id, sdk.generate_token(session_id))
    publisher = Publisher()
    reply = await client.request({"type": "publish", "sdp": await publisher.offer()})
    assert reply["type"] == "published", reply
    return session_id, str(reply["answer"]), client, publisher


async def test_port_range_and_media_address(tmp_path: pathlib.Path) -> None:
    low, high = free_udp_range(20)
    with serve(
        str(tmp_path),
        "--media-address",
        "127.0.0.1",
        "--rtc-min-port",
        str(low),
        "--rtc-max-port",
        str(high),
    ) as url:
        session_id, answer, alice, publisher = await publish(url)
        sdk = opentok.Client(API_KEY, API_SECRET, api_url=url)
        try:
            candidates = [(ip, int(port)) for ip, port in CANDIDATE.findall(answer)]
            assert candidates, answer
            assert all(ip == "127.0.0.1" and low <= port <= high for ip, port in candidates), candidates
            await publisher.answer(answer)
            # Media connects through the range-bound socket: the stream is announced.
            await wait_for(lambda: sdk.list_streams(session_id).count == 1, 10, "the stream's media")
        finally:
            await publisher.close()
            await alice.close()


async def test_announced_address_replaces_the_bound_one(tmp_path: pathlib.Path) -> None:
    with serve(str(tmp_path), "--media-address", "127.0.0.1", "--announced-address", "127.0.0.9") as url:
        _, answer, alice, publisher = await publish(url)
        try:
            candidates = CANDIDATE.findall(answer)
            assert candidates, answer
            assert {ip for ip, _ in candidates} == {"127.0.0.9"}, candidates
        finally:
            await publisher.close()
            await alice.close()


async def test_ice_allow_and_deny(tmp_path: pathlib.Path) -> None:
    """``--ice-deny`` / ``--ice-allow`` reach the worker: with all of loopback denied but
    127.0.0.0/29 allowed (the more specific network wins; the publisher's own candidate is on
    127.0.0.1), a trickled 127.1.0.2 candidate is refused with ``candidate_refused`` and a
    127.0.0.5 one accepted."""
    with serve(str(tmp_path), "--ice-deny", "127.0.0.0/8", "--ice-allow", "127.0.0.0/29") as url:
        sdk = opentok.Client(API_KEY, API_SECRET, api_url=url)
        session_id = sdk.create_session(media_mode=opentok.MediaModes.routed).session_id
        alice = await WsClient.join(url, session_id, sdk.generate_token(session_id))
        publisher = Publisher()
        try:
            reply = await alice.request({"type": "publish", "sdp": await publisher.offer()})
            assert reply["type"] == "published", reply

            async def trickle(host: str) -> dict[str, object]:
                return await alice.request(
                    {
                        "type": "ice_candidate",
                        "stream_id": reply["stream"]["stream_id"],
                        "candidate": f"candidate:1 1 udp 2130706431 {host} 9 typ host",
                    }
                )

            refused = await trickle("127.1.0.2")
            assert refused["type"] == "error" and refused["code"] == "candidate_refused", refused
            assert "127.0.0.0/8" in str(refused["message"]), refused
            assert (await trickle("127.0.0.5"))["type"] == "ack"
        finally:
            await publisher.close()
            await alice.close()


def test_a_bad_ice_network_is_refused_at_start(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "--port", "0", "--data-dir", str(tmp_path), "--ice-deny", "nope"]) == 1
    error = capsys.readouterr().err
    assert "salon: error: --ice-allow/--ice-deny: not an IP network (CIDR) or address: 'nope'" in error
    assert not list(tmp_path.iterdir()), "nothing may be created before the options are checked"
