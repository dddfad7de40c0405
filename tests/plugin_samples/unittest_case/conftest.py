import samplelib


def pytest_sessionfinish(session):
    samplelib.record_session_end()
