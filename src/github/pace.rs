//! Client-side pacing of content-creating requests (JIT configs, registration and remove tokens,
//! runner deletes), per principal (App installation or token) and GitHub host, so that the
//! controller never runs into GitHub's secondary limit on content creation: "no more than 80
//! content-generating requests per minute and no more than 500 content-generating requests per
//! hour" (GitHub's REST rate-limit documentation; GHES administrators can change or disable
//! them, hence [`PaceConfig`]). GitHub does not list which requests count as content-generating;
//! every non-GET request is paced, which is the conservative reading (a delete is 5 points on
//! the secondary point scale, like a POST).
//!
//! A sliding log of grant times, not a GCRA/token bucket (`governor`): a bucket of burst `n`
//! refilled at `n` per minute lets up to `2n - 1` requests through in some 60-second window,
//! while GitHub's limit is stated per window; a burst-1 GCRA would be safe but would spread a
//! burst of 80 JIT registrations over a minute for nothing. The log holds at most the hourly
//! limit of instants per principal.
//!
//! Time is the hub's clock (the simulator's scaled clock in tests), so the pace matches the
//! limits the simulated GitHub enforces on its clock.
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use chrono::{DateTime, Duration, Utc};

use super::Clock;

/// Limits on content-creating requests per principal and host. A limit of 0 switches that
/// window off (GHES ships with rate limits disabled).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PaceConfig {
    pub per_minute: u32,
    pub per_hour: u32,
    /// Longest a request waits for the pace; beyond it the request is not sent and fails with
    /// [`super::GithubError::RateLimited`] (the planner retries after the reset), so that no
    /// reconcile blocks for long.
    pub max_wait: std::time::Duration,
    /// A slot frees this long after its window: requests reach GitHub a little later than they
    /// leave, by varying amounts, and two that arrive closer together than they left could
    /// otherwise land in one of GitHub's windows.
    pub margin: std::time::Duration,
}

impl Default for PaceConfig {
    fn default() -> Self {
        Self {
            per_minute: 80,
            per_hour: 500,
            max_wait: std::time::Duration::from_secs(2),
            margin: std::time::Duration::from_millis(250),
        }
    }
}

impl PaceConfig {
    /// (limit, window + margin)
    fn windows(&self) -> [(u32, Duration); 2] {
        let m = Duration::from_std(self.margin).unwrap_or_else(|_| Duration::zero());
        [(self.per_minute, Duration::minutes(1) + m), (self.per_hour, Duration::hours(1) + m)]
    }

    /// The longest window that has a limit (how long grants must be remembered).
    fn horizon(&self) -> Duration {
        self.windows().iter().filter(|(l, _)| *l > 0).map(|(_, w)| *w).max().unwrap_or_else(Duration::zero)
    }
}

/// Grant logs per principal key.
pub(crate) struct Pacer {
    cfg: PaceConfig,
    logs: Mutex<HashMap<String, VecDeque<DateTime<Utc>>>>,
}

impl Pacer {
    pub(crate) fn new(cfg: PaceConfig) -> Self {
        Self { cfg, logs: Mutex::new(HashMap::new()) }
    }

    /// Take a slot now (zero) or say how long until one frees up.
    fn try_take(&self, key: &str, now: DateTime<Utc>) -> Duration {
        let horizon = self.cfg.horizon();
        if horizon.is_zero() {
            return Duration::zero();
        }
        let mut logs = crate::sync::lock(&self.logs);
        let log = logs.entry(key.to_string()).or_default();
        while log.front().is_some_and(|t| now - *t >= horizon) {
            log.pop_front();
        }
        let mut wait = Duration::zero();
        for (limit, window) in self.cfg.windows() {
            if limit == 0 {
                continue;
            }
            let start = log.partition_point(|t| now - *t >= window);
            let in_window = log.len() - start;
            if in_window >= limit as usize {
                // Free once the oldest grant that keeps the window full leaves it.
                let free_at = log[log.len() - limit as usize] + window;
                wait = wait.max(free_at - now);
            }
        }
        if wait <= Duration::zero() {
            log.push_back(now);
            return Duration::zero();
        }
        wait
    }

    /// Wait (up to `max_wait` on `clock`) for a slot. `Err(reset)`: none within `max_wait`; the
    /// request must not be sent before `reset`.
    pub(crate) async fn acquire(&self, key: &str, clock: &Clock) -> Result<(), DateTime<Utc>> {
        let started = clock();
        let max_wait = Duration::from_std(self.cfg.max_wait).unwrap_or_else(|_| Duration::seconds(2));
        loop {
            let now = clock();
            let wait = self.try_take(key, now);
            if wait.is_zero() {
                return Ok(());
            }
            if (now - started) + wait > max_wait {
                return Err(now + wait);
            }
            // Real-time sleep of at most the wait (a scaled test clock runs faster, never slower),
            // re-checked often so a scaled clock is not overslept.
            let nap = wait.to_std().unwrap_or_default().min(std::time::Duration::from_millis(100));
            tokio::time::sleep(nap.max(std::time::Duration::from_millis(1))).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const ZERO: std::time::Duration = std::time::Duration::ZERO;

    fn at(secs: f64) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp(1_800_000_000, 0).unwrap_or_default()
            + Duration::milliseconds((secs * 1000.0) as i64)
    }

    /// `per_minute` requests a minute, no hourly limit, no margin; waits up to `max_wait`.
    fn minute_pacer(per_minute: u32, max_wait: std::time::Duration) -> Pacer {
        Pacer::new(PaceConfig { per_minute, per_hour: 0, max_wait, margin: ZERO })
    }

    #[test]
    fn a_burst_up_to_the_minute_limit_goes_at_once_then_the_window_must_slide() {
        let p = Pacer::new(PaceConfig { per_minute: 3, per_hour: 5, margin: ZERO, ..Default::default() });
        for i in 0..3 {
            assert!(p.try_take("a", at(f64::from(i))).is_zero());
        }
        // The 4th waits until the first grant (t=0) is a minute old.
        assert_eq!(p.try_take("a", at(10.0)), Duration::seconds(50));
        // Other principals have their own log.
        assert!(p.try_take("b", at(10.0)).is_zero());
        assert!(p.try_take("a", at(60.0)).is_zero());
        assert!(p.try_take("a", at(61.0)).is_zero());
        // Five in the hour: the sixth waits for the hour window, not the minute window.
        assert_eq!(p.try_take("a", at(130.0)), Duration::seconds(3600 - 130));
        // Refusals take no slot.
        assert!(p.try_take("a", at(3600.0)).is_zero());
    }

    #[test]
    fn no_sixty_second_window_ever_holds_more_than_the_limit() {
        // With the default margin, even requests that arrive up to 250 ms closer together than
        // they left never make 81 in a GitHub minute.
        let p = Pacer::new(PaceConfig { per_minute: 80, per_hour: 0, ..Default::default() });
        let mut grants: Vec<i64> = Vec::new();
        for ms in (0..300_000).step_by(50) {
            if p.try_take("k", at(ms as f64 / 1000.0)).is_zero() {
                grants.push(ms);
            }
        }
        for (i, g) in grants.iter().enumerate() {
            let in_window = grants[i..].iter().take_while(|x| **x < g + 60_250).count();
            assert!(in_window <= 80, "{in_window} grants in the minute from {g} ms");
        }
        // And the pace is used: 80 per minute over five minutes.
        assert_eq!(grants.len(), 400);
    }

    #[test]
    fn zero_limits_switch_pacing_off() {
        let p = Pacer::new(PaceConfig { per_minute: 0, per_hour: 0, margin: ZERO, ..Default::default() });
        for _ in 0..1000 {
            assert!(p.try_take("k", at(0.0)).is_zero());
        }
    }

    #[tokio::test]
    async fn acquire_waits_briefly_or_reports_the_reset() {
        let t0 = Utc::now();
        let clock: Clock = Arc::new(Utc::now);
        let p = minute_pacer(2, std::time::Duration::from_millis(300));
        p.acquire("k", &clock).await.unwrap();
        p.acquire("k", &clock).await.unwrap();
        // The window frees in ~60 s: more than max_wait, so no wait and a reset a minute out.
        let started = std::time::Instant::now();
        let reset = p.acquire("k", &clock).await.unwrap_err();
        assert!(started.elapsed() < std::time::Duration::from_millis(100));
        assert!(reset > t0 + Duration::seconds(59) && reset <= Utc::now() + Duration::seconds(60), "{reset}");

        // A wait shorter than max_wait is waited out.
        let base = Utc::now();
        let offset = Arc::new(Mutex::new(Duration::zero()));
        let o = offset.clone();
        let fake: Clock = Arc::new(move || base + *o.lock().unwrap() + (Utc::now() - base));
        let p = minute_pacer(1, std::time::Duration::from_secs(2));
        p.acquire("k", &fake).await.unwrap();
        // Jump the clock to 200 ms before the minute ends: the next request waits ~200 ms.
        *offset.lock().unwrap() = Duration::milliseconds(59_800);
        let started = std::time::Instant::now();
        p.acquire("k", &fake).await.unwrap();
        let waited = started.elapsed();
        assert!(waited >= std::time::Duration::from_millis(150), "{waited:?}");
        assert!(waited < std::time::Duration::from_secs(2), "{waited:?}");
    }
}
