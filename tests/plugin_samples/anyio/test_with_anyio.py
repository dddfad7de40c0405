"""A project tested with anyio's pytest plugin, its backend from conftest's anyio_backend."""

import asyncio

import pytest
import samplelib

pytestmark = pytest.mark.anyio


@pytest.fixture
async def fixture_loop():
    samplelib.record("async fixture")
    yield asyncio.get_running_loop()


async def test_marked(fixture_loop):
    samplelib.record("test")
    assert fixture_loop is asyncio.get_running_loop()


async def test_backend_name(anyio_backend_name):
    samplelib.record("test")
    assert anyio_backend_name == "asyncio"
