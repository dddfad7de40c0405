"""Runs CPython's test.test_asyncio and uvloop's tests/ on the loop under test.

Usage: ``tests/conformance/run [--loop ferroloop|asyncio] [--suite all|cpython|uvloop]
[-j 2] [-m MODULE ...] [--timeout 60] [--report PATH]``.

One pytest worker process per test module (``-j`` at a time), each with
``conformance_plugin`` loaded and a per-test timeout (pytest-timeout, SIGALRM). A worker that
shows no progress for longer than the per-test timeout (a hang the signal could not break)
or dies is killed; the test it was running is recorded as failed and the worker is restarted
on the rest of the module.
"""

import argparse
import concurrent.futures
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

import expectations  # noqa: E402

UVLOOP_VERSION = os.environ.get("CONF_UVLOOP_VERSION", "0.23.0")
STATE = os.path.join(ROOT, ".conformance")
CACHE = os.environ.get("CONF_CACHE", os.path.join(STATE, "cache"))

# Modules known to be slow go first (refined by the durations of the previous run).
SLOW_FIRST = [
    "cpython/test_events",
    "uvloop/test_tcp",
    "cpython/test_tasks",
    "cpython/test_subprocess",
    "uvloop/test_process",
    "cpython/test_ssl",
    "cpython/test_sslproto",
    "uvloop/test_unix",
    "cpython/test_sendfile",
    "cpython/test_unix_events",
    "cpython/test_streams",
    "uvloop/test_signals",
]

UVLOOP_TEST_DEPS = [
    ("OpenSSL", "pyOpenSSL>=25.3"),
    ("psutil", "psutil"),
    ("aiohttp", "aiohttp>=3.10.5"),
]

_print_lock = threading.Lock()


def importable(mod):
    import importlib.util

    return importlib.util.find_spec(mod) is not None


def log(msg):
    with _print_lock:
        print(msg, flush=True)


def pip(*args):
    cmd = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check", *args]
    log("$ " + " ".join(cmd))
    subprocess.run(cmd, check=True)


def ensure_uvloop():
    """uvloop importable (for ``uvloop._testbase``) and its sdist's ``tests/`` in the cache."""
    try:
        import uvloop

        have = uvloop.__version__
    except ImportError:
        have = None
    if have != UVLOOP_VERSION:
        pip("install", f"uvloop=={UVLOOP_VERSION}")
    # The test dependencies of uvloop's suite (its "test" extra, without the linters).
    missing = [req for mod, req in UVLOOP_TEST_DEPS if not importable(mod)]
    if missing:
        pip("install", *missing)
    dest = os.path.join(CACHE, f"uvloop-tests-{UVLOOP_VERSION}")
    if os.path.isdir(os.path.join(dest, "tests")):
        return dest
    os.makedirs(CACHE, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        # --no-binary for uvloop only: its build dependencies may come as wheels (metadata
        # preparation would otherwise build Cython from source: minutes).
        pip(
            "download", "--no-deps", "--no-binary", "uvloop", "-d", tmp, f"uvloop=={UVLOOP_VERSION}"
        )
        (sdist,) = glob.glob(os.path.join(tmp, "uvloop-*.tar.gz"))
        with tarfile.open(sdist) as tar:
            members = [
                m
                for m in tar.getmembers()
                if "/tests/" in m.name + "/" and m.name.split("/", 2)[1:2] == ["tests"]
            ]
            tar.extractall(tmp, members=members)
        top = os.path.join(tmp, f"uvloop-{UVLOOP_VERSION}")
        staging = dest + ".tmp"
        shutil.rmtree(staging, ignore_errors=True)
        os.makedirs(staging)
        # Only tests/: the sdist's uvloop/ (sources, no extension) must not shadow the
        # installed uvloop.
        shutil.move(os.path.join(top, "tests"), os.path.join(staging, "tests"))
        os.replace(staging, dest)
    return dest


def cpython_modules():
    import test.test_asyncio as pkg

    d = os.path.dirname(pkg.__file__)
    return sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(d, "test_*.py")))


def uvloop_modules(uvdir):
    return sorted(
        os.path.basename(p)[:-3] for p in glob.glob(os.path.join(uvdir, "tests", "test_*.py"))
    )


class Job:
    def __init__(self, suite, mod, uvdir):
        self.suite, self.mod, self.uvdir = suite, mod, uvdir
        self.key = f"{suite}/{mod}"
        self.records = {}  # id -> final record
        self.notes = []
        self.duration = 0.0

    def target(self):
        if self.suite == "cpython":
            return ["--pyargs", f"test.test_asyncio.{self.mod}"], f"test.test_asyncio.{self.mod}"
        return [os.path.join(self.uvdir, "tests", f"{self.mod}.py")], f"tests.{self.mod}"


def run_job(job, args, workdir):
    t0 = time.monotonic()
    target, modname = job.target()
    results = os.path.join(workdir, job.key.replace("/", "__") + ".jsonl")
    skipfile = results + ".skip"
    for p in (results, skipfile):
        if os.path.exists(p):
            os.unlink(p)
    env = dict(os.environ)
    env.update(
        CONF_LOOP=args.loop,
        CONF_SUITE=job.suite,
        CONF_MODULE=modname,
        CONF_RESULTS=results,
        CONF_SKIP_FILE=skipfile,
        PYTHONFAULTHANDLER="1",
        PYTHONDONTWRITEBYTECODE="1",
        PYTHONPATH=os.pathsep.join(
            [HERE]
            + ([job.uvdir] if job.uvdir else [])
            + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
        ),
    )
    cwd = job.uvdir or workdir
    attempts = 0
    done_before = set()

    def new_progress(finished):
        grew = not finished <= done_before
        done_before.update(finished)
        return grew

    log_path = results[:-6] + ".log"
    with open(log_path, "w") as logf:
        while True:
            attempts += 1
            cmd = [
                sys.executable,
                "-m",
                "pytest",
                "-c",
                os.path.join(HERE, "conformance.ini"),
                "--rootdir",
                cwd,
                "-p",
                "conformance_plugin",
                "-q",
                "-rN",
                "-s",
                "--tb=native",
                f"--timeout={args.timeout}",
                *target,
            ]
            proc = subprocess.Popen(
                cmd, cwd=cwd, env=env, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True
            )
            last_size, last_change, killed = -1, time.monotonic(), None
            while proc.poll() is None:
                time.sleep(0.5)
                size = os.path.getsize(results) if os.path.exists(results) else 0
                now = time.monotonic()
                if size != last_size:
                    last_size, last_change = size, now
                elif now - last_change > args.timeout + 30:
                    killed = f"hard timeout: no progress for {args.timeout + 30} s (killed)"
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            rc = proc.returncode
            started, finished = parse(results, job)
            inflight = [t for t in started if t not in finished]
            if killed is None and rc < 0:
                killed = f"worker died with signal {-rc}"
            if killed is None and rc == 3 and (inflight or new_progress(finished)):
                killed = f"pytest internal error (see {log_path})"
            if killed is None and rc not in (0, 1, 5) and not finished:
                # collection error / internal error: record the module as one failure
                job.records[f"{job.key}::<module>"] = {
                    "id": f"{job.key}::<module>",
                    "outcome": "failed",
                    "message": f"pytest exited with {rc} (collection error?), see {log_path}",
                }
            if killed is None or attempts > 20:
                if killed:
                    for t in inflight:
                        job.records[t] = {"id": t, "outcome": "failed", "message": killed}
                break
            for t in inflight:
                job.records[t] = {"id": t, "outcome": "failed", "message": killed}
            job.notes.append(f"{killed}: {', '.join(inflight) or '(between tests)'}")
            log(f"  {job.key}: {killed} in {', '.join(inflight) or '(between tests)'}; restarting")
            with open(skipfile, "w") as f:
                f.write("\n".join(list(finished) + inflight) + "\n")
    job.duration = time.monotonic() - t0
    return job


def parse(results, job):
    started, finished = [], set()
    if not os.path.exists(results):
        return started, finished
    with open(results) as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec["outcome"] == "started":
                started.append(rec["id"])
            else:
                finished.add(rec["id"])
                if rec["id"] not in job.records or job.records[rec["id"]]["outcome"] != "failed":
                    job.records[rec["id"]] = rec
    return started, finished


def classify(rec, exp, loop):
    out = rec["outcome"]
    if loop != "ferroloop" or rec["id"] not in exp.xfail:
        return out
    if out == "failed":
        return "xfail"
    if out == "passed":
        return "xpass"
    return out


STATUSES = ("passed", "failed", "skipped", "xfail", "xpass", "excluded")


def main(argv=None):
    ap = argparse.ArgumentParser(
        prog="tests/conformance/run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--loop", choices=("ferroloop", "asyncio"), default="ferroloop")
    ap.add_argument("--suite", choices=("all", "cpython", "uvloop"), default="all")
    ap.add_argument("-j", "--jobs", type=int, default=int(os.environ.get("CONF_JOBS", "2")))
    ap.add_argument(
        "-m",
        "--module",
        action="append",
        default=[],
        help="only these modules (e.g. test_tasks or uvloop/test_tcp); repeatable",
    )
    ap.add_argument("--timeout", type=int, default=60, help="per-test timeout, seconds")
    ap.add_argument(
        "--report", default=None, help="JSON report (default .conformance/report-<loop>.json)"
    )
    ap.add_argument("--expected", default=expectations.DEFAULT)
    ap.add_argument(
        "--list-failures",
        action="store_true",
        help="print unexpected failures as expected_failures.txt lines",
    )
    args = ap.parse_args(argv)
    t_start = time.monotonic()
    exp = expectations.load(args.expected)
    if args.loop == "ferroloop":
        import ferroloop  # noqa: F401  (installed by the CI before this runs)

    uvdir = ensure_uvloop() if args.suite in ("all", "uvloop") else None
    jobs, excluded_modules = [], {}
    suites = [("cpython", cpython_modules, None), ("uvloop", lambda: uvloop_modules(uvdir), uvdir)]
    for suite, lister, d in suites:
        if args.suite not in ("all", suite):
            continue
        for mod in lister():
            key = f"{suite}/{mod}"
            if args.module and not any(m in (mod, key) for m in args.module):
                continue
            reason = exp.module_excluded(suite, mod)
            if reason:
                excluded_modules[key] = reason
                continue
            jobs.append(Job(suite, mod, d))
    os.makedirs(STATE, exist_ok=True)
    dur_path = os.path.join(STATE, "durations.json")
    try:
        with open(dur_path) as f:
            prev = json.load(f)
    except (OSError, ValueError):
        prev = {}
    jobs.sort(
        key=lambda j: -prev.get(j.key, 1000 - SLOW_FIRST.index(j.key) if j.key in SLOW_FIRST else 0)
    )
    workdir = os.path.join(STATE, f"work-{args.loop}")
    shutil.rmtree(workdir, ignore_errors=True)
    os.makedirs(workdir)
    log(
        f"conformance: {len(jobs)} modules on {args.loop} (Python {sys.version.split()[0]}, "
        f"uvloop tests {UVLOOP_VERSION}), {args.jobs} workers, {args.timeout} s per test"
    )

    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        futs = [pool.submit(run_job, j, args, workdir) for j in jobs]
        for fut in concurrent.futures.as_completed(futs):
            j = fut.result()
            c = {s: 0 for s in STATUSES}
            for rec in j.records.values():
                c[classify(rec, exp, args.loop)] += 1
            log(
                f"  {j.key:34} {c['passed']:5} passed {c['failed']:4} failed {c['skipped']:4} "
                f"skipped {c['xfail']:4} xfail {c['xpass']:3} xpass {c['excluded']:4} excluded "
                f"({j.duration:.0f} s)"
            )

    # Report
    tests, modules = {}, {}
    total = {s: 0 for s in STATUSES}
    for j in sorted(jobs, key=lambda j: j.key):
        c = {s: 0 for s in STATUSES}
        for tid, rec in sorted(j.records.items()):
            status = classify(rec, exp, args.loop)
            c[status] += 1
            total[status] += 1
            entry = {"status": status, "outcome": rec["outcome"]}
            for k in ("message", "reason", "duration", "ferroloop_loops", "longrepr"):
                if rec.get(k) not in (None, ""):
                    entry[k] = rec[k]
            if status in ("xfail", "xpass"):
                entry["expected_failure"] = exp.xfail[tid]
            tests[tid] = entry
        modules[j.key] = dict(c, duration=round(j.duration, 1), notes=j.notes)
    with open(dur_path, "w") as f:
        json.dump({**prev, **{k: v["duration"] for k, v in modules.items()}}, f, indent=1)

    wall = time.monotonic() - t_start
    print()
    print(
        f"{'module':34} {'pass':>5} {'fail':>5} {'skip':>5} {'xfail':>5} {'xpass':>5} {'excl':>5}"
    )
    for suite in ("cpython", "uvloop"):
        sub = {s: 0 for s in STATUSES}
        for key, c in modules.items():
            if key.startswith(suite + "/"):
                print(
                    f"{key:34} {c['passed']:5} {c['failed']:5} {c['skipped']:5} {c['xfail']:5} "
                    f"{c['xpass']:5} {c['excluded']:5}"
                )
                for s in STATUSES:
                    sub[s] += c[s]
        if any(sub.values()):
            print(
                f"{suite + ' total':34} {sub['passed']:5} {sub['failed']:5} {sub['skipped']:5} "
                f"{sub['xfail']:5} {sub['xpass']:5} {sub['excluded']:5}"
            )
    for key, reason in excluded_modules.items():
        print(f"{key:34} excluded: {reason}")
    ran = {tid for tid in tests}
    stale = sorted(
        t for t in exp.xfail if t not in ran and any(t.startswith(j.key + "::") for j in jobs)
    )
    if stale:
        print(f"\nwarning: {len(stale)} expected failures were not run (renamed? excluded?):")
        for t in stale[:20]:
            print("  " + t)
    failed = sorted(t for t, e in tests.items() if e["status"] == "failed")
    xpass = sorted(t for t, e in tests.items() if e["status"] == "xpass")
    if failed:
        print(f"\nFAILED ({len(failed)}):")
        for t in failed:
            print(f"  {t}: {tests[t].get('message', '')[:200]!s}".replace("\n", " "))
    if xpass:
        print(f"\nXPASS ({len(xpass)}): remove these from expected_failures.txt:")
        for t in xpass:
            print("  " + t)
    if args.list_failures:
        print("\n# unexpected failures, as expected_failures.txt lines:")
        for t in failed:
            msg = tests[t].get("message", "").replace("\n", " ")[:150]
            print(f"{t}  -- TODO: {msg}")
    summary = (
        f"{total['passed']} passed, {total['failed']} failed, {total['skipped']} skipped, "
        f"{total['xfail']} xfail"
    )
    if total["xpass"]:
        summary += f", {total['xpass']} xpass"
    report = {
        "loop": args.loop,
        "python": sys.version,
        "uvloop_tests": UVLOOP_VERSION,
        "wall_time": round(wall, 1),
        "summary": total,
        "modules": modules,
        "excluded_modules": excluded_modules,
        "stale_expected_failures": stale,
        "tests": tests,
    }
    path = args.report or os.path.join(STATE, f"report-{args.loop}.json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(report, f, indent=1, sort_keys=True)
    if args.loop == "ferroloop":
        ran = [e for e in tests.values() if e["status"] in ("passed", "failed", "xfail", "xpass")]
        on = sum(1 for e in ran if e.get("ferroloop_loops"))
        print(
            f"\n{on} of the {len(ran)} tests that ran created a ferroloop loop (the others test "
            f"asyncio's pure-Python parts on mocks or on test_utils.TestLoop)"
        )
    print(
        f"\n{total['excluded']} excluded tests, {len(excluded_modules)} excluded modules; "
        f"report: {os.path.relpath(path)}; wall time {wall:.0f} s"
    )
    print(summary)
    return 1 if (total["failed"] or total["xpass"]) else 0


if __name__ == "__main__":
    sys.exit(main())
