"""Private networks for tests and benchmarks: network namespaces, veth links, shaping and loss.

A :class:`NetLab` builds, for one run, a *hub* namespace (where the server runs) and *leaf*
namespaces (one per client), each leaf joined to the hub by its own veth pair, plus a control
link from the caller's namespace to the hub. Every address is inside the namespaces the lab
made (a free ``10.X.0.0/16``, X from 201), so a run sends nothing to any other network::

    root ns ──ctl── hub (server: 10.201.0.1) ──veth 1── leaf "sub1" (10.201.1.2)
                                              ──veth 2── leaf "sub2" (10.201.2.2) …

Each leaf's default route points at its end of the hub, so a leaf reaches the server's one
address (:attr:`NetLab.server_address`) through its own link, and the server's replies to it
leave through that link too: shaping a link shapes that client only.

* Rate: ``tc`` ``tbf`` on the sending side of a direction (:meth:`Link.shape`: ``down`` is
  hub → leaf, ``up`` is leaf → hub); ``None`` removes the limit. This kernel has no
  ``netem``: delay, where needed, goes through a user-space relay.
* Loss: nftables ``numgen random`` drops a share of the UDP datagrams of a direction where
  they arrive (:meth:`Link.set_loss`), in a table of the lab's own inside that namespace.

Needs root (``ip netns``, ``tc``, ``nft``). Namespaces are named ``salonlab<pid>-…``; a lab
removes what it made on :meth:`close`, and :func:`remove_stale` removes what a killed run of a
dead process left.
"""

from __future__ import annotations

import ipaddress
import os
import pathlib
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Link", "NetLab", "NetLabError", "remove_stale", "require_tools"]

PREFIX = "salonlab"
_NFT_TABLE = "salonlab"


class NetLabError(RuntimeError):
    """The lab cannot be built here (not root, a tool missing) or a command failed."""


def require_tools() -> None:
    """Raise :class:`NetLabError` unless this process is root and has ``ip``, ``tc`` and ``nft``."""
    if os.geteuid() != 0:
        raise NetLabError("network namespaces need root")
    missing = [tool for tool in ("ip", "tc", "nft") if shutil.which(tool) is None]
    if missing:
        raise NetLabError(f"missing {', '.join(missing)} (Debian: apt-get install iproute2 nftables)")


def _run(*argv: str, input: str | None = None) -> str:
    done = subprocess.run(argv, input=input, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise NetLabError(f"{' '.join(argv)}: {done.stderr.strip() or done.returncode}")
    return done.stdout


def _exists(namespace: str) -> bool:
    return namespace in _namespaces()


def _namespaces() -> list[str]:
    return [line.split()[0] for line in _run("ip", "netns", "list").splitlines() if line.strip()]


def remove_stale() -> list[str]:
    """Delete the namespaces of labs whose process is gone; return their names."""
    removed = []
    for name in _namespaces():
        match = re.fullmatch(rf"{PREFIX}(\d+)-.*", name)
        if match is None:
            continue
        pid = int(match.group(1))
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)
            removed.append(name)
        except PermissionError:
            pass
    return removed


def _free_network() -> str:
    """A ``10.X.0.0/16`` (X from 201) that no address of the caller's namespace is in: labs of
    runs side by side must not share the control link's subnet."""
    used = _run("ip", "-4", "-o", "addr", "show")
    taken = {int(octet) for octet in re.findall(r"inet 10\.(\d+)\.", used)}
    for second in range(201, 255):
        if second not in taken:
            return f"10.{second}.0.0/16"
    raise NetLabError("no free 10.X.0.0/16 for a lab")


def _kbit(rate: int) -> str:
    return f"{rate}kbit"


@dataclass
class Link:
    """One leaf's veth link to the hub."""

    lab: NetLab
    leaf: str
    """The leaf namespace's name."""
    index: int
    hub_device: str
    leaf_device: str
    hub_address: str
    leaf_address: str
    _loss: dict[str, float] = field(default_factory=dict)

    def _side(self, direction: str) -> tuple[str, str]:
        if direction == "down":
            return self.lab.hub, self.hub_device
        if direction == "up":
            return self.leaf, self.leaf_device
        raise ValueError(f"direction is 'down' or 'up', not {direction!r}")

    def shape(self, *, down: int | None = None, up: int | None = None) -> None:
        """Limit each direction to a rate in kbit/s (``None``: unlimited)."""
        for direction, rate in (("down", down), ("up", up)):
            namespace, device = self._side(direction)
            self.lab.set_rate(namespace, device, rate)

    def set_loss(self, share: float, *, direction: str = "down") -> None:
        """Drop ``share`` (0..1) of the UDP datagrams sent in ``direction``, at random.

        They are dropped where they arrive (the other side's ingress), so the sender's socket
        sees no error, as on a lossy path.
        """
        if not 0.0 <= share < 1.0:
            raise ValueError("loss share is in [0, 1)")
        namespace, device = self._side("up" if direction == "down" else "down")
        self._loss[direction] = share
        self.lab.set_loss(namespace, device, share)

    def counters(self, direction: str = "down") -> dict[str, int]:
        """Bytes and packets sent, and packets dropped by the qdisc, in ``direction``."""
        namespace, device = self._side(direction)
        stats = _run("ip", "netns", "exec", namespace, "tc", "-s", "qdisc", "show", "dev", device)
        sent = re.search(r"Sent (\d+) bytes (\d+) pkt \(dropped (\d+)", stats)
        if sent is None:
            return {"bytes": 0, "packets": 0, "dropped": 0}
        return {"bytes": int(sent.group(1)), "packets": int(sent.group(2)), "dropped": int(sent.group(3))}


class NetLab:
    """A hub namespace, leaf namespaces and their links, for one run."""

    def __init__(self, network: str | None = None, *, tag: str = "") -> None:
        require_tools()
        remove_stale()
        self._network = ipaddress.IPv4Network(network or _free_network())
        if self._network.prefixlen > 16:
            raise ValueError("the lab needs an IPv4 /16 or larger")
        self._name = f"{PREFIX}{os.getpid()}-{tag}" if tag else f"{PREFIX}{os.getpid()}-"
        self.hub = f"{self._name}hub"
        self.links: dict[str, Link] = {}
        self._namespaces: list[str] = []
        self._closed = False
        self._control_device = f"sl{os.getpid()}c"
        try:
            self._add_namespace(self.hub)
            self.control = self._connect(None, 0)
        except BaseException:
            self.close()
            raise

    @property
    def server_address(self) -> str:
        """The hub's address on the control link: the one address every leaf and the caller reach."""
        return self.control.hub_address

    def _subnet(self, index: int) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network((int(self._network.network_address) + (index << 8), 24))

    def _add_namespace(self, name: str) -> None:
        if _exists(name):
            _run("ip", "netns", "delete", name)
        _run("ip", "netns", "add", name)
        self._namespaces.append(name)
        _run("ip", "-n", name, "link", "set", "lo", "up")

    def _connect(self, leaf: str | None, index: int) -> Link:
        """A veth pair from the hub to ``leaf`` (``None``: the caller's own namespace)."""
        subnet = self._subnet(index)
        hub_address, leaf_address = str(subnet.network_address + 1), str(subnet.network_address + 2)
        hub_device = f"h{index}"
        leaf_device = self._control_device if leaf is None else f"l{index}"
        # Made in the caller's namespace under names unique to this process, then moved and renamed.
        temp_hub, temp_leaf = f"sl{os.getpid()}a{index}", f"sl{os.getpid()}b{index}"
        _run("ip", "link", "add", temp_leaf, "type", "veth", "peer", "name", temp_hub)
        _run("ip", "link", "set", temp_hub, "netns", self.hub)
        _run("ip", "-n", self.hub, "link", "set", temp_hub, "name", hub_device)
        if leaf is not None:
            _run("ip", "link", "set", temp_leaf, "netns", leaf)
            _run("ip", "-n", leaf, "link", "set", temp_leaf, "name", leaf_device)
        else:
            _run("ip", "link", "set", temp_leaf, "name", leaf_device)
        leaf_ns: Sequence[str] = () if leaf is None else ("-n", leaf)
        _run("ip", "-n", self.hub, "addr", "add", f"{hub_address}/{subnet.prefixlen}", "dev", hub_device)
        _run("ip", "-n", self.hub, "link", "set", hub_device, "up")
        _run("ip", *leaf_ns, "addr", "add", f"{leaf_address}/{subnet.prefixlen}", "dev", leaf_device)
        _run("ip", *leaf_ns, "link", "set", leaf_device, "up")
        if leaf is not None:
            _run("ip", "-n", leaf, "route", "add", "default", "via", hub_address)
        return Link(self, leaf or "", index, hub_device, leaf_device, hub_address, leaf_address)

    def add_leaf(self, name: str) -> Link:
        """A new leaf namespace ``name`` with its own link to the hub."""
        if not re.fullmatch(r"[a-z][a-z0-9]{0,7}", name):
            raise ValueError("leaf names are 1-8 lower-case letters and digits")
        if name in self.links:
            raise ValueError(f"leaf {name!r} exists")
        index = len(self.links) + 1
        namespace = f"{self._name}{name}"
        self._add_namespace(namespace)
        link = self._connect(namespace, index)
        self.links[name] = link
        return link

    def namespace(self, leaf: str) -> str:
        """The namespace name of a leaf (``"hub"`` for the hub)."""
        return self.hub if leaf == "hub" else self.links[leaf].leaf

    def command(self, leaf: str, argv: Sequence[str]) -> list[str]:
        """``argv`` to run inside a leaf's namespace (or the hub's: ``"hub"``)."""
        return ["ip", "netns", "exec", self.namespace(leaf), *argv]

    def wrapper(self, leaf: str, executable: str, directory: pathlib.Path) -> pathlib.Path:
        """A script in ``directory`` that runs ``executable`` (with its arguments) inside a leaf's
        namespace: for launchers that take an executable path, such as Playwright's."""
        path = directory / f"{pathlib.Path(executable).name}-in-{leaf}"
        path.write_text(f'#!/bin/sh\nexec ip netns exec {self.namespace(leaf)} {executable} "$@"\n')
        path.chmod(0o755)
        return path

    def popen(self, leaf: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside a leaf's namespace (or the hub's)."""
        return subprocess.Popen(self.command(leaf, argv), **kwargs)

    def set_rate(self, namespace: str, device: str, rate: int | None) -> None:
        """``tbf`` at ``rate`` kbit/s on a device's egress (``None``: remove the limit)."""
        if rate is None:
            subprocess.run(
                ["ip", "netns", "exec", namespace, "tc", "qdisc", "del", "dev", device, "root"],
                capture_output=True,
                check=False,
            )
            return
        if rate <= 0:
            raise ValueError("rate is in kbit/s and positive")
        # A burst of at least one MTU and ~20 ms at the rate; a queue of ~200 ms before drops,
        # about what a consumer router buffers.
        burst = max(1600, rate * 1000 // 8 // 50)
        _run(
            "ip", "netns", "exec", namespace, "tc", "qdisc", "replace", "dev", device, "root",
            "tbf", "rate", _kbit(rate), "burst", str(burst), "latency", "200ms",
        )  # fmt: skip

    def set_loss(self, namespace: str, device: str, share: float) -> None:
        """Drop ``share`` of the UDP datagrams arriving on ``device`` (nftables ``numgen random``)."""
        chain = f"in_{device}"
        script = [
            f"add table inet {_NFT_TABLE}",
            f"add chain inet {_NFT_TABLE} {chain} {{ type filter hook prerouting priority -300 ; }}",
            f"flush chain inet {_NFT_TABLE} {chain}",
        ]
        per_mille = round(share * 1000)
        if per_mille > 0:
            script.append(
                f'add rule inet {_NFT_TABLE} {chain} iifname "{device}" meta l4proto udp '
                f"numgen random mod 1000 < {per_mille} counter drop"
            )
        _run("ip", "netns", "exec", namespace, "nft", "-f", "-", input="\n".join(script) + "\n")

    def close(self) -> None:
        """Delete every namespace of the lab (and with them their veth ends); idempotent."""
        if self._closed:
            return
        self._closed = True
        for name in reversed(self._namespaces):
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)
        subprocess.run(["ip", "link", "delete", self._control_device], capture_output=True, check=False)

    def __enter__(self) -> NetLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
