"""One benchmark server on one event loop (driven by run.py; see README.md).

    python servers.py --loop {asyncio,uvloop,rloop,rsloop,ferroloop} --workload W \
        --addr 127.0.0.1:PORT|/path/to.sock [--cert cert.pem --key key.pem]

Prints READY (flushed) once listening, then serves until SIGTERM / SIGINT (default actions:
the process just ends).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import resource
import signal
import socket
import sys

# The very same bytes as loadgen's floor server (loadgen/src/main.rs HTTP_RESPONSE).
HTTP_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\nHello, World!"

WORKLOADS = (
    "tcp_protocol",
    "unix_protocol",
    "streams",
    "sock",
    "udp",
    "http",
    "churn",
    "storm",
    "idle",
    "tls_protocol",
    "tls_streams",
)


def new_loop(name: str) -> asyncio.AbstractEventLoop:
    if name == "asyncio":
        return asyncio.new_event_loop()
    return importlib.import_module(name).new_event_loop()


class EchoProtocol(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


class EchoDatagram(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.transport.sendto(data, addr)


def http_protocol_class():
    import httptools

    class HttpProtocol(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport
            self.parser = httptools.HttpRequestParser(self)

        def data_received(self, data):
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserError:
                self.transport.close()

        def on_message_complete(self):
            self.transport.write(HTTP_RESPONSE)

    return HttpProtocol


async def stream_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


STEP = "loop creation"


def parse_addr(addr: str):
    if "/" in addr:
        return None, addr
    host, _, port = addr.rpartition(":")
    return (host.strip("[]"), int(port)), None


async def serve(loop, workload: str, addr: str, cert: str | None, key: str | None):
    inet, path = parse_addr(addr)
    ssl_ctx = None
    if workload.startswith("tls_"):
        import ssl

        ssl_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_ctx.load_cert_chain(cert, key)
    keep = []  # servers / transports / tasks kept alive
    global STEP

    if workload in ("tcp_protocol", "churn", "idle", "tls_protocol"):
        STEP = "loop.create_server(ssl=...)" if ssl_ctx else "loop.create_server()"
        keep.append(await loop.create_server(EchoProtocol, *inet, ssl=ssl_ctx))
    elif workload == "storm":
        # Hundreds of connections at once: a listen backlog that holds them (asyncio's
        # default of 100 would leave connects waiting for SYN retransmissions).
        STEP = "loop.create_server(backlog=1024)"
        keep.append(await loop.create_server(EchoProtocol, *inet, backlog=1024))
    elif workload == "unix_protocol":
        STEP = "loop.create_unix_server()"
        keep.append(await loop.create_unix_server(EchoProtocol, path))
    elif workload in ("streams", "tls_streams"):
        STEP = "asyncio.start_server(ssl=...)" if ssl_ctx else "asyncio.start_server()"
        keep.append(await asyncio.start_server(stream_echo, *inet, ssl=ssl_ctx))
    elif workload == "http":
        STEP = "loop.create_server() with httptools"
        keep.append(await loop.create_server(http_protocol_class(), *inet))
    elif workload == "udp":
        STEP = "loop.create_datagram_endpoint()"
        transport, _ = await loop.create_datagram_endpoint(EchoDatagram, local_addr=inet)
        keep.append(transport)
    elif workload == "sock":
        family = socket.AF_INET6 if ":" in inet[0] else socket.AF_INET
        lsock = socket.socket(family, socket.SOCK_STREAM)
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lsock.bind(inet)
        lsock.listen(100)
        lsock.setblocking(False)

        async def handle(conn: socket.socket):
            try:
                while True:
                    data = await loop.sock_recv(conn, 65536)
                    if not data:
                        break
                    await loop.sock_sendall(conn, data)
            except (ConnectionError, OSError):
                pass
            finally:
                conn.close()

        async def accept_loop():
            while True:
                conn, _ = await loop.sock_accept(lsock)
                conn.setblocking(False)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                keep.append(loop.create_task(handle(conn)))
                if len(keep) > 1000:
                    keep[:] = [t for t in keep if not (isinstance(t, asyncio.Task) and t.done())]

        STEP = "loop.sock_accept()"
        keep.append(loop.create_task(accept_loop()))
    else:
        raise SystemExit(f"unknown workload {workload!r}")

    print("READY", flush=True)
    await loop.create_future()  # forever


def main():
    global STEP
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--loop", required=True, choices=("asyncio", "uvloop", "rloop", "rsloop", "ferroloop")
    )
    ap.add_argument("--workload", required=True, choices=WORKLOADS)
    ap.add_argument("--addr", required=True)
    ap.add_argument("--cert")
    ap.add_argument("--key")
    a = ap.parse_args()

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    try:
        loop = new_loop(a.loop)
        asyncio.set_event_loop(loop)
        STEP = "server start"
        loop.run_until_complete(serve(loop, a.workload, a.addr, a.cert, a.key))
    except BaseException as e:  # noqa: BLE001 - report why the server could not run
        detail = f": {e}" if str(e) else ""
        print(f"server error in {STEP}: {type(e).__name__}{detail}", file=sys.stderr, flush=True)
        os._exit(3)


if __name__ == "__main__":
    main()
