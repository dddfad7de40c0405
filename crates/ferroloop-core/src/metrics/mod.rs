//! Loop metrics and the blocking watchdog's view of the loop (see `docs/observability.md`).
//!
//! [`Probe`] is a block of atomics that the loop's thread writes as it runs and that any other
//! thread (the watchdog, or `loop.metrics()`) reads. The rules that keep it free on the hot
//! path:
//!
//! 1. Counters the loop thread alone writes are bumped with `store(load() + 1, Relaxed)`, a
//!    plain load and store, never a locked read-modify-write.
//! 2. Per callback: one such bump at the start and one load of `Probe::flags` at each end.
//!    No clock is read per callback unless callback timing is switched on
//!    ([`FLAG_TIMING`], the duration histogram) or the watchdog has just reported a block and
//!    waits for its end ([`FLAG_WANT_END`], one clock read).
//! 3. Per iteration: one bump and a compare for the ready-queue depth. The clock is read only
//!    around a poll that blocks (which costs a system call anyway) and when the loop starts
//!    and stops running; the time spent running callbacks is the running time minus the time
//!    spent blocked in the poll.
//!
//! [`StallDetector`] is the watchdog's decision logic, kept here so that it can be tested
//! without a thread, a clock or Python.

use std::sync::atomic::{AtomicI32, AtomicI64, AtomicU64, AtomicU8, Ordering::Relaxed};

use crate::sys::clock::monotonic_ns;
use crate::sys::thread;

/// `Probe::flags`: measure every callback's duration into the histogram.
pub const FLAG_TIMING: u8 = 1;
/// `Probe::flags`: the watchdog reported a block; record when the running callback ends.
pub const FLAG_WANT_END: u8 = 2;

/// Upper bounds (exclusive, in nanoseconds) of the callback-duration histogram's buckets; a
/// last bucket counts the longer ones.
pub const HISTOGRAM_BOUNDS_NS: [u64; 11] = [
    10_000,
    50_000,
    100_000,
    500_000,
    1_000_000,
    5_000_000,
    10_000_000,
    50_000_000,
    100_000_000,
    500_000_000,
    1_000_000_000,
];
pub const HISTOGRAM_BUCKETS: usize = HISTOGRAM_BOUNDS_NS.len() + 1;

#[inline(always)]
fn bump(counter: &AtomicU64) {
    counter.store(counter.load(Relaxed).wrapping_add(1), Relaxed);
}

#[inline(always)]
fn add(counter: &AtomicU64, value: u64) {
    counter.store(counter.load(Relaxed).wrapping_add(value), Relaxed);
}

/// A clock reading that is never 0 (0 means "not started" in the fields below).
#[inline]
fn now_ns() -> i64 {
    monotonic_ns().max(1)
}

/// The index of a duration's bucket in the histogram.
pub fn histogram_bucket(duration_ns: u64) -> usize {
    HISTOGRAM_BOUNDS_NS
        .iter()
        .position(|&bound| duration_ns < bound)
        .unwrap_or(HISTOGRAM_BOUNDS_NS.len())
}

/// Counters and markers of one loop. See the module documentation for who writes what.
#[derive(Default)]
pub struct Probe {
    // Written by the loop thread only.
    iterations: AtomicU64,
    callbacks: AtomicU64,
    max_ready: AtomicU64,
    poll_ns: AtomicU64,
    poll_started: AtomicI64,
    run_ns: AtomicU64,
    run_started: AtomicI64,
    /// `f64::to_bits` of how late (seconds) the last due timer was found.
    timer_lag: AtomicU64,
    timers_due: AtomicU64,
    callback_started: AtomicI64,
    histogram: [AtomicU64; HISTOGRAM_BUCKETS],
    loop_ident: AtomicU64,
    loop_tid: AtomicI32,
    /// When the callback the watchdog reported ended (set once [`FLAG_WANT_END`] is seen).
    block_end: AtomicI64,
    // Written by other threads (rarely).
    flags: AtomicU8,
    reports: AtomicU64,
}

/// A consistent-enough copy of a [`Probe`], for `loop.metrics()`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub iterations: u64,
    pub callbacks: u64,
    pub max_ready: u64,
    /// Seconds the loop has been running (all runs, including the current one).
    pub run_time: f64,
    /// Seconds of it spent blocked in the poll, waiting for I/O or timers.
    pub poll_time: f64,
    /// Lateness (seconds) of the last timer when the loop found it due.
    pub timer_lag: f64,
    pub timers_due: u64,
    pub running: bool,
    pub timing: bool,
    pub histogram: [u64; HISTOGRAM_BUCKETS],
    pub watchdog_reports: u64,
}

impl Probe {
    pub fn new() -> Self {
        Self::default()
    }

    // ---- the loop thread's side (hot) ----

    /// Start of an iteration's batch of `ready` callbacks.
    #[inline(always)]
    pub fn iteration(&self, ready: usize) {
        bump(&self.iterations);
        let ready = ready as u64;
        if ready > self.max_ready.load(Relaxed) {
            self.max_ready.store(ready, Relaxed);
        }
    }

    /// A ready-queue entry is about to run.
    #[inline(always)]
    pub fn callback_begin(&self) {
        bump(&self.callbacks);
        if self.flags.load(Relaxed) & FLAG_TIMING != 0 {
            self.callback_started.store(now_ns(), Relaxed);
        }
    }

    /// The entry started by the last [`callback_begin`](Self::callback_begin) returned.
    #[inline(always)]
    pub fn callback_end(&self) {
        let flags = self.flags.load(Relaxed);
        if flags != 0 {
            self.callback_end_slow(flags);
        }
    }

    #[cold]
    #[inline(never)]
    fn callback_end_slow(&self, flags: u8) {
        let now = now_ns();
        if flags & FLAG_WANT_END != 0 && self.block_end.load(Relaxed) == 0 {
            self.block_end.store(now, Relaxed);
        }
        if flags & FLAG_TIMING != 0 {
            let started = self.callback_started.load(Relaxed);
            if started != 0 {
                let duration = now.saturating_sub(started).max(0) as u64;
                bump(&self.histogram[histogram_bucket(duration)]);
            }
        }
    }

    /// The loop is about to block in its poll; returns the time to give to [`unpark`](Self::unpark).
    #[inline]
    pub fn park(&self) -> i64 {
        let now = now_ns();
        self.poll_started.store(now, Relaxed);
        now
    }

    #[inline]
    pub fn unpark(&self, parked_at: i64) {
        let now = now_ns();
        add(&self.poll_ns, now.saturating_sub(parked_at).max(0) as u64);
        self.poll_started.store(0, Relaxed);
    }

    /// A timer was found due `lag` seconds after its deadline.
    #[inline(always)]
    pub fn timer_due(&self, lag: f64) {
        self.timer_lag.store(lag.max(0.0).to_bits(), Relaxed);
        bump(&self.timers_due);
    }

    /// Mark the loop as running on the calling thread until the guard is dropped.
    pub fn running(&self) -> RunGuard<'_> {
        self.loop_ident.store(thread::current_ident(), Relaxed);
        self.loop_tid.store(thread::current_tid(), Relaxed);
        let started = now_ns();
        self.run_started.store(started, Relaxed);
        RunGuard {
            probe: self,
            started,
        }
    }

    // ---- other threads' side (cold) ----

    /// Moves whenever the loop runs a callback or starts an iteration.
    #[inline]
    pub fn progress(&self) -> u64 {
        self.iterations
            .load(Relaxed)
            .wrapping_add(self.callbacks.load(Relaxed))
    }

    pub fn is_running(&self) -> bool {
        self.run_started.load(Relaxed) != 0
    }

    /// `threading.get_ident()` of the thread that runs (or last ran) the loop.
    pub fn loop_ident(&self) -> u64 {
        self.loop_ident.load(Relaxed)
    }

    /// Time the thread that runs (or last ran) the loop has been runnable (on a CPU or
    /// waiting for one): its share of a block tells CPU-bound work from a blocking call.
    pub fn loop_cpu_ns(&self) -> Option<u64> {
        thread::thread_runnable_ns(self.loop_tid.load(Relaxed))
    }

    /// The kernel's id of the thread that runs (or last ran) the loop.
    pub fn loop_tid(&self) -> i32 {
        self.loop_tid.load(Relaxed)
    }

    pub fn set_timing(&self, enabled: bool) {
        if enabled {
            self.flags.fetch_or(FLAG_TIMING, Relaxed);
        } else {
            self.flags.fetch_and(!FLAG_TIMING, Relaxed);
        }
    }

    /// Ask the loop thread to record when the current callback ends.
    pub fn arm_block_end(&self) {
        self.block_end.store(0, Relaxed);
        self.flags.fetch_or(FLAG_WANT_END, Relaxed);
    }

    /// When the loop thread saw the callback the watchdog reported end, if it did yet.
    pub fn block_end(&self) -> Option<i64> {
        match self.block_end.load(Relaxed) {
            0 => None,
            end => Some(end),
        }
    }

    /// Stop recording block ends; return the one recorded, if any.
    pub fn take_block_end(&self) -> Option<i64> {
        self.flags.fetch_and(!FLAG_WANT_END, Relaxed);
        match self.block_end.swap(0, Relaxed) {
            0 => None,
            end => Some(end),
        }
    }

    pub fn count_report(&self) {
        self.reports.fetch_add(1, Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        let now = now_ns();
        let run_started = self.run_started.load(Relaxed);
        let poll_started = self.poll_started.load(Relaxed);
        let mut run_ns = self.run_ns.load(Relaxed);
        let mut poll_ns = self.poll_ns.load(Relaxed);
        if run_started != 0 {
            run_ns += now.saturating_sub(run_started).max(0) as u64;
            if poll_started != 0 {
                poll_ns += now.saturating_sub(poll_started).max(0) as u64;
            }
        }
        let mut histogram = [0u64; HISTOGRAM_BUCKETS];
        for (slot, counter) in histogram.iter_mut().zip(&self.histogram) {
            *slot = counter.load(Relaxed);
        }
        Snapshot {
            iterations: self.iterations.load(Relaxed),
            callbacks: self.callbacks.load(Relaxed),
            max_ready: self.max_ready.load(Relaxed),
            run_time: run_ns as f64 / 1e9,
            poll_time: poll_ns.min(run_ns) as f64 / 1e9,
            timer_lag: f64::from_bits(self.timer_lag.load(Relaxed)),
            timers_due: self.timers_due.load(Relaxed),
            running: run_started != 0,
            timing: self.flags.load(Relaxed) & FLAG_TIMING != 0,
            histogram,
            watchdog_reports: self.reports.load(Relaxed),
        }
    }

    /// Zero the counters (not the running state, nor the flags).
    pub fn reset(&self) {
        for counter in [
            &self.iterations,
            &self.callbacks,
            &self.max_ready,
            &self.poll_ns,
            &self.timers_due,
            &self.reports,
        ] {
            counter.store(0, Relaxed);
        }
        self.timer_lag.store(0, Relaxed);
        for counter in &self.histogram {
            counter.store(0, Relaxed);
        }
        self.run_ns.store(0, Relaxed);
        if self.run_started.load(Relaxed) != 0 {
            self.run_started.store(now_ns(), Relaxed);
        }
    }
}

/// Returned by [`Probe::running`].
pub struct RunGuard<'a> {
    probe: &'a Probe,
    started: i64,
}

impl Drop for RunGuard<'_> {
    fn drop(&mut self) {
        let probe = self.probe;
        // `reset()` may have moved the start of the current run.
        let started = probe.run_started.load(Relaxed).max(self.started);
        add(
            &probe.run_ns,
            now_ns().saturating_sub(started).max(0) as u64,
        );
        probe.run_started.store(0, Relaxed);
    }
}

/// The steal time of the CPUs a thread ran on, summed over the watchdog's looks at it: time a
/// virtual machine's host took from the thread while it wanted to run, which its own
/// accounting ([`thread::thread_runnable_ns`]) leaves out. On a host that takes half of its
/// CPUs' time, a CPU-bound thread is runnable for only half of the wall time.
///
/// Each look charges the steal of the CPU the thread is on now since the previous look. A
/// thread that moved between CPUs in between is charged its new CPU's steal, and a thread
/// that slept is charged steal it did not suffer; the watchdog divides the thread's runnable
/// time by the wall time less the steal, so a sleeping thread still scores near 0.
#[derive(Debug, Default)]
pub struct StealMeter {
    /// Every CPU's steal time at the previous look (ns).
    previous: Vec<u64>,
    current: Vec<u64>,
    charged_ns: u64,
}

impl StealMeter {
    /// The steal time charged to thread `tid` so far, or `None` when it cannot be known (no
    /// `/proc`, the thread is gone).
    pub fn charged_ns(&mut self, tid: i32) -> Option<u64> {
        let cpu = thread::thread_processor(tid)?;
        if !crate::sys::steal::read_cpu_steal_ns(&mut self.current) {
            return None;
        }
        Some(self.charge(cpu))
    }

    /// Charges CPU `cpu`'s steal since the previous reading (now in `current`).
    fn charge(&mut self, cpu: usize) -> u64 {
        if let (Some(&now), Some(&before)) = (self.current.get(cpu), self.previous.get(cpu)) {
            self.charged_ns += now.saturating_sub(before);
        }
        std::mem::swap(&mut self.previous, &mut self.current);
        self.charged_ns
    }
}

/// One look of the watchdog at the loop.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub now_ns: i64,
    pub running: bool,
    pub parked: bool,
    pub progress: u64,
    pub cpu_ns: Option<u64>,
    /// Steal time charged to the loop thread so far ([`StealMeter`]); `None` counts as none.
    pub stolen_ns: Option<u64>,
}

/// What the watchdog must report.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StallEvent {
    /// The loop has been stuck in one callback (or one stretch of its own code) for
    /// `blocked_ns`, since about `started_ns`. `cpu_fraction` is the share of that time the
    /// loop thread was runnable (on a CPU or waiting for one), leaving out the time the host
    /// took from its CPU (near 1: CPU-bound work; near 0: a blocking call).
    Blocked {
        started_ns: i64,
        blocked_ns: i64,
        cpu_fraction: Option<f64>,
    },
    /// The block reported before ended after `total_ns`.
    Released {
        started_ns: i64,
        total_ns: i64,
        cpu_fraction: Option<f64>,
    },
}

/// The watchdog's decision logic: the loop is blocked when its progress counter has not moved
/// for `threshold_ns` while it runs and is not parked in its poll.
#[derive(Debug, Clone)]
pub struct StallDetector {
    threshold_ns: i64,
    progress: u64,
    /// The sample before the first that saw `progress` (the block began after it).
    previous_ns: i64,
    /// The first sample that saw `progress` while busy.
    first_seen_ns: i64,
    /// Where the runnable share is measured from: the stretch's first sample, or its first
    /// with a steal reading (the watchdog reads steal only while a stretch goes on).
    basis_ns: i64,
    basis_cpu_ns: Option<u64>,
    basis_stolen_ns: Option<u64>,
    last_cpu_ns: Option<u64>,
    last_stolen_ns: Option<u64>,
    last_seen_ns: i64,
    last_sample_ns: i64,
    busy: bool,
    reported: Option<i64>,
}

impl StallDetector {
    pub fn new(threshold_ns: i64) -> Self {
        StallDetector {
            threshold_ns: threshold_ns.max(1),
            progress: u64::MAX,
            previous_ns: 0,
            first_seen_ns: 0,
            basis_ns: 0,
            basis_cpu_ns: None,
            basis_stolen_ns: None,
            last_cpu_ns: None,
            last_stolen_ns: None,
            last_seen_ns: 0,
            last_sample_ns: 0,
            busy: false,
            reported: None,
        }
    }

    /// The estimated start of the current stretch: between the previous sample and the first
    /// that saw it, so the middle (the error is at most half a watchdog tick).
    fn started_ns(&self) -> i64 {
        if self.previous_ns == 0 {
            self.first_seen_ns
        } else {
            self.previous_ns + (self.first_seen_ns - self.previous_ns) / 2
        }
    }

    /// The loop thread's runnable share of the wall time since the basis, the wall time less
    /// what the host took from its CPU: for a look at `until_ns` that read `until_cpu` and
    /// `until_stolen` (the watchdog takes one more after waiting for the GIL, see
    /// `ferroloop-py`'s `watchdog.rs`).
    pub fn cpu_fraction(
        &self,
        until_ns: i64,
        until_cpu: Option<u64>,
        until_stolen: Option<u64>,
    ) -> Option<f64> {
        let (first, last) = (self.basis_cpu_ns?, until_cpu?);
        let wall = until_ns - self.basis_ns;
        if wall <= 0 {
            return None;
        }
        let runnable = last.saturating_sub(first) as f64;
        let stolen = match (self.basis_stolen_ns, until_stolen) {
            (Some(first), Some(last)) => last.saturating_sub(first) as f64,
            _ => 0.0,
        };
        let available = wall as f64 - stolen;
        if available <= 0.0 {
            // The host took all of it (steal is counted in 10 ms ticks, so it can overshoot):
            // whatever ran, ran all the time it could.
            return Some(if runnable > 0.0 { 1.0 } else { 0.0 });
        }
        Some((runnable / available).clamp(0.0, 1.0))
    }

    /// Whether a block was reported and its end not yet.
    pub fn reported(&self) -> bool {
        self.reported.is_some()
    }

    /// Whether `sample` continues the current stretch: the loop busy in the same callback as
    /// at the previous look. Only then does the watchdog read steal time (`/proc/stat`, whose
    /// size grows with the number of CPUs), so a loop that keeps moving costs no reading.
    pub fn continues(&self, sample: &Sample) -> bool {
        sample.running && !sample.parked && self.busy && sample.progress == self.progress
    }

    /// Look at a sample; `block_end_ns` is when the loop thread saw the reported callback end,
    /// if it did.
    pub fn observe(&mut self, sample: Sample, block_end_ns: Option<i64>) -> Option<StallEvent> {
        let busy = sample.running && !sample.parked;
        let previous_sample_ns = std::mem::replace(&mut self.last_sample_ns, sample.now_ns);
        if self.continues(&sample) {
            self.last_seen_ns = sample.now_ns;
            self.last_cpu_ns = sample.cpu_ns;
            self.last_stolen_ns = sample.stolen_ns;
            let blocked_ns = sample.now_ns - self.started_ns();
            if self.reported.is_none() && blocked_ns >= self.threshold_ns {
                let started_ns = self.started_ns();
                self.reported = Some(started_ns);
                return Some(StallEvent::Blocked {
                    started_ns,
                    blocked_ns,
                    cpu_fraction: self.cpu_fraction(sample.now_ns, sample.cpu_ns, sample.stolen_ns),
                });
            }
            if self.basis_stolen_ns.is_none() && sample.stolen_ns.is_some() {
                // The first steal reading of this stretch: measure the share from here.
                self.basis_ns = sample.now_ns;
                self.basis_cpu_ns = sample.cpu_ns;
                self.basis_stolen_ns = sample.stolen_ns;
            }
            return None;
        }
        // The loop moved (or parked, or stopped running).
        let event = self.reported.take().map(|started_ns| {
            let end = block_end_ns
                .filter(|&end| end >= self.last_seen_ns && end <= sample.now_ns)
                .unwrap_or(sample.now_ns);
            StallEvent::Released {
                started_ns,
                total_ns: end - started_ns,
                cpu_fraction: self.cpu_fraction(
                    self.last_seen_ns,
                    self.last_cpu_ns,
                    self.last_stolen_ns,
                ),
            }
        });
        self.previous_ns = previous_sample_ns;
        self.progress = sample.progress;
        self.busy = busy;
        self.first_seen_ns = sample.now_ns;
        self.last_seen_ns = sample.now_ns;
        self.basis_ns = sample.now_ns;
        self.basis_cpu_ns = sample.cpu_ns;
        self.basis_stolen_ns = sample.stolen_ns;
        self.last_cpu_ns = sample.cpu_ns;
        self.last_stolen_ns = sample.stolen_ns;
        event
    }
}

#[cfg(test)]
mod tests;
