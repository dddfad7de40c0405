"""The servers people deploy asyncio with, run for real on ferroloop (docs/servers.md).

Each test starts the server as an operator would (its command line, in its own process group),
asks it over real HTTP which loop it runs on (``tests/server_apps``: the app answers
``type(asyncio.get_running_loop())``), and then either talks websocket to it or stops it with
SIGINT/SIGTERM while a slow request (``/slow``, ~1 s) is in flight: that request must complete
(200, the whole body) and the process must exit with the code it gives on asyncio's own loop.
Every test also runs with the server on asyncio's loop (``[asyncio]``): the reference the
ferroloop run is compared with (same expected exit code, same behaviour). Servers that are not
installed are skipped; ``scripts/test`` installs them.
"""

import asyncio
import http.client
import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

import ferroloop

APPS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "server_apps")
sys.path.insert(0, APPS)
from asgi_app import body_bytes  # noqa: E402 (from the apps' directory)

sys.path.remove(APPS)

START_TIMEOUT = 30.0  # a cold start of a server process on a loaded 2-core machine
EXIT_TIMEOUT = 30.0
REQUEST_TIMEOUT = 30.0

SERVERS = ("uvicorn", "hypercorn", "gunicorn", "aiohttp")
LOOPS = ("asyncio", "ferroloop")

# What each server needs installed (all must be importable by this Python).
REQUIREMENTS = {
    "uvicorn": ("uvicorn",),
    "hypercorn": ("hypercorn",),
    "gunicorn": ("gunicorn", "uvicorn"),
    "aiohttp": ("aiohttp",),
}

# The exit code of each server stopped by each signal, measured on asyncio's loop (the
# [asyncio] runs of test_signal_mid_request check that they still hold). uvicorn re-raises the
# signal it caught once it has shut down: SIGTERM then ends the process (-15) and SIGINT is a
# KeyboardInterrupt that its command line turns into exit 0.
EXIT_CODES = {
    ("uvicorn", signal.SIGINT): 0,
    ("uvicorn", signal.SIGTERM): -signal.SIGTERM,
    ("hypercorn", signal.SIGINT): 0,
    ("hypercorn", signal.SIGTERM): 0,
    ("gunicorn", signal.SIGINT): 0,
    ("gunicorn", signal.SIGTERM): 0,
    ("aiohttp", signal.SIGINT): 0,
    ("aiohttp", signal.SIGTERM): 0,
}


def expected_loop_class(loop_name):
    if loop_name == "ferroloop":
        cls = ferroloop.Loop
    else:
        loop = asyncio.DefaultEventLoopPolicy().new_event_loop()
        cls = type(loop)
        loop.close()
    return f"{cls.__module__}.{cls.__qualname__}"


def missing(server):
    return [m for m in REQUIREMENTS[server] if importlib.util.find_spec(m) is None]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gunicorn_options():
    from gunicorn import config

    options = ["--log-level", "warning"]
    if any(s.name == "control_socket_disable" for s in config.KNOWN_SETTINGS):
        # gunicorn 25+: without this, every gunicorn on the machine shares ~/.gunicorn/*.ctl
        options.append("--no-control-socket")
    return options


def server_command(server, loop_name, port):
    """The command line an operator would type (docs/servers.md), for ``loop_name``."""
    py = sys.executable
    if server == "uvicorn":
        loop = "ferroloop:new_event_loop" if loop_name == "ferroloop" else "asyncio"
        return [py, "-m", "uvicorn", "--host", "127.0.0.1", "--port", str(port),
                "--loop", loop, "--log-level", "warning", "asgi_app:app"]  # fmt: skip
    if server == "hypercorn":
        prefix = [py, "-m", "ferroloop"] if loop_name == "ferroloop" else [py]
        return [*prefix, "-m", "hypercorn", "--workers", "0", "--graceful-timeout", "10",
                "-b", f"127.0.0.1:{port}", "asgi_app:app"]  # fmt: skip
    if server == "gunicorn":
        worker = (
            "ferroloop.gunicorn.UvicornWorker"
            if loop_name == "ferroloop"
            else "gunicorn_workers.AsyncioUvicornWorker"
        )
        return [py, "-m", "gunicorn", "-k", worker, "-w", "1", "-b", f"127.0.0.1:{port}",
                "--graceful-timeout", "4", *gunicorn_options(), "asgi_app:app"]  # fmt: skip
    if server == "aiohttp":
        return [py, os.path.join(APPS, "aiohttp_app.py"), str(port), loop_name]
    raise ValueError(server)


class Server:
    """A server process in its own process group, killed (with the whole group) if the test
    leaves it running."""

    def __init__(self, server, loop_name, tmp_path):
        self.port = free_port()
        self.marker = str(tmp_path / "slow-started")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [APPS, env.get("PYTHONPATH")]))
        env["SERVER_TEST_MARKER"] = self.marker
        env.pop("PYTHONASYNCIODEBUG", None)  # the servers as deployed, not in debug mode
        self.output_path = tmp_path / "server-output.txt"
        self._output = open(self.output_path, "wb")
        self.proc = subprocess.Popen(
            server_command(server, loop_name, self.port),
            cwd=APPS,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self):
        self._output.flush()
        return self.output_path.read_text(errors="replace")

    def get(self, path, timeout=REQUEST_TIMEOUT):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def wait_ready(self):
        """Wait until the server answers /loop; return the loop class it reports, or None if
        the server could not bind its port (taken since free_port() saw it free)."""
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                if re.search("(?i)address already in use|connection in use", self.output()):
                    return None
                pytest.fail(f"the server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                status, body = self.get("/loop", timeout=5)
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"the server did not answer in {START_TIMEOUT} s:\n{self.output()}")
                time.sleep(0.05)
                continue
            assert status == 200, body
            return body.decode()

    def group_alive(self):
        try:
            os.killpg(self.proc.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def close(self):
        if self.proc.poll() is None or self.group_alive():
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=EXIT_TIMEOUT)
        self._output.close()


@pytest.fixture(params=LOOPS)
def server_loop(request):
    return request.param


@pytest.fixture
def start_server(server_loop, tmp_path):
    servers = []

    def start(server):
        absent = missing(server)
        if absent:
            pytest.skip(f"{server} is not installed (no module {', '.join(absent)})")
        for _attempt in range(3):
            s = Server(server, server_loop, tmp_path)
            servers.append(s)
            s.loop_class = s.wait_ready()
            if s.loop_class is not None:
                return s
        pytest.fail(f"three ports in a row were taken before {server} could bind them")

    yield start
    for s in servers:
        s.close()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("server", SERVERS)
def test_signal_mid_request(start_server, server_loop, server, sig):
    srv = start_server(server)
    assert srv.loop_class == expected_loop_class(server_loop)
    status, body = srv.get("/loop")
    assert (status, body.decode()) == (200, expected_loop_class(server_loop))

    result = {}

    def slow_request():
        try:
            result["response"] = srv.get("/slow")
        except Exception as exc:  # reported by the assertion below
            result["error"] = exc

    client = threading.Thread(target=slow_request)
    client.start()
    try:
        deadline = time.monotonic() + REQUEST_TIMEOUT
        while not os.path.exists(srv.marker):
            assert time.monotonic() < deadline, "the slow request never reached the app"
            assert srv.proc.poll() is None, srv.output()
            time.sleep(0.01)
        # The request is in the app's asyncio.sleep(1): stop the server as an operator would.
        os.kill(srv.proc.pid, sig)
    finally:
        client.join(REQUEST_TIMEOUT + 5)
    assert not client.is_alive()
    assert "error" not in result, f"{result.get('error')!r}\n{srv.output()}"
    status, body = result["response"]
    assert status == 200
    assert len(body) == len(body_bytes()) and body == body_bytes()

    try:
        returncode = srv.proc.wait(timeout=EXIT_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the server did not exit after {sig.name}:\n{srv.output()}")
    output = srv.output()
    assert returncode == EXIT_CODES[server, sig], output
    assert "Traceback" not in output, output
    # No worker or child left behind in the server's process group.
    deadline = time.monotonic() + 10
    while srv.group_alive():
        assert time.monotonic() < deadline, "processes of the server outlived it"
        time.sleep(0.05)


@pytest.mark.parametrize("server", SERVERS)
def test_websocket(start_server, server_loop, server):
    pytest.importorskip("websockets", reason="the websocket client (websockets) is not installed")
    from websockets.sync.client import connect

    srv = start_server(server)
    with connect(f"ws://127.0.0.1:{srv.port}/ws", open_timeout=10, close_timeout=10) as ws:
        assert ws.recv(timeout=10) == expected_loop_class(server_loop)
        ws.send("hello")
        assert ws.recv(timeout=10) == "hello"
        payload = bytes(range(256)) * 400  # 100 KiB: several reads on the server
        ws.send(payload)
        assert ws.recv(timeout=10) == payload
    os.kill(srv.proc.pid, signal.SIGTERM)
    srv.proc.wait(timeout=EXIT_TIMEOUT)
