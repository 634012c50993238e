"""The server serves the browser SDK, the web app, and the demo endpoint (unless switched off)."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys
import zipfile

import httpx
import pytest

from salon.server.config import ServerConfig
from salon.server.run import ServerThread
from salon.server.web import WEB_DIR
from tests.conftest import API_KEY, API_SECRET, RunningServer


def test_sdk_and_app_are_served(server: RunningServer) -> None:
    sdk = httpx.get(f"{server.url}/sdk/salon.js")
    assert sdk.status_code == 200
    assert "javascript" in sdk.headers["content-type"]
    assert "export function initSession" in sdk.text and "export class SalonError" in sdk.text
    page = httpx.get(f"{server.url}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="/app/app.js">' in page.text
    for asset in ("/app/app.js", "/app/app.css"):
        assert httpx.get(f"{server.url}{asset}").status_code == 200, asset
    assert httpx.get(f"{server.url}/sdk/missing.js").status_code == 404


@pytest.mark.timeout(300)
def test_a_built_wheel_contains_the_web_files(tmp_path: pathlib.Path) -> None:
    """Build the wheel (from a copy of the sources, so the checkout gets no build/ directory)
    and check it holds every file the server serves from WEB_DIR."""
    root = pathlib.Path(__file__).parents[2]
    source = tmp_path / "source"
    shutil.copytree(root / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, source / name)
    dist = tmp_path / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dist), str(source)],
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = dist.glob("salon-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        assert b"export function initSession" in archive.read("salon/web/sdk/salon.js")
    web_files = {
        "salon/web/" + path.relative_to(WEB_DIR).as_posix()
        for path in WEB_DIR.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".py"
    }
    assert {
        "salon/web/sdk/salon.js",
        "salon/web/sdk/protocol.d.ts",  # the browser SDK's types of the protocol ship with it
        "salon/web/sdk/opentok.js",
        "salon/web/sdk/ot/ot.js",  # the OpenTok.js layer the server bundles at start-up
        "salon/web/app/index.html",
        "salon/web/app/app.js",
    } <= web_files
    assert web_files <= names, sorted(web_files - names)


def test_demo_join_gives_one_session_per_room(server: RunningServer) -> None:
    a = httpx.post(f"{server.url}/demo/join", json={"room": "r1", "name": "Alice"}).json()
    b = httpx.post(f"{server.url}/demo/join", json={"room": "r1", "name": "Bob"}).json()
    c = httpx.post(f"{server.url}/demo/join", json={"room": "r2", "name": "Carol"}).json()
    assert a["sessionId"] == b["sessionId"] != c["sessionId"]
    assert a["apiKey"] == API_KEY and a["token"] != b["token"]
    bad = httpx.post(f"{server.url}/demo/join", json={"room": "no spaces", "name": "x"})
    assert bad.status_code == 400


def test_no_demo_switches_the_endpoint_off(tmp_path: pathlib.Path) -> None:
    config = ServerConfig(
        port=0, data_dir=tmp_path, api_key=API_KEY, api_secret=API_SECRET, media=False, demo=False
    )
    with ServerThread(config) as thread:
        reply = httpx.post(f"{thread.url}/demo/join", json={"room": "r1", "name": "Alice"})
        assert reply.status_code == 404
        assert reply.json()["code"] == "demo_disabled"
        assert "--no-demo" in reply.json()["message"] and "own server" in reply.json()["message"]
        assert httpx.get(f"{thread.url}/sdk/salon.js").status_code == 200
