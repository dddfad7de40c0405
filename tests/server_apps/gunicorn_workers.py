"""The reference gunicorn worker for tests/test_servers.py: uvicorn's worker on asyncio's own
loop (uvicorn's default, ``loop="auto"``, would pick uvloop where it is installed)."""

try:
    from uvicorn_worker import UvicornWorker
except ImportError:
    from uvicorn.workers import UvicornWorker


class AsyncioUvicornWorker(UvicornWorker):
    CONFIG_KWARGS = {**UvicornWorker.CONFIG_KWARGS, "loop": "asyncio"}
