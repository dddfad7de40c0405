"""``python -m ferroloop [options] script.py [args...]`` / ``python -m ferroloop -m module``.

Runs an unchanged asyncio program on ferroloop: ferroloop's policy is installed first, so the
program's ``asyncio.run``, ``asyncio.new_event_loop``, ``asyncio.get_event_loop`` and
``asyncio.Runner`` create ferroloop loops. ``sys.argv``, ``__main__``, the exit code and
tracebacks are as with ``python script.py``.
"""

import argparse
import os
import runpy
import sys


def _parse(argv):
    parser = argparse.ArgumentParser(
        prog="python -m ferroloop",
        description="Run an asyncio program on the ferroloop event loop.",
    )
    parser.add_argument(
        "--watchdog",
        metavar="SECONDS",
        type=float,
        default=None,
        help="report callbacks that block the loop longer than SECONDS",
    )
    parser.add_argument("--debug", action="store_true", help="asyncio debug mode")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("-m", dest="module", metavar="MODULE", help="run a library module")
    target.add_argument("script", nargs="?", help="path of the script to run")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="arguments of the program")
    return parser.parse_args(argv)


def main(argv=None):
    options = _parse(sys.argv[1:] if argv is None else argv)
    if options.debug:
        os.environ["PYTHONASYNCIODEBUG"] = "1"
    if options.watchdog is not None:
        os.environ["FERROLOOP_WATCHDOG"] = str(options.watchdog)

    import ferroloop

    ferroloop.install()
    if options.module is not None:
        sys.argv = [options.module, *options.args]
        runpy.run_module(options.module, run_name="__main__", alter_sys=True)
    else:
        sys.argv = [options.script, *options.args]
        sys.path[0] = os.path.dirname(os.path.abspath(options.script))
        runpy.run_path(options.script, run_name="__main__")


if __name__ == "__main__":
    main()
