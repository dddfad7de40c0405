"""pytest plugin loaded (``-p conformance_plugin``) into every worker process of ``run``.

It makes the suite under test run on the loop under test (``CONF_LOOP``: ferroloop or asyncio):

* installs ferroloop's policy as asyncio's *default* policy (``asyncio.DefaultEventLoopPolicy``
  is replaced in this process only), so ``asyncio.new_event_loop()``, ``asyncio.run()``,
  ``asyncio.Runner``, ``IsolatedAsyncioTestCase`` and every ``set_event_loop_policy(None)`` of a
  ``tearDownModule`` give ferroloop loops;
* adds the ``LoopUnderTest_*`` classes of ``adapters.py`` to the test modules (the suites' own
  mixins with a ``create_event_loop``/``new_loop`` that returns the loop under test);
* deselects the ``[excluded]`` tests of ``expected_failures.txt``;
* writes one JSON line per test to ``CONF_RESULTS`` (flushed, so a killed worker loses nothing).
"""

import importlib
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import adapters  # noqa: E402
import expectations  # noqa: E402

LOOP = os.environ.get("CONF_LOOP", "ferroloop")
SUITE = os.environ["CONF_SUITE"]  # cpython | uvloop
MODULE = os.environ["CONF_MODULE"]  # importable module name
RESULTS = os.environ["CONF_RESULTS"]
SKIP_FILE = os.environ.get("CONF_SKIP_FILE")

_out = None
_phases = {}
_ids = {}
_ferro_loops = [0]


def _install_loop():
    if LOOP != "ferroloop":
        return
    import asyncio.unix_events

    import ferroloop

    asyncio.DefaultEventLoopPolicy = ferroloop.EventLoopPolicy
    asyncio.unix_events.DefaultEventLoopPolicy = ferroloop.EventLoopPolicy
    asyncio.set_event_loop_policy(None)
    # Count the ferroloop loops each test creates (reported as "ran_on_loop").
    orig_init = ferroloop.Loop.__init__

    def __init__(self, *args, **kwargs):
        _ferro_loops[0] += 1
        orig_init(self, *args, **kwargs)

    ferroloop.Loop.__init__ = __init__


def short_module(name):
    return name.rsplit(".", 1)[-1]


def test_id(item):
    cls = item.cls.__name__ if item.cls is not None else ""
    mod = short_module(item.module.__name__) if item.module is not None else "?"
    name = item.name
    return f"{SUITE}/{mod}::{cls}::{name}" if cls else f"{SUITE}/{mod}::{name}"


def _write(rec):
    _out.write(json.dumps(rec) + "\n")
    _out.flush()


def pytest_configure(config):
    global _out
    _out = open(RESULTS, "a", buffering=1)
    _install_loop()
    mod = importlib.import_module(MODULE)
    adapters.adapt(SUITE, mod, LOOP)


def pytest_unconfigure(config):
    if _out is not None:
        _out.close()


def pytest_collection_modifyitems(session, config, items):
    exp = expectations.load()
    skip = set()
    if SKIP_FILE and os.path.exists(SKIP_FILE):
        with open(SKIP_FILE) as f:
            skip = {line.strip() for line in f if line.strip()}
    keep, drop = [], []
    for item in items:
        tid = test_id(item)
        _ids[item.nodeid] = tid
        reason = exp.excluded_reason(tid, item)
        if reason is not None:
            drop.append(item)
            _write({"id": tid, "outcome": "excluded", "reason": reason})
        elif tid in skip:
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
    items[:] = keep


def pytest_runtest_logstart(nodeid, location):
    tid = _ids.get(nodeid, nodeid)
    _phases[nodeid] = {"t0": time.monotonic(), "reports": [], "loops0": _ferro_loops[0]}
    _write({"id": tid, "outcome": "started"})


def pytest_runtest_logreport(report):
    st = _phases.get(report.nodeid)
    if st is not None:
        st["reports"].append(report)


def _message(report):
    lr = report.longrepr
    if lr is None:
        return ""
    try:
        crash = getattr(lr, "reprcrash", None)
        if crash is not None:
            return crash.message
    except Exception:
        pass
    if isinstance(lr, tuple) and len(lr) == 3:
        return str(lr[2])
    return str(lr)[-2000:]


def pytest_runtest_logfinish(nodeid, location):
    st = _phases.pop(nodeid, None)
    if st is None:
        return
    tid = _ids.get(nodeid, nodeid)
    outcome, msg, longrepr = "passed", "", ""
    for rep in st["reports"]:
        if rep.failed:
            if outcome != "failed":
                outcome, msg = "failed", f"[{rep.when}] " + _message(rep)
                longrepr = str(rep.longrepr)[-6000:]
        elif rep.skipped and outcome == "passed":
            if hasattr(rep, "wasxfail"):
                outcome, msg = "skipped", "upstream expectedFailure"
            else:
                outcome, msg = "skipped", _message(rep)
    _write(
        {
            "id": tid,
            "outcome": outcome,
            "message": msg[:1000],
            "longrepr": longrepr,
            "duration": round(time.monotonic() - st["t0"], 3),
            "ferroloop_loops": _ferro_loops[0] - st["loops0"],
        }
    )
