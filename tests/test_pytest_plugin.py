"""The pytest plugin (``pytest --ferroloop``, ``--ferroloop=both``) on small sample projects.

Each project in ``tests/plugin_samples/`` is copied to a temporary directory and run by a pytest
of its own: without the flag, with the plugin disabled (``-p no:ferroloop``), with
``--ferroloop`` and with ``--ferroloop=both``. Its tests record the class of the loop they (and
their fixtures) ran on (``samplelib.record``); the checks here compare the records with what
each mode promises.
"""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SAMPLES = Path(__file__).parent / "plugin_samples"
FERROLOOP_LOOP = "ferroloop._loop.Loop"
LOOPS = ("asyncio", "ferroloop")

# Per sample: the framework it needs, and for each test (its id without loop parameters) the
# labels it records. ASYNC tests run once per loop under --ferroloop=both; the others once.
RUNNER = ["asyncio.Runner"] if sys.version_info >= (3, 11) else []
SAMPLE_TESTS = {
    "pytest_asyncio": (
        "pytest_asyncio",
        {
            "test_with_pytest_asyncio.py::test_marked": ["async fixture", "test"],
            "test_with_pytest_asyncio.py::test_parametrized[1]": ["test"],
            "test_with_pytest_asyncio.py::test_parametrized[2]": ["test"],
            "test_with_pytest_asyncio.py::TestInClass::test_method": [
                "test",
                "new_event_loop in a thread",
            ],
        },
        {"test_with_pytest_asyncio.py::test_sync_asyncio_run": ["asyncio.run in a sync test"]},
    ),
    "anyio": (
        "anyio",
        {
            "test_with_anyio.py::test_marked": ["async fixture", "test"],
            "test_with_anyio.py::test_backend_name": ["test"],
            "test_with_anyio_params.py::test_debug_backend[debug]": ["test"],
        },
        {},
    ),
    "unittest_case": (
        None,
        {
            "test_with_unittest.py::Case::test_loop": ["asyncSetUp", "test"],
            "test_with_unittest.py::Case::test_sleep": ["asyncSetUp", "test"],
        },
        {},
    ),
    "plain": (
        None,
        {
            "test_with_asyncio_run.py::test_marked_both": ["asyncio.run, marked ferroloop_both"],
            "test_with_asyncio_run.py::test_coroutine_run_by_conftest_hook": [
                "coroutine test, conftest hook"
            ],
        },
        {
            "test_with_asyncio_run.py::test_asyncio_run": ["asyncio.run"],
            "test_with_asyncio_run.py::test_runner": RUNNER,
            "test_with_asyncio_run.py::test_new_event_loop": ["new_event_loop"],
        },
    ),
}


def split_loop(test_id):
    """``(id without loop parameters, [loop names found in its parameters])``:
    ``test_x[1-ferroloop]`` -> ``("test_x[1]", ["ferroloop"])``,
    ``Case[asyncio]::test_y`` -> ``("Case::test_y", ["asyncio"])``."""
    found = []

    def strip(match):
        parts = match.group(1).split("-")
        found.extend(part for part in parts if part in LOOPS)
        rest = [part for part in parts if part not in LOOPS]
        return f"[{'-'.join(rest)}]" if rest else ""

    return re.sub(r"\[([^\]]*)\]", strip, test_id), found


class Run:
    def __init__(self, proc, records):
        self.proc = proc
        self.records = [r for r in records if r["label"] != "session end"]
        self.session_end = [r for r in records if r["label"] == "session end"]

    def counts(self):
        last = self.proc.stdout.strip().splitlines()[-1]
        return {
            word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|error)", last)
        }

    def by_test(self):
        """{(base id, label): [(loops in the id, loop class), ...]}"""
        out = {}
        for r in self.records:
            base, loops = split_loop(r["test"])
            out.setdefault((base, r["label"]), []).append((loops, r["loop"]))
        return out


def run_sample(kind, tmp_path, *args):
    project = tmp_path / f"{kind}-{len(list(tmp_path.iterdir()))}"
    shutil.copytree(SAMPLES / kind, project)
    shutil.copy(SAMPLES / "samplelib.py", project)
    record = project / "records.jsonl"
    env = dict(os.environ)
    env["FERROLOOP_SAMPLE_RECORD"] = str(record)
    env.pop("PYTEST_ADDOPTS", None)
    env.pop("PYTHONASYNCIODEBUG", None)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs", *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    records = (
        [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []
    )
    run = Run(proc, records)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for end in run.session_end:
        # The policy is put back after every test: the session ends with the one it began with.
        assert end["policy"] is None or "ferroloop" not in end["policy"], end
    assert len(run.session_end) == 1
    return run


@pytest.fixture(params=sorted(SAMPLE_TESTS))
def sample(request):
    kind = request.param
    framework, async_tests, sync_tests = SAMPLE_TESTS[kind]
    if framework is not None and importlib.util.find_spec(framework) is None:
        pytest.skip(f"{framework} is not installed: `pip install {framework.replace('_', '-')}`")
    return kind, async_tests, sync_tests


def expected(async_tests, sync_tests):
    return {
        (test, label)
        for tests in (async_tests, sync_tests)
        for test, labels in tests.items()
        for label in labels
    }


def test_sample_without_flag_is_untouched(sample, tmp_path):
    kind, async_tests, sync_tests = sample
    plain = run_sample(kind, tmp_path)
    disabled = run_sample(kind, tmp_path, "-p", "no:ferroloop")
    assert set(plain.by_test()) == expected(async_tests, sync_tests)
    for r in plain.records:
        assert r["loop"] != FERROLOOP_LOOP, r
    # The same tests, ids and loops as with the plugin not loaded at all.
    assert plain.records == disabled.records
    assert plain.counts() == disabled.counts()
    assert "ferroloop:" not in plain.proc.stdout


def test_sample_with_ferroloop(sample, tmp_path):
    kind, async_tests, sync_tests = sample
    plain = run_sample(kind, tmp_path)
    ferro = run_sample(kind, tmp_path, "--ferroloop")
    assert set(ferro.by_test()) == expected(async_tests, sync_tests)
    for r in ferro.records:
        assert r["loop"] == FERROLOOP_LOOP, r
    # Test ids unchanged (pytest-asyncio before pytest 8.4 cannot hide its one parameter).
    ids = {re.sub(r"\[ferroloop\]$", "", r["test"]) for r in ferro.records}
    assert ids == {r["test"] for r in plain.records}
    assert ferro.counts() == plain.counts()


def test_sample_with_both_loops(sample, tmp_path):
    kind, async_tests, sync_tests = sample
    plain = run_sample(kind, tmp_path)
    both = run_sample(kind, tmp_path, "--ferroloop=both")
    runs = both.by_test()
    assert set(runs) == expected(async_tests, sync_tests)
    for (test, label), found in runs.items():
        if test in async_tests:
            # Twice, each with its loop in the test id and running on that loop.
            assert sorted(loops[0] for loops, _ in found) == ["asyncio", "ferroloop"], found
            for loops, loop in found:
                assert len(loops) == 1, (test, found)
                assert (loop == FERROLOOP_LOOP) == (loops[0] == "ferroloop"), (test, label, found)
        else:
            # A test that cannot be told apart runs once, on ferroloop.
            assert found == [([], FERROLOOP_LOOP)], (test, label, found)
    n_async = sum(
        1
        for r in plain.records
        if split_loop(r["test"])[0] in async_tests
        and r["label"] == async_tests[split_loop(r["test"])[0]][0]
    )
    assert n_async == len(async_tests)
    assert both.counts().get("passed") == plain.counts().get("passed") + n_async


def loops_that_ran(run):
    """{loop class: times it ran} from the --ferroloop-report line of a run."""
    lines = [
        line
        for line in run.proc.stdout.splitlines()
        if line.startswith("ferroloop: loops that ran: ")
    ]
    assert len(lines) == 1, run.proc.stdout
    found = {}
    for item in lines[0].removeprefix("ferroloop: loops that ran: ").split(", "):
        name, _, n = item.rpartition(" x")
        found[name] = int(n)
    return found


def test_sample_report_of_the_loops_that_ran(sample, tmp_path):
    """--ferroloop-report counts the loops that ran, by class, with and without --ferroloop,
    and changes no loop."""
    kind, async_tests, sync_tests = sample
    plain = run_sample(kind, tmp_path, "--ferroloop-report")
    ferro = run_sample(kind, tmp_path, "--ferroloop", "--ferroloop-report")
    for r in plain.records:
        assert r["loop"] != FERROLOOP_LOOP, r
    for r in ferro.records:
        assert r["loop"] == FERROLOOP_LOOP, r
    asyncio_loops, ferro_loops = loops_that_ran(plain), loops_that_ran(ferro)
    # Every loop a record saw is in the report (each ran at least once per test that saw it).
    assert set(asyncio_loops) == {r["loop"] for r in plain.records}, asyncio_loops
    assert set(ferro_loops) == {FERROLOOP_LOOP}, ferro_loops
    tests = {r["test"] for r in plain.records}
    assert sum(asyncio_loops.values()) >= len(tests)
    # The same loops ran, on the other loop class.
    assert sum(ferro_loops.values()) == sum(asyncio_loops.values())


def test_report_counts_loops_in_threads_and_restores_the_function(tmp_path):
    """Loops run in other threads are counted; asyncio's function is put back at the end."""
    project = tmp_path / "p"
    project.mkdir()
    (project / "test_threads.py").write_text(
        "import asyncio, threading\n"
        "def test_threads():\n"
        "    threads = [threading.Thread(target=asyncio.run, args=(asyncio.sleep(0),))\n"
        "               for _ in range(3)]\n"
        "    for t in threads: t.start()\n"
        "    for t in threads: t.join()\n"
        "    asyncio.run(asyncio.sleep(0))\n"
    )
    # pytest calls the conftest's pytest_unconfigure after the report's (registered later,
    # at pytest_configure): it sees whether asyncio's function is back.
    (project / "conftest.py").write_text(
        "import asyncio, pathlib\n"
        "ORIGINAL = asyncio.events._set_running_loop\n"
        "def pytest_unconfigure(config):\n"
        "    restored = asyncio.events._set_running_loop is ORIGINAL\n"
        "    pathlib.Path('restored.txt').write_text(str(restored))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
    for args, loop in (
        ([], "asyncio.unix_events._UnixSelectorEventLoop"),
        (["--ferroloop"], FERROLOOP_LOOP),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--ferroloop-report", *args],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert loops_that_ran(Run(proc, [])) == {loop: 4}, args
        assert (project / "restored.txt").read_text() == "True", args


def test_flag_spellings(tmp_path):
    """`--ferroloop PATH` keeps PATH as a path; a value other than `both` is refused."""
    project = tmp_path / "p"
    project.mkdir()
    (project / "test_one.py").write_text(
        "import asyncio\n"
        "def test_loop():\n"
        "    loop = asyncio.new_event_loop()\n"
        "    try:\n"
        "        assert type(loop).__module__ == 'ferroloop._loop'\n"
        "    finally:\n"
        "        loop.close()\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}

    def pytest_run(*args):
        return subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    ok = pytest_run("--ferroloop", "p/test_one.py")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "1 passed" in ok.stdout
    assert "ferroloop: asyncio tests run on ferroloop" in ok.stdout
    without = pytest_run("p/test_one.py")
    assert without.returncode == 1
    bad = pytest_run("--ferroloop=sometimes", "p/test_one.py")
    assert bad.returncode == 4
    assert "--ferroloop" in bad.stderr


def test_importing_the_plugin_imports_no_framework():
    code = (
        "import sys, ferroloop.pytest_plugin\n"
        "print(sorted(m for m in ('pytest_asyncio', 'anyio') if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_entry_point_is_registered():
    from importlib.metadata import entry_points

    eps = entry_points()
    group = eps.select(group="pytest11") if hasattr(eps, "select") else eps.get("pytest11", [])
    assert {ep.name: ep.value for ep in group}.get("ferroloop") == "ferroloop.pytest_plugin"


def test_pytest_asyncio_project_loop_factories(tmp_path):
    """A project with its own pytest_asyncio_loop_factories: --ferroloop keeps its factory
    names (so mark.asyncio(loop_factories=[...]) still selects) and maps them to ferroloop;
    --ferroloop=both adds a `ferroloop` factory beside the project's."""
    spec = importlib.util.find_spec("pytest_asyncio")
    if spec is None:
        pytest.skip("pytest_asyncio is not installed: `pip install pytest-asyncio`")
    import pytest_asyncio.plugin

    if not hasattr(pytest_asyncio.plugin, "PytestAsyncioSpecs"):
        pytest.skip("pytest-asyncio before 1.4 has no pytest_asyncio_loop_factories hook")
    kind = "pytest_asyncio_factories"
    every = "test_with_loop_factories.py::test_every_factory"
    selected = "test_with_loop_factories.py::test_selected_factory"

    def loops(run):
        return sorted((r["test"], r["loop"] == FERROLOOP_LOOP) for r in run.records)

    plain = run_sample(kind, tmp_path)
    assert loops(plain) == [(every, False), (selected, False)]
    assert all(r["loop"].startswith("asyncio.") for r in plain.records)
    ferro = run_sample(kind, tmp_path, "--ferroloop")
    assert loops(ferro) == [(every, True), (selected, True)]
    both = run_sample(kind, tmp_path, "--ferroloop=both")
    assert loops(both) == [
        (every + "[ferroloop]", True),
        (every + "[selector]", False),
        (selected, False),
    ]
    assert both.counts() == {"passed": 3}
