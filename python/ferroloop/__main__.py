"""``python -m ferroloop [--watchdog SECONDS] script.py [args...]``

Run a script (or ``-m module``) with ferroloop as asyncio's event loop (``ferroloop.install()``),
optionally with the blocking watchdog on every loop it creates.
"""

import argparse
import os
import runpy
import sys


def _split_argv(argv):
    """Split the command line as ``python`` does: ferroloop's own options, up to and including
    the script or ``-m MODULE``, then everything after it, which belongs to the program (so
    ``python -m ferroloop -m hypercorn --workers 0 app:app`` passes ``--workers 0``)."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "-m":
            return argv[: i + 2], argv[i + 2 :]
        if arg.startswith("-m") or not arg.startswith("-"):  # -mMODULE, or the script
            return argv[: i + 1], argv[i + 1 :]
        if arg == "--":
            return argv[: i + 2], argv[i + 2 :]
        i += 2 if arg == "--watchdog" else 1
    return argv, []


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m ferroloop",
        usage="%(prog)s [-h] [--watchdog SECONDS] (script.py | -m MODULE) [args ...]",
        description="Run a Python script with ferroloop as the asyncio event loop.",
    )
    parser.add_argument(
        "--watchdog",
        metavar="SECONDS",
        type=float,
        default=None,
        help="report callbacks that block the event loop for longer than SECONDS",
    )
    parser.add_argument("-m", dest="module", metavar="MODULE", help="run a library module")
    parser.add_argument("target", nargs="?", help="the script to run")
    own, rest = _split_argv(sys.argv[1:] if argv is None else list(argv))
    options = parser.parse_args(own)
    options.args = rest
    if options.module is None and options.target is None:
        parser.error("a script or -m MODULE is required")

    import ferroloop
    from ferroloop import _watchdog

    if options.watchdog is not None:
        try:
            _watchdog.default_threshold = _watchdog._parse_threshold(options.watchdog, "--watchdog")
        except (TypeError, ValueError) as exc:
            parser.error(str(exc))
    ferroloop.install()

    if options.module is not None:
        rest = [options.target] if options.target is not None else []
        sys.argv = [options.module, *rest, *options.args]
        runpy.run_module(options.module, run_name="__main__", alter_sys=True)
    else:
        sys.argv = [options.target, *options.args]
        sys.path[0] = os.path.dirname(os.path.abspath(options.target))
        runpy.run_path(options.target, run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
