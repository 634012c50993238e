"""Shaped-link end-to-end tests: the server in a namespace of its own, each client in another.

Everything runs inside a :class:`~salon.bench.netlab.NetLab` the test builds: ``salon serve``
in the hub (listening on :attr:`NetLab.server_address` only), Python SDK clients as
:mod:`salon.bench.quality_agent` processes in leaves whose links the test shapes. The test
process itself talks to the server (REST) over the lab's control link.
"""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import opentok
import playwright.async_api as playwright_api
import pytest

from salon.bench.netlab import NetLab, NetLabError
from salon.bench.quality_agent import AgentProcess
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
            # The SFU at a higher CPU priority than the clients sharing this host: in production
            # it has a machine of its own, here its scheduling delays behind a busy Chromium and
            # Python decoders would read as queueing on the publisher's uplink (a delay-based
            # overuse) and cut the REMB that lets Chromium send its upper layers.
            prefix=lab.command("hub", ["nice", "-n", "-10"]),
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


class Agent(AgentProcess):
    """A quality agent in a leaf, connected to the hub server's session."""

    def __init__(self, lab: NetLab, leaf: str, server: HubServer, session_id: str, *extra: str) -> None:
        super().__init__(lab, leaf, server.url, session_id, server.token(session_id), *extra)


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
    Like the server, it runs at a higher CPU priority than the Python clients: its pacer
    stamps abs-send-time before its network thread sends, and on a shared host the delays
    between the two read, at the SFU, as queueing on its uplink (an overuse that cuts the
    REMB and with it Chromium's upper layers).
    """
    from tests.e2e.browser.browser_helpers import BASE_ARGS, CHROMIUM, FAKE_UI

    wrapper = lab.wrapper(leaf, f"nice -n -10 {CHROMIUM}", tmp_path)
    args = [*BASE_ARGS, FAKE_UI, f"--unsafely-treat-insecure-origin-as-secure={server.url}"]
    return await pw.chromium.launch(executable_path=str(wrapper), headless=True, args=args)


#: The page script that connects and publishes Chromium's fake camera at 1280x720 (three
#: simulcast layers), called with ``{sessionId, token}``; the publisher is ``window.publisher``.
PUBLISH = """async ({sessionId, token}) => {
    const session = window.salon.initSession(sessionId);
    await session.connect(token);
    const publisher = window.salon.initPublisher(document.body,
        {name: "chromium", resolution: "1280x720", frameRate: 30});
    await session.publish(publisher);
    window.publisher = publisher;
}"""


@pytest.fixture
async def pw() -> AsyncIterator[playwright_api.Playwright]:
    async with playwright_api.async_playwright() as playwright:
        yield playwright
