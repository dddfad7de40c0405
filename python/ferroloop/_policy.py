"""The event loop policy that ``ferroloop.install()`` sets."""

import asyncio

__all__ = ("EventLoopPolicy",)


class EventLoopPolicy(asyncio.DefaultEventLoopPolicy):
    """asyncio's default policy (one loop per thread, child watchers), with ferroloop loops."""

    def _loop_factory(self) -> asyncio.AbstractEventLoop:
        from . import new_event_loop

        return new_event_loop()

    def __repr__(self) -> str:
        return f"<{type(self).__module__}.{type(self).__qualname__}>"
