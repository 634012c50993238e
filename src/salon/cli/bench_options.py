"""The options of ``salon bench …``: argparse only, so that no benchmark code loads with the CLI.

The benchmarks themselves live in :mod:`salon.bench`, imported only when ``salon bench`` runs.
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["DEFAULT_SINK_PROCESSES", "add_bench_parser", "add_sfu_arguments"]

DEFAULT_SINK_PROCESSES = 4
"""``salon bench sfu``: sink processes when ``--sink-processes`` is not given (at most)."""


def add_bench_parser(commands: Any) -> None:
    """Register ``bench`` and its benchmarks on the ``salon`` sub-command parser."""
    bench = commands.add_parser("bench", help="benchmarks (each prints the machine it ran on)")
    bench_commands = bench.add_subparsers(dest="bench_command", required=True)

    sig = bench_commands.add_parser("signalling", help="signal fan-out latency and memory per connection")
    sig.add_argument("--connections", type=int, default=1000)
    sig.add_argument("--signals", type=int, default=50)
    sig.add_argument("--interval", type=float, default=0.2, help="seconds between signals")
    sig.add_argument("--workers", type=int, default=1, help="load-generator processes (1-8)")
    sig.add_argument(
        "--compression",
        choices=["deflate", "none"],
        default="deflate",
        help="whether the clients offer permessage-deflate (browsers do)",
    )
    sig.add_argument(
        "--client", choices=["raw", "websockets"], default="raw", help="the load generator's WebSocket client"
    )
    sig.add_argument("--idle", type=float, default=4.0, help="seconds idle before each memory reading")
    sig.add_argument("--per-signal", action="store_true", help="also report each signal's fan-out time")
    sig.add_argument(
        "--nodes",
        type=int,
        default=1,
        help="cluster nodes (1-5): more than 1 starts a throwaway redis-server and PostgreSQL and that "
        "many `salon serve` nodes, the connections spread over them (the sender on the first)",
    )

    sfu = bench_commands.add_parser("sfu", help="SFU forwarding: CPU per packet, loss, delay, memory")
    add_sfu_arguments(sfu)

    client = bench_commands.add_parser(
        "client", help="client SDK: time to first frame, CPU per frame, memory"
    )
    client.add_argument("--runs", type=int, default=20, help="connect-to-first-frame measurements")
    client.add_argument("--frames", type=int, default=300, help="live frames timed for CPU per frame")
    client.add_argument("--subscribers", type=int, default=10, help="extra subscribers for memory")
    client.add_argument("--json", action="store_true", help="print the results as JSON only")

    soak = bench_commands.add_parser(
        "soak", help="connect/publish/subscribe/disconnect cycles: RSS, fds, sockets, tasks per process"
    )
    soak.add_argument("--cycles", type=int, default=1000)
    soak.add_argument(
        "--fit-from",
        type=int,
        default=None,
        help="first cycle of the RSS line fit (default 100, or a third of --cycles under 300)",
    )
    soak.add_argument("--workers", type=int, default=1, help="server media workers")
    soak.add_argument("--width", type=int, default=160, help="test pattern width")
    soak.add_argument("--height", type=int, default=120, help="test pattern height")
    soak.add_argument("--fps", type=float, default=15.0, help="test pattern frame rate")
    soak.add_argument(
        "--tracemalloc",
        type=int,
        default=0,
        metavar="K",
        help="trace allocations in the server (slow) and report the K sites that grew the most",
    )
    soak.add_argument(
        "--frames",
        type=int,
        default=25,
        help="frames kept per traced allocation with --tracemalloc (fewer: faster, and the "
        "final comparison fits within the worker's health check)",
    )
    soak.add_argument(
        "--objects",
        type=int,
        default=0,
        metavar="K",
        help="report the K object types whose live count grew the most in each server process",
    )
    soak.add_argument("--samples", action="store_true", help="add every cycle's readings to the report")
    soak.add_argument("--progress", type=int, default=50, help="log a line every this many cycles")

    callbacks = bench_commands.add_parser(
        "callbacks", help="callback delivery delay at a steady event rate, and the outbox's throughput"
    )
    callbacks.add_argument("--rate", type=float, default=200.0, help="callback events per second")
    callbacks.add_argument("--duration", type=float, default=20.0, help="seconds of steady load")
    callbacks.add_argument("--sessions", type=int, default=10, help="sessions the connections join")
    callbacks.add_argument("--hold", type=float, default=0.5, help="seconds each connection stays")
    callbacks.add_argument(
        "--prefill", type=int, default=3000, help="callbacks pre-filled in the outbox (0: skip that phase)"
    )
    callbacks.add_argument("--prefill-sessions", type=int, default=100, help="sessions they belong to")

    browser = bench_commands.add_parser(
        "browser", help="web app: join click to first remote video frame (Chromium)"
    )
    browser.add_argument("--runs", type=int, default=10)
    browser.add_argument("--chromium", default="/usr/bin/chromium", help="the Chromium executable")
    browser.add_argument("--timeout", type=float, default=20.0, help="seconds allowed per run")

    quality = bench_commands.add_parser(
        "quality",
        help="a subscriber's video after its link drops and recovers (Chromium simulcast publisher, "
        "shaped links in network namespaces; needs root)",
    )
    quality.add_argument("--drop-to", type=int, default=500, help="the subscriber's limited downlink, kbit/s")
    quality.add_argument("--hold", type=float, default=20.0, help="seconds measured after each change")
    quality.add_argument("--warm-up", type=float, default=15.0, help="seconds before the top layer is judged")
    quality.add_argument("--timeout", type=float, default=90.0, help="seconds allowed for the warm-up")
    quality.add_argument("--chromium", default="/usr/bin/chromium", help="the Chromium executable")
    quality.add_argument(
        "--forwarding",
        action="store_true",
        help="instead: worker CPU per forwarded packet, three layers in and 16 subscribers on mixed "
        "layers against one layer in (synthetic publishers on 127.0.0.1; no root needed)",
    )
    quality.add_argument("--duration", type=float, default=20.0, help="--forwarding: seconds per window")
    quality.add_argument("--packet-size", type=int, default=400, help="--forwarding: RTP packet bytes")
    quality.add_argument(
        "--server-log",
        default=None,
        metavar="PATH",
        help="keep the server's log (at level info: the allocator's decisions) in PATH",
    )

    archive = bench_commands.add_parser(
        "archive", help="archiver CPU per archive, and the composed output's audio-video offset"
    )
    archive.add_argument(
        "--mode",
        choices=["composed", "individual"],
        default="composed",
        help="composed: decode, lay out, mix, encode (in this process); individual: an archiver "
        "process remuxing RTP to WebM",
    )
    archive.add_argument("--duration", type=float, default=20.0, help="seconds recorded")
    archive.add_argument("--streams", type=int, default=4, help="publishers (1-16)")
    archive.add_argument(
        "--resolution",
        default="1280x720",
        choices=["640x480", "480x640", "1280x720", "720x1280", "1920x1080", "1080x1920"],
    )
    archive.add_argument(
        "--archiver",
        action="store_true",
        help="composed: run a real archiver process fed RTP over loopback (its CPU), not the "
        "composer in this process (no A/V offset measured)",
    )
    archive.add_argument("--fps", type=int, default=25, help="output frame rate")
    archive.add_argument("--preset", default="veryfast", help="x264 preset")
    archive.add_argument("--threads", type=int, default=2, help="x264 threads")
    archive.add_argument(
        "--no-realtime",
        dest="realtime",
        action="store_false",
        help="feed the composer as fast as it goes instead of in real time",
    )

    stamping = bench_commands.add_parser(
        "stamping", help="CPU per packet of transport-wide stamping and the publisher uplink estimate"
    )
    stamping.add_argument("--packets", type=int, default=20_000, help="packets fed per round and case")
    stamping.add_argument("--fan-out", type=int, default=16, help="consumers per packet")
    stamping.add_argument("--rounds", type=int, default=7, help="interleaved rounds (medians reported)")


def add_sfu_arguments(parser: argparse.ArgumentParser) -> None:
    """``salon bench sfu``'s options (also ``python -m salon.bench.sfu``)."""
    parser.add_argument("--publishers", type=int, default=1)
    parser.add_argument("--subscribers", type=int, default=16, help="subscribers per publisher")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--rate", type=float, default=600.0, help="packets/s per publisher (5 per frame)")
    parser.add_argument("--workers", type=int, default=None, help="server media workers")
    parser.add_argument(
        "--sink-processes",
        type=int,
        default=None,
        help=f"load-generator processes for the sinks (default min(subscribers, {DEFAULT_SINK_PROCESSES}))",
    )
    parser.add_argument(
        "--saturate",
        action="store_true",
        help="after the window, step the rate up x1.5 until loss appears, then measure at half that",
    )
    parser.add_argument(
        "--spread",
        action="store_true",
        help="run the session on one worker, then spread over two (half the subscribers on each, "
        "the stream piped to the second): per-worker CPU shares, CPU per packet against one "
        "worker, and the delay the pipe adds",
    )
    parser.add_argument(
        "--peer",
        "--compare",
        choices=["janus"],
        default=None,
        help="also measure Janus (Debian package `janus`) on the same load, alternating, in a private "
        "network namespace (needs root); reports salon / Janus per fan-out",
    )
    parser.add_argument(
        "--fan-outs",
        default="1,16,32",
        help="with --peer: the fan-outs measured, comma-separated (1 publisher each)",
    )
    parser.add_argument("--runs", type=int, default=3, help="with --peer: runs per server and fan-out")
