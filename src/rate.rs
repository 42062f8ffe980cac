//! Rates: "100/s"-style configuration values and the GCRA pacing they drive. Shared by the
//! configuration (parsing), delivery shaping and the listeners' connection-rate limit, below all
//! of them so none imports another for it.

use std::time::{Duration, Instant};

/// "100/s", "6000/m", "3600/h" -> messages per second.
pub fn parse_rate(s: &str) -> Result<f64, String> {
    let (n, unit) =
        s.split_once('/').ok_or_else(|| format!("invalid rate {s:?} (e.g. \"100/s\")"))?;
    let n: f64 = n.trim().parse().map_err(|_| format!("invalid rate {s:?}"))?;
    let per = match unit.trim() {
        "s" | "sec" => 1.0,
        "m" | "min" => 60.0,
        "h" | "hour" => 3600.0,
        "d" | "day" => 86_400.0,
        u => return Err(format!("unknown rate unit {u:?} in {s:?} (s, m, h, d)")),
    };
    if n <= 0.0 || !n.is_finite() {
        return Err(format!("rate {s:?} must be positive"));
    }
    Ok(n / per)
}

/// Generic cell rate algorithm without burst: each message is due one emission interval after
/// the previous one, shared by every connection of the destination.
#[derive(Debug)]
pub struct Gcra {
    interval: Duration,
    /// Theoretical arrival time of the next message.
    tat: Option<Instant>,
}

impl Gcra {
    pub fn new(per_second: f64) -> Self {
        Gcra { interval: Duration::from_secs_f64(1.0 / per_second), tat: None }
    }

    /// The rate, in messages per second.
    pub fn rate(&self) -> f64 {
        1.0 / self.interval.as_secs_f64()
    }

    /// Reserves the next slot; returns how long to wait before sending.
    pub fn reserve(&mut self, now: Instant) -> Duration {
        let at = self.tat.map_or(now, |t| t.max(now));
        self.tat = Some(at + self.interval);
        at - now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(parse_rate("100/s"), Ok(100.0));
        assert_eq!(parse_rate("60/m"), Ok(1.0));
        assert!(parse_rate("0/s").is_err());
        assert!(parse_rate("10/week").is_err());
        assert!(parse_rate("fast").is_err());
    }
}
