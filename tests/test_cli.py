"""``python -m ferroloop script.py args``: runs the script like ``python script.py args``, with
ferroloop as the loop that asyncio creates."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = """
import asyncio, json, sys, os, warnings
import helper_mod  # importable from the script's directory, like `python script.py`

async def main():
    return type(asyncio.get_running_loop()).__module__ + "." + type(asyncio.get_running_loop()).__name__

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


@pytest.mark.parametrize("code,rc", [("sys.exit(5)", 5), ("sys.exit(0)", 0), ("pass", 0),
                                     ("sys.exit('message')", 1)])
def test_cli_exit_code(script_dir, code, rc):
    script = script_dir / "exit.py"
    script.write_text("import sys\n" + code + "\n")
    p = run(["-m", "ferroloop", str(script)], cwd="/tmp")
    plain = run([str(script)], cwd="/tmp")
    assert p.returncode == plain.returncode == rc
    assert p.stderr == plain.stderr


def test_cli_traceback_on_error(script_dir):
    script = script_dir / "boom.py"
    script.write_text(textwrap.dedent("""
        import asyncio

        async def main():
            raise ValueError("boom in main")

        asyncio.run(main())
    """))
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
    assert "ferroloop" in run(["-c", "import asyncio, ferroloop, runpy, sys; "
                               "print(ferroloop.EventLoopPolicy.__module__)"], cwd="/tmp").stdout


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
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60
    )
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
