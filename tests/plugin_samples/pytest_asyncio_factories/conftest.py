import asyncio

import samplelib


def pytest_asyncio_loop_factories(config, item):
    """The project's own loops (pytest-asyncio 1.4+)."""
    return {"selector": asyncio.SelectorEventLoop}


def pytest_sessionfinish(session):
    samplelib.record_session_end()
