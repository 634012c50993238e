"""``salon serve`` in a subprocess, its output captured to files (never a pipe that can fill)."""

from __future__ import annotations

import contextlib
import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Sequence

from salon.bench.infra import terminate


class ServeProcess:
    """``python -m salon serve --port 0 ...`` with ``SALON_API_KEY``/``SALON_API_SECRET`` set.

    ``prefix`` runs it under another command, e.g. ``ip netns exec NS`` (which execs, so
    :attr:`pid` is still the server's).

    ::

        with ServeProcess(tmp_path, KEY, SECRET, ["--no-media"]) as server:
            httpx.get(server.url + "/health")
        server.output  # stdout and stderr, everything the server wrote
    """

    def __init__(
        self,
        data_dir: pathlib.Path,
        api_key: str,
        api_secret: str,
        args: Sequence[str] = (),
        *,
        log_level: str = "info",
        prefix: Sequence[str] = (),
    ) -> None:
        self.data_dir = data_dir
        self.stdout_path = data_dir / f"serve-{id(self)}.out"
        self.stderr_path = data_dir / f"serve-{id(self)}.err"
        self.command = [
            *prefix,
            sys.executable,
            "-m",
            "salon",
            "serve",
            "--port",
            "0",
            "--data-dir",
            str(data_dir),
            "--log-level",
            log_level,
            # Metrics on a free port (printed: metrics_url), unless the test chooses.
            *(() if "--metrics-address" in args else ("--metrics-address", "127.0.0.1:0")),
            *args,
        ]
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SALON_")}
        self.env.update(SALON_API_KEY=api_key, SALON_API_SECRET=api_secret, PYTHONUNBUFFERED="1")
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.metrics_url = ""
        """``salon metrics on URL`` (with ``--metrics-address``; printed before ``serving on``)."""

    @property
    def database_url(self) -> str | None:
        """The ``--database-url`` it is started with, if any."""
        args = self.command
        return next((args[i + 1] for i, arg in enumerate(args[:-1]) if arg == "--database-url"), None)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def output(self) -> str:
        text = ""
        for path in (self.stdout_path, self.stderr_path):
            if path.exists():
                text += path.read_text(encoding="utf-8", errors="replace")
        return text

    def rss_kib(self) -> int:
        """The server process's resident set size (KiB), from /proc."""
        for line in pathlib.Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def __enter__(self) -> ServeProcess:
        self.start()
        self.wait_serving()
        return self

    def start(self) -> None:
        """Start the server without waiting for it (see :meth:`wait_serving`, :func:`start_all`)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(self.command, stdout=out, stderr=err, env=self.env)

    def wait_serving(self) -> None:
        """Wait until the started server serves (:attr:`url` set); stop it if it does not."""
        assert self.proc is not None, "start() first"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for line in self.stdout_path.read_text(errors="replace").splitlines():
                if line.startswith("salon metrics on "):
                    self.metrics_url = line.split()[-1]
                if line.startswith("salon serving on "):
                    self.url = line.split()[-1]
                    return
            if self.proc.poll() is not None:
                raise AssertionError(f"the server exited: {self.output}")
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"the server did not start within 60 s: {self.output}")

    def stop(self) -> None:
        terminate(self.proc)

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_all(stack: contextlib.ExitStack, servers: Sequence[ServeProcess]) -> list[ServeProcess]:
    """Start ``servers`` at once (their start-ups overlap) and wait until each serves; raises if
    one does not start; ``stack`` stops them. A database they share (``--database-url``) is
    brought to the newest schema here first (:func:`tests.postgres.upgraded`): two first starts
    would create its tables at once (the project they share, ``ensure_project`` takes care of)."""
    from tests.postgres import upgraded

    for url in dict.fromkeys(server.database_url for server in servers):
        if url is not None:
            upgraded(url)
    for server in servers:
        stack.callback(server.stop)
        server.start()
    for server in servers:
        server.wait_serving()
    return list(servers)
