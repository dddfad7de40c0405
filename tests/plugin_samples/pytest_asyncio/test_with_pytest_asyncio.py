"""A project tested with pytest-asyncio (strict mode)."""

import asyncio

import pytest
import pytest_asyncio
import samplelib


# First: under --ferroloop=both it runs (once) with ferroloop's policy and sets up
# pytest-asyncio's session-wide event_loop_policy fixture, which must still be asyncio's for the
# [asyncio] tests after it.
def test_sync_asyncio_run():
    async def main():
        samplelib.record("asyncio.run in a sync test")

    asyncio.run(main())


@pytest_asyncio.fixture
async def fixture_loop():
    samplelib.record("async fixture")
    yield asyncio.get_running_loop()


@pytest.mark.asyncio
async def test_marked(fixture_loop):
    samplelib.record("test")
    assert fixture_loop is asyncio.get_running_loop()


@pytest.mark.asyncio
@pytest.mark.parametrize("n", [1, 2])
async def test_parametrized(n):
    samplelib.record("test")
    await asyncio.sleep(0)


class TestInClass:
    @pytest.mark.asyncio
    async def test_method(self):
        samplelib.record("test")
        # A loop made by asyncio in a thread of the test: from the policy of the test's loop.
        loop = await asyncio.get_running_loop().run_in_executor(None, asyncio.new_event_loop)
        samplelib.record("new_event_loop in a thread", loop)
        loop.close()
