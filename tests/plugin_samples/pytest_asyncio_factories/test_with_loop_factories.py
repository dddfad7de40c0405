"""A pytest-asyncio project that names its loops with the pytest_asyncio_loop_factories hook."""

import pytest
import samplelib


@pytest.mark.asyncio
async def test_every_factory():
    samplelib.record("test")


@pytest.mark.asyncio(loop_factories=["selector"])
async def test_selected_factory():
    samplelib.record("test")
