//! Client-side rate limiting, so that requests are never sent into a known quota wall:
//! - container-group creates per subscription·region: sliding windows (ACI: 100 per 5 minutes and
//!   300 per hour by default);
//! - ARM reads and writes per subscription: token buckets (ARM: 250 refilled at 25/s for reads,
//!   200 refilled at 10/s for writes).
//!
//! A 429's `Retry-After` pauses the bucket it hit for every caller. Levels are exported as metrics.
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::error::AzureError;
use super::metrics::{AzureMetrics, BucketLabels};

/// `limit` requests in any `window`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WindowLimit {
    pub limit: u32,
    pub window: Duration,
}

/// A token bucket.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BucketLimit {
    pub capacity: f64,
    pub refill_per_sec: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RateLimitConfig {
    /// Create windows per subscription·region.
    pub creates: Vec<WindowLimit>,
    pub reads: BucketLimit,
    pub writes: BucketLimit,
    /// Longest a caller waits for a bucket; beyond it `acquire` fails with a local
    /// [`AzureError::Throttled`] so that no reconcile blocks for long.
    pub max_wait: Duration,
    /// Allowance for requests reaching ARM later or earlier than they left (network and
    /// scheduling jitter): each bucket keeps `refill × margin` tokens in reserve and a create
    /// slot frees `margin` after its window. Without it, a client that paces exactly at the
    /// quota sees an occasional 429 when two requests arrive closer together than they left.
    pub margin: Duration,
}

impl RateLimitConfig {
    /// ACI's default create quotas and ARM's buckets with the create windows (per 5 minutes, per
    /// hour) and bucket sizes replaced, for a subscription whose quotas were raised. Rejects
    /// negative, infinite or NaN bucket figures.
    pub fn with_limits(
        creates_per_5min: u32,
        creates_per_hour: u32,
        reads: BucketLimit,
        writes: BucketLimit,
    ) -> Result<Self, String> {
        for (what, b) in [("read", reads), ("write", writes)] {
            if !(b.capacity.is_finite() && b.capacity >= 1.0) {
                return Err(format!("the ARM {what} bucket needs a size of at least 1, not {}", b.capacity));
            }
            if !(b.refill_per_sec.is_finite() && b.refill_per_sec > 0.0) {
                return Err(format!(
                    "the ARM {what} refill must be above 0 per second, not {}",
                    b.refill_per_sec
                ));
            }
        }
        Ok(Self {
            creates: vec![
                WindowLimit { limit: creates_per_5min, window: Duration::from_secs(300) },
                WindowLimit { limit: creates_per_hour, window: Duration::from_secs(3600) },
            ],
            reads,
            writes,
            ..Self::default()
        })
    }
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            creates: vec![
                WindowLimit { limit: 100, window: Duration::from_secs(300) },
                WindowLimit { limit: 300, window: Duration::from_secs(3600) },
            ],
            reads: BucketLimit { capacity: 250.0, refill_per_sec: 25.0 },
            writes: BucketLimit { capacity: 200.0, refill_per_sec: 10.0 },
            max_wait: Duration::from_secs(2),
            margin: Duration::from_millis(250),
        }
    }
}

/// What a request costs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    Read,
    Write,
    /// A PUT that may create a container group: a write plus one create slot in the region.
    Create,
}

struct Bucket {
    tokens: f64,
    last: Instant,
    paused_until: Option<Instant>,
}

struct Window {
    grants: VecDeque<Instant>,
}

struct CreateState {
    windows: Vec<Window>,
    paused_until: Option<Instant>,
}

#[derive(Default)]
struct State {
    buckets: HashMap<(String, bool), Bucket>,
    creates: HashMap<(String, String), CreateState>,
}

/// Shared by every client of the controller (clone the `Arc`).
pub struct RateLimiter {
    cfg: RateLimitConfig,
    state: Mutex<State>,
    metrics: AzureMetrics,
}

fn key(s: &str) -> String {
    s.to_ascii_lowercase()
}

impl RateLimiter {
    pub fn new(cfg: RateLimitConfig, metrics: AzureMetrics) -> Arc<Self> {
        Arc::new(Self { cfg, state: Mutex::new(State::default()), metrics })
    }

    pub fn config(&self) -> &RateLimitConfig {
        &self.cfg
    }

    /// The bucket as the client runs it: `refill × margin` tokens (at most half the bucket) fewer.
    fn effective(&self, spec: BucketLimit) -> BucketLimit {
        let reserve = (spec.refill_per_sec * self.cfg.margin.as_secs_f64()).min(spec.capacity / 2.0);
        BucketLimit { capacity: (spec.capacity - reserve).max(1.0), refill_per_sec: spec.refill_per_sec }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        crate::sync::lock(&self.state)
    }

    /// How long until this request may go; zero = take the tokens now.
    fn try_take(
        &self,
        st: &mut State,
        kind: RequestKind,
        sub: &str,
        location: &str,
        now: Instant,
    ) -> Duration {
        let write = kind != RequestKind::Read;
        let spec = self.effective(if write { self.cfg.writes } else { self.cfg.reads });
        let b = st.buckets.entry((key(sub), write)).or_insert(Bucket {
            tokens: spec.capacity,
            last: now,
            paused_until: None,
        });
        let dt = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + dt * spec.refill_per_sec).min(spec.capacity);
        b.last = now;
        let mut wait = Duration::ZERO;
        if let Some(p) = b.paused_until {
            if p > now {
                wait = wait.max(p - now);
            } else {
                b.paused_until = None;
            }
        }
        if b.tokens < 1.0 {
            let secs =
                if spec.refill_per_sec > 0.0 { (1.0 - b.tokens) / spec.refill_per_sec } else { 3600.0 };
            wait = wait.max(Duration::from_secs_f64(secs));
        }
        let mut create_wait = Duration::ZERO;
        if kind == RequestKind::Create {
            let n = self.cfg.creates.len();
            let cs = st.creates.entry((key(sub), key(location))).or_insert_with(|| CreateState {
                windows: (0..n).map(|_| Window { grants: VecDeque::new() }).collect(),
                paused_until: None,
            });
            if let Some(p) = cs.paused_until {
                if p > now {
                    create_wait = create_wait.max(p - now);
                } else {
                    cs.paused_until = None;
                }
            }
            for (w, lim) in cs.windows.iter_mut().zip(self.cfg.creates.iter()) {
                while w
                    .grants
                    .front()
                    .is_some_and(|t| now.saturating_duration_since(*t) >= lim.window + self.cfg.margin)
                {
                    w.grants.pop_front();
                }
                if lim.limit == 0 {
                    // A zero quota never frees up; report one window as the wait.
                    create_wait = create_wait.max(lim.window);
                } else if w.grants.len() as u64 >= u64::from(lim.limit) {
                    // The request may go once the oldest grant that keeps the window full expires.
                    let idx = w.grants.len() - lim.limit as usize;
                    let free_at = w.grants.get(idx).map(|t| *t + lim.window + self.cfg.margin).unwrap_or(now);
                    create_wait = create_wait.max(free_at.saturating_duration_since(now));
                }
            }
        }
        let wait = wait.max(create_wait);
        if wait.is_zero() {
            if let Some(b) = st.buckets.get_mut(&(key(sub), write)) {
                b.tokens -= 1.0;
            }
            if kind == RequestKind::Create
                && let Some(cs) = st.creates.get_mut(&(key(sub), key(location)))
            {
                for w in &mut cs.windows {
                    w.grants.push_back(now);
                }
            }
        }
        self.export(st, sub, location, kind);
        wait
    }

    fn export(&self, st: &State, sub: &str, location: &str, kind: RequestKind) {
        let write = kind != RequestKind::Read;
        if let Some(b) = st.buckets.get(&(key(sub), write)) {
            let l = BucketLabels {
                subscription: sub.to_string(),
                bucket: if write { "writes".into() } else { "reads".into() },
            };
            self.metrics.bucket_level.get_or_create(&l).set(b.tokens.max(0.0));
        }
        if kind == RequestKind::Create
            && let Some(cs) = st.creates.get(&(key(sub), key(location)))
        {
            for (w, lim) in cs.windows.iter().zip(self.cfg.creates.iter()) {
                let l = BucketLabels {
                    subscription: sub.to_string(),
                    bucket: format!("creates:{location}:{}s", lim.window.as_secs()),
                };
                self.metrics.bucket_level.get_or_create(&l).set(f64::from(lim.limit) - w.grants.len() as f64);
            }
        }
    }

    /// Wait for (and take) the tokens this request needs. Fails with a local
    /// [`AzureError::Throttled`] when the wait would exceed `max_wait`.
    pub async fn acquire(&self, kind: RequestKind, sub: &str, location: &str) -> Result<(), AzureError> {
        let mut waited = Duration::ZERO;
        loop {
            let wait = {
                let mut st = self.lock();
                self.try_take(&mut st, kind, sub, location, Instant::now())
            };
            if wait.is_zero() {
                return Ok(());
            }
            if waited + wait > self.cfg.max_wait {
                let bucket = match kind {
                    RequestKind::Read => "reads".to_string(),
                    RequestKind::Write => "writes".to_string(),
                    RequestKind::Create => format!("creates:{location}"),
                };
                self.metrics
                    .local_throttled
                    .get_or_create(&BucketLabels { subscription: sub.to_string(), bucket })
                    .inc();
                return Err(AzureError::Throttled { retry_after: wait, code: None, local: true });
            }
            tokio::time::sleep(wait).await;
            waited += wait;
        }
    }

    /// Azure answered 429 with `Retry-After`: pause that bucket for every caller.
    pub fn pause(
        &self,
        kind: RequestKind,
        sub: &str,
        location: &str,
        retry_after: Duration,
        create_rate: bool,
    ) {
        // Server-given: clamped, and checked (`Instant + Duration` panics on overflow).
        let retry_after = retry_after.min(super::error::MAX_RETRY_AFTER);
        let now = Instant::now();
        let until = now.checked_add(retry_after).unwrap_or(now);
        let mut st = self.lock();
        let bucket = if create_rate && kind == RequestKind::Create {
            let n = self.cfg.creates.len();
            let cs = st.creates.entry((key(sub), key(location))).or_insert_with(|| CreateState {
                windows: (0..n).map(|_| Window { grants: VecDeque::new() }).collect(),
                paused_until: None,
            });
            cs.paused_until = Some(cs.paused_until.map_or(until, |p| p.max(until)));
            format!("creates:{location}")
        } else {
            let write = kind != RequestKind::Read;
            let spec = self.effective(if write { self.cfg.writes } else { self.cfg.reads });
            let b = st.buckets.entry((key(sub), write)).or_insert(Bucket {
                tokens: spec.capacity,
                last: Instant::now(),
                paused_until: None,
            });
            b.paused_until = Some(b.paused_until.map_or(until, |p| p.max(until)));
            if write { "writes".into() } else { "reads".into() }
        };
        tracing::warn!(subscription = %sub, %bucket, retry_after_ms = retry_after.as_millis() as u64, "Azure throttled: pausing bucket");
        self.metrics.pauses.get_or_create(&BucketLabels { subscription: sub.to_string(), bucket }).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(creates: Vec<WindowLimit>, max_wait: Duration) -> Arc<RateLimiter> {
        RateLimiter::new(
            RateLimitConfig {
                creates,
                reads: BucketLimit { capacity: 2.0, refill_per_sec: 10.0 },
                writes: BucketLimit { capacity: 100.0, refill_per_sec: 100.0 },
                max_wait,
                margin: Duration::ZERO,
            },
            AzureMetrics::new(),
        )
    }

    #[tokio::test]
    async fn create_window_refuses_beyond_its_limit_and_frees_after_the_window() {
        let l = limiter(vec![WindowLimit { limit: 3, window: Duration::from_millis(200) }], Duration::ZERO);
        for _ in 0..3 {
            l.acquire(RequestKind::Create, "s", "westeurope").await.unwrap();
        }
        let e = l.acquire(RequestKind::Create, "s", "westeurope").await.unwrap_err();
        match e {
            AzureError::Throttled { retry_after, local: true, .. } => {
                assert!(retry_after <= Duration::from_millis(200))
            }
            other => panic!("{other:?}"),
        }
        // Other regions and plain writes are unaffected.
        l.acquire(RequestKind::Create, "s", "eastus").await.unwrap();
        l.acquire(RequestKind::Write, "s", "westeurope").await.unwrap();
        tokio::time::sleep(Duration::from_millis(210)).await;
        l.acquire(RequestKind::Create, "s", "westeurope").await.unwrap();
    }

    #[test]
    fn raised_limits_replace_the_windows_and_buckets_and_bad_figures_are_refused() {
        let b = |capacity, refill_per_sec| BucketLimit { capacity, refill_per_sec };
        let c = RateLimitConfig::with_limits(1000, 3000, b(500.0, 50.0), b(400.0, 20.0)).unwrap();
        assert_eq!(
            c.creates,
            vec![
                WindowLimit { limit: 1000, window: Duration::from_secs(300) },
                WindowLimit { limit: 3000, window: Duration::from_secs(3600) },
            ]
        );
        assert_eq!((c.reads, c.writes), (b(500.0, 50.0), b(400.0, 20.0)));
        assert_eq!(c.max_wait, RateLimitConfig::default().max_wait);
        let d = RateLimitConfig::default();
        assert_eq!(RateLimitConfig::with_limits(100, 300, d.reads, d.writes).unwrap(), d);
        assert!(RateLimitConfig::with_limits(100, 300, b(0.0, 1.0), d.writes).is_err());
        assert!(RateLimitConfig::with_limits(100, 300, d.reads, b(10.0, 0.0)).is_err());
        assert!(RateLimitConfig::with_limits(100, 300, d.reads, b(f64::NAN, 1.0)).is_err());
    }

    #[tokio::test]
    async fn the_margin_keeps_a_reserve_and_frees_create_slots_late() {
        let l = RateLimiter::new(
            RateLimitConfig {
                creates: vec![WindowLimit { limit: 1, window: Duration::from_millis(100) }],
                reads: BucketLimit { capacity: 10.0, refill_per_sec: 10.0 },
                writes: BucketLimit { capacity: 100.0, refill_per_sec: 1000.0 },
                max_wait: Duration::ZERO,
                margin: Duration::from_millis(200),
            },
            AzureMetrics::new(),
        );
        // Reads: 10 × 0.2 s = 2 tokens in reserve, so 8 go at once.
        for _ in 0..8 {
            l.acquire(RequestKind::Read, "s", "").await.unwrap();
        }
        assert!(l.acquire(RequestKind::Read, "s", "").await.is_err());
        // A create slot frees a margin after its window.
        l.acquire(RequestKind::Create, "s", "westeurope").await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        let e = l.acquire(RequestKind::Create, "s", "westeurope").await.unwrap_err();
        assert!(e.retry_after().is_some_and(|w| w > Duration::from_millis(100)), "{e:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        l.acquire(RequestKind::Create, "s", "westeurope").await.unwrap();
    }

    #[tokio::test]
    async fn a_zero_create_quota_refuses_without_panicking() {
        let l = limiter(vec![WindowLimit { limit: 0, window: Duration::from_secs(300) }], Duration::ZERO);
        let e = l.acquire(RequestKind::Create, "s", "westeurope").await.unwrap_err();
        assert_eq!(e.retry_after(), Some(Duration::from_secs(300)));
    }

    #[tokio::test]
    async fn waiting_callers_get_through_within_max_wait() {
        let l = limiter(
            vec![WindowLimit { limit: 1, window: Duration::from_millis(50) }],
            Duration::from_secs(1),
        );
        let t0 = Instant::now();
        for _ in 0..3 {
            l.acquire(RequestKind::Create, "s", "westeurope").await.unwrap();
        }
        assert!(t0.elapsed() >= Duration::from_millis(100), "{:?}", t0.elapsed());
    }

    #[tokio::test]
    async fn read_bucket_refills_and_pause_blocks_every_caller() {
        let l = limiter(Vec::new(), Duration::ZERO);
        l.acquire(RequestKind::Read, "s", "").await.unwrap();
        l.acquire(RequestKind::Read, "s", "").await.unwrap();
        assert!(l.acquire(RequestKind::Read, "s", "").await.is_err(), "capacity 2");
        tokio::time::sleep(Duration::from_millis(120)).await;
        l.acquire(RequestKind::Read, "s", "").await.unwrap();
        // A 429 on a write pauses writes (and creates) for everyone, not reads.
        l.pause(RequestKind::Write, "S", "", Duration::from_millis(100), false);
        assert!(
            l.acquire(RequestKind::Write, "s", "").await.is_err(),
            "subscription keys are case-insensitive"
        );
        assert!(l.acquire(RequestKind::Create, "s", "westeurope").await.is_err());
        tokio::time::sleep(Duration::from_millis(120)).await;
        l.acquire(RequestKind::Write, "s", "").await.unwrap();
        // A create-rate 429 pauses only that region's creates.
        l.pause(RequestKind::Create, "s", "westeurope", Duration::from_millis(100), true);
        assert!(l.acquire(RequestKind::Create, "s", "westeurope").await.is_err());
        l.acquire(RequestKind::Create, "s", "eastus").await.unwrap();
        l.acquire(RequestKind::Write, "s", "").await.unwrap();
    }

    /// A `Retry-After` of `Duration::MAX` pauses for at most an hour instead of overflowing
    /// `Instant`.
    #[tokio::test]
    async fn an_absurd_pause_is_clamped() {
        let l = limiter(Vec::new(), Duration::ZERO);
        l.pause(RequestKind::Read, "s", "", Duration::MAX, false);
        l.pause(RequestKind::Create, "s", "westeurope", Duration::MAX, true);
        let e = l.acquire(RequestKind::Read, "s", "").await.unwrap_err();
        assert!(e.retry_after().is_some_and(|w| w <= super::super::error::MAX_RETRY_AFTER), "{e:?}");
        let e = l.acquire(RequestKind::Create, "s", "westeurope").await.unwrap_err();
        assert!(e.retry_after().is_some_and(|w| w <= super::super::error::MAX_RETRY_AFTER), "{e:?}");
    }
}
