"""``salon bench soak``: what a connect-publish-subscribe-disconnect cycle leaves behind.

* **The server** is the real ``python -m salon serve`` in its own process (127.0.0.1, port 0,
  fresh SQLite database, ``--workers 1`` by default so that every cycle lands on the same media
  worker), started with ``SALON_DEBUG_ENDPOINTS=1`` so that ``GET /debug/processes`` (project
  JWT) reports each process's asyncio tasks and the workers' media counters.
* **One cycle**, with the Python client SDK (:mod:`salon.client`) in this process, in one
  routed session kept for the whole run: a publisher connects and publishes real media (a
  VP8 test pattern, ``--width``x``--height`` at ``--fps``, and an Opus tone); a subscriber
  connects, subscribes to the stream and waits for decoded video *and* audio frames (the
  media went through the SFU); then the subscriber and the publisher disconnect. The cycle
  ends when the server reports no transport left in any worker (bounded).
* **After each cycle**, for the main process and every media worker process: RSS
  (``VmRSS``), open file descriptors, sockets and UDP sockets (``/proc/PID/fd`` matched with
  ``/proc/PID/net/udp{,6}``), from ``/proc``; asyncio tasks from ``/debug/processes``.
* **The figure** is, per process, the slope of a least-squares line of RSS over cycles
  ``--fit-from`` (100) to the last: RSS moves in whole pages and the allocator keeps and
  reuses arenas, so two samples say little, a fit over hundreds of cycles says how much one
  cycle keeps. The target is under 1 kB per cycle in every process.
* ``--tracemalloc K`` starts the server with ``SALON_TRACEMALLOC=F`` (``--frames``, 25 by
  default; tracing from start-up, several times slower) and reports, per process, the K
  allocation sites that grew the most between cycle ``--fit-from`` and the end, and the K
  object types whose live count grew the most, with what refers to them
  (:mod:`salon.media.memtrace`). ``--objects K`` gives only the latter, without tracing (no
  slow-down).

The JSON report goes to stdout (``--samples`` adds every cycle's readings), progress to
stderr. Every wait is bounded, secrets are never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import pathlib
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from salon.bench._harness import (
    BenchError,
    ServerProcess,
    descendants,
    machine,
    machine_line,
    process_rss_kb,
    raise_nofile,
    run_and_report,
)

__all__ = ["linear_slope", "process_resources", "run_soak_bench"]

TARGET_BYTES_PER_CYCLE = 1024
_CYCLE_TIMEOUT = 30.0
_RELEASE_TIMEOUT = 15.0


def _log(message: str) -> None:
    print(f"salon bench soak: {message}", file=sys.stderr, flush=True)


def run_soak_bench(args: argparse.Namespace) -> int:
    """``salon bench soak``: run it, print the JSON report; 0 when every cycle completed."""
    return run_and_report("soak", lambda: _bench(args), lambda report: True)


# -- measurements ------------------------------------------------------------------------------


def linear_slope(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """The slope of the least-squares line through the points (None under two points)."""
    if len(xs) != len(ys):
        raise ValueError("xs and ys differ in length")
    if len(xs) < 2:
        return None
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mean_x) ** 2 for x in xs)
    if sxx == 0:
        return None
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sxx


def process_resources(pid: int) -> dict[str, int]:
    """RSS (kB), open file descriptors, sockets and UDP sockets of a process, from ``/proc``."""
    fds = sockets = 0
    inodes: set[str] = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            fds += 1
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    sockets += 1
                    inodes.add(target[8:-1])
    udp = 0
    for table in ("udp", "udp6"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/net/{table}") as lines:
            next(lines, None)
            udp += sum(1 for line in lines if line.split()[9] in inodes)
    return {"rss_kb": process_rss_kb(pid), "fds": fds, "sockets": sockets, "udp_sockets": udp}


# -- the run -----------------------------------------------------------------------------------


class _Debug:
    """``GET /debug/processes`` of the server."""

    def __init__(self, server: ServerProcess) -> None:
        import httpx

        self.server = server
        # Minutes: a traced process's snapshot and comparison take a while.
        self.http = httpx.AsyncClient(base_url=server.url, trust_env=False, timeout=300)

    async def processes(self, tracemalloc: int = 0, objects: int = 0) -> dict[str, Any]:
        params = {"tracemalloc": tracemalloc, "objects": objects}
        response = await self.http.get(
            "/debug/processes", params=params, headers={"X-OPENTOK-AUTH": self.server.project_auth()}
        )
        if response.status_code != 200:
            raise BenchError(f"GET /debug/processes answered {response.status_code}: {response.text[:200]}")
        body: dict[str, Any] = response.json()
        return body

    async def close(self) -> None:
        await self.http.aclose()


async def _cycle(server: ServerProcess, session_id: str, args: argparse.Namespace, index: int) -> None:
    """One connect, publish, subscribe (until video and audio frames decode), disconnect."""
    from salon.client import Publisher, Session, StreamReceived, Subscriber, TestPatternSource, ToneSource

    loopback = ["127.0.0.1"]
    publisher_session = Session(session_id, server.token(session_id), server.url, ice_addresses=loopback)
    subscriber_session = Session(session_id, server.token(session_id), server.url, ice_addresses=loopback)
    video = asyncio.Event()
    audio = asyncio.Event()
    streams: dict[str, Any] = {}
    arrived = asyncio.Event()

    def on_stream(event: StreamReceived) -> None:
        streams[event.stream.stream_id] = event.stream
        arrived.set()

    subscriber_session.on(StreamReceived, on_stream)
    try:
        async with asyncio.timeout(_CYCLE_TIMEOUT):
            await publisher_session.connect()
            publisher = Publisher(
                f"soak-{index}",
                video_source=TestPatternSource(width=args.width, height=args.height, frame_rate=args.fps),
                audio_source=ToneSource(),
            )
            stream = await publisher_session.publish(publisher)
            await subscriber_session.connect()
            while stream.stream_id not in streams:
                arrived.clear()
                await arrived.wait()
            subscriber = Subscriber(
                streams[stream.stream_id],
                on_video_frame=lambda frame: video.set(),
                on_audio_frame=lambda frame: audio.set(),
            )
            await subscriber_session.subscribe(subscriber)
            await video.wait()
            await audio.wait()
    except TimeoutError:
        what = "video" if not video.is_set() else "audio"
        raise BenchError(f"cycle {index}: no {what} frame within {_CYCLE_TIMEOUT:.0f} s") from None
    finally:
        await subscriber_session.disconnect()
        await publisher_session.disconnect()


async def _released(debug: _Debug, index: int) -> dict[str, Any]:
    """Wait until no worker has a transport left; the ``/debug/processes`` reading then."""
    deadline = time.monotonic() + _RELEASE_TIMEOUT
    while True:
        reading = await debug.processes()
        if all(w["transports"] == 0 for w in reading["workers"]):
            return reading
        if time.monotonic() > deadline:
            left = sum(w["transports"] for w in reading["workers"])
            raise BenchError(f"cycle {index}: {left} transports still open {_RELEASE_TIMEOUT:.0f} s after")
        await asyncio.sleep(0.02)


def _sample(server: ServerProcess, reading: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """Per process (pid): role, /proc resources and asyncio tasks."""
    by_pid = {reading["main"]["pid"]: reading["main"]}
    by_pid.update({w["pid"]: w for w in reading["workers"]})
    samples: dict[int, dict[str, Any]] = {}
    for pid in descendants(server.pid):
        role = "main" if pid == server.pid else "worker"
        seen = by_pid.get(pid, {})
        heap = seen.get("heap") or {}
        samples[pid] = {
            "role": role,
            **process_resources(pid),
            "tasks": seen.get("tasks"),
            "heap_in_use_kb": heap["in_use"] // 1024 if "in_use" in heap else None,
            "heap_free_kb": heap["free"] // 1024 if "free" in heap else None,
            "heap_mmapped_kb": heap["mmapped"] // 1024 if "mmapped" in heap else None,
            "python_blocks": heap.get("python_blocks"),
        }
    return samples


async def _soak(server: ServerProcess, args: argparse.Namespace) -> dict[str, Any]:
    session_id = await asyncio.to_thread(server.create_session)
    debug = _Debug(server)
    series: dict[int, list[tuple[int, dict[str, Any]]]] = {}
    durations: list[float] = []
    growth: dict[str, Any] = {}
    try:
        baseline = _sample(server, await debug.processes())
        for pid, sample in baseline.items():
            series.setdefault(pid, []).append((0, sample))
        for index in range(1, args.cycles + 1):
            if not server.alive():
                raise BenchError(f"the server died at cycle {index}{server.tail()}")
            started = time.monotonic()
            await _cycle(server, session_id, args, index)
            reading = await _released(debug, index)
            durations.append(time.monotonic() - started)
            for pid, sample in _sample(server, reading).items():
                series.setdefault(pid, []).append((index, sample))
            if (args.tracemalloc or args.objects) and index == min(args.fit_from, args.cycles):
                await debug.processes(args.tracemalloc, args.objects)  # every process's baseline
            if index % args.progress == 0 or index == args.cycles:
                line = ", ".join(
                    f"{samples[-1][1]['role']} {pid}: {samples[-1][1]['rss_kb']} kB, "
                    f"{samples[-1][1]['fds']} fds, {samples[-1][1]['tasks']} tasks"
                    for pid, samples in series.items()
                    if samples[-1][0] == index
                )
                _log(
                    f"cycle {index}/{args.cycles} ({statistics.median(durations[-50:]):.2f} s/cycle): {line}"
                )
        if args.tracemalloc or args.objects:
            final = await debug.processes(args.tracemalloc, args.objects)
            growth = {
                "main": {"allocations": final["main"]["tracemalloc"], "objects": final["main"]["objects"]},
                **{
                    f"worker {w['pid']}": {"allocations": w["tracemalloc"], "objects": w["objects"]}
                    for w in final["workers"]
                },
            }
    finally:
        await debug.close()
    return {"series": series, "durations": durations, "tracemalloc": growth}


def _summary(pid: int, samples: list[tuple[int, dict[str, Any]]], fit_from: int, last: int) -> dict[str, Any]:
    fitted = [(c, s) for c, s in samples if c >= fit_from]
    slope = linear_slope([c for c, _ in fitted], [s["rss_kb"] * 1024 for _, s in fitted])
    first, end = samples[0][1], samples[-1][1]

    def span(key: str) -> dict[str, Any]:
        values = [s[key] for _, s in samples if s[key] is not None]
        return {
            "start": first[key],
            "end": end[key],
            "max": max(values, default=None),
        }

    return {
        "pid": pid,
        "role": first["role"],
        "cycles_seen": [samples[0][0], samples[-1][0]],
        "rss_slope_bytes_per_cycle": None if slope is None else round(slope, 1),
        "fit_cycles": [fitted[0][0], fitted[-1][0]] if fitted else None,
        "fit_points": len(fitted),
        "rss_kb": {**span("rss_kb"), "at_fit_start": fitted[0][1]["rss_kb"] if fitted else None},
        "fds": span("fds"),
        "sockets": span("sockets"),
        "udp_sockets": span("udp_sockets"),
        "tasks": span("tasks"),
        "heap_in_use_kb": span("heap_in_use_kb"),
        "heap_free_kb": span("heap_free_kb"),
        "heap_mmapped_kb": span("heap_mmapped_kb"),
        "python_blocks": span("python_blocks"),
        "alive_at_end": samples[-1][0] == last,
    }


def _bench(args: argparse.Namespace) -> dict[str, Any]:
    if not 2 <= args.cycles <= 100_000:
        raise BenchError("--cycles must be 2..100000")
    if args.fit_from is None:
        args.fit_from = 100 if args.cycles >= 300 else args.cycles // 3
    if args.progress < 1:
        raise BenchError("--progress must be at least 1")
    if not 0 <= args.fit_from < args.cycles:
        raise BenchError("--fit-from must be at least 0 and less than --cycles")
    if args.workers is not None and not 1 <= args.workers <= 16:
        raise BenchError("--workers must be 1..16")
    if not 0 <= args.tracemalloc <= 200 or not 0 <= args.objects <= 200:
        raise BenchError("--tracemalloc and --objects must be 0..200")
    machine_description = machine()  # the load average before anything of ours runs
    _log(machine_line(machine_description))
    raise_nofile()
    env = {"SALON_DEBUG_ENDPOINTS": "1"}
    if args.tracemalloc:
        if not 1 <= args.frames <= 100:
            raise BenchError("--frames must be 1..100")
        env["SALON_TRACEMALLOC"] = str(args.frames)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="salon-bench-soak-") as tmp:
        server = ServerProcess(pathlib.Path(tmp), workers=args.workers, env=env)
        try:
            server.start()
            _log(f"server pid {server.pid} on {server.url}, workers {server.media_workers()}")
            result = asyncio.run(_soak(server, args))
        finally:
            server.stop()
    processes = [
        _summary(pid, samples, args.fit_from, args.cycles) for pid, samples in result["series"].items()
    ]
    slopes = [p["rss_slope_bytes_per_cycle"] for p in processes if p["alive_at_end"]]
    report: dict[str, Any] = {
        "benchmark": "soak",
        "parameters": {
            "cycles": args.cycles,
            "fit_from": args.fit_from,
            "workers": args.workers,
            "video": f"VP8 {args.width}x{args.height} at {args.fps:g} fps",
            "audio": "Opus tone",
            "tracemalloc": args.tracemalloc,
            "frames": args.frames if args.tracemalloc else None,
            "objects": args.objects,
        },
        "machine": machine_description,
        "cycle_seconds": {
            "p50": round(statistics.median(result["durations"]), 3),
            "max": round(max(result["durations"]), 3),
        },
        "processes": processes,
        "target": {
            "rss_slope_bytes_per_cycle_max": TARGET_BYTES_PER_CYCLE,
            "met": bool(slopes) and all(s is not None and s < TARGET_BYTES_PER_CYCLE for s in slopes),
        },
        "total_seconds": round(time.monotonic() - started, 1),
    }
    report["machine"]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    if args.tracemalloc or args.objects:
        report["growth"] = result["tracemalloc"]
    if args.samples:
        report["samples"] = {
            str(pid): [{"cycle": c, **{k: v for k, v in s.items() if k != "role"}} for c, s in samples]
            for pid, samples in result["series"].items()
        }
    for process in processes:
        _log(
            f"{process['role']} {process['pid']}: RSS slope {process['rss_slope_bytes_per_cycle']} B/cycle "
            f"over cycles {process['fit_cycles']}, fds {process['fds']['start']}→{process['fds']['end']}, "
            f"UDP {process['udp_sockets']['start']}→{process['udp_sockets']['end']}, "
            f"tasks {process['tasks']['start']}→{process['tasks']['end']}"
        )
    return report
