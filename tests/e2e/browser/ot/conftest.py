"""Fixtures for the OpenTok.js apps: the apps' own web server, on another origin than salon's.

The apps in ``apps/`` are written as the OpenTok.js documentation writes them: their page
loads ``<script src="SALON/v2/js/opentok.js">`` and uses the global ``OT``. They are served
the way a customer serves them, by the application's web server (here a small static server
on 127.0.0.1), so the script and salon's signalling are cross-origin as in a real migration.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from otapp_helpers import AppServer

from tests.conftest import RunningServer


@pytest.fixture
def app_server(media_server: RunningServer) -> Iterator[AppServer]:
    with AppServer(media_server.url) as apps:
        yield apps
