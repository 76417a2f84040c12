//! CPU time spent by this process (`/proc/self/stat`) and by its threads of one name
//! (`/proc/self/task/*/schedstat`, nanoseconds; `stat` ticks where schedstat is missing): the
//! in-process registry runs on threads of its own ([`REGISTRY_THREAD`]), so its CPU during a
//! pool start is the change of their times.

use std::collections::BTreeMap;

/// Name of the in-process registry's runtime threads when a run measures pools (at most 15
/// bytes: the kernel truncates thread names to that).
pub const REGISTRY_THREAD: &str = "tb-registry";

/// Clock ticks per second of `utime`/`stime` (`sysconf(_SC_CLK_TCK)`, 100 on Linux).
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// `(comm, utime + stime)` of one `stat` line. `comm` sits in parentheses and may hold spaces
/// or parentheses itself, so the fields are counted after the last `)`.
pub fn parse_stat(text: &str) -> Option<(String, u64)> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_string();
    let rest: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // After `)`: state (field 3) … utime (14), stime (15).
    let utime: u64 = rest.get(11)?.parse().ok()?;
    let stime: u64 = rest.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

/// The first field of a `schedstat` line: nanoseconds on a CPU.
pub fn parse_schedstat(text: &str) -> Option<u64> {
    text.split_whitespace().next()?.parse().ok()
}

/// Nanoseconds a task (`/proc/self/task/TID`) ran: schedstat, else its `stat` ticks.
fn task_cpu_ns(dir: &std::path::Path) -> Option<u64> {
    if let Some(ns) = std::fs::read_to_string(dir.join("schedstat"))
        .ok()
        .as_deref()
        .and_then(parse_schedstat)
    {
        return Some(ns);
    }
    let (_, ticks) = parse_stat(&std::fs::read_to_string(dir.join("stat")).ok()?)?;
    Some((ticks as f64 * 1e9 / ticks_per_second()) as u64)
}

/// CPU nanoseconds of some threads at one instant, by thread id.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ThreadCpu {
    ns: BTreeMap<u32, u64>,
}

impl ThreadCpu {
    /// The threads of this process named `name`.
    pub fn named(name: &str) -> ThreadCpu {
        let mut ns = BTreeMap::new();
        if let Ok(rd) = std::fs::read_dir("/proc/self/task") {
            for e in rd.flatten() {
                let Some(tid) = e.file_name().to_str().and_then(|s| s.parse().ok()) else {
                    continue;
                };
                let named = std::fs::read_to_string(e.path().join("comm"))
                    .is_ok_and(|c| c.trim_end_matches('\n') == name);
                if let Some(t) = named.then(|| task_cpu_ns(&e.path())).flatten() {
                    ns.insert(tid, t);
                }
            }
        }
        ThreadCpu { ns }
    }

    /// CPU seconds these threads spent since `before` (threads new since count from zero; a
    /// thread that ended in between is lost, which is why the registry's runtime keeps its
    /// threads alive).
    pub fn seconds_since(&self, before: &ThreadCpu) -> f64 {
        let d: u64 = self
            .ns
            .iter()
            .map(|(tid, t)| t.saturating_sub(before.ns.get(tid).copied().unwrap_or(0)))
            .sum();
        d as f64 / 1e9
    }
}

/// CPU seconds of this whole process so far (every thread, ended ones included).
pub fn process_seconds() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .as_deref()
        .and_then(parse_stat)
        .map_or(0.0, |(_, t)| t as f64 / ticks_per_second())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_name() {
        let line = "4242 (tb registry) x) S 1 4242 4242 0 -1 4194304 100 0 0 0 \
                    1500 250 0 0 20 0 3 0 12345 1000000 200 18446744073709551615";
        assert_eq!(parse_stat(line), Some(("tb registry) x".into(), 1750)));
        assert_eq!(parse_stat("12 (short) S 1 2"), None);
        assert_eq!(parse_schedstat("135248 3206909 2\n"), Some(135_248));
        assert_eq!(parse_schedstat(""), None);
    }

    #[test]
    fn a_busy_named_thread_is_counted_and_others_are_not() {
        let busy = std::thread::Builder::new()
            .name("tb-cpu-test".into())
            .spawn(|| {
                let before = ThreadCpu::named("tb-cpu-test");
                let process_before = process_seconds();
                let start = std::time::Instant::now();
                let mut x = 0u64;
                // Spin until the kernel has charged this thread at least 50 ms, and the whole
                // process too (its ticks are sampled, so they may lag the thread's ns).
                while ThreadCpu::named("tb-cpu-test").seconds_since(&before) < 0.05
                    || process_seconds() - process_before < 0.05
                {
                    x = x.wrapping_mul(31).wrapping_add(7);
                    assert!(start.elapsed().as_secs() < 30, "no CPU time accounted");
                }
                std::hint::black_box(x);
                before
            })
            .unwrap();
        let before = busy.join().unwrap();
        assert_eq!(before.ns.len(), 1, "exactly the one named thread");
        // No thread of that name is left: nothing to count.
        assert_eq!(ThreadCpu::named("tb-cpu-test").seconds_since(&before), 0.0);
    }
}
