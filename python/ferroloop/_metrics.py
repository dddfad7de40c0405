"""``loop.metrics()``: a snapshot of the loop's native counters.

The counters are kept by the loop thread in plain atomics (``ferroloop_core::metrics::Probe``);
reading them costs the loop nothing. See ``docs/observability.md``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, cast

from . import _core

__all__ = ("LoopMetrics",)

_BOUNDS = tuple(_core._histogram_bounds()) + (float("inf"),)


@dataclasses.dataclass(frozen=True)
class LoopMetrics:
    """Counters of one loop since it was created (or since ``metrics(reset=True)``)."""

    #: Iterations of the loop (``_run_once``) that ran a batch of callbacks.
    iterations: int
    #: Ready-queue entries run (callbacks, task steps, I/O callbacks, due timers).
    callbacks: int
    #: Seconds the loop has been running (``run_forever``/``run_until_complete``).
    run_time: float
    #: Seconds of ``run_time`` spent blocked in the poll, waiting for I/O or timers.
    poll_time: float
    #: Seconds of ``run_time`` spent running callbacks (and the loop's own work).
    busy_time: float
    #: The largest number of callbacks one iteration had to run.
    max_ready: int
    #: How late (seconds) the last timer was when the loop found it due.
    loop_lag: float
    #: Timers that came due.
    timers: int
    #: Whether callback durations are being measured (``set_callback_timing``).
    callback_timing: bool
    #: Callback durations: upper bound of the bucket (seconds, ``inf`` last) -> count.
    #: Filled only while ``callback_timing`` is on.
    callback_durations: dict[float, int]
    #: Blocks the watchdog reported.
    watchdog_reports: int
    #: Whether the loop is running now.
    running: bool

    @property
    def busy_fraction(self) -> float:
        """Share of the running time spent running callbacks."""
        return self.busy_time / self.run_time if self.run_time > 0 else 0.0


def snapshot(loop: Any, reset: bool = False) -> LoopMetrics:
    raw = _core._metrics(loop)
    if reset:
        _core._reset_metrics(loop)
    run_time = raw["run_time"]
    poll_time = raw["poll_time"]
    return LoopMetrics(
        iterations=raw["iterations"],
        callbacks=raw["callbacks"],
        run_time=run_time,
        poll_time=poll_time,
        busy_time=max(run_time - poll_time, 0.0),
        max_ready=raw["max_ready"],
        loop_lag=raw["timer_lag"],
        timers=raw["timers_due"],
        callback_timing=raw["callback_timing"],
        callback_durations=dict(zip(_BOUNDS, raw["histogram"], strict=True)),
        watchdog_reports=raw["watchdog_reports"],
        running=raw["running"],
    )


class MetricsMixin:
    """``metrics``/``set_callback_timing`` for ``ferroloop.Loop``."""

    def metrics(self, *, reset: bool = False) -> LoopMetrics:
        """A snapshot of the loop's counters; ``reset=True`` zeroes them afterwards.

        Safe to call from any thread.
        """
        return snapshot(cast(_core.Loop, self), reset)

    def set_callback_timing(self, enabled: bool = True) -> None:
        """Measure every callback's duration into ``metrics().callback_durations``.

        Off by default: it reads the clock twice per callback.
        """
        _core._set_callback_timing(cast(_core.Loop, self), bool(enabled))
