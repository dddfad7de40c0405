"""Faults: the loop's system calls fail on purpose, and ferroloop survives them as asyncio does.

Each case runs ``faults_workload.py`` in a fresh interpreter with the fault shim
(``crates/ferroloop-faults``, an ``LD_PRELOAD`` library) and ``FERROLOOP_FAULTS`` set, once on
asyncio's loop and once on ferroloop. Transient faults (``EINTR``, ``EAGAIN`` with data there,
short reads and writes, ``ECONNABORTED`` on accept, spurious ``epoll_wait`` readiness) must
change nothing: every byte arrives once, in order (sizes and SHA-256 compared). Fatal faults
(``ECONNRESET``/``EPIPE`` mid-write or read, ``ENOBUFS`` on ``sendto``, ``EMFILE``/``ENFILE``
on accept, ``ECONNREFUSED``/``ETIMEDOUT`` on connect) must give what asyncio's loop gives:
the same exceptions, ``connection_lost`` arguments and exception-handler calls. Every run:
exit code 0 within its time bound, no panic, no fd left open once the loop is closed and
collected (and already once it was closed, as asyncio's close() closes its selector). See
``docs/faults.md``.

The shim is looked up in ``$FERROLOOP_FAULTS_LIB``, then ``target/release`` and
``target/debug`` of this checkout (``cargo build -p ferroloop-faults --release``); without it
the tests skip, unless ``FERROLOOP_FAULTS_REQUIRED=1`` (``scripts/test`` sets it).
"""

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WORKLOAD = Path(__file__).resolve().parent / "faults_workload.py"
LOOPS = ("asyncio", "ferroloop")
RUN_TIMEOUT = 90  # seconds per run: the workload bounds itself at 40 s


def find_shim():
    candidates = [os.environ.get("FERROLOOP_FAULTS_LIB")]
    candidates += [
        ROOT / "target" / kind / "libferroloop_faults.so" for kind in ("release", "debug")
    ]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return str(candidate)
    return None


SHIM = find_shim()

if SHIM is None:
    if os.environ.get("FERROLOOP_FAULTS_REQUIRED") == "1":
        raise RuntimeError(
            "the fault shim is missing: cargo build -p ferroloop-faults --release "
            "(or set FERROLOOP_FAULTS_LIB)"
        )
    pytestmark = pytest.mark.skip(
        reason="fault shim not built: run `cargo build -p ferroloop-faults --release` "
        "or set FERROLOOP_FAULTS_LIB"
    )
elif not sys.platform.startswith("linux"):
    pytestmark = pytest.mark.skip(reason="the fault shim is Linux-only (LD_PRELOAD, epoll)")


@pytest.fixture(scope="module")
def cert_dir(tls_cert_dir):
    return tls_cert_dir


def run_workload(loop_name, workload, spec, cert=None):
    """Run one workload under the shim; check what every run must satisfy; return its report."""
    env = dict(os.environ)
    env.pop("PYTHONDEVMODE", None)
    env.pop("FERROLOOP_FAULTS_ARM", None)
    env.update(LD_PRELOAD=SHIM, FERROLOOP_FAULTS=spec)
    if cert:
        env["FAULTS_CERT_DIR"] = cert
    seed = spec.split(":")[0]
    proc = subprocess.run(
        [sys.executable, str(WORKLOAD), loop_name, workload, seed],
        capture_output=True, text=True, env=env, timeout=RUN_TIMEOUT, cwd="/tmp", check=False,
    )  # fmt: skip
    where = f"{workload} on {loop_name} with FERROLOOP_FAULTS={spec}"
    assert "panicked" not in proc.stderr, f"{where}: a panic\n{proc.stderr}"
    assert proc.returncode == 0, f"{where}: exit {proc.returncode}\n{proc.stderr[-4000:]}"
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["fds_after_close"] == report["fds_before"], f"{where}: fds open: {report}"
    assert report["fds_after"] == report["fds_before"], f"{where}: fds leaked: {report}"
    return report


# --------------------------------------------------------------------------------------------
# Transient faults: the same bytes as without faults

TRANSIENT_EXPECTED = {
    "proto_tcp": [[300_000, True]] * 3,
    "proto_unix": [[300_000, True]] * 3,
    "streams_tcp": [[200_000, True]] * 3,
    "streams_unix": [[200_000, True]] * 3,
    "tls": [[200_000, True]] * 3,
    "sock_tcp": [[200_000, True]] * 3,
    "sock_unix": [[200_000, True]] * 3,
    "udp": [300, True, True, []],
    "pipes": [500_000, True, None],
    "subprocess": [[300_000, True, 0]] * 2,
}

# A mix (one call in ten faulted) and a storm (one in two): every call, every transient fault.
TRANSIENT_SPECS = {"mix": "{seed}:0.1:all", "storm": "{seed}:0.5:all"}

# The calls each workload must see faulted (what makes the test able to fail): one call of
# each group at least.
FAULTED_CALLS = {
    "udp": (("recvfrom",), ("sendto", "send")),
    "pipes": (("read", "write"),),
    "subprocess": (("read", "write"),),
}


@pytest.mark.parametrize("intensity", sorted(TRANSIENT_SPECS))
@pytest.mark.parametrize("workload", sorted(TRANSIENT_EXPECTED))
@pytest.mark.parametrize("loop_name", LOOPS)
def test_transient_faults_change_nothing(loop_name, workload, intensity, request):
    cert = request.getfixturevalue("cert_dir") if workload == "tls" else None
    seed = 1 + sorted(TRANSIENT_EXPECTED).index(workload)
    spec = TRANSIENT_SPECS[intensity].format(seed=seed)
    report = run_workload(loop_name, workload, spec, cert)
    assert report["outcome"] == TRANSIENT_EXPECTED[workload], report
    assert report["errors"] == [], report
    faulted = {name.split(".")[0] for name in report["faults"]}
    assert faulted, f"no fault injected: {report['faults']}"
    if intensity == "mix" and workload not in FAULTED_CALLS:
        # One call in ten: a stream workload may make few enough reads (3.10's TLS reads
        # 256 KiB at a time) that none is faulted; the storm checks each group.
        return
    for group in FAULTED_CALLS.get(workload, (("recv", "recvmsg"), ("send", "sendmsg"))):
        assert faulted & set(group), f"no fault injected on {group}: {report['faults']}"
    if intensity == "storm":
        kinds = {name.split(".")[1] for name in report["faults"]}
        assert {"EINTR", "EAGAIN", "spurious"} <= kinds, report["faults"]


# --------------------------------------------------------------------------------------------
# Fatal faults: what asyncio's loop gives

RESET = ["ConnectionResetError", errno.ECONNRESET]

FATAL_CASES = {
    # name: (workload, FERROLOOP_FAULTS, a fact the outcome must contain)
    "send_reset_client": (
        "proto_lockstep", "1:0:send=ECONNRESET@3", ("client_lost", RESET),
    ),
    "send_epipe_server": (
        "proto_lockstep", "1:0:send=EPIPE@4", ("server_lost", [["BrokenPipeError", errno.EPIPE]]),
    ),
    "recv_reset": (
        "proto_lockstep", "1:0:recv=ECONNRESET@2", ("client_lost", RESET),
    ),
    "sock_sendall_reset": (
        "sock_lockstep", "1:0:send=ECONNRESET@3", ("client_error", RESET),
    ),
    "sock_sendall_epipe": (
        "sock_lockstep", "1:0:send=EPIPE@2", ("server_error", ["BrokenPipeError", errno.EPIPE]),
    ),
    "sock_recv_reset": (
        "sock_lockstep", "1:0:recv=ECONNRESET@3", ("client_error", RESET),
    ),
    "accept_emfile": (
        "accept_many", "1:0:accept4=EMFILE@1", ("echoed", ["ping 0", "ping 1", "ping 2", "ping 3"]),
    ),
    "accept_enfile": (
        "accept_many", "1:0:accept4=ENFILE@3", ("echoed", ["ping 0", "ping 1", "ping 2", "ping 3"]),
    ),
    "connect_refused": ("connect_once", "1:0:connect=ECONNREFUSED@1", None),
    "connect_timedout": ("connect_once", "1:0:connect=ETIMEDOUT@1", None),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(FATAL_CASES))
def test_fatal_fault_as_asyncio(case):
    workload, spec, fact = FATAL_CASES[case]
    reports = {name: run_workload(name, workload, spec) for name in LOOPS}
    for name, report in reports.items():
        assert sum(report["faults"].values()) == 1, (name, report["faults"])
        if fact is not None:
            key, value = fact
            assert report["outcome"][key] == value, (name, report)
    assert reports["ferroloop"]["outcome"] == reports["asyncio"]["outcome"]
    assert reports["ferroloop"]["errors"] == reports["asyncio"]["errors"]


@pytest.mark.parametrize("case", ["accept_emfile", "accept_enfile"])
def test_accept_out_of_resources_reported(case):
    """asyncio reports an accept that ran out of fds to the exception handler and tries again a
    second later; the connection waiting in the backlog is served then."""
    workload, spec, _ = FATAL_CASES[case]
    report = run_workload("ferroloop", workload, spec)
    code = errno.EMFILE if "EMFILE" in spec else errno.ENFILE
    assert report["errors"] == [["socket.accept() out of system resource", ["OSError", code]]]


def test_connect_errors_as_asyncio():
    """The connect that fails raises asyncio's exception (class, errno, message); the next one
    connects."""
    for spec, name, code in [
        ("1:0:connect=ECONNREFUSED@1", "ConnectionRefusedError", errno.ECONNREFUSED),
        ("1:0:connect=ETIMEDOUT@1", "TimeoutError", errno.ETIMEDOUT),
    ]:
        report = run_workload("ferroloop", "connect_once", spec)
        failed, connected = report["outcome"]
        assert failed[:2] == [name, code]
        assert failed[2] == f"[Errno {code}] Connect call failed ('127.0.0.1', PORT)"
        assert connected == ["connected", ""]


ENOBUFS_SPEC = ":0.3:sendto,sendto=ENOBUFS,recvfrom,epoll_wait"  # after the seed


@pytest.mark.parametrize("loop_name", LOOPS)
def test_enobufs_on_sendto(loop_name):
    """Each datagram whose sendto fails with ENOBUFS reaches error_received as asyncio's
    OSError and is lost; every other one arrives once. Mixed with transient faults."""
    report = run_workload(loop_name, "udp_count", f"5{ENOBUFS_SPEC}")
    outcome = report["outcome"]
    assert outcome["errors"] == report["faults"]["sendto.fatal"] > 0
    assert outcome["received"] + outcome["errors"] == 100
    assert outcome["error_types"] == [["OSError", errno.ENOBUFS]]
    assert outcome["unique"]
