//! `--rate-limit`: a byte budget per second shared by every table of one command.

use std::time::Duration;

use tokio::time::Instant;

use parking_lot::Mutex;

/// Paces transfers to at most `bytes_per_sec` on average since the start.
#[derive(Debug)]
pub struct RateLimit {
    bytes_per_sec: u64,
    start: Instant,
    /// Bytes let through so far.
    sent: Mutex<u64>,
}

impl RateLimit {
    /// A limit of `bytes_per_sec`.
    pub fn new(bytes_per_sec: u64) -> Self {
        Self {
            bytes_per_sec: bytes_per_sec.max(1),
            start: Instant::now(),
            sent: Mutex::new(0),
        }
    }

    /// Waits until `n` more bytes fit the budget.
    pub async fn take(&self, n: u64) {
        let due = {
            let mut sent = self.sent.lock();
            *sent += n;
            self.start + Duration::from_secs_f64(*sent as f64 / self.bytes_per_sec as f64)
        };
        tokio::time::sleep_until(due).await;
    }
}

/// Reads a byte rate: `1048576`, `50MB`, `50MiB`, `1.5GB/s` (K, M, G powers of 1000;
/// Ki, Mi, Gi of 1024).
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let t = t.strip_suffix("/s").unwrap_or(t);
    let t = t.strip_suffix(['B', 'b']).unwrap_or(t);
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let factor: f64 = match unit.trim() {
        "" => 1.0,
        "K" | "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        other => return Err(format!("{text:?}: unknown unit {other:?}")),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected bytes per second, e.g. 50MB"))?;
    let bytes = value * factor;
    if !(bytes >= 1.0 && bytes < u64::MAX as f64) {
        return Err(format!("{text:?}: must be at least 1 byte per second"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_read_with_units() {
        assert_eq!(parse_rate("1048576"), Ok(1_048_576));
        assert_eq!(parse_rate("50MB"), Ok(50_000_000));
        assert_eq!(parse_rate("50MiB/s"), Ok(50 << 20));
        assert_eq!(parse_rate("1.5G"), Ok(1_500_000_000));
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("5 parsecs").is_err());
    }

    #[tokio::test]
    async fn transfers_are_paced() {
        // Pacing only ever waits: a lower bound on the time taken cannot flake.
        let limit = RateLimit::new(100_000);
        let start = Instant::now();
        for _ in 0..4 {
            limit.take(25_000).await;
        }
        assert!(start.elapsed() >= Duration::from_millis(990));
    }
}
