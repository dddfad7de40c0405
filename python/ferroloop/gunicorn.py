"""A gunicorn worker: uvicorn's worker on ferroloop.

    gunicorn -k ferroloop.gunicorn.UvicornWorker app:app

It is the ``UvicornWorker`` of the ``uvicorn-worker`` package (or, without that package,
uvicorn's own deprecated ``uvicorn.workers``) with ``--loop ferroloop:new_event_loop``; HTTP
and websocket protocols are chosen by uvicorn as usual. Needs uvicorn 0.36 or later (earlier
versions take no loop factory).
"""

try:
    from uvicorn_worker import UvicornWorker as _UvicornWorker
except ImportError:
    from uvicorn.workers import UvicornWorker as _UvicornWorker

__all__ = ("UvicornWorker",)


class UvicornWorker(_UvicornWorker):
    """uvicorn's gunicorn worker, running its server on a ferroloop loop."""

    CONFIG_KWARGS = {**_UvicornWorker.CONFIG_KWARGS, "loop": "ferroloop:new_event_loop"}
