//! Link emulation (one shared NIC: a bandwidth limiter over all response bodies plus a fixed
//! latency per request) and the streamed file body that applies it and counts served bytes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

use crate::http_util::Body;
use crate::metrics::{Metrics, ServedKind};

/// Link emulation settings. Both off by default.
///
/// The bandwidth limit paces every blob, manifest and expanded index/data body (one shared
/// limiter, like one NIC); small JSON responses (errors, tags, `/mount` status) are not paced.
/// The latency is added once to every request, before it is handled.
#[derive(Clone, Debug, Default)]
pub struct LinkConfig {
    /// Total egress of the registry, bytes per second, shared by every response.
    pub bandwidth_bytes_per_sec: Option<u64>,
    /// Added once per request before its response starts.
    pub latency: Duration,
}

/// Read size for streamed bodies: big reads keep the unlimited path cheap.
pub const CHUNK: usize = 256 * 1024;

/// A shared pacing limiter (GCRA / virtual scheduling): each reservation advances a theoretical
/// arrival time by `n / rate`, so the long-run rate is exact however coarse the sleeps are;
/// `burst` lets a sender run that far ahead of the schedule (absorbs timer jitter).
#[derive(Debug)]
pub struct Limiter {
    rate: u64,
    burst: Duration,
    tat: Mutex<Option<Instant>>,
}

impl Limiter {
    pub fn new(rate_bytes_per_sec: u64) -> Limiter {
        Limiter {
            rate: rate_bytes_per_sec.max(1),
            burst: Duration::from_millis(10),
            tat: Mutex::new(None),
        }
    }

    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// Time needed to send `n` bytes at the configured rate.
    pub fn cost(&self, n: u64) -> Duration {
        let nanos = u128::from(n) * 1_000_000_000 / u128::from(self.rate);
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// Reserve `n` bytes at time `now`; returns the instant they may be sent.
    pub fn reserve(&self, now: Instant, n: u64) -> Instant {
        let mut tat = self.tat.lock().unwrap_or_else(|p| p.into_inner());
        let base = match *tat {
            Some(t) if t > now => t,
            _ => now,
        };
        let next = base + self.cost(n);
        *tat = Some(next);
        let allowed = next.checked_sub(self.burst).unwrap_or(now);
        allowed.max(now)
    }

    /// Wait until `n` bytes may be sent.
    pub async fn acquire(&self, n: u64) {
        let now = Instant::now();
        let at = self.reserve(now, n);
        if at > now {
            tokio::time::sleep_until(at).await;
        }
    }
}

/// Parse a bandwidth: `1Gbit`, `100Mbit/s`, `200MiB/s`, `50MB/s`, `1000000` (bytes/s).
/// `bit` units are decimal bits, `B` units decimal bytes, `iB` units binary bytes.
pub fn parse_bandwidth(s: &str) -> Option<u64> {
    let t = s.trim();
    let t = t
        .strip_suffix("/s")
        .or_else(|| t.strip_suffix("ps"))
        .unwrap_or(t)
        .trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: f64 = num.parse().ok()?;
    if !num.is_finite() || num <= 0.0 {
        return None;
    }
    let unit = unit.trim();
    let mult: f64 = match unit {
        "" | "B" => 1.0,
        "bit" | "b" => 1.0 / 8.0,
        "Kbit" | "kbit" | "Kb" | "kb" => 1e3 / 8.0,
        "Mbit" | "mbit" | "Mb" | "mb" => 1e6 / 8.0,
        "Gbit" | "gbit" | "Gb" | "gb" => 1e9 / 8.0,
        "KB" | "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    let v = num * mult;
    (1.0..1e18).contains(&v).then_some(v as u64)
}

/// Stream `len` bytes of `file` (already positioned) as a response body: 256 KiB reads, paced by
/// the limiter when set, each chunk counted as served when hyper polls it.
pub fn file_body(
    file: tokio::fs::File,
    len: u64,
    limiter: Option<Arc<Limiter>>,
    metrics: Arc<Metrics>,
    kind: ServedKind,
) -> Body {
    struct St {
        file: tokio::fs::File,
        remaining: u64,
        limiter: Option<Arc<Limiter>>,
        metrics: Arc<Metrics>,
        kind: ServedKind,
    }
    let st = St {
        file,
        remaining: len,
        limiter,
        metrics,
        kind,
    };
    let stream = futures::stream::unfold(st, |mut st| async move {
        if st.remaining == 0 {
            return None;
        }
        let want = usize::try_from(st.remaining).unwrap_or(CHUNK).min(CHUNK);
        let mut buf = BytesMut::with_capacity(want);
        while buf.len() < want {
            match st.file.read_buf(&mut buf).await {
                Ok(0) => {
                    // The file shrank under us: end the body short rather than hang.
                    st.remaining = 0;
                    if buf.is_empty() {
                        return Some((
                            Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof)),
                            st,
                        ));
                    }
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    st.remaining = 0;
                    return Some((Err(e), st));
                }
            }
        }
        buf.truncate(want);
        let n = buf.len() as u64;
        if let Some(l) = &st.limiter {
            l.acquire(n).await;
        }
        st.remaining = st.remaining.saturating_sub(n);
        st.metrics.add_served(st.kind, n);
        Some((Ok(Frame::data(buf.freeze())), st))
    });
    StreamBody::new(stream).boxed_unsync()
}

/// A small in-memory body that is still paced and counted (manifests).
pub fn bytes_body(
    bytes: Bytes,
    limiter: Option<Arc<Limiter>>,
    metrics: Arc<Metrics>,
    kind: ServedKind,
) -> Body {
    let stream = futures::stream::once(async move {
        if let Some(l) = &limiter {
            l.acquire(bytes.len() as u64).await;
        }
        metrics.add_served(kind, bytes.len() as u64);
        Ok::<_, std::io::Error>(Frame::data(bytes))
    });
    StreamBody::new(stream).boxed_unsync()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bandwidth_units() {
        assert_eq!(parse_bandwidth("1Gbit"), Some(125_000_000));
        assert_eq!(parse_bandwidth("100Mbit/s"), Some(12_500_000));
        assert_eq!(parse_bandwidth("200MiB/s"), Some(200 * 1024 * 1024));
        assert_eq!(parse_bandwidth("50MB/s"), Some(50_000_000));
        assert_eq!(parse_bandwidth("1.5Gbit"), Some(187_500_000));
        assert_eq!(parse_bandwidth("4096"), Some(4096));
        assert_eq!(parse_bandwidth("fast"), None);
        assert_eq!(parse_bandwidth("-1MB"), None);
        assert_eq!(parse_bandwidth("0"), None);
        assert_eq!(parse_bandwidth("10 parsecs"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn reservations_follow_the_rate() {
        let l = Limiter::new(1_000_000); // 1 MB/s
        let t0 = Instant::now();
        // The first 10 ms of burst are free, after that every MB costs one second.
        assert_eq!(l.reserve(t0, 10_000), t0);
        let at = l.reserve(t0, 1_000_000);
        assert_eq!(at, t0 + Duration::from_millis(1_000));
        // Idle time is not banked beyond the burst: after a long pause the schedule restarts at now.
        let later = t0 + Duration::from_secs(100);
        assert_eq!(l.reserve(later, 5_000), later);
    }

    #[tokio::test(start_paused = true)]
    async fn shared_limiter_paces_two_streams() {
        let l = Arc::new(Limiter::new(4 * 1024 * 1024)); // 4 MiB/s shared
        let t0 = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..2 {
            let l = l.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..16 {
                    l.acquire(CHUNK as u64).await; // 16 × 256 KiB = 4 MiB each
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        // 8 MiB through a 4 MiB/s link: 2 s, minus at most the 10 ms burst.
        let el = t0.elapsed();
        assert!(
            el >= Duration::from_millis(1_990) && el <= Duration::from_millis(2_000),
            "{el:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn file_body_is_paced_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, vec![7u8; 3 * 1024 * 1024]).unwrap();
        let f = tokio::fs::File::open(&p).await.unwrap();
        let m = Arc::new(Metrics::default());
        let l = Arc::new(Limiter::new(1024 * 1024));
        let t0 = Instant::now();
        let body = file_body(
            f,
            3 * 1024 * 1024,
            Some(l),
            m.clone(),
            ServedKind::LayerBlob,
        );
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(bytes.len(), 3 * 1024 * 1024);
        assert_eq!(m.served(ServedKind::LayerBlob), 3 * 1024 * 1024);
        let el = t0.elapsed();
        assert!(
            el >= Duration::from_millis(2_990) && el <= Duration::from_millis(3_000),
            "{el:?}"
        );
    }
}
