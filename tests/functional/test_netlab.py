"""The network lab the quality tests and ``salon bench quality`` shape links with (real namespaces).

Measured through the kernel, not assumed: a ``tbf`` limit caps what a leaf receives, nftables
``numgen`` drops the share asked for, and closing the lab leaves no namespace or link behind.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from salon.bench.netlab import NetLab, NetLabError, remove_stale

RECEIVE = r"""
import json, socket, sys, time
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
# A busy machine may leave this process unscheduled for a while: a large buffer (root may
# force it past rmem_max) so that only the lab drops datagrams, never this socket.
sock.setsockopt(socket.SOL_SOCKET, 33, 16 << 20)  # SO_RCVBUFFORCE (Linux), not in Python 3.11
sock.bind((sys.argv[1], int(sys.argv[2])))
sock.settimeout(float(sys.argv[3]))
print("ready", flush=True)
count = size = 0
first = last = None
try:
    while True:
        data = sock.recv(2048)
        if data == b"end":
            break
        now = time.monotonic()
        first = first or now
        last = now
        count += 1
        size += len(data)
except socket.timeout:
    pass
print(json.dumps({"count": count, "bytes": size, "seconds": (last or 0) - (first or 0)}), flush=True)
"""

SEND = r"""
import socket, sys, time
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
target = (sys.argv[1], int(sys.argv[2]))
count, size, rate = int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
gap = size * 8 / rate
start = time.monotonic()
for i in range(count):
    while time.monotonic() < start + i * gap:
        time.sleep(0.0005)
    sock.sendto(bytes(size), target)
time.sleep(0.5)
for _ in range(5):
    sock.sendto(b"end", target)
"""


@pytest.fixture
def lab() -> Iterator[NetLab]:
    try:
        built = NetLab(tag="t")
    except NetLabError as exc:  # pragma: no cover - the suite runs as root with iproute2 and nftables
        pytest.fail(f"the network lab cannot be built here: {exc}")
    yield built
    built.close()


def _transfer(
    lab: NetLab, sender: str, receiver: str, address: str, *, count: int, size: int, rate: float
) -> dict[str, float]:
    """``count`` datagrams of ``size`` bytes at ``rate`` bit/s from one namespace to another."""
    receiving = lab.popen(
        receiver,
        [sys.executable, "-c", RECEIVE, address, "40000", "10"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert receiving.stdout is not None
    assert receiving.stdout.readline().strip() == "ready"
    subprocess.run(
        lab.command(sender, [sys.executable, "-c", SEND, address, "40000", str(count), str(size), str(rate)]),
        check=True,
        timeout=60,
    )
    out, _ = receiving.communicate(timeout=30)
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_a_rate_limit_caps_what_the_leaf_receives(lab: NetLab) -> None:
    link = lab.add_leaf("sub")
    link.shape(down=1000)
    # 3 Mbit/s offered for ~2.7 s through a 1 Mbit/s link: what arrives comes at about 1 Mbit/s.
    got = _transfer(lab, "hub", "sub", link.leaf_address, count=1000, size=1000, rate=3_000_000)
    rate = got["bytes"] * 8 / got["seconds"]
    assert 800_000 < rate < 1_250_000, got
    assert got["count"] < 700, got
    assert link.counters("down")["dropped"] > 0

    # Lifted: the same offer arrives whole, at the offered rate.
    link.shape(down=None)
    got = _transfer(lab, "hub", "sub", link.leaf_address, count=600, size=1000, rate=3_000_000)
    assert got["count"] == 600, got


def test_random_loss_drops_the_share_asked_for_in_one_direction_only(lab: NetLab) -> None:
    link = lab.add_leaf("pub")
    link.set_loss(0.03, direction="up")
    got = _transfer(lab, "pub", "hub", lab.server_address, count=6000, size=200, rate=4_000_000)
    lost = 1 - got["count"] / 6000
    assert 0.015 < lost < 0.05, got
    # The other direction is untouched.
    got = _transfer(lab, "hub", "pub", link.leaf_address, count=3000, size=200, rate=4_000_000)
    assert got["count"] == 3000, got
    link.set_loss(0.0, direction="up")
    got = _transfer(lab, "pub", "hub", lab.server_address, count=3000, size=200, rate=4_000_000)
    assert got["count"] == 3000, got


def test_leaves_reach_the_server_address_each_through_its_own_link(lab: NetLab) -> None:
    one, two = lab.add_leaf("one"), lab.add_leaf("two")
    two.shape(up=300)
    fast = _transfer(lab, "one", "hub", lab.server_address, count=300, size=1000, rate=2_000_000)
    assert fast["count"] == 300, fast
    slow = _transfer(lab, "two", "hub", lab.server_address, count=600, size=1000, rate=2_000_000)
    assert slow["count"] < 300, slow
    assert one.counters("up")["packets"] == 0 or one.counters("up")["dropped"] == 0


def test_closing_removes_everything_and_stale_labs_are_swept() -> None:
    lab = NetLab(tag="c")
    lab.add_leaf("x")
    names = [lab.hub, lab.links["x"].leaf]
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert all(name in listed for name in names)
    lab.close()
    lab.close()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert not any(name in listed for name in names)
    links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True, check=True).stdout
    assert lab._control_device not in links

    # A namespace left by a process that no longer exists is removed by the next lab.
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = f"salonlab{dead.pid}-hub"
    subprocess.run(["ip", "netns", "add", stale], check=True)
    assert stale in remove_stale()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert stale not in listed
