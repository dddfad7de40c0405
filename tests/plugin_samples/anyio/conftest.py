import pytest
import samplelib


@pytest.fixture
def anyio_backend():
    return "asyncio"


def pytest_sessionfinish(session):
    samplelib.record_session_end()
