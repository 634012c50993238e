"""Fixtures for the browser tests: the real server, and the system Chromium driven by Playwright.

Chromium is Debian's (``/usr/bin/chromium``, installed by ``scripts/test``); Playwright's own
browser downloads are never used. The fake camera shows a moving pattern, the fake microphone
a beep; ``--allow-loopback-in-peer-connection`` makes Chromium gather 127.0.0.1 candidates.
"""

from __future__ import annotations

import os
import pathlib
import re
from collections.abc import AsyncIterator, Iterator

import playwright.async_api as playwright_api  # missing: the suite fails, never skips
import pytest
from browser_helpers import PAGE_ERRORS, launch

from tests.conftest import API_KEY, API_SECRET, RunningServer, start_server


@pytest.fixture
def allowed_page_errors() -> list[str]:
    """Regular expressions of the console errors and page errors a test expects (append to it);
    any other fails the test (see :func:`page_errors`)."""
    return []


@pytest.fixture(autouse=True)
def page_errors(allowed_page_errors: list[str]) -> Iterator[list[str]]:
    """Fail the test on a console error or an uncaught exception of its pages that
    ``allowed_page_errors`` does not match."""
    PAGE_ERRORS.clear()
    yield PAGE_ERRORS
    unexpected = [e for e in PAGE_ERRORS if not any(re.search(p, e) for p in allowed_page_errors)]
    PAGE_ERRORS.clear()
    if unexpected:
        pytest.fail("unexpected errors in the page:\n" + "\n".join(unexpected), pytrace=False)


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
