"""Shared fixtures: every behavioural test runs on asyncio's own loop and on ferroloop.

``loop``          a fresh loop (``[asyncio]`` / ``[ferroloop]`` in the test id), closed after the
                  test; a recording exception handler is installed and the test fails if anything
                  reached it, unless the test is marked ``expect_errors`` (then it reads the
                  records through the ``loop_errors`` fixture).
``loop_factory``  the factory itself, for tests that need several loops; loops it creates are
                  closed after the test.
"""

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import textwrap

import pytest

import ferroloop

# Sample projects that tests/test_pytest_plugin.py runs in a pytest of their own.
collect_ignore = ["plugin_samples"]

LOOP_NAMES = ("asyncio", "ferroloop")


def asyncio_loop():
    """asyncio's loop as the default policy makes it (independent of any installed policy)."""
    return asyncio.DefaultEventLoopPolicy().new_event_loop()


FACTORIES = {"asyncio": asyncio_loop, "ferroloop": ferroloop.new_event_loop}


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "nodebug: the test is about behaviour outside debug mode; PYTHONASYNCIODEBUG is "
        "cleared for it (the suite also runs with PYTHONASYNCIODEBUG=1)",
    )
    config.addinivalue_line(
        "markers", "expect_errors: the test expects calls of the loop's exception handler"
    )


class _Factory:
    def __init__(self, name):
        self.name = name
        self.loops = []

    def __call__(self):
        loop = FACTORIES[self.name]()
        self.loops.append(loop)
        return loop

    def __repr__(self):
        return f"<loop factory {self.name}>"

    def close_all(self):
        for loop in self.loops:
            if not loop.is_running() and not loop.is_closed():
                loop.close()


@pytest.fixture(params=LOOP_NAMES)
def loop_name(request):
    return request.param


@pytest.fixture
def loop_factory(loop_name):
    factory = _Factory(loop_name)
    yield factory
    factory.close_all()
    asyncio.set_event_loop(None)


@pytest.fixture
def loop(request, loop_factory):
    loop = loop_factory()
    errors = []

    def handler(lp, context):
        errors.append(context)

    loop.set_exception_handler(handler)
    loop._test_errors = errors
    yield loop
    if not loop.is_closed():
        # Let finished work settle (e.g. callbacks queued by done futures) then close.
        loop.close()
    asyncio.set_event_loop(None)
    if request.node.get_closest_marker("expect_errors") is None:
        assert errors == [], f"unexpected exception handler calls: {errors!r}"


@pytest.fixture
def loop_errors(loop):
    return loop._test_errors


def is_ferroloop(loop):
    return isinstance(loop, ferroloop.Loop)


def ticker(loop, trace, n):
    """Record ``("tick", i)`` in ``trace`` once per loop iteration, ``n`` times: a clock of
    iterations for tests of callback order."""
    count = [0]

    def tick():
        trace.append(("tick", count[0]))
        count[0] += 1
        if count[0] < n:
            loop.call_soon(tick)

    loop.call_soon(tick)


def socket_pair():
    """A connected pair of non-blocking Unix stream sockets."""
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    return a, b


def tcp_pair():
    """A connected pair of non-blocking TCP sockets over loopback: (client, server)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    listener.close()
    client.setblocking(False)
    server.setblocking(False)
    return client, server


def active_connections(server):
    """The number of connections an ``asyncio.Server`` holds (a set of transports from 3.13,
    a count before)."""
    clients = getattr(server, "_clients", None)
    return len(clients) if clients is not None else server._active_count


def run_python(code, *args, env=None, timeout=30, input=None, xargs=()):
    """Run ``code`` in a fresh interpreter; return the CompletedProcess (text mode)."""
    full_env = dict(os.environ)
    full_env.pop("PYTHONASYNCIODEBUG", None)
    full_env.pop("PYTHONDEVMODE", None)
    if env:
        full_env.update(env)
    return subprocess.run(
        [sys.executable, *xargs, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        input=input,
        cwd="/tmp",
    )


@pytest.fixture(autouse=True)
def _nodebug(request, monkeypatch):
    """Tests marked ``nodebug`` run with asyncio's debug mode off, whatever the environment."""
    if request.node.get_closest_marker("nodebug"):
        monkeypatch.delenv("PYTHONASYNCIODEBUG", raising=False)


@pytest.fixture(scope="session")
def tls_cert_dir(tmp_path_factory):
    """A directory with a self-signed certificate for localhost: cert.pem and key.pem."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is needed to make a self-signed certificate")
    path = tmp_path_factory.mktemp("tls-cert")
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
         "-keyout", str(path / "key.pem"), "-out", str(path / "cert.pem")],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return str(path)
