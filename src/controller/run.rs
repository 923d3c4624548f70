//! `aci-runner-controller run`: the production entry point.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt;
use kube::Client;
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use super::demand::DemandStore;
use super::metrics::Metrics;
use super::server::{self, Health};
use super::{Context, Shard, all_pools_store, run_controller};
use aci_runner_core::plan::PlannerConfig;
use aci_runner_core::plan::demand::JobEvent;

/// Flags of `run`.
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Namespaces to watch (comma-separated); empty = all namespaces.
    #[arg(long, value_delimiter = ',', env = "WATCH_NAMESPACES")]
    pub namespaces: Vec<String>,
    /// Only handle RunnerPools matching this label selector (shard pools across deployments).
    #[arg(long, env = "POOL_SELECTOR")]
    pub selector: Option<String>,
    /// Periodic resync of every pool.
    #[arg(long, default_value = "60s", value_parser = aci_runner_core::crd::parse_duration)]
    pub resync_interval: Duration,
    #[command(flatten)]
    pub leader: LeaderElectionArgs,
    /// `/healthz`, `/readyz`, `/metrics`.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub health_listen: SocketAddr,
    /// GitHub webhook receiver (`POST /webhooks/github`); off when unset.
    #[arg(long, env = "WEBHOOK_LISTEN")]
    pub webhook_listen: Option<SocketAddr>,
    /// File holding the webhook secret.
    #[arg(long, env = "GITHUB_WEBHOOK_SECRET_FILE")]
    pub webhook_secret_file: Option<PathBuf>,
    /// Azure Resource Manager endpoint.
    #[arg(long, env = "ARM_ENDPOINT", default_value = "https://management.azure.com")]
    pub arm_endpoint: String,
    /// Entra ID authority host.
    #[arg(long, env = "AZURE_AUTHORITY_HOST", default_value = "https://login.microsoftonline.com")]
    pub azure_authority_host: String,
    /// Token scope for ARM (default: `<arm-endpoint>/.default`).
    #[arg(long, env = "ARM_TOKEN_SCOPE")]
    pub arm_scope: Option<String>,
    /// Without workload identity, a client secret or `IDENTITY_ENDPOINT`, authenticate to Azure as
    /// the node's managed identity (IMDS). Off: such a controller has no Azure identity of its
    /// own, and only pools with `azure.credentialsSecretRef` work.
    #[arg(long, env = "ALLOW_IMDS", default_value_t = false, action = clap::ArgAction::Set)]
    pub allow_imds: bool,
    /// Mark-then-confirm grace period of garbage collection.
    #[arg(long, default_value = "2m", value_parser = aci_runner_core::crd::parse_duration)]
    pub gc_grace: Duration,
    /// Client-side limits on Azure and GitHub requests.
    #[command(flatten)]
    pub limits: ApiLimitArgs,
}

/// The flags of leader election through a Lease.
#[derive(clap::Args, Debug, Clone, PartialEq)]
pub struct LeaderElectionArgs {
    /// Elect a leader through a Lease so that only one replica acts.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,
    #[arg(long, default_value = "aci-runner-controller")]
    pub lease_name: String,
    /// Namespace of the Lease (default: the pod's namespace, else `default`).
    #[arg(long, env = "POD_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// Identity in the Lease (default: pod name or a random id).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
}

/// The quotas the controller paces itself to, so that it never sends a request into a known
/// wall. The defaults are Azure's and GitHub's documented defaults; raise them to what your
/// subscription (after a quota increase) or your GHES instance allows.
#[derive(clap::Args, Debug, Clone, PartialEq)]
pub struct ApiLimitArgs {
    /// ACI container-group creates per subscription·region in any 5 minutes.
    #[arg(long, env = "ACI_CREATES_PER_5M", default_value_t = 100)]
    pub aci_creates_per_5m: u32,
    /// ACI container-group creates per subscription·region in any hour.
    #[arg(long, env = "ACI_CREATES_PER_HOUR", default_value_t = 300)]
    pub aci_creates_per_hour: u32,
    /// ARM read requests per subscription: bucket size ...
    #[arg(long, default_value_t = 250.0)]
    pub arm_read_burst: f64,
    /// ... and refill per second.
    #[arg(long, default_value_t = 25.0)]
    pub arm_reads_per_sec: f64,
    /// ARM write requests (creates, deletes) per subscription: bucket size ...
    #[arg(long, default_value_t = 200.0)]
    pub arm_write_burst: f64,
    /// ... and refill per second.
    #[arg(long, default_value_t = 10.0)]
    pub arm_writes_per_sec: f64,
    /// GitHub content-creating requests (JIT configs, registration tokens, runner deletes) per
    /// App installation or token in any minute; 0 = unpaced (GHES without rate limits).
    #[arg(long, env = "GITHUB_WRITES_PER_MINUTE", default_value_t = 80)]
    pub github_writes_per_minute: u32,
    /// ... and in any hour; 0 = unpaced.
    #[arg(long, env = "GITHUB_WRITES_PER_HOUR", default_value_t = 500)]
    pub github_writes_per_hour: u32,
}

impl Default for ApiLimitArgs {
    /// The same as the flags' defaults.
    fn default() -> Self {
        let arm = crate::azure::RateLimitConfig::default();
        let gh = crate::github::PaceConfig::default();
        Self {
            aci_creates_per_5m: 100,
            aci_creates_per_hour: 300,
            arm_read_burst: arm.reads.capacity,
            arm_reads_per_sec: arm.reads.refill_per_sec,
            arm_write_burst: arm.writes.capacity,
            arm_writes_per_sec: arm.writes.refill_per_sec,
            github_writes_per_minute: gh.per_minute,
            github_writes_per_hour: gh.per_hour,
        }
    }
}

impl ApiLimitArgs {
    /// The Azure edge's rate-limiter configuration.
    pub fn azure(&self) -> anyhow::Result<crate::azure::RateLimitConfig> {
        use crate::azure::BucketLimit;
        crate::azure::RateLimitConfig::with_limits(
            self.aci_creates_per_5m,
            self.aci_creates_per_hour,
            BucketLimit { capacity: self.arm_read_burst, refill_per_sec: self.arm_reads_per_sec },
            BucketLimit { capacity: self.arm_write_burst, refill_per_sec: self.arm_writes_per_sec },
        )
        .map_err(|e| anyhow::anyhow!(e))
    }

    /// The GitHub edge's content-creation pace.
    pub fn github(&self) -> crate::github::PaceConfig {
        crate::github::PaceConfig {
            per_minute: self.github_writes_per_minute,
            per_hour: self.github_writes_per_hour,
            ..crate::github::PaceConfig::default()
        }
    }
}

/// The logging flag every binary of the project takes (`--log-format`, `LOG_FORMAT`).
#[derive(clap::Args, Debug, Clone)]
pub struct LogArgs {
    /// Log format: `text` or `json`.
    #[arg(long, global = true, env = "LOG_FORMAT", default_value = "text")]
    pub log_format: String,
}

impl LogArgs {
    /// Install the process's `tracing` subscriber (see [`init_tracing`]).
    pub fn init(&self) {
        init_tracing(&self.log_format)
    }
}

/// Install the process's `tracing` subscriber: `RUST_LOG` filter (default `info`), logs on
/// stderr as text or, with `format == "json"`, one JSON object a line.
fn init_tracing(format: &str) {
    use tracing_subscriber::{EnvFilter, fmt, prelude::*};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    if format == "json" {
        registry.with(fmt::layer().json().with_writer(std::io::stderr)).init();
    } else {
        registry.with(fmt::layer().with_writer(std::io::stderr)).init();
    }
}

/// Resolve when SIGTERM or Ctrl-C arrives.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => futures::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = futures::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

/// Wait until this replica holds the Lease; then report losses on the returned channel.
async fn acquire_leadership(
    client: Client,
    args: &LeaderElectionArgs,
    identity: String,
) -> anyhow::Result<(watch::Receiver<bool>, tokio::task::JoinHandle<()>)> {
    let ns = args.lease_namespace.clone().unwrap_or_else(|| "default".into());
    let manager = kube_lease_manager::LeaseManagerBuilder::new(client, &args.lease_name)
        .with_namespace(ns)
        .with_identity(identity)
        .with_duration(15)
        .with_grace(5)
        .build()
        .await
        .context("creating the lease manager")?;
    let (mut rx, task) = manager.watch().await;
    while !*rx.borrow_and_update() {
        rx.changed().await.context("lease manager stopped")?;
    }
    let handle = tokio::spawn(async move {
        if let Ok(Err(e)) = task.await {
            warn!(error = %e, "lease manager ended");
        }
    });
    Ok((rx, handle))
}

/// What `run_with` acts through, built by `main` for production and by tests for the simulator.
pub struct Edges {
    pub groups: Arc<dyn super::ports::ContainerGroups>,
    pub registrations: Arc<dyn super::ports::RunnerRegistrations>,
    /// The webhook receiver's router and the demand signals it produces.
    pub webhook: Option<(axum::Router, mpsc::Receiver<JobEvent>)>,
    pub demand: Arc<DemandStore>,
    /// Planner tuning; `gc_grace` and `resync` are taken from the flags.
    pub planner: PlannerConfig,
    pub metrics: Arc<Metrics>,
    /// Source of the now-time (the simulator's clock in tests).
    pub clock: crate::github::Clock,
    /// Signals from the edges that a shared Azure or GitHub list changed.
    pub list_changes: Option<mpsc::Receiver<()>>,
}

/// Run the controller with the given edges until shutdown (or until leadership is lost).
pub async fn run_with(
    args: RunArgs,
    client: Client,
    edges: Edges,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let Edges { groups, registrations, webhook, demand, planner, metrics, clock, list_changes } = edges;
    aci_runner_core::crd::precompile_patterns().context("compiling the RunnerPool validation patterns")?;
    let health = Arc::new(Health::default());
    let listener = bind(args.health_listen).await?;
    info!(addr = %listener.local_addr().unwrap_or(args.health_listen), "serving /healthz /readyz /metrics");
    spawn_server("health", listener, server::router(metrics.clone(), health.clone()));

    // Triggers that wake every pool (debounced by the controller): webhook demand, changes of a
    // shared list, the periodic resync.
    let (trigger_tx, trigger_rx) = mpsc::channel::<()>(1024);
    if let (Some((router, events)), Some(addr)) = (webhook, args.webhook_listen) {
        let listener = bind(addr).await?;
        info!(addr = %listener.local_addr().unwrap_or(addr), "serving POST /webhooks/github");
        spawn_server("webhook", listener, router);
        spawn_demand_intake(events, demand.clone(), metrics.clone(), clock.clone(), trigger_tx.clone());
    }
    if let Some(changes) = list_changes {
        spawn_forward(changes, trigger_tx.clone());
    }
    spawn_resync(args.resync_interval, trigger_tx.clone());
    let stop_rx = spawn_shutdown_watch(shutdown);

    let identity =
        args.leader.identity.clone().unwrap_or_else(|| format!("aci-rc-{}", uuid::Uuid::new_v4().simple()));
    health.set_ready(true);
    let mut leadership = None;
    if args.leader.leader_election {
        info!(lease = %args.leader.lease_name, %identity, "waiting for leadership");
        tokio::select! {
            r = acquire_leadership(client.clone(), &args.leader, identity.clone()) => leadership = Some(r?),
            _ = stopped(stop_rx.clone()) => return Ok(()),
        }
        info!(%identity, "acquired leadership");
    }
    health.set_leader(true);

    let (all_pools, _pools_task) = all_pools_store(client.clone()).await;
    all_pools.wait_until_ready().await.context("listing RunnerPools")?;
    let (lost_tx, mut lost_rx) = watch::channel(false);
    let planner = PlannerConfig { gc_grace: args.gc_grace, resync: args.resync_interval, ..planner };
    let mut ctx = Context::new(client, groups, registrations, demand, planner, metrics, all_pools);
    ctx.clock = clock;
    let ctx = Arc::new(ctx);
    spawn_orphan_gc(ctx.clone(), &args, stop_rx.clone(), lost_rx.clone());

    let shard = Shard { namespaces: args.namespaces.clone(), label_selector: args.selector.clone() };
    let (lease_rx, lease_task) = leadership.unzip();
    let stop_or_lost = stop_or_lost(stop_rx, lease_rx, lost_tx);
    run_controller(ctx, shard, tokio_stream_from(trigger_rx), stop_or_lost).await;
    if let Some(task) = lease_task {
        // Let the release reach the API server, so a successor need not wait for expiry.
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    if *lost_rx.borrow_and_update() {
        anyhow::bail!("lost leadership; exiting so that a fresh replica can take over");
    }
    info!("controller stopped");
    Ok(())
}

async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))
}

/// Serve `app` on `listener` in the background; a failure is logged with `what`.
fn spawn_server(what: &'static str, listener: tokio::net::TcpListener, app: axum::Router) {
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            error!(server = what, error = %e, "server failed");
        }
    });
}

/// Webhook deliveries update the demand store; a change wakes every pool.
fn spawn_demand_intake(
    mut events: mpsc::Receiver<JobEvent>,
    demand: Arc<DemandStore>,
    metrics: Arc<Metrics>,
    clock: crate::github::Clock,
    tx: mpsc::Sender<()>,
) {
    tokio::spawn(async move {
        while let Some(ev) = events.recv().await {
            let changed = demand.apply(&ev, clock());
            metrics.demand(demand.len());
            if changed {
                let _ = tx.try_send(());
            }
        }
    });
}

/// Every signal of `changes` (a shared list changed) wakes every pool.
fn spawn_forward(mut changes: mpsc::Receiver<()>, tx: mpsc::Sender<()>) {
    tokio::spawn(async move {
        while changes.recv().await.is_some() {
            let _ = tx.try_send(());
        }
    });
}

/// Wake every pool once per `every` (the first tick after one interval).
fn spawn_resync(every: Duration, tx: mpsc::Sender<()>) {
    tokio::spawn(async move {
        let mut t = tokio::time::interval(every);
        t.tick().await;
        loop {
            t.tick().await;
            if tx.send(()).await.is_err() {
                break;
            }
        }
    });
}

/// A channel that turns true once `shutdown` resolves.
fn spawn_shutdown_watch(
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> watch::Receiver<bool> {
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    stop_rx
}

/// Resolves once `flag` is true (or its sender is gone).
async fn stopped(mut flag: watch::Receiver<bool>) {
    let _ = flag.wait_for(|s| *s).await;
}

/// Orphan container groups (pools deleted while no controller ran, foreign uids): one pass per
/// interval over every resource group in use, mark then confirm; until shutdown or a lost Lease.
fn spawn_orphan_gc(
    ctx: Arc<Context>,
    args: &RunArgs,
    stop: watch::Receiver<bool>,
    lost: watch::Receiver<bool>,
) {
    let every =
        (args.gc_grace / 2).clamp(Duration::from_secs(1), args.resync_interval.max(Duration::from_secs(1)));
    let namespaces = args.namespaces.clone();
    tokio::spawn(async move {
        let mut marks = super::gc::Marks::new();
        let mut t = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = t.tick() => {}
                _ = stopped(stop.clone()) => break,
                _ = stopped(lost.clone()) => break,
            }
            let n = super::gc::orphan_pass(&ctx, &namespaces, &mut marks).await;
            if n > 0 {
                info!(deleted = n, "orphan garbage collection pass");
            }
        }
    });
}

/// Resolves on shutdown, or when the Lease is lost (then `lost_tx` turns true). Dropping
/// `lease_rx` (when the controller stops) makes the lease manager release the Lease.
async fn stop_or_lost(
    stop: watch::Receiver<bool>,
    lease_rx: Option<watch::Receiver<bool>>,
    lost_tx: watch::Sender<bool>,
) {
    let lost = async move {
        match lease_rx {
            Some(mut rx) => {
                let _ = rx.wait_for(|l| !*l).await;
            }
            None => futures::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = stopped(stop) => {},
        _ = lost => { let _ = lost_tx.send(true); },
    }
}

fn tokio_stream_from(mut rx: mpsc::Receiver<()>) -> impl futures::Stream<Item = ()> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
}

/// The production edges: Azure through `azure_mgmt_containerinstance` (the controller's own
/// identity is `identity`; pools may bring a service principal), GitHub through octocrab, the
/// webhook receiver when a secret file is configured. Tests call this with the simulator's
/// endpoints, so they drive exactly the production path.
pub fn build_edges(
    args: &RunArgs,
    identity: Option<crate::azure::CredentialSpec>,
    clock: crate::github::Clock,
) -> anyhow::Result<Edges> {
    use crate::azure::{AzureClientConfig, AzureMetrics, CloudConfig, CredentialRegistry, RateLimiter};
    use crate::github::{GithubHub, HubConfig};

    let arm = args.arm_endpoint.trim_end_matches('/');
    let scope = args.arm_scope.clone().unwrap_or_else(|| format!("{arm}/.default"));
    let cloud = CloudConfig::custom(&args.azure_authority_host, &args.arm_endpoint, &scope)
        .map_err(|e| anyhow::anyhow!(e))?;
    let azure_metrics = AzureMetrics::new();
    let limiter = RateLimiter::new(args.limits.azure()?, azure_metrics.clone());
    let registry = CredentialRegistry::new(cloud.clone(), Duration::from_secs(300));
    let (changes_tx, changes_rx) = mpsc::channel(16);
    let azure_adapter = super::adapters::azure::AzureAdapter::new(
        registry,
        identity,
        AzureClientConfig::from_cloud(&cloud),
        limiter,
        azure_metrics.clone(),
        Duration::from_secs(2),
    )
    .with_change_signal(changes_tx.clone());
    let hub = GithubHub::new(HubConfig {
        clock: clock.clone(),
        content_pace: args.limits.github(),
        ..HubConfig::default()
    });
    let metrics = Arc::new(Metrics::new());
    metrics.register_edges(&azure_metrics, hub.metrics());
    let webhook = match &args.webhook_secret_file {
        None => None,
        Some(path) => {
            let secret = std::fs::read_to_string(path)
                .with_context(|| format!("reading the webhook secret {}", path.display()))?;
            let secret = secret.trim_end_matches(['\n', '\r']).to_string();
            anyhow::ensure!(!secret.is_empty(), "the webhook secret file {} is empty", path.display());
            let (sig_tx, mut sig_rx) = mpsc::channel(1024);
            let (ev_tx, ev_rx) = mpsc::channel(1024);
            tokio::spawn(async move {
                while let Some(sig) = sig_rx.recv().await {
                    if ev_tx.send(crate::controller::adapters::github::job_event(&sig)).await.is_err() {
                        break;
                    }
                }
            });
            let router = crate::github::webhook::router_with_metrics(
                secrecy::SecretString::from(secret),
                sig_tx,
                Some(hub.metrics().clone()),
            );
            Some((router, ev_rx))
        }
    };
    Ok(Edges {
        groups: Arc::new(azure_adapter),
        registrations: Arc::new(
            super::adapters::github::GithubAdapter::new(hub, clock.clone()).with_change_signal(changes_tx),
        ),
        webhook,
        demand: Arc::new(DemandStore::default()),
        planner: PlannerConfig::default(),
        metrics,
        clock,
        list_changes: Some(changes_rx),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    fn parse(args: &[&str]) -> RunArgs {
        Cli::try_parse_from(std::iter::once("run").chain(args.iter().copied())).unwrap().run
    }

    #[test]
    fn limit_flags_default_to_the_documented_quotas() {
        let run = parse(&[]);
        assert_eq!(run.limits, ApiLimitArgs::default());
        assert_eq!(run.limits.azure().unwrap(), crate::azure::RateLimitConfig::default());
        assert_eq!(run.limits.github(), crate::github::PaceConfig::default());
    }

    #[test]
    fn raised_quotas_reach_the_edges() {
        let run = parse(&[
            "--aci-creates-per-5m",
            "1000",
            "--aci-creates-per-hour",
            "3000",
            "--arm-write-burst",
            "400",
            "--arm-writes-per-sec",
            "20",
            "--arm-read-burst",
            "500",
            "--arm-reads-per-sec",
            "50",
            "--github-writes-per-minute",
            "1000",
            "--github-writes-per-hour",
            "0",
        ]);
        let az = run.limits.azure().unwrap();
        assert_eq!(
            az.creates.iter().map(|w| (w.limit, w.window.as_secs())).collect::<Vec<_>>(),
            [(1000, 300), (3000, 3600)]
        );
        assert_eq!((az.writes.capacity, az.writes.refill_per_sec), (400.0, 20.0));
        assert_eq!((az.reads.capacity, az.reads.refill_per_sec), (500.0, 50.0));
        let gh = run.limits.github();
        assert_eq!((gh.per_minute, gh.per_hour), (1000, 0));
        // A bucket that could never refill is refused before the controller starts.
        assert!(parse(&["--arm-writes-per-sec", "0"]).limits.azure().is_err());
        assert!(Cli::try_parse_from(["run", "--aci-creates-per-5m", "-1"]).is_err());
    }
}
