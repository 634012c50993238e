"""Shaped-link end-to-end tests: the server in a namespace of its own, each client in another.

Everything runs inside a :class:`~salon.bench.netlab.NetLab` the test builds: ``salon serve``
in the hub (listening on :attr:`NetLab.server_address` only), Python SDK clients as
:mod:`salon.bench.quality_agent` processes in leaves whose links the test shapes. The test
process itself talks to the server (REST) over the lab's control link.
"""

from __future__ import annotations

import json
import pathlib
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import opentok
import pytest

from salon.bench.netlab import NetLab, NetLabError
from tests.conftest import API_KEY, API_SECRET
from tests.serveproc import ServeProcess


@pytest.fixture
def lab() -> Iterator[NetLab]:
    try:
        built = NetLab(tag="q")
    except NetLabError as exc:  # pragma: no cover - the suite runs as root with iproute2 and nftables
        pytest.fail(f"the network lab cannot be built here: {exc}")
    try:
        yield built
    finally:
        built.close()


class HubServer:
    """``salon serve`` in the lab's hub namespace."""

    def __init__(self, lab: NetLab, data_dir: pathlib.Path, args: list[str]) -> None:
        address = lab.server_address
        self.process = ServeProcess(
            data_dir,
            API_KEY,
            API_SECRET,
            ["--host", address, "--media-address", address, "--reconnect-grace", "0", *args],
            prefix=lab.command("hub", []),
        )
        self.lab = lab

    @property
    def url(self) -> str:
        return self.process.url

    @property
    def sdk(self) -> opentok.Client:
        return opentok.Client(API_KEY, API_SECRET, api_url=self.url)

    def session(self) -> str:
        return str(self.sdk.create_session(media_mode=opentok.MediaModes.routed).session_id)

    def token(self, session_id: str, role: str = "publisher") -> str:
        return str(self.sdk.generate_token(session_id, role=opentok.Roles(role)))


@pytest.fixture
def hub_server(lab: NetLab, tmp_path: pathlib.Path) -> Iterator[HubServer]:
    server = HubServer(lab, tmp_path / "server", ["--workers", "1"])
    with server.process:
        yield server


class Agent:
    """A :mod:`salon.bench.quality_agent` process in a leaf; its JSON lines collected."""

    def __init__(self, lab: NetLab, leaf: str, server: HubServer, session_id: str, *extra: str) -> None:
        link = lab.links[leaf]
        self.leaf = leaf
        self.lines: list[dict[str, Any]] = []
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue()
        self._stderr = b""
        self.proc = lab.popen(
            leaf,
            [
                sys.executable, "-m", "salon.bench.quality_agent", server.url, session_id,
                server.token(session_id), "--ice-address", link.leaf_address, *extra,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._errors = threading.Thread(target=self._read_errors, daemon=True)
        self._errors.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = json.loads(raw)
            self.lines.append(line)
            self._queue.put(line)

    def _read_errors(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            self._stderr = (self._stderr + raw)[-20000:]

    @property
    def stderr(self) -> str:
        return self._stderr.decode(errors="replace")

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], what: str, timeout: float = 30
    ) -> dict[str, Any]:
        """The next line (from now on) for which ``predicate`` holds."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.proc.poll() is not None:
                raise AssertionError(
                    f"{self.leaf}: no {what} within {timeout:g} s; stderr: {self.stderr[-3000:]}"
                )
            try:
                line = self._queue.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                continue
            if predicate(line):
                return line

    def reports(self, since: float = 0.0) -> list[dict[str, Any]]:
        return [line for line in self.lines if line.get("kind") == "report" and line["t"] >= since]

    def send(self, command: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command).encode() + b"\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send({"quit": True})
                self.proc.wait(timeout=10)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._reader.join(timeout=5)
        self._errors.join(timeout=5)
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def agents() -> Iterator[Callable[..., Agent]]:
    started: list[Agent] = []

    def start(lab: NetLab, leaf: str, server: HubServer, session_id: str, *extra: str) -> Agent:
        agent = Agent(lab, leaf, server, session_id, *extra)
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.stop()


async def chromium_in(pw: Any, lab: NetLab, leaf: str, server: HubServer, tmp_path: pathlib.Path) -> Any:
    """Debian's Chromium (as the browser tests launch it) running inside a leaf's namespace.

    Playwright drives it over a pipe, which crosses namespaces; the page's origin is the hub
    server's (not a secure context by its address), so Chromium is told to treat it as one.
    """
    from tests.e2e.browser.browser_helpers import BASE_ARGS, CHROMIUM, FAKE_UI

    wrapper = tmp_path / f"chromium-{leaf}"
    wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {lab.namespace(leaf)} {CHROMIUM} "$@"\n')
    wrapper.chmod(0o755)
    args = [*BASE_ARGS, FAKE_UI, f"--unsafely-treat-insecure-origin-as-secure={server.url}"]
    return await pw.chromium.launch(executable_path=str(wrapper), headless=True, args=args)
