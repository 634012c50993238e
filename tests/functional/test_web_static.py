"""The server serves the browser SDK, the web app, and the demo endpoint (unless switched off)."""

from __future__ import annotations

import pathlib

import httpx

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


def test_web_files_are_package_data() -> None:
    assert (WEB_DIR / "sdk" / "salon.js").is_file()
    assert (WEB_DIR / "app" / "index.html").is_file()
    pyproject = (pathlib.Path(__file__).parents[2] / "pyproject.toml").read_text()
    assert '"web/sdk/*.js", "web/app/*"' in pyproject
    # The browser SDK's types of the protocol (generated from salon.protocol) ship with it.
    assert (WEB_DIR / "sdk" / "protocol.d.ts").is_file()
    assert '"web/sdk/protocol.d.ts"' in pyproject


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
