"""Fixtures for the browser tests: the real server, and the system Chromium driven by Playwright.

Chromium is Debian's (``/usr/bin/chromium``, installed by ``scripts/test``); Playwright's own
browser downloads are never used. The fake camera shows a moving pattern, the fake microphone
a beep; ``--allow-loopback-in-peer-connection`` makes Chromium gather 127.0.0.1 candidates.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import AsyncIterator, Iterator

import pytest

from tests.conftest import API_KEY, API_SECRET, RunningServer, start_server

playwright_api = pytest.importorskip("playwright.async_api")

from browser_helpers import CHROMIUM, launch  # noqa: E402 (needs playwright)

if not os.path.exists(CHROMIUM):
    pytest.skip(f"no Chromium at {CHROMIUM} (scripts/test installs it)", allow_module_level=True)


@pytest.fixture
def media_server(tmp_path: pathlib.Path) -> Iterator[RunningServer]:
    with start_server(tmp_path, heartbeat_interval=1.0, heartbeat_timeout=15.0) as thread:
        yield RunningServer(thread.url, API_KEY, API_SECRET, thread)


@pytest.fixture
async def pw() -> AsyncIterator[playwright_api.Playwright]:
    async with playwright_api.async_playwright() as playwright:
        yield playwright


#: Where the tests leave screenshots and captured SDP for CI to keep (git-ignored).
ARTIFACTS = pathlib.Path(__file__).resolve().parents[3] / "test-artifacts"


@pytest.fixture
def artifacts() -> pathlib.Path:
    """Where screenshots go: ``$SALON_ARTIFACTS`` if set, else ``test-artifacts/`` at the repo root."""
    path = pathlib.Path(os.environ.get("SALON_ARTIFACTS") or ARTIFACTS)
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
async def browser(
    pw: playwright_api.Playwright, artifacts: pathlib.Path
) -> AsyncIterator[playwright_api.Browser]:
    browser = await launch(pw)
    # The interop notes of docs/browser-sdk.md name the Chromium they were checked against.
    (artifacts / "chromium-version.txt").write_text(f"Chromium {browser.version}\n")
    yield browser
    await browser.close()
