"""A project whose tests run their coroutines themselves: asyncio.run, asyncio.Runner,
asyncio.new_event_loop, and coroutine tests run by conftest's own hook, with no pytest plugin
for asyncio."""

import asyncio
import sys

import pytest
import samplelib


async def main(label):
    samplelib.record(label)


def test_asyncio_run():
    asyncio.run(main("asyncio.run"))


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.Runner is 3.11+")
def test_runner():
    with asyncio.Runner() as runner:
        runner.run(main("asyncio.Runner"))


def test_new_event_loop():
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(main("new_event_loop"))
    finally:
        loop.close()


@pytest.mark.ferroloop_both
def test_marked_both():
    asyncio.run(main("asyncio.run, marked ferroloop_both"))


async def test_coroutine_run_by_conftest_hook():
    samplelib.record("coroutine test, conftest hook")
