"""The media seam holds: only :mod:`salon.media.webrtc` touches aiortc / aioice / pylibsrtp
private members, and producers, consumers, transports and routers use each other's public
methods only. Code is scanned without its strings and comments (docstrings may name them)."""

from __future__ import annotations

import io
import pathlib
import re
import tokenize

import pytest

MEDIA = pathlib.Path(__file__).resolve().parents[3] / "src" / "salon" / "media"

#: Private members of aiortc 1.16.0 / aioice 0.13.0 / pylibsrtp 1.0.0 objects, and methods of
#: theirs replaced per instance: allowed in webrtc.py only. (``self._buffer`` is an object's
#: own attribute: not matched.)
PRIVATE_ACCESS = {
    "RTCIceGatherer/RTCIceTransport._connection": r"(?<!self)\._connection\b",
    "aioice Connection._nominated": r"(?<!self)\._nominated\b",
    "aioice Connection._protocols": r"(?<!self)\._protocols\b",
    "aioice Connection._check_list": r"(?<!self)\._check_list\b",
    "aioice Connection._remote_candidates": r"(?<!self)\._remote_candidates\b",
    "aioice Candidate._network_host": r"(?<!self)\._network_host\b",
    "RTCDtlsTransport._handle_rtp_data": r"(?<!self)\._handle_rtp_data\b",
    "RTCDtlsTransport._handle_rtcp_data": r"(?<!self)\._handle_rtcp_data\b",
    "RTCDtlsTransport._send_rtp": r"(?<!self)\._send_rtp\b",
    "RTCDtlsTransport._tx_srtp": r"(?<!self)\._tx_srtp\b",
    "RTCDtlsTransport._rx_srtp": r"(?<!self)\._rx_srtp\b",
    "RTCDtlsTransport._task": r"\bdtls\w*\._task\b",
    "RTCDtlsTransport._rtp_router": r"(?<!self)\._rtp_router\b",
    "pylibsrtp Session._srtp": r"(?<!self)\._srtp\b",
    "pylibsrtp Session._cdata": r"(?<!self)\._cdata\b",
    "pylibsrtp Session._buffer": r"(?<!self)\._buffer\b",
    "a private module of aiortc/aioice/pylibsrtp (pylibsrtp._binding...)": (
        r"\b(?:aiortc|aioice|pylibsrtp)(?:\.\w+)*\._\w+"
    ),
    "aioice StunProtocol.datagram_received replaced": r"\.datagram_received\s*=(?!=)",
    "aioice Connection.data_received replaced": r"\.data_received\s*=(?!=)",
    "aioice Connection.get_component_candidates replaced": r"\.get_component_candidates\s*=(?!=)",
    "aiortc/aioice private method replaced": r"\b(?:dtls|ice|gatherer|connection|protocol)\w*\._\w+\s*=(?!=)",
}

#: Modules whose objects talk to each other through public methods only.
PEERS = ("producer.py", "consumer.py", "transport.py", "router.py", "recording.py", "routing.py", "memory.py")

#: ``name._member`` where ``name`` is not ``self`` or ``cls``: another object's private member.
OTHER_PRIVATE = re.compile(r"(?<![\w.])(?!self\b|cls\b)([A-Za-z_]\w*)\._[a-z]\w*")


def code_of(path: pathlib.Path) -> list[tuple[int, str]]:
    """The file's lines with strings and comments blanked out, numbered from 1."""
    source = path.read_text()
    lines = source.splitlines()
    blank = [list(line) for line in lines]
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type not in (tokenize.STRING, tokenize.COMMENT):
            continue
        (row, col), (end_row, end_col) = token.start, token.end
        for r in range(row, end_row + 1):
            line = blank[r - 1]
            start = col if r == row else 0
            stop = end_col if r == end_row else len(line)
            line[start:stop] = " " * (stop - start)
    return [(i + 1, "".join(chars)) for i, chars in enumerate(blank)]


def media_modules() -> list[pathlib.Path]:
    modules = sorted(p for p in MEDIA.glob("*.py") if p.name != "webrtc.py")
    assert len(modules) > 10, MEDIA
    return modules


@pytest.mark.parametrize("path", media_modules(), ids=lambda p: p.name)
def test_only_the_webrtc_module_touches_aiortc_aioice_pylibsrtp_internals(path: pathlib.Path) -> None:
    found = [
        f"{path.name}:{number}: {what}: {line.strip()}"
        for number, line in code_of(path)
        for what, pattern in PRIVATE_ACCESS.items()
        if re.search(pattern, line)
    ]
    assert not found, "private aiortc/aioice/pylibsrtp access outside salon.media.webrtc:\n" + "\n".join(
        found
    )


@pytest.mark.parametrize("name", PEERS)
def test_producers_consumers_transports_and_routers_use_each_others_public_methods(name: str) -> None:
    path = MEDIA / name
    found = [
        f"{name}:{number}: {line.strip()}" for number, line in code_of(path) if OTHER_PRIVATE.search(line)
    ]
    assert not found, "another object's private member used:\n" + "\n".join(found)


def test_the_checks_catch_what_they_are_meant_to(tmp_path: pathlib.Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        '"""self._dtls._tx_srtp in a docstring is fine."""\n'
        "x = self._dtls._tx_srtp  # and in a comment: connection._nominated\n"
        "from pylibsrtp._binding import lib\n"
        "protocol.datagram_received = handler\n"
        "producer._add_consumer(consumer)\n"
        "self._own = 1\n"
    )
    lines = dict(code_of(sample))
    assert [n for n, line in lines.items() if any(re.search(p, line) for p in PRIVATE_ACCESS.values())] == [
        2,
        3,
        4,
    ]
    assert [n for n, line in lines.items() if OTHER_PRIVATE.search(line)] == [3, 5]


def test_the_datagram_port_follows_the_nominated_pair_of_component_1() -> None:
    from types import SimpleNamespace

    from salon.media.webrtc import DatagramPort, _NominatedPairs

    def pair(name: str) -> SimpleNamespace:
        sendto = SimpleNamespace(name=name).__eq__  # any callable, told apart by identity
        return SimpleNamespace(
            protocol=SimpleNamespace(transport=SimpleNamespace(sendto=sendto)),
            remote_addr=(name, 1),
            local_addr=("local", 2),
        )

    port = DatagramPort()
    nominated = _NominatedPairs(port, "test")
    assert (port.sendto, port.remote_addr) == (None, None)
    first, second = pair("a"), pair("b")
    nominated[2] = second  # another component: not ours
    assert port.sendto is None
    nominated[1] = first  # what aioice does when it nominates
    assert (port.sendto, port.remote_addr) == (first.protocol.transport.sendto, ("a", 1))
    nominated.update({1: second})
    assert port.remote_addr == ("b", 1)
    nominated.clear()  # what aioice does when it closes
    assert (port.sendto, port.remote_addr) == (None, None)
    nominated.setdefault(1, first)
    assert port.remote_addr == ("a", 1)
    nominated.pop(1)
    assert port.sendto is None
