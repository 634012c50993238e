"""Fixtures for the media-plane end-to-end tests: loopback-only ICE and a Router."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from salon.media.loopback import host_addresses
from salon.media.router import Router


@pytest.fixture(autouse=True)
def loopback_only() -> Iterator[None]:
    """aiortc clients gather on 127.0.0.1 only (the SFU transports do so by configuration)."""
    with host_addresses(["127.0.0.1"]):
        yield


@pytest.fixture
async def router() -> AsyncIterator[Router]:
    router = Router()
    try:
        yield router
    finally:
        await router.close()
