//! The controller: kube-runtime wiring around the pure planner.
//!
//! A reconcile pass ([`reconcile`]) is the pipeline credentials → observe → plan → execute →
//! report. The planner speaks to the world through two ports ([`ports::ContainerGroups`],
//! [`ports::RunnerRegistrations`]), which the [`adapters`] implement with the Azure and GitHub
//! edges. [`run`] is the `run` subcommand: flags, leader election, the demand sources and the
//! background tasks; [`gc`] sweeps orphaned container groups; [`server`] serves health, metrics
//! and webhooks.
pub mod adapters;
pub mod demand;
pub mod execute;
pub mod failure_logs;
pub mod finalizer;
pub mod gc;
pub mod metrics;
pub mod ports;
pub mod reconcile;
pub mod run;
pub mod secrets;
pub mod server;
pub mod tasks;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use kube::Client;
use kube::api::Api;
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};

use aci_runner_core::crd::RunnerPool;
use aci_runner_core::plan::install::InstallId;
use aci_runner_core::plan::{ActionFailure, PlannerConfig, PoolState};
use demand::DemandStore;
pub use finalizer::FINALIZER;
use ports::{ContainerGroups, RunnerRegistrations};
pub use reconcile::{ReconcileError, error_policy, reconcile, reconcile_contained, spec_hash};

/// Field manager of status writes.
pub const FIELD_MANAGER: &str = "aci-runner-controller";

/// Carried planner state and last action failures of one pool (in memory; rebuildable).
#[derive(Default, Debug, Clone)]
struct PoolMemory {
    state: PoolState,
    failures: Vec<ActionFailure>,
    /// When `status.usage` was last written (usage alone changes every pass; it is written at
    /// most once per [`USAGE_WRITE_INTERVAL`] unless something else in the status changed).
    usage_written: Option<std::time::Instant>,
}

/// Shortest interval between status writes that only update `status.usage`.
pub const USAGE_WRITE_INTERVAL: Duration = Duration::from_secs(60);

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    /// This controller's install: every removal, release and GC decision requires it.
    pub install: InstallId,
    pub groups: Arc<dyn ContainerGroups>,
    pub registrations: Arc<dyn RunnerRegistrations>,
    pub demand: Arc<DemandStore>,
    pub planner: PlannerConfig,
    pub recorder: Recorder,
    pub metrics: Arc<metrics::Metrics>,
    /// Every RunnerPool in the cluster (not only this shard), for orphan detection.
    pub all_pools: Store<RunnerPool>,
    memory: Mutex<HashMap<String, PoolMemory>>,
    /// Source of the now-time (injectable for tests).
    pub clock: Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>,
    /// `spec.github.apiUrl` may be http off loopback (`--allow-insecure-github-http`).
    pub allow_insecure_github_http: bool,
    /// What each namespace's pools may name (`--tenant-policy`); checked before anything else.
    pub policy: Arc<aci_runner_core::policy::TenantPolicy>,
    /// When this process began acting on pools (after taking the Lease): a deletion of an older
    /// pool finishes only once a predecessor's last writes can have landed
    /// (`PlannerConfig::predecessor_writes`).
    pub acting_since: DateTime<Utc>,
}

impl Context {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: Client,
        install: InstallId,
        groups: Arc<dyn ContainerGroups>,
        registrations: Arc<dyn RunnerRegistrations>,
        demand: Arc<DemandStore>,
        planner: PlannerConfig,
        metrics: Arc<metrics::Metrics>,
        all_pools: Store<RunnerPool>,
    ) -> Self {
        let reporter =
            Reporter { controller: "aci-runner-controller".into(), instance: std::env::var("POD_NAME").ok() };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            install,
            groups,
            registrations,
            demand,
            planner,
            metrics,
            all_pools,
            memory: Mutex::new(HashMap::new()),
            clock: Arc::new(Utc::now),
            allow_insecure_github_http: false,
            policy: Default::default(),
            acting_since: Utc::now(),
        }
    }
}

/// Which RunnerPools this controller instance handles.
#[derive(Clone, Debug, Default)]
pub struct Shard {
    /// Empty: all namespaces.
    pub namespaces: Vec<String>,
    pub label_selector: Option<String>,
}

/// Run the controller until `shutdown` resolves.
pub async fn run_controller(
    ctx: Arc<Context>,
    shard: Shard,
    triggers: impl futures::Stream<Item = ()> + Send + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let mut wc = watcher::Config::default().any_semantic();
    if let Some(sel) = &shard.label_selector {
        wc = wc.labels(sel);
    }
    let cfg = ControllerConfig::default().debounce(Duration::from_millis(20)).concurrency(16);
    let client = ctx.client.clone();
    let streams: Vec<Api<RunnerPool>> = if shard.namespaces.is_empty() {
        vec![Api::all(client)]
    } else {
        shard.namespaces.iter().map(|ns| Api::namespaced(client.clone(), ns)).collect()
    };
    let (reader, writer) = reflector::store();
    let watch = futures::stream::select_all(streams.into_iter().map(|api| watcher(api, wc.clone()).boxed()));
    let stream = watch.default_backoff().reflect(writer).touched_objects().boxed();
    Controller::for_stream(stream, reader)
        .with_config(cfg)
        .reconcile_all_on(triggers)
        .graceful_shutdown_on(shutdown)
        .run(reconcile_contained, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "reconcile result");
            }
        })
        .await;
}

/// A store of every RunnerPool in the cluster (for orphan detection), ready once listed.
pub async fn all_pools_store(client: Client) -> (Store<RunnerPool>, tokio::task::JoinHandle<()>) {
    let (reader, writer) = reflector::store();
    let api: Api<RunnerPool> = Api::all(client);
    let task = tokio::spawn(async move {
        watcher(api, watcher::Config::default().any_semantic())
            .default_backoff()
            .reflect(writer)
            .for_each(|_| async {})
            .await;
    });
    (reader, task)
}
