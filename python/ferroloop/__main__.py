"""``python -m ferroloop [--watchdog SECONDS] script.py [args...]``

Run a script (or ``-m module``) with ferroloop as asyncio's event loop (``ferroloop.install()``),
optionally with the blocking watchdog on every loop it creates.

``python -m ferroloop --version`` prints ferroloop's version, ``--info`` what a bug report needs
(versions, build profile, platform, the loop ``asyncio.run`` would use, the watchdog).
"""

import argparse
import asyncio
import os
import platform
import runpy
import sys


def _split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
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


def _type_name(obj: object) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def _asyncio_run_loop() -> tuple[str, str]:
    """The class of the loop ``asyncio.run(main())`` would run on now (from the policy, as
    ``asyncio.run`` without ``loop_factory`` gets it), and the policy's class."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        policy = asyncio.get_event_loop_policy()
        loop = policy.new_event_loop()
    try:
        return _type_name(loop), _type_name(policy)
    finally:
        loop.close()


def _debug_mode() -> bool:
    is_debug = getattr(asyncio.coroutines, "_is_debug_mode", None)
    if is_debug is not None:
        return bool(is_debug())
    return sys.flags.dev_mode or bool(os.environ.get("PYTHONASYNCIODEBUG"))


def _watchdog_state() -> str:
    from ferroloop import _watchdog

    if _watchdog.default_threshold is not None:
        return f"on, {_watchdog.default_threshold:g} s (--watchdog) for every ferroloop loop"
    threshold = _watchdog._env_threshold()
    if threshold is not None:
        return f"on, {threshold:g} s ({_watchdog.ENV_VAR}) for every ferroloop loop"
    if _debug_mode():
        return "on in debug mode, at each loop's slow_callback_duration (0.1 s by default)"
    return (
        f"off (switch it on with {_watchdog.ENV_VAR}=SECONDS, --watchdog SECONDS, "
        "loop.set_watchdog or debug mode)"
    )


def info_lines() -> list[str]:
    """``python -m ferroloop --info``: one ``name: value`` line each."""
    import ferroloop
    from ferroloop import _core

    loop, policy = _asyncio_run_loop()
    libc = " ".join(part for part in platform.libc_ver() if part)
    lines = [
        ("ferroloop", f"{ferroloop.__version__} ({_core.BUILD_PROFILE} build)"),
        ("ferroloop path", os.path.dirname(os.path.abspath(ferroloop.__file__))),
        (
            "Python",
            f"{platform.python_implementation()} {platform.python_version()} "
            f"({', '.join(platform.python_build())}) {platform.python_compiler()}",
        ),
        ("Python executable", sys.executable),
        ("platform", f"{platform.platform()} {platform.machine()}" + (f" {libc}" if libc else "")),
        ("asyncio.run loop", f"{loop} (policy {policy})"),
        ("asyncio debug mode", "on" if _debug_mode() else "off"),
        ("watchdog", _watchdog_state()),
    ]
    return [f"{name}: {value}" for name, value in lines]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ferroloop",
        usage="%(prog)s [-h] [--version] [--info] [--watchdog SECONDS] "
        "(script.py | -m MODULE) [args ...]",
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
    parser.add_argument("--version", action="store_true", help="print ferroloop's version and exit")
    parser.add_argument(
        "--info",
        action="store_true",
        help="print what a bug report needs (versions, build, platform, which loop "
        "asyncio.run uses, watchdog) and exit",
    )
    parser.add_argument("target", nargs="?", help="the script to run")
    own, rest = _split_argv(sys.argv[1:] if argv is None else list(argv))
    options = parser.parse_args(own)
    options.args = rest
    if (options.version or options.info) and (
        options.module is not None or options.target is not None
    ):
        parser.error("--version and --info take no script or module")
    if (
        not (options.version or options.info)
        and options.module is None
        and (options.target is None)
    ):
        parser.error("a script or -m MODULE is required")

    import ferroloop
    from ferroloop import _watchdog

    if options.watchdog is not None:
        try:
            _watchdog.default_threshold = _watchdog._parse_threshold(options.watchdog, "--watchdog")
        except (TypeError, ValueError) as exc:
            parser.error(str(exc))
    if options.version:
        print(f"ferroloop {ferroloop.__version__}")
        return 0
    if options.info:
        print("\n".join(info_lines()))
        return 0
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
