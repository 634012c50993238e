"""A throwaway ``redis-server`` for the cluster tests.

It listens only on 127.0.0.1 on a free port, keeps nothing on disk (no RDB snapshots, no
append-only file; its working directory is a temporary one) and is stopped at the end. If the
binary is missing the tests fail, they are never skipped: ``scripts/test`` installs the Debian
package ``redis-server`` (and keeps its own service stopped).

Use the fixtures by importing them into a test module::

    from tests.redis import redis_url_fixture, redis_server_fixture  # noqa: F401
"""

from __future__ import annotations

import contextlib
import pathlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest

from tests.postgres import free_port

__all__ = ["RedisServer", "redis_server_fixture", "redis_url_fixture", "running_redis"]

#: Seconds for the server to answer PING after it started, on a slow, shared machine.
READY_TIMEOUT = 30.0

INSTALL_HINT = "redis-server not found: apt-get install redis-server (scripts/test does this)"


class RedisError(RuntimeError):
    """The throwaway server could not be started."""


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """A running ``redis-server``; :attr:`url` is what ``salon serve --redis-url`` is given."""

    def __init__(self, base_dir: pathlib.Path, port: int) -> None:
        self.base_dir = base_dir
        self.port = port
        self.log_file = base_dir / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not pathlib.Path(binary).exists():
            raise RedisError(INSTALL_HINT)
        argv = [
            binary,
            *("--bind", "127.0.0.1", "--port", str(self.port), "--protected-mode", "yes"),
            *("--save", "", "--appendonly", "no", "--dir", str(self.base_dir)),
            *("--daemonize", "no", "--logfile", str(self.log_file)),
        ]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + READY_TIMEOUT
        while not _ping(self.port):
            if self.proc.poll() is not None:
                raise RedisError(f"redis-server exited ({self.proc.returncode}): {self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RedisError(f"redis-server did not answer within {READY_TIMEOUT:.0f} s")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-20:])
        return ""


@contextlib.contextmanager
def running_redis(attempts: int = 3) -> Iterator[RedisServer]:
    """A started server on a free port; stopped and its directory deleted on exit."""
    base_dir = pathlib.Path(tempfile.mkdtemp(prefix="salon-redis-"))
    server = RedisServer(base_dir, 0)
    try:
        for attempt in range(attempts):
            server.port = free_port()  # another process may take it first: try another
            try:
                server.start()
                break
            except RedisError:
                if attempt == attempts - 1:
                    raise
        yield server
    finally:
        try:
            server.stop()
        finally:
            shutil.rmtree(base_dir, ignore_errors=True)


@pytest.fixture(name="redis_server")
def redis_server_fixture() -> Iterator[RedisServer]:
    """A throwaway server for one test; the test FAILS if it cannot start."""
    try:
        import redis  # noqa: F401
    except ImportError:
        pytest.fail("redis-py is missing: pip install -e '.[test,cluster]' (scripts/test does this)")
    with contextlib.ExitStack() as stack:
        try:
            server = stack.enter_context(running_redis())
        except RedisError as exc:
            pytest.fail(str(exc))
        yield server


@pytest.fixture(name="redis_url")
def redis_url_fixture(redis_server: RedisServer) -> str:
    """``redis://127.0.0.1:PORT/0`` of an empty throwaway server."""
    return redis_server.url
