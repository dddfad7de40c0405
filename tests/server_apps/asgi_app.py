"""A raw ASGI application for the server integration tests (tests/test_servers.py).

GET /loop      the running loop's class, ``module.qualname`` (which loop the server runs on)
GET /slow      creates the file ``$SERVER_TEST_MARKER`` (the request is in flight), sleeps
               ``SLOW_SECONDS`` and answers ``SLOW_BODY_SIZE`` bytes of ``body_bytes()``
websocket /ws  sends the loop's class, then echoes every message
"""

import asyncio
import os

SLOW_SECONDS = 1.0
SLOW_BODY_SIZE = 256 * 1024


def body_bytes(size=SLOW_BODY_SIZE):
    """A body the client can check byte for byte (a truncated response shows)."""
    line = b"0123456789abcdefghijklmnopqrstuvwxyz\n"
    return (line * (size // len(line) + 1))[:size]


def loop_name():
    loop = asyncio.get_running_loop()
    return f"{type(loop).__module__}.{type(loop).__qualname__}"


async def _lifespan(receive, send):
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _respond(send, status, body, content_type=b"text/plain"):
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _websocket(receive, send):
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.send", "text": loop_name()})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") is not None:
            await send({"type": "websocket.send", "text": message["text"]})
        else:
            await send({"type": "websocket.send", "bytes": message["bytes"]})


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
    elif scope["type"] == "websocket":
        await _websocket(receive, send)
    elif scope["path"] == "/loop":
        await _respond(send, 200, loop_name().encode())
    elif scope["path"] == "/slow":
        with open(os.environ["SERVER_TEST_MARKER"], "w"):
            pass
        await asyncio.sleep(SLOW_SECONDS)
        await _respond(send, 200, body_bytes())
    else:
        await _respond(send, 404, b"not found")
