//! Controller metrics (Prometheus text format on `/metrics`).
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};

use aci_runner_core::crd::RunnerPoolStatus;
use aci_runner_core::plan::PoolMeta;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RunnerLabels {
    pub namespace: String,
    pub pool: String,
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StalledLabels {
    pub namespace: String,
    pub pool: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub namespace: String,
    pub pool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    pub action: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionReasonLabels {
    pub action: String,
    /// Why a removal happened (`ScaleDown`, `Recycled`, `GarbageCollected`, `Orphaned`, ...);
    /// `Create` for creates, `Release` for the orphan deletion policy.
    pub reason: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabels {
    /// `reconcile`, `orphan_gc`, `demand_intake`, `health_server`, `webhook_server`, ...
    pub task: String,
}

/// Every metric the controller exports, registered under the `aci_runner_controller` prefix.
pub struct Metrics {
    pub registry: Mutex<Registry>,
    runners: Family<RunnerLabels, Gauge>,
    reconciles: Counter,
    reconcile_errors: Counter,
    reconcile_duration: Histogram,
    actions: Family<ActionReasonLabels, Counter>,
    demand_queue: Gauge,
    webhook_deliveries: Family<ActionLabels, Counter>,
    pool_stalled: Family<StalledLabels, Gauge>,
    gc_pending: Family<PoolLabels, Gauge>,
    task_failures: Family<TaskLabels, Counter>,
    /// Last stalled reason per pool (so that a changed reason resets the old series to 0).
    stalled_reasons: Mutex<std::collections::HashMap<(String, String), String>>,
}

/// `metric`, after registering a handle to it (metrics share their series between clones).
fn registered<M: Metric + Clone>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M {
    registry.register(name, help, metric.clone());
    metric
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("aci_runner_controller");
        let r = &mut registry;
        Self {
            runners: registered(r, "runners", "Runners by pool and state", Family::default()),
            reconciles: registered(r, "reconcile", "Reconcile passes", Counter::default()),
            reconcile_errors: registered(
                r,
                "reconcile_errors",
                "Reconcile passes that failed",
                Counter::default(),
            ),
            reconcile_duration: registered(
                r,
                "reconcile_duration_seconds",
                "Duration of a reconcile pass",
                Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            ),
            actions: registered(
                r,
                "actions",
                "Actions executed by kind, reason and result",
                Family::default(),
            ),
            demand_queue: registered(
                r,
                "demand_queue_length",
                "Queued jobs known from webhooks",
                Gauge::default(),
            ),
            webhook_deliveries: registered(
                r,
                "webhook_deliveries",
                "Verified workflow_job deliveries by action and what the demand store did with them",
                Family::default(),
            ),
            pool_stalled: registered(
                r,
                "pool_stalled",
                "1 while the pool's Stalled condition is True (label: its reason), else 0",
                Family::default(),
            ),
            gc_pending: registered(
                r,
                "gc_pending",
                "Registrations and container groups marked for garbage collection, awaiting confirmation",
                Family::default(),
            ),
            task_failures: registered(
                r,
                "task_failures",
                "Panics contained in a reconcile pass or a background task, and background tasks that failed, by task",
                Family::default(),
            ),
            stalled_reasons: Mutex::new(std::collections::HashMap::new()),
            registry: Mutex::new(registry),
        }
    }

    /// Add the edges' series (`azure_*`, `github_*`) to the exposition.
    pub fn register_edges(&self, azure: &crate::azure::AzureMetrics, github: &crate::github::GithubMetrics) {
        let mut reg = crate::sync::lock(&self.registry);
        azure.register(&mut reg);
        github.register(&mut reg);
    }

    /// Stalled state and GC backlog of one pool.
    pub fn observe_pool_health(&self, pool: &PoolMeta, status: &RunnerPoolStatus, gc_pending: usize) {
        let stalled = status.conditions.iter().find(|c| c.type_ == "Stalled" && c.status == "True");
        let reason = stalled.map(|c| c.reason.clone()).unwrap_or_default();
        let key = (pool.namespace.clone(), pool.name.clone());
        {
            let mut last = crate::sync::lock(&self.stalled_reasons);
            let set_stalled = |reason: &String, v: i64| {
                let labels =
                    StalledLabels { namespace: key.0.clone(), pool: key.1.clone(), reason: reason.clone() };
                self.pool_stalled.get_or_create(&labels).set(v);
            };
            if let Some(prev) = last.get(&key)
                && *prev != reason
            {
                set_stalled(prev, 0);
            }
            if !reason.is_empty() {
                set_stalled(&reason, 1);
            }
            last.insert(key.clone(), reason);
        }
        self.gc_pending.get_or_create(&PoolLabels { namespace: key.0, pool: key.1 }).set(gc_pending as i64);
    }

    pub fn observe_pool(&self, pool: &PoolMeta, status: &RunnerPoolStatus, took: Duration) {
        self.reconciles.inc();
        self.reconcile_duration.observe(took.as_secs_f64());
        for (state, n) in [
            ("desired", status.desired),
            ("provisioning", status.provisioning),
            ("idle", status.idle),
            ("busy", status.busy),
            ("terminating", status.terminating),
            ("failed", status.failed),
        ] {
            self.runners
                .get_or_create(&RunnerLabels {
                    namespace: pool.namespace.clone(),
                    pool: pool.name.clone(),
                    state: state.to_string(),
                })
                .set(i64::from(n));
        }
    }

    /// A reconcile pass or a background task panicked or failed.
    pub fn task_failure(&self, task: &str) {
        self.task_failures.get_or_create(&TaskLabels { task: task.into() }).inc();
    }

    pub fn reconcile_error(&self) {
        self.reconcile_errors.inc();
    }

    pub fn action(&self, action: &str, reason: &str, result: &str) {
        self.actions
            .get_or_create(&ActionReasonLabels {
                action: action.into(),
                reason: reason.into(),
                result: result.into(),
            })
            .inc();
    }

    pub fn demand(&self, queued: usize) {
        self.demand_queue.set(queued as i64);
    }

    /// A verified `workflow_job` delivery: its action and what the demand store did with it.
    pub fn webhook(&self, action: &str, result: &str) {
        self.webhook_deliveries
            .get_or_create(&ActionLabels { action: action.into(), result: result.into() })
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let reg = crate::sync::lock(&self.registry);
        let _ = prometheus_client::encoding::text::encode(&mut out, &reg);
        out
    }
}
