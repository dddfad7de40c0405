"""anyio with a parametrized anyio_backend fixture (one asyncio backend with options)."""

import asyncio

import pytest
import samplelib


@pytest.fixture(params=[pytest.param(("asyncio", {"debug": True}), id="asyncio-debug")])
def anyio_backend(request):
    return request.param


@pytest.mark.anyio
async def test_debug_backend():
    samplelib.record("test")
    assert asyncio.get_running_loop().get_debug()
