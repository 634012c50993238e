"""``salon bench sfu --peer janus``: salon and Janus side by side, on the same load, in one run.

Absolute figures do not carry across machines, so every SFU figure needs a yardstick measured
next to it: Debian's Janus (``apt-get install --no-install-recommends janus``; the benchmark
installs nothing and fails with that hint when ``janus`` is missing) with its VideoRoom plugin.

What runs where
---------------

* **A private network namespace.** Janus never gathers ICE candidates on loopback interfaces
  (janus-gateway ``src/ice.c``), so the benchmark re-executes itself under ``unshare --net``
  (root is needed) and builds, inside that namespace only, ``lo`` plus a veth pair with the
  private addresses 10.77.0.1 (the server's media) and 10.77.0.2 (the clients' ICE). Nothing
  outside the namespace is touched or reachable; the namespace disappears with its last
  process.
* **Both servers on the same path.** salon is ``salon serve --workers 1 --media-address
  10.77.0.1`` (its signalling on 127.0.0.1 of the namespace). Janus runs with a generated
  minimal configuration in a temporary directory: the VideoRoom plugin and the HTTP transport
  only (bound to 10.77.0.1:8088 inside the namespace), no event handlers or loggers, no admin
  API, no STUN/TURN, ICE pinned to 10.77.0.1 (``ice_enforce_list``), no session timeout. The
  benchmark drives it through its HTTP API: a room is created; each publisher ``attach``es
  ``janus.plugin.videoroom`` and sends ``joinandconfigure`` with its SDP offer; each sink
  ``join``s as a subscriber of the feed and ``start``s with its answer to Janus's offer.
* **The same load generator**: the publisher and sink processes of ``salon bench sfu``
  (:mod:`salon.bench.sfu`), unchanged except for how they negotiate.
* **Alternating.** For each fan-out (``--fan-outs``, default 1, 16, 32) and each round
  (``--runs``), salon and Janus are each measured once, a fresh server every time; the order
  alternates between rounds so that a drift in the machine's load is shared.

Figures: ``worker_cpu_us_per_forwarded_packet`` is, for salon, ``utime + stime`` of its media
worker process over the window / forwarded packets (as in ``salon bench sfu``), and for Janus
the same of the ``janus`` process (all its threads; it also runs its HTTP transport, idle
during the window). Loss is checked exactly as in ``salon bench sfu``. The report gives every
run, the medians per server and fan-out, and the ratio salon / Janus of the medians; the load
average is recorded before and after every run.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import pathlib
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from salon.bench._harness import BenchError, ServerProcess, machine, machine_line

__all__ = ["JanusClient", "JanusProcess", "janus_config", "require_tools", "run_side_by_side"]

SERVER_ADDRESS = "10.77.0.1"
PEER_ADDRESS = "10.77.0.2"
"""The veth pair's other end. Janus needs a non-loopback interface to gather on; the clients
gather on the server's own address, as in the reference harness: with the clients on this one,
Janus 1.1.2's connectivity checks went unanswered (not investigated)."""
CLIENT_ADDRESS = SERVER_ADDRESS
PREFIX = 24
JANUS_PORT = 8088
JANUS_ROOM = 7700
JANUS_START_TIMEOUT = 20.0
INSTALL_HINT = "apt-get install --no-install-recommends janus"
DEFAULT_FAN_OUTS = (1, 16, 32)
_PLUGINS = "/usr/lib/x86_64-linux-gnu/janus"
_INNER_TIMEOUT = 3600.0


def _log(message: str) -> None:
    print(f"salon bench sfu --peer janus: {message}", file=sys.stderr, flush=True)


# -- tools ------------------------------------------------------------------------------------


def require_tools() -> dict[str, str]:
    """The executables the side-by-side run needs; a clear :class:`BenchError` when one is missing."""
    janus = shutil.which("janus")
    if janus is None:
        raise BenchError(
            f"--peer janus needs the janus executable, which is not installed: run `{INSTALL_HINT}`"
        )
    found = {"janus": janus}
    for tool, package in (("ip", "iproute2"), ("unshare", "util-linux")):
        path = shutil.which(tool)
        if path is None:
            raise BenchError(f"--peer janus needs `{tool}` (Debian package {package})")
        found[tool] = path
    if os.geteuid() != 0:
        raise BenchError("--peer janus needs root: it creates a network namespace and a veth pair")
    return found


def _plugin_dir(kind: str) -> pathlib.Path:
    """Where the Debian package keeps Janus's ``plugins``/``transports`` (multiarch)."""
    for base in (pathlib.Path(_PLUGINS), *pathlib.Path("/usr/lib").glob("*/janus")):
        if (base / kind).is_dir():
            return base / kind
    raise BenchError(f"cannot find Janus's {kind} folder (is the janus package complete?)")


# -- Janus ------------------------------------------------------------------------------------


def janus_config(
    directory: pathlib.Path, address: str = SERVER_ADDRESS, port: int = JANUS_PORT
) -> pathlib.Path:
    """Write a minimal Janus configuration under ``directory``; return the main file.

    Only the VideoRoom plugin and the HTTP transport are loadable (their folders hold just
    those two libraries); no event handlers, loggers, admin API, STUN or TURN; ICE only on
    ``address``; sessions never time out (the sinks do not long-poll during the window).
    """
    conf = directory / "conf"
    folders = {name: directory / name for name in ("plugins", "transports", "events", "loggers")}
    conf.mkdir(parents=True, exist_ok=True)
    for folder in folders.values():
        folder.mkdir(exist_ok=True)
    (folders["plugins"] / "libjanus_videoroom.so").symlink_to(
        _plugin_dir("plugins") / "libjanus_videoroom.so"
    )
    (folders["transports"] / "libjanus_http.so").symlink_to(_plugin_dir("transports") / "libjanus_http.so")
    main = conf / "janus.jcfg"
    main.write_text(
        "general: {\n"
        f'  configs_folder = "{conf}"\n'
        f'  plugins_folder = "{folders["plugins"]}"\n'
        f'  transports_folder = "{folders["transports"]}"\n'
        f'  events_folder = "{folders["events"]}"\n'
        f'  loggers_folder = "{folders["loggers"]}"\n'
        "  debug_level = 3\n"
        "  session_timeout = 0\n"
        f'  server_name = "salon-bench-{secrets.token_hex(4)}"\n'
        "}\n"
        "certificates: {\n}\n"
        "media: {\n}\n"
        "nat: {\n"
        "  nice_debug = false\n"
        f'  ice_enforce_list = "{address}"\n'
        "  ignore_mdns = true\n"
        "}\n"
        "plugins: {\n}\n"
        "transports: {\n}\n"
        "loggers: {\n}\n"
        "events: {\n  broadcast = false\n}\n"
    )
    (conf / "janus.transport.http.jcfg").write_text(
        "general: {\n"
        '  json = "plain"\n'
        '  base_path = "/janus"\n'
        "  http = true\n"
        f"  port = {port}\n"
        f'  ip = "{address}"\n'
        "  https = false\n"
        "}\n"
        "admin: {\n  admin_http = false\n  admin_https = false\n}\n"
        "cors: {\n}\n"
    )
    (conf / "janus.plugin.videoroom.jcfg").write_text("general: {\n}\n")
    return main


def _die_with_parent() -> None:
    """``preexec_fn``: SIGKILL this child if the bench process dies (PR_SET_PDEATHSIG)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)


class JanusProcess:
    """``janus`` with :func:`janus_config` in ``directory``, bound to ``address`` (in the namespace)."""

    def __init__(self, directory: pathlib.Path, executable: str, address: str = SERVER_ADDRESS) -> None:
        self.directory = directory
        self.executable = executable
        self.address = address
        self.url = f"http://{address}:{JANUS_PORT}/janus"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_path = directory / "janus.log"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> str:
        import httpx

        config = janus_config(self.directory, self.address)
        command = [self.executable, "-C", str(config), "-F", str(config.parent), "-o"]
        with open(self._log_path, "wb") as log:
            self.proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                preexec_fn=_die_with_parent,
            )
        deadline = time.monotonic() + JANUS_START_TIMEOUT
        with httpx.Client(trust_env=False, timeout=2) as http:
            while True:
                if not self.alive():
                    raise BenchError(f"janus exited ({self.proc.returncode}){self.tail()}")
                with contextlib.suppress(httpx.HTTPError, ValueError):
                    if http.get(f"{self.url}/info").json().get("janus") == "server_info":
                        break
                if time.monotonic() > deadline:
                    self.stop()
                    raise BenchError(f"janus did not answer in {JANUS_START_TIMEOUT:.0f} s{self.tail()}")
                time.sleep(0.2)
        return self.url

    def create_room(self, room: int = JANUS_ROOM, publishers: int = 1) -> int:
        """Create the VideoRoom room the benchmark uses (VP8, no bitrate cap)."""
        import httpx

        with httpx.Client(trust_env=False, timeout=10) as http:

            def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
                reply: dict[str, Any] = http.post(
                    f"{self.url}{path}", json={**body, "transaction": secrets.token_hex(6)}
                ).json()
                if reply.get("janus") == "error":
                    raise BenchError(f"Janus refused {body}: {reply.get('error')}")
                return reply

            session = post("", {"janus": "create"})["data"]["id"]
            handle = post(f"/{session}", {"janus": "attach", "plugin": "janus.plugin.videoroom"})["data"][
                "id"
            ]
            reply = post(
                f"/{session}/{handle}",
                {
                    "janus": "message",
                    "body": {
                        "request": "create",
                        "room": room,
                        "publishers": publishers,
                        "videocodec": "vp8",
                        "bitrate": 0,
                        "fir_freq": 0,
                        "notify_joining": False,
                    },
                },
            )
            data = reply.get("plugindata", {}).get("data", {})
            if data.get("videoroom") != "created":
                raise BenchError(f"Janus did not create the room: {reply}")
            post(f"/{session}", {"janus": "destroy"})
        return room

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self) -> str:
        try:
            text = self._log_path.read_text("utf-8", "replace")[-2000:]
        except OSError:
            return ""
        return f"; its log ends with:\n{text}" if text.strip() else ""

    def stop(self) -> int | None:
        proc = self.proc
        if proc is None:
            return None
        for sig, wait in ((signal.SIGINT, 10.0), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            if proc.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(wait)
        return proc.returncode


class JanusClient:
    """One Janus session with one VideoRoom handle, over the HTTP API (in a load process)."""

    def __init__(self, url: str) -> None:
        import httpx

        self.url = url
        self.http = httpx.AsyncClient(trust_env=False, timeout=40)
        self.session = 0
        self.handle = 0
        self._pending: list[dict[str, Any]] = []

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        reply: dict[str, Any] = (await self.http.post(f"{self.url}{path}", json=body)).json()
        if reply.get("janus") == "error":
            raise BenchError(f"Janus refused {body.get('janus')}: {reply.get('error')}")
        return reply

    async def attach(self) -> None:
        tx = secrets.token_hex(6)
        self.session = (await self._post("", {"janus": "create", "transaction": tx}))["data"]["id"]
        body = {"janus": "attach", "plugin": "janus.plugin.videoroom", "transaction": tx}
        self.handle = (await self._post(f"/{self.session}", body))["data"]["id"]

    async def message(
        self, body: dict[str, Any], jsep: dict[str, Any] | None = None, timeout: float = 30.0
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Send a plugin request; return the plugin's data and the JSEP of its (async) reply."""
        tx = secrets.token_hex(6)
        request: dict[str, Any] = {"janus": "message", "body": body, "transaction": tx}
        if jsep is not None:
            request["jsep"] = jsep
        reply = await self._post(f"/{self.session}/{self.handle}", request)
        if reply.get("janus") != "ack":
            event = reply
        else:
            event = await self._event(tx, timeout)
        data: dict[str, Any] = event.get("plugindata", {}).get("data", {})
        if "error" in data:
            raise BenchError(f"Janus VideoRoom refused {body.get('request')}: {data['error']}")
        return data, event.get("jsep")

    async def _event(self, transaction: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for i, event in enumerate(self._pending):
                if event.get("transaction") == transaction and event.get("janus") == "event":
                    return self._pending.pop(i)
            if time.monotonic() > deadline:
                raise BenchError(f"Janus sent no reply in {timeout:.0f} s")
            response = await self.http.get(f"{self.url}/{self.session}", params={"maxev": 10})
            events = response.json()
            self._pending.extend(events if isinstance(events, list) else [events])

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.http.aclose()


# -- the namespace ----------------------------------------------------------------------------


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if result.returncode != 0:
        raise BenchError(f"`ip {' '.join(args)}` failed: {result.stderr.strip()}")


def _setup_namespace() -> None:
    """Inside the fresh namespace: ``lo`` up, a veth pair with the two private addresses."""
    _ip("link", "set", "lo", "up")
    _ip("link", "add", "salonb0", "type", "veth", "peer", "name", "salonb1")
    _ip("addr", "add", f"{SERVER_ADDRESS}/{PREFIX}", "dev", "salonb0")
    _ip("addr", "add", f"{PEER_ADDRESS}/{PREFIX}", "dev", "salonb1")
    _ip("link", "set", "salonb0", "up")
    _ip("link", "set", "salonb1", "up")


# -- one measurement --------------------------------------------------------------------------


def _measure(server_kind: str, args: argparse.Namespace, fan_out: int, janus_path: str) -> dict[str, Any]:
    from salon.bench import sfu

    run_args = argparse.Namespace(**vars(args))
    run_args.subscribers = fan_out
    run_args.publishers = 1
    run_args.workers = 1
    run_args.saturate = False
    with tempfile.TemporaryDirectory(prefix=f"salon-bench-{server_kind}-") as tmp:
        if server_kind == "salon":
            salon = ServerProcess(
                pathlib.Path(tmp), workers=1, serve_args=["--media-address", SERVER_ADDRESS]
            )
            try:
                salon.start()
                report = sfu._run(run_args, salon, ice_address=CLIENT_ADDRESS)
            finally:
                salon.stop()
        else:
            janus = JanusProcess(pathlib.Path(tmp), janus_path)
            try:
                url = janus.start()
                room = janus.create_room()
                report = sfu._run(run_args, janus, ice_address=CLIENT_ADDRESS, janus=(url, room))
            finally:
                janus.stop()
    worker = report["worker_cpu"]
    return {
        "server": server_kind,
        "fan_out": fan_out,
        "worker_cpu_us_per_forwarded_packet": report["worker_cpu_us_per_forwarded_packet"],
        "user_us_per_forwarded_packet": _per(worker["user_seconds"], report),
        "system_us_per_forwarded_packet": _per(worker["system_seconds"], report),
        "worker_utilisation": worker["utilisation"],
        "packets_in_per_second": report["packets_in_per_second"],
        "forwarded_per_second": report["forwarded_per_second"],
        "loss": report["loss"],
        "unstamped_packets": report["unstamped_packets"],
        "delay_ms": report["delay_ms"],
        "idle_utilisation": report["server_cpu"]["idle_utilisation_workers"],
        "idle_run_ms_per_second": report["server_cpu"]["idle_run_ms_per_second_workers"],
        "idle_wakeups_per_second": report["server_cpu"]["idle_wakeups_per_second_workers"],
        "run_us_per_forwarded_packet": report["worker_scheduler"]["run_us_per_forwarded_packet"],
        "wakeups_per_forwarded_packet": report["worker_scheduler"]["wakeups_per_forwarded_packet"],
        "preemptions_per_forwarded_packet": report["worker_scheduler"]["preemptions_per_forwarded_packet"],
        "load_generator_cpu": report["load_generator"]["cpu_utilisation"],
        "loadavg_before": report["machine"]["loadavg_before"],
        "loadavg_after": report["machine"]["loadavg_after"],
    }


def _per(seconds: float, report: dict[str, Any]) -> float | None:
    forwarded = report["forwarded_per_second"] * report["elapsed"]
    return round(seconds / forwarded * 1e6, 2) if forwarded else None


def _summary(runs: list[dict[str, Any]], fan_outs: Sequence[int]) -> list[dict[str, Any]]:
    rows = []
    for fan_out in fan_outs:
        row: dict[str, Any] = {"fan_out": fan_out}
        for kind in ("salon", "janus"):
            values = [
                r["worker_cpu_us_per_forwarded_packet"]
                for r in runs
                if r["server"] == kind and r["fan_out"] == fan_out and r["worker_cpu_us_per_forwarded_packet"]
            ]
            row[kind] = {
                "runs": values,
                "median": round(statistics.median(values), 2) if values else None,
                "lost_packets": sum(
                    r["loss"]["packets"] for r in runs if r["server"] == kind and r["fan_out"] == fan_out
                ),
            }
        salon, janus = row["salon"]["median"], row["janus"]["median"]
        row["ratio_salon_to_janus"] = round(salon / janus, 3) if salon and janus else None
        rows.append(row)
    return rows


def _inner(args: argparse.Namespace) -> int:
    """Inside the namespace: build the veth pair, alternate the servers, print the report."""
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    janus_path = shutil.which("janus") or "janus"
    _setup_namespace()
    description = machine()
    _log(machine_line(description))
    janus_version = subprocess.run([janus_path, "--version"], capture_output=True, text=True, timeout=10)
    description["janus"] = next(
        (
            line.split(":", 1)[1].strip()
            for line in janus_version.stdout.splitlines()
            if line.lower().startswith("janus version")
        ),
        None,
    )
    fan_outs = [int(x) for x in args.fan_outs.split(",")]
    runs: list[dict[str, Any]] = []
    errors: list[str] = []
    for round_index in range(args.runs):
        order = ("salon", "janus") if round_index % 2 == 0 else ("janus", "salon")
        for fan_out in fan_outs:
            for kind in order:
                _log(
                    f"round {round_index + 1}/{args.runs}: {kind}, 1 -> {fan_out}, "
                    f"load {os.getloadavg()[0]:.2f}"
                )
                try:
                    result = _measure(kind, args, fan_out, janus_path)
                except BenchError as exc:
                    errors.append(f"{kind} 1 -> {fan_out}, round {round_index + 1}: {exc}")
                    _log(f"error: {exc}")
                    continue
                result["round"] = round_index + 1
                runs.append(result)
                _log(
                    f"  {kind} 1 -> {fan_out}: {result['worker_cpu_us_per_forwarded_packet']} us/packet "
                    f"(user {result['user_us_per_forwarded_packet']}, "
                    f"sys {result['system_us_per_forwarded_packet']}), "
                    f"loss {result['loss']['packets']}, "
                    f"load {result['loadavg_before']} -> {result['loadavg_after']}"
                )
    description["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    report: dict[str, Any] = {
        "benchmark": "sfu-side-by-side",
        "parameters": {
            "peer": "janus",
            "fan_outs": fan_outs,
            "runs": args.runs,
            "duration": args.duration,
            "rate_per_publisher": args.rate,
            "transport_cc": bool(getattr(args, "transport_cc", False)),
            "publishers": 1,
            "salon_workers": 1,
            "network": f"private namespace; servers and clients on {SERVER_ADDRESS} "
            f"(veth, peer {PEER_ADDRESS})",
        },
        "machine": description,
        "summary": _summary(runs, fan_outs),
        "runs": runs,
        "errors": errors,
    }
    for row in report["summary"]:
        _log(
            f"1 -> {row['fan_out']}: salon {row['salon']['median']} us/packet, "
            f"Janus {row['janus']['median']} us/packet, salon / Janus {row['ratio_salon_to_janus']}, "
            f"lost {row['salon']['lost_packets']} / {row['janus']['lost_packets']}"
        )
    _log(f"load average before / after: {description['loadavg_before']} / {description['loadavg_after']}")
    print(json.dumps(report, indent=2), flush=True)
    lost = sum(r["loss"]["packets"] for r in runs)
    return 0 if runs and not errors and lost == 0 else 1


def run_side_by_side(args: argparse.Namespace) -> int:
    """``salon bench sfu --peer janus``: re-run this module inside a new network namespace."""
    try:
        tools = require_tools()
        fan_outs = [int(x) for x in str(args.fan_outs).split(",")]
        if not fan_outs or not all(1 <= k <= 256 for k in fan_outs):
            raise BenchError("--fan-outs must be a comma-separated list of 1..256")
        if not 1 <= args.runs <= 20:
            raise BenchError("--runs must be 1..20")
        if not 0 < args.duration <= 600 or not 5 <= args.rate <= 20000:
            raise BenchError("--duration must be in (0, 600] seconds and --rate 5..20000")
    except (BenchError, ValueError) as exc:
        _log(f"error: {exc}")
        return 1
    command = [tools["unshare"], "--net", "--", sys.executable, "-m", "salon.bench.janus", "--inner"]
    command += ["--fan-outs", ",".join(map(str, fan_outs)), "--runs", str(args.runs)]
    command += ["--duration", str(args.duration), "--rate", str(args.rate)]
    if getattr(args, "sink_processes", None):
        command += ["--sink-processes", str(args.sink_processes)]
    if getattr(args, "transport_cc", False):
        command.append("--transport-cc")
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, start_new_session=True)
    previous = None
    with contextlib.suppress(ValueError):  # only the main thread may set handlers
        previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        return proc.wait(_INNER_TIMEOUT)
    except subprocess.TimeoutExpired:
        _stop_inner(proc)
        _log(f"error: the run did not end in {_INNER_TIMEOUT:.0f} s; stopped")
        return 1
    except BaseException:  # interrupted: stop the run, then go on interrupting
        _stop_inner(proc)
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _stop_inner(proc: subprocess.Popen[bytes]) -> None:
    """Let the run clean up (SIGTERM: its servers, Janus, load processes), then make sure."""
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM: leave through the ``finally`` blocks, which stop what the benchmark started."""
    sys.exit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m salon.bench.janus [--inner]`` (``--inner``: already in the namespace)."""
    parser = argparse.ArgumentParser(prog="python -m salon.bench.janus", description=__doc__.split("\n")[0])
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--fan-outs", default=",".join(map(str, DEFAULT_FAN_OUTS)))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=600.0)
    parser.add_argument("--sink-processes", type=int, default=None)
    parser.add_argument("--transport-cc", action="store_true")
    args = parser.parse_args(argv)
    if args.inner:
        return _inner(args)
    return run_side_by_side(args)


if __name__ == "__main__":
    sys.exit(main())
