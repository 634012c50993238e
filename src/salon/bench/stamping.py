"""``salon bench stamping``: the per-packet CPU cost of bandwidth estimation on the forwarding path.

``salon bench stamping [--packets N] [--fan-out F] [--rounds R]`` (also
``python -m salon.bench.stamping``). A micro-benchmark: no server, no sockets.

Sans-I/O, in one process: a real :class:`~salon.media.producer.Producer` and ``F`` real
:class:`~salon.media.consumer.Consumer` s on a transport whose ``send_rtp`` does nothing, fed
``N`` VP8 packets (1100-byte payload, publisher abs-send-time extension). It measures, with
:func:`time.perf_counter` over interleaved rounds (medians reported):

* **stamping**: CPU per forwarded packet (per consumer copy) with the subscriber's
  transport-wide sequence-number extension negotiated (one
  :meth:`~salon.media.bandwidth.TransportBandwidth.stamp` per packet, 2 more bytes) against
  without it;
* **uplink**: CPU per received packet of the producer's receive-side uplink estimator (the
  REMB toward the publisher) against the same producer with it disabled;
* **feedback**: CPU per received packet of transport-cc toward the publisher: the packets go
  through a real :class:`~salon.media.transport.WebRtcTransport` (in-memory link, its
  ``receive_rtp``: parse, route, producer, consumers) whose publisher negotiated transport-cc,
  which records each packet's transport-wide sequence number and builds the feedback every
  50 ms of send time, against the same transport without it (*receive*); the uplink estimator
  is off in both (with transport-cc it does not run).

SRTP and ``sendto`` are left out on purpose: they are the same with and without, so the
differences here are exactly the added work; ``salon bench sfu`` gives the whole per-packet
cost it is to be compared with. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

from salon.bench._harness import machine, machine_line
from salon.media.bandwidth import TransportBandwidth
from salon.media.consumer import Consumer
from salon.media.memory import MemoryLink
from salon.media.pacer import PacedPacket, Pacer
from salon.media.producer import Producer
from salon.media.rtp import abs_send_time, build_rtp, encode_one_byte_extensions, parse_rtp_header
from salon.media.sdp import HeaderExtensionIds, PublishTrack, RtpCodec, SubscribeTrack
from salon.media.transport import TransportState, WebRtcTransport, WebRtcTransportOptions
from salon.media.twcc import FEEDBACK_INTERVAL

__all__ = ["main", "measure", "run_stamping_bench"]

_TWCC_ID = 5  # the publisher's transport-wide sequence number extension id

_VP8 = RtpCodec(
    kind="video",
    mime_type="video/VP8",
    clock_rate=90000,
    channels=None,
    payload_type=96,
    rtcp_feedback=(("nack", None), ("nack", "pli"), ("goog-remb", None)),
    rtx_payload_type=97,
)


class _NullTransport:
    state = TransportState.CONNECTED
    id = "tr-bench"

    def __init__(self) -> None:
        self.bandwidth = TransportBandwidth()
        self.pacer = Pacer()  # rate 0: never paces
        self.sent = 0

    def pace(self, item: PacedPacket, now: float, *, retransmission: bool = False) -> None:
        self.sent += 1

    def send_rtp(self, packet: bytes) -> None:
        self.sent += 1

    def send_rtcp(self, packet: bytes) -> None:
        pass

    def schedule(self, at: float) -> None:
        pass

    def remove_producer(self, producer: Any) -> None:
        pass

    def remove_consumer(self, consumer: Any) -> None:
        pass


def _setup(
    fan_out: int, transport_cc: bool, uplink: bool, publisher: Any = None, feedback: bool = False
) -> tuple[Producer, list[_NullTransport]]:
    track = PublishTrack(
        mid="1",
        kind="video",
        codec=_VP8,
        extensions=HeaderExtensionIds(mid=4, abs_send_time=2, transport_cc=_TWCC_ID if feedback else None),
        ssrc=1111,
        rtx_ssrc=2222,
        cname="c",
    )
    producer = Producer(publisher or _NullTransport(), track, stream_id="s")
    if not uplink:
        producer._uplink = None  # the "before" case of the measurement
    sinks = []
    for i in range(fan_out):
        sink = _NullTransport()
        consumer = Consumer(
            sink,
            producer,
            SubscribeTrack(
                mid="v",
                kind="video",
                source=producer.id,
                codec=_VP8,
                extensions=HeaderExtensionIds(
                    mid=9, abs_send_time=3, transport_cc=5 if transport_cc else None
                ),
            ),
            ssrc=5000 + 2 * i,
            rtx_ssrc=5001 + 2 * i,
        )
        producer.add_consumer(consumer)
        consumer.transport_connected()
        sinks.append(sink)
    return producer, sinks


def _packets(count: int) -> list[tuple[bytes, float]]:
    out = []
    for i in range(count):
        t = i / 600
        payload = (bytes([0x10, 0x00, 0x9D, 0x01, 0x2A]) if i == 0 else bytes([0x10, 0x01])) + bytes(1100)
        data = build_rtp(
            payload_type=96,
            sequence_number=i & 0xFFFF,
            timestamp=(i // 5 * 3000) & 0xFFFFFFFF,
            ssrc=1111,
            payload=payload,
            extensions=encode_one_byte_extensions(
                [(2, abs_send_time(t)), (_TWCC_ID, (i & 0xFFFF).to_bytes(2, "big"))]
            ),
        )
        out.append((data, t))
    return out


def _run(packets: list[tuple[bytes, float]], fan_out: int, transport_cc: bool, uplink: bool) -> float:
    """Seconds of CPU for feeding every packet through one fresh setup."""
    producer, sinks = _setup(fan_out, transport_cc, uplink)
    receive = producer.receive_rtp
    headers = [(data, parse_rtp_header(data), t) for data, t in packets]
    start = time.process_time()
    for data, header, t in headers:
        receive(data, header, t)
    elapsed = time.process_time() - start
    assert all(s.sent == len(packets) for s in sinks), "not every packet was forwarded"
    return elapsed


def _run_transport(packets: list[tuple[bytes, float]], fan_out: int, feedback: bool) -> float:
    """Seconds of CPU for feeding every packet through a publisher's transport (in-memory link)
    with or without transport-cc feedback toward the publisher, feedback built every 50 ms."""
    transport = WebRtcTransport(WebRtcTransportOptions(), link=MemoryLink("bench"), transport_id="tr-pub")
    transport.schedule = lambda at: None  # type: ignore[method-assign]  # no event loop here
    producer, sinks = _setup(fan_out, False, False, publisher=transport, feedback=feedback)
    producer._uplink = None  # as with transport-cc; the same in both cases
    transport.add_producer(producer)
    receive = transport.receive_rtp
    send_feedback = transport._send_feedback
    next_feedback = FEEDBACK_INTERVAL
    start = time.process_time()
    for data, t in packets:
        receive(data, t)
        if t >= next_feedback:
            send_feedback(t)
            next_feedback = t + FEEDBACK_INTERVAL
    elapsed = time.process_time() - start
    assert all(s.sent == len(packets) for s in sinks), "not every packet was forwarded"
    generator = transport.feedback
    assert (generator is not None and generator.messages > 0) is feedback, "feedback was (not) built"
    return elapsed


def measure(packets: int = 20_000, fan_out: int = 16, rounds: int = 7) -> dict[str, Any]:
    trace = _packets(packets)
    cases = {
        "plain": (False, False),
        "stamping": (True, False),
        "uplink": (False, True),
        "both": (True, True),
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    times["receive"] = []
    times["feedback"] = []
    _run(trace[:1000], fan_out, True, True)  # warm-up
    _run_transport(trace[:1000], fan_out, True)
    for _ in range(rounds):
        for name, (transport_cc, uplink) in cases.items():
            times[name].append(_run(trace, fan_out, transport_cc, uplink))
        times["receive"].append(_run_transport(trace, fan_out, False))
        times["feedback"].append(_run_transport(trace, fan_out, True))
    median = {name: statistics.median(values) for name, values in times.items()}
    copies = packets * fan_out
    return {
        "packets": packets,
        "fan_out": fan_out,
        "rounds": rounds,
        "us_per_copy": {name: round(value / copies * 1e6, 3) for name, value in median.items()},
        "stamping_us_per_copy": round((median["stamping"] - median["plain"]) / copies * 1e6, 3),
        "uplink_us_per_received_packet": round((median["uplink"] - median["plain"]) / packets * 1e6, 3),
        "feedback_us_per_received_packet": round((median["feedback"] - median["receive"]) / packets * 1e6, 3),
        "all_rounds_s": {name: [round(v, 4) for v in values] for name, values in times.items()},
    }


def run_stamping_bench(args: argparse.Namespace) -> int:
    """``salon bench stamping``: print the JSON report (with the machine) on stdout."""
    if args.packets < 100 or args.fan_out < 1 or args.rounds < 1:
        print("salon bench stamping: need --packets >= 100, --fan-out >= 1, --rounds >= 1", file=sys.stderr)
        return 2
    description = machine()
    print(f"salon bench stamping: {machine_line(description)}", file=sys.stderr, flush=True)
    report = measure(args.packets, args.fan_out, args.rounds)
    report["machine"] = description
    print(json.dumps(report, indent=2))
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--packets", type=int, default=20_000, help="packets fed per round and case")
    parser.add_argument("--fan-out", type=int, default=16, help="consumers per packet")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (medians reported)")


def main(argv: list[str] | None = None) -> int:
    description = (__doc__ or "").split("\n")[0]
    parser = argparse.ArgumentParser(prog="python -m salon.bench.stamping", description=description)
    add_arguments(parser)
    return run_stamping_bench(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
