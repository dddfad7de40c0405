"""``transport.max_size``, the most one read asks for: asyncio's class attribute, which an
instance or a class may override, on stream and datagram transports of both loops.

ferroloop's slotted transports read it without a generic lookup until some transport has its
own value (``net/max_size.rs``); from then on the whole process takes the generic lookup. Each
case therefore runs in a fresh interpreter, so that the first override it makes is the
process's first, and the rest of the test run keeps the fast read."""

import json

import pytest

from conftest import LOOP_NAMES, run_python

SCRIPT = """
import asyncio, json, socket, sys

import ferroloop

CASE, LOOP = sys.argv[1], sys.argv[2]
out = {}


class Recorder(asyncio.Protocol):
    def __init__(self):
        self.chunks = []

    def data_received(self, data):
        self.chunks.append(bytes(data))


class Datagrams(asyncio.DatagramProtocol):
    def __init__(self):
        self.chunks = []

    def datagram_received(self, data, addr):
        self.chunks.append(bytes(data))


async def chunks(transport, proto, a, data):
    del proto.chunks[:]
    a.send(data)
    await asyncio.sleep(0.05)
    return [c.decode() for c in proto.chunks]


async def stream_instance():
    proto = Recorder()
    a, b = socket.socketpair()
    transport, _ = await loop.create_connection(lambda: proto, sock=b)
    out["default"] = transport.max_size
    out["class"] = type(transport).max_size
    out["whole"] = await chunks(transport, proto, a, b"abcdefgh")
    transport.max_size = 3
    out["own"] = transport.max_size
    out["in vars"] = vars(transport)["max_size"]
    out["by three"] = await chunks(transport, proto, a, b"abcdefgh")
    del transport.max_size
    out["after del"] = transport.max_size
    out["whole again"] = await chunks(transport, proto, a, b"abcdefgh")
    try:
        del transport.max_size
    except AttributeError:
        out["second del"] = "AttributeError"
    # Another transport made after the override reads the class's value.
    other = Recorder()
    c, d = socket.socketpair()
    second, _ = await loop.create_connection(lambda: other, sock=d)
    transport.max_size = 2
    out["second transport"] = await chunks(second, other, c, b"abcdefgh")
    out["first transport"] = await chunks(transport, proto, a, b"abcdef")
    for t in (transport, second):
        t.close()
    a.close()
    c.close()
    await asyncio.sleep(0.01)


async def stream_class():
    proto = Recorder()
    a, b = socket.socketpair()
    transport, _ = await loop.create_connection(lambda: proto, sock=b)
    cls = type(transport)
    cls.max_size = 3
    try:
        out["patched"] = transport.max_size
        out["by three"] = await chunks(transport, proto, a, b"abcdefgh")
    finally:
        del cls.max_size
    out["restored"] = transport.max_size
    out["whole"] = await chunks(transport, proto, a, b"abcdefgh")
    transport.close()
    a.close()
    await asyncio.sleep(0.01)


async def datagram(patch_class):
    proto = Datagrams()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: proto, local_addr=("127.0.0.1", 0)
    )
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    address = transport.get_extra_info("sockname")

    async def received(data):
        del proto.chunks[:]
        s.sendto(data, address)
        await asyncio.sleep(0.05)
        return [c.decode() for c in proto.chunks]

    out["whole"] = await received(b"abcdefgh")
    cls = type(transport)
    if patch_class:
        cls.max_size = 4
    else:
        transport.max_size = 4
    try:
        out["truncated"] = await received(b"abcdefgh")
    finally:
        if patch_class:
            del cls.max_size
        else:
            del transport.max_size
    out["whole again"] = await received(b"abcdefgh")
    s.close()
    transport.close()
    await asyncio.sleep(0.01)


CASES = {
    "stream_instance": stream_instance,
    "stream_class": stream_class,
    "datagram_instance": lambda: datagram(False),
    "datagram_class": lambda: datagram(True),
}
loop = ferroloop.new_event_loop() if LOOP == "ferroloop" else asyncio.new_event_loop()
loop.run_until_complete(CASES[CASE]())
loop.close()
print(json.dumps(out))
"""


def run_case(case, loop_name):
    result = run_python(SCRIPT, case, loop_name)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def same_on_both_loops(case):
    """The case's observations on each loop, checked to agree (the caller checks the values)."""
    results = {name: run_case(case, name) for name in LOOP_NAMES}
    first, *rest = results.values()
    for other in rest:
        assert other == first, results
    return first


DEFAULT = 256 * 1024


def test_instance_max_size_set_and_deleted():
    seen = same_on_both_loops("stream_instance")
    assert seen == {
        "default": DEFAULT,
        "class": DEFAULT,
        "whole": ["abcdefgh"],
        "own": 3,
        "in vars": 3,
        "by three": ["abc", "def", "gh"],
        "after del": DEFAULT,
        "whole again": ["abcdefgh"],
        "second del": "AttributeError",
        "second transport": ["abcdefgh"],
        "first transport": ["ab", "cd", "ef"],
    }


def test_class_max_size_patched():
    seen = same_on_both_loops("stream_class")
    assert seen == {
        "patched": 3,
        "by three": ["abc", "def", "gh"],
        "restored": DEFAULT,
        "whole": ["abcdefgh"],
    }


@pytest.mark.parametrize("case", ["datagram_instance", "datagram_class"])
def test_datagram_max_size(case):
    seen = same_on_both_loops(case)
    assert seen == {
        "whole": ["abcdefgh"],
        "truncated": ["abcd"],
        "whole again": ["abcdefgh"],
    }
