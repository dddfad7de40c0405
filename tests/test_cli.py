"""``python -m ferroloop script.py args``: runs the script like ``python script.py args``, with
ferroloop as the loop that asyncio creates."""

import importlib.metadata
import json
import os
import platform
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = """
import asyncio, json, sys, os, warnings
import helper_mod  # importable from the script's directory, like `python script.py`

async def main():
    loop = asyncio.get_running_loop()
    return type(loop).__module__ + "." + type(loop).__name__

def loop_type(lp):
    return type(lp).__module__ + "." + type(lp).__name__

# first, before anything calls set_event_loop(): the policy creates the main thread's loop
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    lp = asyncio.get_event_loop()
    first_loop = loop_type(lp)
    lp.close()
    asyncio.set_event_loop(None)

info = {
    "get_event_loop": first_loop,
    "name": __name__,
    "argv": sys.argv,
    "file": os.path.basename(__file__),
    "helper": helper_mod.VALUE,
    "asyncio_run": asyncio.run(main()),
}
lp = asyncio.new_event_loop()
info["new_event_loop"] = loop_type(lp)
lp.close()
if hasattr(asyncio, "Runner"):  # 3.11+
    with asyncio.Runner() as runner:
        info["runner"] = runner.run(main())
else:
    info["runner"] = None
print(json.dumps(info))
"""


@pytest.fixture
def script_dir(tmp_path):
    (tmp_path / "helper_mod.py").write_text("VALUE = 'helper'\n")
    return tmp_path


def run(args, cwd):
    env = dict(os.environ)
    env.pop("PYTHONASYNCIODEBUG", None)
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=60
    )


def test_cli_runs_script_with_ferroloop(script_dir):
    script = script_dir / "script.py"
    script.write_text(SCRIPT)
    p = run(["-m", "ferroloop", str(script), "a1", "--flag"], cwd="/tmp")
    assert p.returncode == 0, p.stderr
    info = json.loads(p.stdout)
    assert info["name"] == "__main__"
    assert info["argv"] == [str(script), "a1", "--flag"]
    assert info["file"] == "script.py"
    assert info["helper"] == "helper"
    assert info["asyncio_run"] == "ferroloop._loop.Loop"
    assert info["new_event_loop"] == "ferroloop._loop.Loop"
    assert info["get_event_loop"] == "ferroloop._loop.Loop"
    if sys.version_info >= (3, 11):
        assert info["runner"] == "ferroloop._loop.Loop"
    else:
        assert info["runner"] is None  # no asyncio.Runner


def test_cli_same_as_plain_python_except_loop(script_dir):
    script = script_dir / "script.py"
    script.write_text(SCRIPT)
    plain = run([str(script), "x"], cwd="/tmp")
    ferro = run(["-m", "ferroloop", str(script), "x"], cwd="/tmp")
    assert plain.returncode == ferro.returncode == 0, (plain.stderr, ferro.stderr)
    a, b = json.loads(plain.stdout), json.loads(ferro.stdout)
    for key in ("asyncio_run", "new_event_loop", "get_event_loop", "runner"):
        a.pop(key)
        b.pop(key)
    assert a == b


@pytest.mark.parametrize(
    "code,rc", [("sys.exit(5)", 5), ("sys.exit(0)", 0), ("pass", 0), ("sys.exit('message')", 1)]
)
def test_cli_exit_code(script_dir, code, rc):
    script = script_dir / "exit.py"
    script.write_text("import sys\n" + code + "\n")
    p = run(["-m", "ferroloop", str(script)], cwd="/tmp")
    plain = run([str(script)], cwd="/tmp")
    assert p.returncode == plain.returncode == rc
    assert p.stderr == plain.stderr


def test_cli_traceback_on_error(script_dir):
    script = script_dir / "boom.py"
    script.write_text(
        textwrap.dedent("""
        import asyncio

        async def main():
            raise ValueError("boom in main")

        asyncio.run(main())
    """)
    )
    p = run(["-m", "ferroloop", str(script)], cwd="/tmp")
    plain = run([str(script)], cwd="/tmp")
    assert p.returncode == plain.returncode == 1
    assert p.stderr.splitlines()[-1] == "ValueError: boom in main"
    assert f'File "{script}", line 7, in <module>' in p.stderr
    assert f'File "{script}", line 5, in main' in p.stderr


def test_cli_missing_script(tmp_path):
    p = run(["-m", "ferroloop", str(tmp_path / "nope.py")], cwd="/tmp")
    assert p.returncode != 0
    assert "nope.py" in p.stderr


def test_cli_policy_is_ferroloop(script_dir):
    script = script_dir / "pol.py"
    script.write_text("import asyncio; print(type(asyncio.get_event_loop_policy()).__name__)\n")
    p = run(["-m", "ferroloop", str(script)], cwd="/tmp")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "EventLoopPolicy"
    assert (
        "ferroloop"
        in run(
            [
                "-c",
                "import asyncio, ferroloop, runpy, sys; "
                "print(ferroloop.EventLoopPolicy.__module__)",
            ],
            cwd="/tmp",
        ).stdout
    )


@pytest.mark.parametrize("factory", ["asyncio.new_event_loop", "ferroloop.new_event_loop"])
def test_unclosed_loop_at_exit_is_quiet(tmp_path, factory):
    """A loop left open and set as the current loop is collected late in interpreter
    shutdown, when module globals are gone: like asyncio's, it closes without a traceback."""
    script = tmp_path / "unclosed.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import asyncio, ferroloop
            loop = {factory}()
            asyncio.set_event_loop(loop)
            async def main():
                await asyncio.sleep(0)
            loop.run_until_complete(main())
            """
        )
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert "Traceback" not in proc.stderr
    assert "Exception ignored" not in proc.stderr


@pytest.mark.parametrize("own", [[], ["--watchdog", "5"], ["--watchdog=5"]])
def test_cli_module_gets_its_options(tmp_path, own):
    # Like `python -m module args`: everything after `-m MODULE` (or the script) is the program's,
    # options included (`python -m ferroloop -m hypercorn --workers 0 app:app`).
    (tmp_path / "argv_mod.py").write_text(
        "import asyncio, json, sys\n"
        "loop = asyncio.new_event_loop()\n"
        "print(json.dumps([sys.argv[1:], type(loop).__module__]))\n"
        "loop.close()\n"
    )
    args = ["--workers", "0", "-m", "x", "--watchdog", "1", "-h", "--", "app:app"]
    p = run(["-m", "ferroloop", *own, "-m", "argv_mod", *args], cwd=str(tmp_path))
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == [args, "ferroloop._loop"]
    p = run(["-m", "ferroloop", *own, str(tmp_path / "argv_mod.py"), *args], cwd="/tmp")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == [args, "ferroloop._loop"]


def test_cli_own_options_before_the_program():
    p = run(["-m", "ferroloop", "--watchdog"], cwd="/tmp")
    assert p.returncode == 2 and "--watchdog" in p.stderr
    p = run(["-m", "ferroloop", "-m"], cwd="/tmp")
    assert p.returncode == 2 and "-m" in p.stderr
    p = run(["-m", "ferroloop", "--bogus", "script.py"], cwd="/tmp")
    assert p.returncode == 2 and "--bogus" in p.stderr
    p = run(["-m", "ferroloop"], cwd="/tmp")
    assert p.returncode == 2 and "a script or -m MODULE is required" in p.stderr


def repo_version():
    """The workspace version in Cargo.toml: the one place ferroloop's version comes from."""
    text = (Path(__file__).resolve().parents[1] / "Cargo.toml").read_text()
    section = text.split("[workspace.package]", 1)[1]
    return re.search(r'^version\s*=\s*"([^"]+)"', section, re.M).group(1)


def test_cli_version():
    import ferroloop

    p = run(["-m", "ferroloop", "--version"], cwd="/tmp")
    assert p.returncode == 0, p.stderr
    assert p.stdout == f"ferroloop {ferroloop.__version__}\n"
    # One version: Cargo's workspace version, compiled into _core, and the wheel's metadata
    # (pyproject's dynamic version, which maturin takes from Cargo).
    assert ferroloop.__version__ == ferroloop._core.__version__ == repo_version()
    assert importlib.metadata.version("ferroloop") == ferroloop.__version__


def info(args=(), env_extra=None, prelude=None):
    env = dict(os.environ)
    for name in ("PYTHONASYNCIODEBUG", "FERROLOOP_WATCHDOG", "PYTHONDEVMODE"):
        env.pop(name, None)
    env.update(env_extra or {})
    if prelude is None:
        argv = [sys.executable, "-m", "ferroloop", *args, "--info"]
    else:
        argv = [
            sys.executable,
            "-c",
            f"import sys; {prelude}; from ferroloop.__main__ import main; "
            f"sys.exit(main({[*args, '--info']!r}))",
        ]
    p = subprocess.run(argv, capture_output=True, text=True, cwd="/tmp", env=env, timeout=60)
    assert p.returncode == 0, p.stderr
    return dict(line.split(": ", 1) for line in p.stdout.splitlines())


def test_cli_info():
    import ferroloop

    lines = info()
    assert set(lines) == {
        "ferroloop",
        "ferroloop path",
        "Python",
        "Python executable",
        "platform",
        "asyncio.run loop",
        "asyncio debug mode",
        "watchdog",
    }
    profile = ferroloop._core.BUILD_PROFILE
    assert profile in ("release", "debug")
    assert lines["ferroloop"] == f"{ferroloop.__version__} ({profile} build)"
    assert lines["ferroloop path"] == os.path.dirname(ferroloop.__file__)
    assert lines["Python"].startswith(
        f"{platform.python_implementation()} {platform.python_version()} "
    )
    assert lines["Python executable"] == sys.executable
    assert platform.machine() in lines["platform"]
    assert lines["platform"].startswith(platform.system())
    # Nothing installed ferroloop: asyncio.run uses asyncio's own loop.
    assert lines["asyncio.run loop"].startswith("asyncio.")
    assert "ferroloop" not in lines["asyncio.run loop"]
    assert lines["asyncio debug mode"] == "off"
    assert lines["watchdog"].startswith("off")


def test_cli_info_after_install():
    lines = info(prelude="import ferroloop; ferroloop.install()")
    assert lines["asyncio.run loop"] == (
        "ferroloop._loop.Loop (policy ferroloop._policy.EventLoopPolicy)"
    )


@pytest.mark.parametrize(
    "args,env,expected",
    [
        ((), {"FERROLOOP_WATCHDOG": "0.25"}, "on, 0.25 s (FERROLOOP_WATCHDOG)"),
        ((), {"FERROLOOP_WATCHDOG": "off"}, "off"),
        (("--watchdog", "0.3"), {"FERROLOOP_WATCHDOG": "0.25"}, "on, 0.3 s (--watchdog)"),
        ((), {"PYTHONASYNCIODEBUG": "1"}, "on in debug mode"),
    ],
)
def test_cli_info_watchdog(args, env, expected):
    lines = info(args, env)
    assert lines["watchdog"].startswith(expected), lines["watchdog"]
    debug = "PYTHONASYNCIODEBUG" in env
    assert lines["asyncio debug mode"] == ("on" if debug else "off")


@pytest.mark.parametrize("flag", ["--info", "--version"])
def test_cli_info_takes_no_script(script_dir, flag):
    p = run(["-m", "ferroloop", flag, str(script_dir / "x.py")], cwd="/tmp")
    assert p.returncode == 2
    assert "take no script" in p.stderr
