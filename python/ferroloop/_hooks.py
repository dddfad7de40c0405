"""Cold paths called by the native core.

Everything here runs only on errors, in debug mode or for ``repr``: it is written in Python
so that its output is exactly asyncio's (same messages, same log records).
"""

from __future__ import annotations

import inspect
import sys
import traceback
from asyncio import base_events, coroutines, format_helpers
from typing import Any

from . import _core

# 3.13's _format_callback_source takes debug= (Handle._run passes the loop's debug flag;
# 3.13.0 shows the callback's arguments only in debug mode).
_SOURCE_TAKES_DEBUG = (
    "debug" in inspect.signature(format_helpers._format_callback_source).parameters
)


def report_callback_error(loop: Any, handle: Any, exc: BaseException) -> None:
    """asyncio: ``Handle._run``'s ``except BaseException`` branch."""
    if _SOURCE_TAKES_DEBUG:
        cb = format_helpers._format_callback_source(
            handle._callback,
            handle._args,
            debug=loop.get_debug(),  # type: ignore[call-arg]  # 3.13+
        )
    else:
        cb = format_helpers._format_callback_source(handle._callback, handle._args)
    context = {
        "message": f"Exception in callback {cb}",
        "exception": exc,
        "handle": handle,
    }
    source_traceback = handle._source_traceback
    if source_traceback:
        context["source_traceback"] = source_traceback
    loop.call_exception_handler(context)


def handle_repr(handle: Any) -> str:
    """asyncio: ``Handle.__repr__`` / ``TimerHandle.__repr__`` on a native handle."""
    frozen = handle._repr
    if frozen is not None:
        return str(frozen)
    info = handle.__class__._repr_info(handle)
    return "<{}>".format(" ".join(info))


def noncallable_message(callback: object, method: str) -> str:
    """asyncio: the messages of ``BaseEventLoop._check_callback``."""
    if coroutines.iscoroutine(callback) or coroutines.iscoroutinefunction(callback):
        return f"coroutines cannot be used with {method}()"
    return f"a callable object was expected by {method}(), got {callback!r}"


def extract_stack() -> traceback.StackSummary:
    """The source traceback of a handle created by the calling Python frame."""
    return format_helpers.extract_stack(sys._getframe(1))


def log_slow_callback(loop: Any, handle: Any, elapsed: float) -> None:
    """asyncio: the slow-callback warning of ``_run_once`` in debug mode."""
    if elapsed >= loop.slow_callback_duration:
        # Looked up at call time, as asyncio's own _run_once does (tests patch it).
        base_events.logger.warning(  # type: ignore[attr-defined]  # asyncio's own, private
            "Executing %s took %.3f seconds",
            base_events._format_handle(handle),  # type: ignore[attr-defined]
            elapsed,
        )


# The native module calls these functions; it finds them here, registered at import, instead
# of importing ``ferroloop._hooks`` by name.
_core._register_hooks(sys.modules[__name__])
