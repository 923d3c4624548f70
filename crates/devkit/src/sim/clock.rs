//! Simulated time: wall time since the simulator started, multiplied by a scale factor, so that
//! minutes of ACI/GitHub behaviour take seconds in tests. A clock skew can be injected.
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

#[derive(Clone, Debug)]
pub struct SimClock {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    started_wall: DateTime<Utc>,
    started: Instant,
    scale: f64,
    /// Skew in milliseconds added to what the simulated services *report* (e.g. token `iat`).
    skew_ms: AtomicI64,
}

impl SimClock {
    /// `scale` = simulated seconds per real second (1.0 = real time, 60.0 = a minute per second).
    pub fn new(scale: f64) -> Self {
        let scale = if scale.is_finite() && scale > 0.0 { scale } else { 1.0 };
        Self {
            inner: Arc::new(Inner {
                started_wall: Utc::now(),
                started: Instant::now(),
                scale,
                skew_ms: AtomicI64::new(0),
            }),
        }
    }

    pub fn scale(&self) -> f64 {
        self.inner.scale
    }

    /// Simulated "now".
    pub fn now(&self) -> DateTime<Utc> {
        let real = self.inner.started.elapsed();
        let sim = real.mul_f64(self.inner.scale);
        let base = self.inner.started_wall
            + chrono::Duration::from_std(sim).unwrap_or_else(|_| chrono::Duration::zero());
        base + chrono::Duration::milliseconds(self.inner.skew_ms.load(Ordering::Relaxed))
    }

    /// Real (wall) duration that corresponds to a simulated duration.
    pub fn real(&self, simulated: Duration) -> Duration {
        simulated.div_f64(self.inner.scale)
    }

    /// Sleep for a simulated duration.
    pub async fn sleep(&self, simulated: Duration) {
        tokio::time::sleep(self.real(simulated)).await;
    }

    /// Inject a clock skew (fault): what the simulator reports as "now" moves by `skew`.
    pub fn set_skew(&self, skew: chrono::Duration) {
        self.inner.skew_ms.store(skew.num_milliseconds(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn scaled_time_runs_faster() {
        let c = SimClock::new(600.0);
        let t0 = c.now();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let elapsed = c.now() - t0;
        assert!(elapsed >= chrono::Duration::seconds(55), "{elapsed:?}");
        assert_eq!(c.real(Duration::from_secs(600)), Duration::from_secs(1));
    }
}
