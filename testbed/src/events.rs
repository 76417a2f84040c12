//! Pod events printed the way `kubectl describe pod` shows them, as they happen, without
//! tearing the progress bar.

use indicatif::ProgressBar;
use std::time::{Duration, Instant};

/// Format a duration like Go's `time.Duration.String()` (what kubelet prints):
/// `1.891985507s`, `34.738162s`, `812.5ms`.
pub fn go_duration(d: Duration) -> String {
    fn trim(s: String) -> String {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    }
    let nanos = d.as_nanos();
    if nanos == 0 {
        "0s".into()
    } else if nanos < 1_000 {
        format!("{nanos}ns")
    } else if nanos < 1_000_000 {
        format!("{}µs", trim(format!("{:.3}", nanos as f64 / 1e3)))
    } else if nanos < 1_000_000_000 {
        format!("{}ms", trim(format!("{:.6}", nanos as f64 / 1e6)))
    } else if d.as_secs() < 60 {
        format!(
            "{}s",
            trim(format!("{}.{:09}", d.as_secs(), d.subsec_nanos()))
        )
    } else {
        let m = d.as_secs() / 60;
        let rest = Duration::new(d.as_secs() % 60, d.subsec_nanos());
        format!("{m}m{}", go_duration(rest))
    }
}

/// Compact age column (`36s`, `2m12s`, `850ms`).
fn age(d: Duration) -> String {
    if d.as_secs() == 0 {
        format!("{}ms", d.as_millis())
    } else if d.as_secs() < 120 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}m{}s", d.as_secs() / 60, d.as_secs() % 60)
    }
}

/// Event sink for one pod on one node.
#[derive(Clone, Debug)]
pub struct Events {
    node: String,
    pod: String,
    start: Instant,
    bar: Option<ProgressBar>,
    quiet: bool,
}

impl Events {
    pub fn new(node: &str, pod: &str, bar: Option<ProgressBar>) -> Events {
        Events {
            node: node.into(),
            pod: pod.into(),
            start: Instant::now(),
            bar,
            quiet: false,
        }
    }

    /// Suppress printing (tests that only want the numbers).
    pub fn quiet(mut self) -> Events {
        self.quiet = true;
        self
    }

    pub fn start(&self) -> Instant {
        self.start
    }

    pub fn normal(&self, reason: &str, from: &str, message: &str) {
        self.emit("Normal", reason, from, message);
    }

    pub fn warning(&self, reason: &str, from: &str, message: &str) {
        self.emit("Warning", reason, from, message);
    }

    fn emit(&self, kind: &str, reason: &str, from: &str, message: &str) {
        let line = format!(
            "  {:<20} {:<8} {:<10} {:>6}  {:<17} {}",
            self.node,
            kind,
            reason,
            age(self.start.elapsed()),
            from,
            message
        );
        tracing::debug!(pod = %self.pod, "{line}");
        if self.quiet {
            return;
        }
        match &self.bar {
            // A hidden bar (no terminal) drops println: print directly then.
            Some(b) if !b.is_hidden() => b.println(line),
            _ => eprintln!("{line}"),
        }
    }

    pub fn pod(&self) -> &str {
        &self.pod
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_go() {
        assert_eq!(go_duration(Duration::new(1, 891_985_507)), "1.891985507s");
        assert_eq!(go_duration(Duration::new(34, 738_162_000)), "34.738162s");
        assert_eq!(go_duration(Duration::from_millis(812)), "812ms");
        assert_eq!(go_duration(Duration::from_secs(2)), "2s");
        assert_eq!(go_duration(Duration::new(72, 500_000_000)), "1m12.5s");
    }
}
