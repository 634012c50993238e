"""The ``salon`` command, called as ``main([...])`` and as a real process."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time

import httpx
import opentok
import pytest

from salon.cli import main
from salon.tokens import verify_token
from tests.serveoptions import ServeOptions, serve_options_fixture  # noqa: F401


def test_project_create_then_list_hides_secrets(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["project", "create", "--name", "demo", "--data-dir", str(tmp_path)]) == 0
    created = json.loads(capsys.readouterr().out)
    assert len(created["api_secret"]) == 40
    assert main(["project", "list", "--data-dir", str(tmp_path)]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [p["api_key"] for p in listed] == [created["api_key"]]
    assert "api_secret" not in listed[0]


def test_session_create_and_token_match_the_sdk(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["project", "create", "--data-dir", str(tmp_path)])
    project = json.loads(capsys.readouterr().out)
    assert main(["session", "create", "--data-dir", str(tmp_path), "--location", "10.1.2.3"]) == 0
    session_id = capsys.readouterr().out.strip()
    # The SDK accepts our session ID as belonging to the project.
    opentok.Client(project["api_key"], project["api_secret"]).generate_token(session_id)
    for legacy in (False, True):
        args = [
            "token",
            session_id,
            "--role",
            "moderator",
            "--data",
            "name=Zoe",
            "--expire",
            "600",
            "--data-dir",
            str(tmp_path),
        ]
        assert main([*args, "--legacy"] if legacy else args) == 0
        token = capsys.readouterr().out.strip()
        assert token.startswith("T1==") == legacy
        claims = verify_token(token, lambda key: project["api_secret"], session_id=session_id)
        assert (claims.role.value, claims.connection_data) == ("moderator", "name=Zoe")
        assert abs(claims.expire_time - (time.time() + 600)) < 5


def test_token_refuses_bad_input(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["project", "create", "--data-dir", str(tmp_path)])
    main(["session", "create", "--data-dir", str(tmp_path)])
    session_id = capsys.readouterr().out.strip().splitlines()[-1]
    assert main(["token", session_id, "--data", "x" * 1001, "--data-dir", str(tmp_path)]) == 1
    assert "1000 characters" in capsys.readouterr().err
    assert main(["token", session_id, "--expire", str(31 * 86400), "--data-dir", str(tmp_path)]) == 1
    assert main(["token", "not-a-session", "--data-dir", str(tmp_path)]) == 1
    assert "invalid session ID" in capsys.readouterr().err


def test_session_create_without_a_project_says_what_to_do(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["session", "create", "--data-dir", str(tmp_path)]) == 1
    assert "salon project create" in capsys.readouterr().err


def stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    proc.communicate(timeout=15)


def test_serve_creates_a_project_once_and_keeps_data_across_restarts(tmp_path: pathlib.Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SALON_")}

    def serve() -> tuple[subprocess.Popen[str], str, list[str]]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "salon", "serve", "--port", "0", "--data-dir", str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        assert proc.stdout is not None
        lines = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if line.startswith("salon serving on "):
                return proc, line.split()[-1], lines
        proc.kill()
        raise AssertionError(f"server did not start: {lines}")

    proc, url, lines = serve()
    try:
        assert httpx.get(url + "/health").status_code == 200
        key = next(line.split("=")[1].strip() for line in lines if "SALON_API_KEY=" in line)
        secret = next(line.split("=")[1].strip() for line in lines if "SALON_API_SECRET=" in line)
        session_id = opentok.Client(key, secret, api_url=url).create_session().session_id
    finally:
        stop(proc)

    proc, url, lines = serve()
    try:
        assert not any("SALON_API_SECRET" in line for line in lines), "the secret is printed only once"
        client = opentok.Client(key, secret, api_url=url)
        assert client.list_streams(session_id).count == 0  # the session survived the restart
    finally:
        stop(proc)


def test_python_dash_m_salon_shows_help() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "salon", "--help"], capture_output=True, text=True, check=True
    )
    for command in ("serve", "project", "session", "token", "bench"):
        assert command in out.stdout


def test_serve_takes_the_signalling_limits(serve_options: ServeOptions) -> None:
    defaults = serve_options.config().signalling
    assert (defaults.rate_limit, defaults.rate_burst, defaults.max_per_address) == (50, 200, 200)
    assert defaults.reconnect_grace == 30
    flags = [
        "--signalling-rate-limit",
        "0",
        "--signalling-rate-burst",
        "7",
        "--signalling-max-per-address",
        "0",
        "--reconnect-grace",
        "12.5",
    ]
    chosen = serve_options.config(*flags).signalling
    assert (chosen.rate_limit, chosen.rate_burst, chosen.max_per_address) == (0, 7, 0)
    assert chosen.reconnect_grace == 12.5
    assert serve_options.config("--reconnect-grace", "0").signalling.reconnect_grace == 0
    serve_options.assert_refused(
        [
            (["--signalling-rate-limit", "-1"], "--signalling-rate-limit"),
            (["--signalling-rate-limit", "nan"], "--signalling-rate-limit"),
            (["--signalling-rate-burst", "0"], "--signalling-rate-burst"),
            (["--signalling-max-per-address", "-5"], "--signalling-max-per-address"),
            (["--reconnect-grace", "-1"], "--reconnect-grace"),
            (["--reconnect-grace", "nan"], "--reconnect-grace"),
        ]
    )


def test_serve_takes_the_archive_options(serve_options: ServeOptions) -> None:
    defaults = serve_options.config()
    assert (defaults.archives.max_duration, defaults.archives.empty_timeout) == (14400, 60)
    assert defaults.archives.retention == 72 * 3600 and defaults.archive_storage is None
    flags = [
        "--archive-max-duration",
        "600",
        "--archive-empty-timeout",
        "5",
        "--archive-retention",
        "0.5",
        "--archive-storage",
        "s3://bucket/prefix",
        "--archive-s3-endpoint",
        "http://127.0.0.1:9000",
        "--public-url",
        "https://salon.example.com",
    ]
    chosen = serve_options.config(*flags)
    assert (chosen.archives.max_duration, chosen.archives.empty_timeout, chosen.archives.retention) == (
        600,
        5,
        12 * 3600,
    )
    assert chosen.archives.public_url == "https://salon.example.com"
    assert (chosen.archive_storage, chosen.archive_s3_endpoint) == (
        "s3://bucket/prefix",
        "http://127.0.0.1:9000",
    )
    serve_options.assert_refused(
        [
            (["--archive-max-duration", "0"], "--archive-max-duration"),
            (["--archive-empty-timeout", "nan"], "--archive-empty-timeout"),
            (["--archive-retention", "-1"], "--archive-retention"),
            (["--archive-storage", "/var/archives"], "--archive-storage"),
            (["--public-url", "salon.example.com"], "--public-url"),
        ]
    )
