use super::*;

const MS: i64 = 1_000_000;
/// Sample times are offset: a clock reading of 0 means "none".
const T0: i64 = 1_000;

fn sample(now_ms: i64, progress: u64) -> Sample {
    Sample {
        now_ns: (T0 + now_ms) * MS,
        running: true,
        parked: false,
        progress,
        cpu_ns: Some(0),
        stolen_ns: None,
    }
}

#[test]
fn moving_loop_is_never_reported() {
    let mut detector = StallDetector::new(100 * MS);
    for i in 0..100 {
        assert_eq!(detector.observe(sample(i * 25, i as u64), None), None);
    }
}

#[test]
fn parked_or_idle_loop_is_never_reported() {
    let mut detector = StallDetector::new(100 * MS);
    for i in 0..100 {
        let mut s = sample(i * 25, 7);
        s.parked = i % 2 == 0;
        s.running = i % 3 != 0 || s.parked;
        if !s.parked && s.running {
            s.parked = true;
        }
        assert_eq!(detector.observe(s, None), None);
        let mut idle = sample(i * 25 + 10, 7);
        idle.running = false;
        assert_eq!(detector.observe(idle, None), None);
    }
}

#[test]
fn stuck_loop_is_reported_once_then_released() {
    let mut detector = StallDetector::new(100 * MS);
    assert_eq!(detector.observe(sample(0, 1), None), None);
    // The block starts between 0 and 25 ms.
    assert_eq!(detector.observe(sample(25, 2), None), None);
    assert_eq!(detector.observe(sample(50, 2), None), None);
    assert_eq!(detector.observe(sample(100, 2), None), None);
    let Some(StallEvent::Blocked {
        started_ns,
        blocked_ns,
        ..
    }) = detector.observe(sample(125, 2), None)
    else {
        panic!("no report")
    };
    assert_eq!(started_ns, (T0 + 12) * MS + MS / 2);
    assert_eq!(blocked_ns, (T0 + 125) * MS - started_ns);
    assert!(detector.reported());
    assert_eq!(detector.observe(sample(150, 2), None), None);
    assert_eq!(detector.observe(sample(500, 2), None), None);
    let released = detector.observe(sample(525, 3), Some((T0 + 510) * MS));
    assert_eq!(
        released,
        Some(StallEvent::Released {
            started_ns,
            total_ns: (T0 + 510) * MS - started_ns,
            cpu_fraction: Some(0.0)
        })
    );
    assert!(!detector.reported());
    assert_eq!(detector.observe(sample(550, 3), None), None);
}

#[test]
fn cpu_fraction_tells_cpu_bound_from_blocking() {
    let mut detector = StallDetector::new(50 * MS);
    let mut s = sample(0, 1);
    detector.observe(s, None);
    s = sample(10, 2);
    s.cpu_ns = Some(1_000);
    detector.observe(s, None);
    s = sample(110, 2);
    s.cpu_ns = Some(1_000 + 95 * MS as u64);
    match detector.observe(s, None) {
        Some(StallEvent::Blocked {
            cpu_fraction: Some(f),
            ..
        }) => assert!((f - 0.95).abs() < 1e-9),
        other => panic!("{other:?}"),
    }
}

/// The fraction of a block over 100 ms in which the loop thread was runnable for
/// `runnable_ms`, its CPU's steal having grown by `stolen_ms` (`None`: unknown).
fn fraction_with_steal(runnable_ms: u64, stolen_ms: Option<u64>) -> Option<f64> {
    let mut detector = StallDetector::new(50 * MS);
    detector.observe(sample(0, 1), None);
    let mut s = sample(10, 2);
    s.cpu_ns = Some(1_000);
    s.stolen_ns = stolen_ms.map(|_| 7 * MS as u64);
    detector.observe(s, None);
    s = sample(110, 2);
    s.cpu_ns = Some(1_000 + runnable_ms * MS as u64);
    s.stolen_ns = stolen_ms.map(|ms| (7 + ms) * MS as u64);
    match detector.observe(s, None) {
        Some(StallEvent::Blocked { cpu_fraction, .. }) => cpu_fraction,
        other => panic!("{other:?}"),
    }
}

#[test]
fn steal_time_is_left_out_of_the_wall_time() {
    // A CPU-bound thread on a host that took half of its CPU.
    assert_eq!(fraction_with_steal(50, Some(50)), Some(1.0));
    // Without the correction it would read as a blocking call.
    assert_eq!(fraction_with_steal(50, None), Some(0.5));
    // A thread blocked in a system call stays near 0 however much the host takes.
    assert_eq!(fraction_with_steal(0, Some(60)), Some(0.0));
    assert_eq!(fraction_with_steal(10, Some(60)), Some(0.25));
    // Steal counted in whole ticks can exceed the wall time.
    assert_eq!(fraction_with_steal(3, Some(110)), Some(1.0));
    assert_eq!(fraction_with_steal(0, Some(110)), Some(0.0));
}

#[test]
fn steal_is_read_only_while_a_stretch_goes_on_and_measured_from_its_first_reading() {
    let mut detector = StallDetector::new(50 * MS);
    let first = sample(0, 1);
    assert!(!detector.continues(&first));
    detector.observe(first, None);
    // The loop moved: a new stretch, no steal read.
    let mut s = sample(10, 2);
    assert!(!detector.continues(&s));
    s.cpu_ns = Some(0);
    detector.observe(s, None);
    // Still in the same callback: the watchdog reads steal from here on.
    s = sample(20, 2);
    assert!(detector.continues(&s));
    s.cpu_ns = Some(5 * MS as u64);
    s.stolen_ns = Some(1_000 * MS as u64);
    assert_eq!(detector.observe(s, None), None);
    // 100 ms later: runnable 50 ms of it, the host took the other 50.
    s = sample(120, 2);
    s.cpu_ns = Some(55 * MS as u64);
    s.stolen_ns = Some(1_050 * MS as u64);
    match detector.observe(s, None) {
        Some(StallEvent::Blocked {
            cpu_fraction: Some(f),
            ..
        }) => assert_eq!(f, 1.0),
        other => panic!("{other:?}"),
    }
    // A parked loop does not continue a stretch.
    let mut parked = sample(130, 2);
    parked.parked = true;
    assert!(!detector.continues(&parked));
}

#[test]
fn a_block_reported_at_the_first_steal_reading_is_measured_without_it() {
    let mut detector = StallDetector::new(50 * MS);
    detector.observe(sample(0, 1), None);
    let mut s = sample(10, 2);
    s.cpu_ns = Some(0);
    detector.observe(s, None);
    s = sample(70, 2);
    s.cpu_ns = Some(30 * MS as u64);
    s.stolen_ns = Some(1_000 * MS as u64);
    match detector.observe(s, None) {
        Some(StallEvent::Blocked {
            cpu_fraction: Some(f),
            ..
        }) => assert!((f - 0.5).abs() < 1e-9, "{f}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_steal_meter_charges_the_cpu_the_thread_is_on() {
    let mut meter = StealMeter {
        current: vec![100, 1_000],
        ..StealMeter::default()
    };
    // The first look has nothing to compare with.
    assert_eq!(meter.charge(1), 0);
    meter.current = vec![150, 1_400];
    assert_eq!(meter.charge(1), 400);
    // The thread moved to CPU 0: charged CPU 0's steal since the previous look.
    meter.current = vec![170, 2_000];
    assert_eq!(meter.charge(0), 420);
    // A CPU that was not there before (came online) is charged from the next look.
    meter.current = vec![170, 2_000, 5_000];
    assert_eq!(meter.charge(2), 420);
    meter.current = vec![170, 2_000, 5_030];
    assert_eq!(meter.charge(2), 450);
}

#[test]
fn histogram_buckets() {
    assert_eq!(histogram_bucket(0), 0);
    assert_eq!(histogram_bucket(9_999), 0);
    assert_eq!(histogram_bucket(10_000), 1);
    assert_eq!(histogram_bucket(2_000_000_000), HISTOGRAM_BUCKETS - 1);
}

#[test]
fn probe_counts() {
    let probe = Probe::new();
    {
        let _running = probe.running();
        assert!(probe.is_running());
        probe.iteration(3);
        probe.iteration(1);
        for _ in 0..3 {
            probe.callback_begin();
            probe.callback_end();
        }
        probe.set_timing(true);
        probe.callback_begin();
        probe.callback_end();
        let parked = probe.park();
        probe.unpark(parked);
        probe.timer_due(0.25);
    }
    let snap = probe.snapshot();
    assert!(!snap.running);
    assert_eq!(snap.iterations, 2);
    assert_eq!(snap.callbacks, 4);
    assert_eq!(snap.max_ready, 3);
    assert_eq!(snap.histogram.iter().sum::<u64>(), 1);
    assert_eq!(snap.timer_lag, 0.25);
    assert!(snap.run_time >= snap.poll_time);
    assert_eq!(probe.loop_ident(), crate::sys::thread::current_ident());
    probe.arm_block_end();
    probe.callback_begin();
    probe.callback_end();
    assert!(probe.take_block_end().is_some());
    assert!(probe.take_block_end().is_none());
    probe.reset();
    assert_eq!(probe.snapshot().callbacks, 0);
}
