"""Throwaway infrastructure for the benchmarks (and the tests): a ``redis-server`` and a
PostgreSQL cluster on loopback, each in a temporary directory, stopped and deleted on exit.

Under root PostgreSQL runs as the ``postgres`` system user (``initdb`` and ``postgres`` refuse
root). Needs the Debian packages ``redis-server`` and ``postgresql``.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pathlib
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = [
    "PostgresCluster",
    "PostgresError",
    "RedisError",
    "RedisServer",
    "running_postgres",
    "running_redis",
    "terminate",
]

ROLE = "salon"
DATABASE = "salon"
SUPERUSER = "postgres"
#: Seconds for each step (initdb, start, stop, a query) on a slow, shared CI machine.
STEP_TIMEOUT = 120.0
#: Seconds for the server to accept a TCP connection as ``salon`` after it started.
READY_TIMEOUT = 60.0

INSTALL_HINT = (
    "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin/ (initdb, pg_ctl). "
    "Install the Debian package: apt-get install postgresql (scripts/test does this)."
)


class PostgresError(RuntimeError):
    """The throwaway cluster could not be set up or stopped."""


def find_bin_dir() -> pathlib.Path:
    """The bin directory of the PostgreSQL server, preferring version 15, else the newest."""
    candidates: list[tuple[int, pathlib.Path]] = []
    for initdb in glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        bin_dir = pathlib.Path(initdb).parent
        match = re.fullmatch(r"\d+", bin_dir.parent.name)
        if match and (bin_dir / "pg_ctl").exists() and (bin_dir / "psql").exists():
            candidates.append((int(bin_dir.parent.name), bin_dir))
    if not candidates:
        raise PostgresError(INSTALL_HINT)
    for version, bin_dir in candidates:
        if version == 15:
            return bin_dir
    return max(candidates)[1]


def terminate(proc: subprocess.Popen[bytes] | None) -> None:
    """Stop a child process that is still running: SIGTERM, then SIGKILL if it is still there
    after 20 s; reaped either way."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _clean_env() -> dict[str, str]:
    # PG* variables (PGHOST, PGPORT, PGSERVICE, ...) must not redirect our clients elsewhere.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    return env


@dataclass
class PostgresCluster:
    """A running throwaway cluster; :attr:`url` is what the store is given."""

    bin_dir: pathlib.Path
    base_dir: pathlib.Path
    port: int
    run_as: str | None

    @property
    def data_dir(self) -> pathlib.Path:
        return self.base_dir / "data"

    @property
    def log_file(self) -> pathlib.Path:
        return self.base_dir / "server.log"

    @property
    def url(self) -> str:
        return f"postgresql://{ROLE}@127.0.0.1:{self.port}/{DATABASE}"

    def command(self, program: str, *args: str, timeout: float = STEP_TIMEOUT) -> str:
        """Run a server binary (as the ``postgres`` user under root); its output, or an error."""
        argv = [str(self.bin_dir / program), *args]
        if self.run_as is not None:
            argv = ["runuser", "-u", self.run_as, "--", *argv]
        try:
            done = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                env=_clean_env(),
                cwd=self.base_dir,
            )
        except subprocess.TimeoutExpired as exc:
            raise PostgresError(f"{program} did not finish in {timeout:.0f} s{self._log_tail()}") from exc
        if done.returncode != 0:
            raise PostgresError(
                f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout}{done.stderr}{self._log_tail()}"
            )
        return done.stdout

    def superuser_sql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL as the superuser over the Unix socket in the cluster's directory."""
        return self.command(
            "psql",
            *("-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(self.base_dir), "-p", str(self.port)),
            *("-U", SUPERUSER, "-d", database, "-c", sql),
        )

    def reset_database(self) -> None:
        """An empty ``salon`` database again: its schema dropped and created anew."""
        self.superuser_sql(f"DROP SCHEMA public CASCADE; CREATE SCHEMA public AUTHORIZATION {ROLE}", DATABASE)

    def initdb(self) -> None:
        self.command(
            "initdb",
            *("-D", str(self.data_dir), "-U", SUPERUSER, "-E", "UTF8", "--locale=C"),
            # The superuser only over the Unix socket; TCP only for the test role (see start()).
            *("--auth-local=trust", "--auth-host=reject", "--no-sync"),
        )
        hba = self.data_dir / "pg_hba.conf"
        rules = f"host {DATABASE} {ROLE} 127.0.0.1/32 trust\n" + hba.read_text()
        hba.write_text(rules)  # the first matching line wins: ours comes before "reject"

    def start(self) -> None:
        options = " ".join(
            [
                "-c listen_addresses=127.0.0.1",
                f"-c port={self.port}",
                f"-c unix_socket_directories={self.base_dir}",
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off",
                "-c max_connections=50 -c shared_buffers=16MB",
            ]
        )
        self.command(
            "pg_ctl",
            *("start", "-D", str(self.data_dir), "-l", str(self.log_file), "-o", options),
            *("-w", "-t", str(int(STEP_TIMEOUT))),
            timeout=STEP_TIMEOUT + 10,
        )

    def wait_ready(self) -> None:
        """Poll a real TCP connection as the test role, as the store will make, until a deadline."""
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            try:
                self.command(
                    "psql",
                    *("-X", "-q", "-h", "127.0.0.1", "-p", str(self.port), "-U", ROLE, "-d", DATABASE),
                    *("-c", "SELECT 1"),
                    timeout=30,
                )
                return
            except PostgresError as exc:
                if time.monotonic() > deadline:
                    raise PostgresError(
                        f"PostgreSQL on 127.0.0.1:{self.port} did not accept a connection as "
                        f"{ROLE!r} within {READY_TIMEOUT:.0f} s: {exc}"
                    ) from exc
                time.sleep(0.5)

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        """``pg_ctl stop -m fast``; if that fails, kill our postmaster (by its PID file) and wait."""
        if self.postmaster_pid() is None:
            return
        try:
            self.command(
                "pg_ctl",
                *("stop", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", str(int(STEP_TIMEOUT))),
                timeout=STEP_TIMEOUT + 10,
            )
        except PostgresError:
            pid = self.postmaster_pid()
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGQUIT)  # immediate shutdown; the children follow
                deadline = time.monotonic() + 30
                while _alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.2)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            raise

    def _log_tail(self) -> str:
        try:
            lines = self.log_file.read_text(errors="replace").splitlines()[-20:]
        except OSError:
            return ""
        return "\nserver log (last lines):\n" + "\n".join(lines) if lines else ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def running_postgres(attempts: int = 3) -> Iterator[PostgresCluster]:
    """A started cluster with the ``salon`` role and database; stopped and deleted on exit."""
    bin_dir = find_bin_dir()
    run_as: str | None = None
    if os.geteuid() == 0:
        run_as = SUPERUSER
        try:
            user = pwd.getpwnam(run_as)
        except KeyError as exc:
            raise PostgresError(
                "tests run as root, and PostgreSQL must run as the 'postgres' system user, which does "
                "not exist: install the Debian package 'postgresql', which creates it"
            ) from exc
        if shutil.which("runuser") is None:
            raise PostgresError("runuser (util-linux) is needed to run PostgreSQL as 'postgres'")
    # In /tmp: short enough for the Unix socket's path, and reachable by the postgres user
    # (a TMPDIR under /root would not be).
    base_dir = pathlib.Path(
        tempfile.mkdtemp(prefix="salon-pg-", dir="/tmp" if os.path.isdir("/tmp") else None)
    )
    cluster = PostgresCluster(bin_dir, base_dir, port=0, run_as=run_as)
    try:
        if run_as is not None:
            os.chown(base_dir, user.pw_uid, user.pw_gid)
        os.chmod(base_dir, 0o700)
        cluster.initdb()
        for attempt in range(attempts):
            # Another process may take the free port before the server binds it: try another.
            cluster.port = free_port()
            try:
                cluster.start()
                break
            except PostgresError:
                with contextlib.suppress(PostgresError):
                    cluster.stop()
                if attempt == attempts - 1:
                    raise
        cluster.superuser_sql(f"CREATE ROLE {ROLE} LOGIN")
        cluster.superuser_sql(f"CREATE DATABASE {DATABASE} OWNER {ROLE}")
        cluster.wait_ready()
        yield cluster
    finally:
        try:
            cluster.stop()
        finally:
            shutil.rmtree(base_dir, ignore_errors=True)


#: Seconds for the server to answer PING after it started, on a slow, shared machine.
REDIS_READY_TIMEOUT = 30.0

REDIS_INSTALL_HINT = "redis-server not found: apt-get install redis-server (scripts/test does this)"


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
            raise RedisError(REDIS_INSTALL_HINT)
        argv = [
            binary,
            *("--bind", "127.0.0.1", "--port", str(self.port), "--protected-mode", "yes"),
            *("--save", "", "--appendonly", "no", "--dir", str(self.base_dir)),
            *("--daemonize", "no", "--logfile", str(self.log_file)),
        ]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + REDIS_READY_TIMEOUT
        while not _ping(self.port):
            if self.proc.poll() is not None:
                raise RedisError(f"redis-server exited ({self.proc.returncode}): {self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RedisError(f"redis-server did not answer within {REDIS_READY_TIMEOUT:.0f} s")
            time.sleep(0.05)

    def stop(self) -> None:
        terminate(self.proc)

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
