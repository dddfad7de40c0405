//! Steal time: how long a virtual machine's host kept each of its CPUs from running while the
//! guest had work for it (`/proc/stat`'s eighth `cpuN` column). A thread's own accounting
//! (CPU clock, `schedstat`) leaves that time out, so the watchdog adds it back (see
//! `crate::metrics::StealMeter`).

/// Reads every CPU's steal time so far into `out` (indexed by CPU number, in nanoseconds).
/// Returns `false`, leaving `out` empty, where `/proc/stat` cannot be read.
pub fn read_cpu_steal_ns(out: &mut Vec<u64>) -> bool {
    out.clear();
    let Ok(text) = std::fs::read_to_string("/proc/stat") else {
        return false;
    };
    parse_cpu_steal_ticks(&text, out);
    let tick_ns = tick_ns();
    for value in out.iter_mut() {
        *value = value.saturating_mul(tick_ns);
    }
    true
}

/// One clock tick (`USER_HZ`, the unit of `/proc/stat`) in nanoseconds.
fn tick_ns() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        1_000_000_000 / hz as u64
    } else {
        10_000_000
    }
}

/// Parses the `cpuN` lines of `/proc/stat` text into per-CPU steal ticks. A CPU missing from
/// the text (offline) reads 0; a kernel too old to report steal reads 0 everywhere.
pub fn parse_cpu_steal_ticks(text: &str, out: &mut Vec<u64>) {
    out.clear();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("cpu") else {
            // The `cpu` lines come first; stop at the first other line.
            if !out.is_empty() {
                break;
            }
            continue;
        };
        // `cpu` alone (followed by spaces) is the sum over CPUs.
        if !rest.starts_with(|c: char| c.is_ascii_digit()) {
            continue;
        }
        let mut fields = rest.split_ascii_whitespace();
        let Some(Ok(cpu)) = fields.next().map(str::parse::<usize>) else {
            continue;
        };
        let steal = fields
            .nth(7)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0);
        if out.len() <= cpu {
            out.resize(cpu + 1, 0);
        }
        out[cpu] = steal;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_steal_column_of_each_cpu() {
        let text = "cpu  718665 0 226860 1393751 7665 0 58001 287560 0 0\n\
                    cpu0 330870 0 112061 730448 3486 0 29470 143156 0 0\n\
                    cpu2 1 2 3 4 5 6 7 99 0 0\n\
                    intr 1 2 3\n\
                    cpu9 looks like a cpu line but comes after\n";
        let mut out = Vec::new();
        parse_cpu_steal_ticks(text, &mut out);
        assert_eq!(out, vec![143156, 0, 99]);
    }

    #[test]
    fn a_kernel_without_steal_reads_zero() {
        let mut out = Vec::new();
        parse_cpu_steal_ticks("cpu  1 2 3 4\ncpu0 1 2 3 4\n", &mut out);
        assert_eq!(out, vec![0]);
    }

    #[test]
    fn this_machine_is_readable() {
        let mut out = Vec::new();
        if read_cpu_steal_ns(&mut out) {
            assert!(!out.is_empty());
        }
    }
}
