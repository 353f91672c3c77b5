"""Fixtures for the deploy tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.drivers.deploy.servers import ImageServer, start_image_server, stop_image_server


@pytest.fixture
async def image_server() -> AsyncIterator[ImageServer]:
    state = await start_image_server()
    try:
        yield state
    finally:
        await stop_image_server(state)
