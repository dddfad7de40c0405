"""An aiohttp application served with ``web.run_app`` for tests/test_servers.py.

    python aiohttp_app.py PORT asyncio|ferroloop

The routes are those of asgi_app.py (GET /loop, GET /slow, websocket /ws).
"""

import asyncio
import os
import sys

from aiohttp import WSMsgType, web

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from asgi_app import SLOW_SECONDS, body_bytes, loop_name


async def loop_handler(request):
    return web.Response(text=loop_name())


async def slow_handler(request):
    with open(os.environ["SERVER_TEST_MARKER"], "w"):
        pass
    await asyncio.sleep(SLOW_SECONDS)
    return web.Response(body=body_bytes(), content_type="text/plain")


async def ws_handler(request):
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    await ws.send_str(loop_name())
    async for message in ws:
        if message.type == WSMsgType.TEXT:
            await ws.send_str(message.data)
        elif message.type == WSMsgType.BINARY:
            await ws.send_bytes(message.data)
    return ws


def main():
    port, which = int(sys.argv[1]), sys.argv[2]
    app = web.Application()
    app.router.add_get("/loop", loop_handler)
    app.router.add_get("/slow", slow_handler)
    app.router.add_get("/ws", ws_handler)
    if which == "ferroloop":
        import ferroloop

        loop = ferroloop.new_event_loop()  # the documented one-liner: run_app(app, loop=...)
    else:
        loop = asyncio.new_event_loop()
    web.run_app(app, host="127.0.0.1", port=port, loop=loop, print=None, shutdown_timeout=10)


if __name__ == "__main__":
    main()
