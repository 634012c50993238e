"""What every benchmark shares: the server process it measures, ``/proc`` readings and the machine.

* :class:`ServerProcess` is the real ``python -m salon serve`` in a *separate process* on
  127.0.0.1 and a free port (``--port 0``; the URL is read from its ``salon serving on`` line),
  with a fresh SQLite database in the given directory and a generated project
  (``SALON_API_KEY`` / ``SALON_API_SECRET`` in its environment only). Its stdout is drained on a
  thread so that it never blocks; its stderr goes to ``server.log`` and only the tail of it,
  with the secret masked, is ever shown. ``stop()`` is SIGINT (graceful), then SIGTERM, then
  SIGKILL, every step bounded.
* :func:`machine` describes the machine a benchmark ran on; every report carries it.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import math
import os
import pathlib
import platform
import re
import resource
import secrets
import select
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

__all__ = [
    "CHROMIUM_ARGS",
    "BenchError",
    "ServerProcess",
    "descendants",
    "machine",
    "percentile",
    "process_cpu",
    "process_rss_kb",
    "process_schedule",
    "raise_nofile",
    "run_and_report",
    "version",
]

#: Debian's Chromium as the browser benchmarks launch it (headless, fake devices granted,
#: real host addresses in ICE instead of mDNS names).
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--allow-loopback-in-peer-connection",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
)

_SERVING = re.compile(r"salon serving on (http://[0-9.]+:(\d+))")
#: Seconds a server may take to start: a cluster node on a loaded 2-core machine (load
#: average 20, other benchmarks running) took over 30 s just to import.
SERVER_START_TIMEOUT = 90.0


class BenchError(Exception):
    """The benchmark could not run (a broken run, not a slow one)."""


def run_and_report(
    name: str, bench: Callable[[], dict[str, Any]], passed: Callable[[dict[str, Any]], bool]
) -> int:
    """Run a benchmark and print its JSON report on stdout: the ``salon bench NAME`` exit code,
    0 when ``passed(report)``, 1 otherwise or when the run broke (the reason on stderr)."""
    try:
        report = bench()
    except BenchError as exc:
        print(f"salon bench {name}: error: {exc}", file=sys.stderr, flush=True)
        return 1
    print(json.dumps(report, indent=2), flush=True)
    return 0 if passed(report) else 1


# -- the machine -------------------------------------------------------------------------------


def raise_nofile(wanted: int | None = None) -> int:
    """Raise the open-files soft limit (to ``wanted``, or to the hard limit); return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if wanted is None or hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target == resource.RLIM_INFINITY:
        target = max(soft, 65536)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def version(distribution: str) -> str | None:
    """The installed version of a distribution, or None."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _memory_total_kb() -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in pathlib.Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1])
    return None


def machine() -> dict[str, Any]:
    """The machine a benchmark runs on: CPUs, model, memory, kernel, Python and media libraries,
    and the load average when this is called (call it before the benchmark starts)."""
    return {
        "cpus": len(os.sched_getaffinity(0)),
        "model": _cpu_model(),
        "memory_kb": _memory_total_kb(),
        "kernel": platform.release(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "salon": version("salon"),
        "aiortc": version("aiortc"),
        "pylibsrtp": version("pylibsrtp"),
        "uvloop": version("uvloop"),
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
    }


def machine_line(description: dict[str, Any]) -> str:
    """One human line for :func:`machine`'s dictionary."""
    memory = description.get("memory_kb")
    ram = f", {memory / 1048576:.1f} GiB" if memory else ""
    return (
        f"machine: {description['cpus']} CPUs ({description['model']}){ram}, Linux {description['kernel']}, "
        f"{description['python']}, aiortc {description['aiortc']}, load {description['loadavg_before']}"
    )


def percentile(values: Sequence[float], q: float, *, presorted: bool = False) -> float | None:
    """The ``q`` quantile (0..1) by linear interpolation between closest ranks."""
    if not values:
        return None
    ordered = values if presorted else sorted(values)
    pos = (len(ordered) - 1) * q
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


# -- /proc -------------------------------------------------------------------------------------


def descendants(pid: int) -> list[int]:
    """``pid`` and all its descendants, from ``/proc/PID/task/*/children`` (recursively)."""
    found: list[int] = []
    pending = [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{current}/task"):
                with contextlib.suppress(OSError), open(f"/proc/{current}/task/{task}/children") as f:
                    pending.extend(int(child) for child in f.read().split())
    return found


def process_cpu(pid: int) -> tuple[float, float]:
    """(utime, stime) of one process (all its threads) in seconds; (0, 0) once it is gone."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        # Fields 14 (utime) and 15 (stime) of proc(5); ``fields`` starts at field 3.
        tick = os.sysconf("SC_CLK_TCK")
        return int(fields[11]) / tick, int(fields[12]) / tick
    return 0.0, 0.0


def process_schedule(pid: int) -> tuple[float, int, int]:
    """(seconds on a CPU, voluntary and involuntary context switches) of one process, all its
    threads, from the scheduler's own accounting (``/proc/<pid>/task/<tid>/schedstat``,
    nanoseconds, and ``status``): unlike :func:`process_cpu`'s 10 ms ticks, precise enough
    for a worker's idle cost over a few seconds. Zeros once the process is gone (or where the
    kernel keeps no schedstat)."""
    run_ns = voluntary = involuntary = 0
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                run_ns += int(pathlib.Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
                for line in pathlib.Path(f"/proc/{pid}/task/{tid}/status").read_text().splitlines():
                    if line.startswith("voluntary_ctxt_switches:"):
                        voluntary += int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches:"):
                        involuntary += int(line.split()[1])
    return run_ns / 1e9, voluntary, involuntary


def process_rss_kb(pid: int) -> int:
    """VmRSS of one process in kB (0 once it is gone)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


# -- the server process ------------------------------------------------------------------------


class ServerProcess:
    """``python -m salon serve`` on 127.0.0.1 (or ``host``) and a free port, with its own project.

    ``prefix`` runs it under another command, e.g. ``ip netns exec NS`` (which execs: :attr:`pid`
    is the server's).

    ``workers`` is passed as ``--workers`` (media worker processes) when given; ``serve_args``
    are appended to the command line as they are; ``env`` adds to its environment.
    """

    def __init__(
        self,
        data_dir: pathlib.Path,
        *,
        workers: int | None = None,
        log_level: str = "warning",
        serve_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        host: str = "127.0.0.1",
        prefix: Sequence[str] = (),
    ) -> None:
        self.data_dir = data_dir
        self.host = host
        self.prefix = list(prefix)
        self.workers = workers
        self.log_level = log_level
        self.serve_args = list(serve_args)
        self.extra_env = dict(env or {})
        self.api_key = str(secrets.randbelow(90_000_000) + 10_000_000)
        self.api_secret = secrets.token_hex(24)
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.port = 0
        self._log_path = data_dir / "server.log"
        self._drain: threading.Thread | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> str:
        env = dict(os.environ)
        env.pop("SALON_DATABASE_URL", None)
        env.update(self.extra_env)
        env["SALON_API_KEY"] = self.api_key
        env["SALON_API_SECRET"] = self.api_secret
        env["PYTHONUNBUFFERED"] = "1"
        command = [*self.prefix, sys.executable, "-m", "salon", "serve", "--host", self.host, "--port", "0"]
        command += ["--data-dir", str(self.data_dir / "data"), "--log-level", self.log_level]
        if self.workers is not None:
            command += ["--workers", str(self.workers)]
        # Every benchmark client connects from 127.0.0.1, thousands at a time: no per-address
        # or per-connection limit (their own tests cover them).
        command += ["--signalling-max-per-address", "0", "--signalling-rate-limit", "0"]
        command += self.serve_args
        with open(self._log_path, "wb") as log:
            self.proc = subprocess.Popen(
                command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log
            )
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        buffer = b""
        while True:
            match = _SERVING.search(buffer.decode("utf-8", "replace"))
            if match:
                self.url = match.group(1)
                self.port = int(match.group(2))
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.stop(5)
                raise BenchError(f"the server did not start in {SERVER_START_TIMEOUT:.0f} s{self.tail()}")
            readable, _, _ = select.select([fd], [], [], min(remaining, 0.5))
            if readable:
                chunk = os.read(fd, 65536)
                if not chunk:
                    self.proc.wait(5)
                    raise BenchError(f"the server exited ({self.proc.returncode}){self.tail()}")
                buffer += chunk
        # Keep reading its stdout so that the server never blocks on a full pipe.
        self._drain = threading.Thread(
            target=self._discard, args=(fd,), name="salon-bench-drain", daemon=True
        )
        self._drain.start()
        return self.url

    @staticmethod
    def _discard(fd: int) -> None:
        with contextlib.suppress(OSError, ValueError):
            while os.read(fd, 65536):
                pass

    def tail(self) -> str:
        """The end of the server's log (secret masked), as a suffix for an error message."""
        try:
            text = self._log_path.read_text("utf-8", "replace")[-2000:]
        except OSError:
            return ""
        text = text.replace(self.api_secret, "<secret>")
        return f"; its log ends with:\n{text}" if text.strip() else ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cpu_times(self) -> tuple[float, float]:
        """utime and stime of the server's main process (all its threads), in seconds."""
        return process_cpu(self.pid)

    def cpu_seconds(self) -> float:
        return sum(self.cpu_times())

    def media_workers(self) -> list[int]:
        """The PIDs of the server's descendants (its media worker processes)."""
        return [pid for pid in descendants(self.pid) if pid != self.pid]

    def memory_kb(self) -> dict[str, int]:
        """RSS, PSS and USS (private pages) of the server's main process, in kB."""
        values: dict[str, int] = {}
        for line in pathlib.Path(f"/proc/{self.pid}/smaps_rollup").read_text().splitlines()[1:]:
            name, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                values[name.strip()] = int(parts[0])
        return {
            "rss": values.get("Rss", 0),
            "pss": values.get("Pss", 0),
            "uss": values.get("Private_Clean", 0) + values.get("Private_Dirty", 0),
        }

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGINT (uvicorn's graceful shutdown), then SIGTERM, then SIGKILL; bounded."""
        proc = self.proc
        if proc is None:
            return None
        for sig, wait in ((signal.SIGINT, timeout), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            if proc.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(wait)
        if self._drain is not None:
            self._drain.join(2)
        if proc.stdout is not None:
            proc.stdout.close()
        return proc.returncode

    def project_auth(self) -> str:
        """A short-lived project JWT for the REST API (``X-OPENTOK-AUTH``)."""
        import jwt

        now = int(time.time())
        claims = {
            "iss": self.api_key,
            "ist": "project",
            "iat": now,
            "exp": now + 180,
            "jti": str(uuid.uuid4()),
        }
        return jwt.encode(claims, self.api_secret, algorithm="HS256")

    def create_session(self, media_mode: str = "routed") -> str:
        import httpx

        # trust_env=False: no proxy from the environment, straight to 127.0.0.1.
        with httpx.Client(trust_env=False, timeout=10) as http:
            response = http.post(
                f"{self.url}/session/create",
                headers={"X-OPENTOK-AUTH": self.project_auth(), "Accept": "application/json"},
                data={"media_mode": media_mode},
            )
        if response.status_code != 200:
            raise BenchError(f"POST /session/create answered {response.status_code}: {response.text[:200]}")
        session_id: str = response.json()[0]["session_id"]
        return session_id

    def token(self, session_id: str) -> str:
        from salon.tokens import generate_token

        return generate_token(
            self.api_key, self.api_secret, session_id, role="publisher", expire_time=int(time.time()) + 3600
        )

    def tokens(self, session_id: str, count: int) -> list[str]:
        return [self.token(session_id) for _ in range(count)]
