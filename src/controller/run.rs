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
use aci_runner_core::plan::install::InstallId;
use aci_runner_core::policy::TenantPolicy;

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
    /// File holding the shared webhook secret: it verifies every delivery whose App has no
    /// secret of its own in `--webhook-secrets-dir`.
    #[arg(long, env = "GITHUB_WEBHOOK_SECRET_FILE")]
    pub webhook_secret_file: Option<PathBuf>,
    /// Directory with one webhook secret per GitHub App, each in a file named by the App id
    /// (a Secret with one key per App id, mounted as a volume). A delivery whose
    /// `X-GitHub-Hook-Installation-Target-ID` names such an App is verified with that secret
    /// only and feeds only that App's pools.
    #[arg(long, env = "GITHUB_WEBHOOK_SECRETS_DIR")]
    pub webhook_secrets_dir: Option<PathBuf>,
    /// The Azure cloud whose ARM endpoint and Entra ID authority are used, unless
    /// `--arm-endpoint` / `--azure-authority-host` name others.
    #[arg(long, env = "AZURE_CLOUD", value_enum, ignore_case = true, default_value_t = AzureCloud::Public)]
    pub azure_cloud: AzureCloud,
    /// Azure Resource Manager endpoint (default: the cloud's, e.g. https://management.azure.com).
    #[arg(long, env = "ARM_ENDPOINT")]
    pub arm_endpoint: Option<String>,
    /// Entra ID authority host (default: the cloud's, e.g. https://login.microsoftonline.com).
    #[arg(long, env = "AZURE_AUTHORITY_HOST")]
    pub azure_authority_host: Option<String>,
    /// Token scope for ARM (default: `<arm-endpoint>/.default`).
    #[arg(long, env = "ARM_TOKEN_SCOPE")]
    pub arm_scope: Option<String>,
    /// Without workload identity, a client secret or `IDENTITY_ENDPOINT`, authenticate to Azure as
    /// the node's managed identity (IMDS). Off: such a controller has no Azure identity of its
    /// own, and only pools with `azure.credentialsSecretRef` work.
    #[arg(long, env = "ALLOW_IMDS", default_value_t = false, action = clap::ArgAction::Set)]
    pub allow_imds: bool,
    /// This install's id, tagged on every container group it creates (`aci-runners-install-id`);
    /// groups of other installs are never touched. 1-63 characters of `[a-z0-9.-]`. Unset: derived
    /// from `--install-name` and the uid of this cluster's `kube-system` namespace (needs `get`
    /// on that namespace), which stays the same across restarts, upgrades and reinstalls.
    #[arg(long, env = "ACI_RUNNERS_INSTALL_ID")]
    pub install_id: Option<String>,
    /// The name an install id is derived from when `--install-id` is unset (the chart passes
    /// `<release namespace>.<release name>`).
    #[arg(long, env = "ACI_RUNNERS_INSTALL_NAME", default_value = "aci-runner-controller")]
    pub install_name: String,
    /// YAML file of the tenant policy: per namespace, whether its pools may run as the
    /// controller's Azure identity and which subscriptions, resource groups, locations, subnets,
    /// identities, registries, images and GitHub hosts and owners they may name
    /// (docs/security.md, "Tenant policy"). Unset: no rule, so no pool may use the controller's
    /// identity (every pool names its own service principal) and nothing else is restricted.
    #[arg(long, env = "TENANT_POLICY_FILE")]
    pub tenant_policy: Option<PathBuf>,
    /// Mark-then-confirm grace period of garbage collection.
    #[arg(long, default_value = "2m", value_parser = aci_runner_core::crd::parse_duration)]
    pub gc_grace: Duration,
    /// Client-side limits on Azure and GitHub requests.
    #[command(flatten)]
    pub limits: ApiLimitArgs,
    /// Development only: accept `spec.github.apiUrl` with http on any host (without it, http is
    /// accepted only for a loopback host; everything else must be https).
    #[arg(long, env = "ALLOW_INSECURE_GITHUB_HTTP", default_value_t = false, action = clap::ArgAction::Set)]
    pub allow_insecure_github_http: bool,
    /// Upper bound for one GitHub request: connecting, sending and reading the whole answer.
    #[arg(long, env = "GITHUB_REQUEST_TIMEOUT", default_value = "30s", value_parser = aci_runner_core::crd::parse_duration)]
    pub github_request_timeout: Duration,
    /// The price table of `status.usage.estimatedCost`.
    #[command(flatten)]
    pub prices: PriceArgs,
    /// PEM file of CA certificates trusted in addition to the built-in roots by the ARM, Entra ID
    /// and GitHub clients (e.g. a TLS-inspecting proxy's CA).
    #[arg(long, env = "CA_BUNDLE")]
    pub ca_bundle: Option<PathBuf>,
}

/// Prices per second of a container group's vCPU and memory (GB), regular and spot; with a
/// currency given, every pool's `status.usage.estimatedCost` (in `status.usage.currency`) adds up
/// its groups' lifetimes at these prices. Without one, no cost is estimated.
#[derive(clap::Args, Debug, Clone, Default, PartialEq)]
pub struct PriceArgs {
    /// Currency of the prices (e.g. `USD`); set it to fill `status.usage.estimatedCost`.
    #[arg(long, env = "PRICE_CURRENCY")]
    pub price_currency: Option<String>,
    /// Price of one vCPU for one second, regular priority.
    #[arg(long, env = "PRICE_VCPU_SECOND", default_value_t = 0.0, requires = "price_currency")]
    pub price_vcpu_second: f64,
    /// Price of one GB of memory for one second, regular priority.
    #[arg(long, env = "PRICE_GB_SECOND", default_value_t = 0.0, requires = "price_currency")]
    pub price_gb_second: f64,
    /// Price of one vCPU for one second, spot priority.
    #[arg(long, env = "PRICE_SPOT_VCPU_SECOND", default_value_t = 0.0, requires = "price_currency")]
    pub price_spot_vcpu_second: f64,
    /// Price of one GB of memory for one second, spot priority.
    #[arg(long, env = "PRICE_SPOT_GB_SECOND", default_value_t = 0.0, requires = "price_currency")]
    pub price_spot_gb_second: f64,
}

impl PriceArgs {
    /// The planner's price table; `None` without a currency. Negative or non-finite prices are
    /// refused.
    pub fn table(&self) -> anyhow::Result<Option<aci_runner_core::plan::PriceTable>> {
        let Some(currency) = self.price_currency.as_deref().map(str::trim).filter(|c| !c.is_empty()) else {
            return Ok(None);
        };
        for (flag, v) in [
            ("--price-vcpu-second", self.price_vcpu_second),
            ("--price-gb-second", self.price_gb_second),
            ("--price-spot-vcpu-second", self.price_spot_vcpu_second),
            ("--price-spot-gb-second", self.price_spot_gb_second),
        ] {
            anyhow::ensure!(v.is_finite() && v >= 0.0, "{flag} must be a non-negative number, not {v}");
        }
        Ok(Some(aci_runner_core::plan::PriceTable {
            currency: currency.to_string(),
            regular_vcpu_second: self.price_vcpu_second,
            regular_gb_second: self.price_gb_second,
            spot_vcpu_second: self.price_spot_vcpu_second,
            spot_gb_second: self.price_spot_gb_second,
        }))
    }
}

/// The Azure clouds `--azure-cloud` names (the names `az cloud list` shows are accepted too).
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AzureCloud {
    #[default]
    #[value(alias = "azurecloud")]
    Public,
    #[value(alias = "azureusgovernment")]
    Usgovernment,
    #[value(alias = "azurechinacloud")]
    China,
}

impl RunArgs {
    /// ARM endpoint, Entra ID authority and ARM token scope: the cloud's, each overridden by its
    /// flag when given.
    pub fn cloud(&self) -> anyhow::Result<crate::azure::CloudConfig> {
        use crate::azure::CloudConfig;
        let base = match self.azure_cloud {
            AzureCloud::Public => CloudConfig::public(),
            AzureCloud::Usgovernment => CloudConfig::us_government(),
            AzureCloud::China => CloudConfig::china(),
        };
        let arm = self.arm_endpoint.clone().unwrap_or_else(|| base.arm_endpoint.to_string());
        let authority = self.azure_authority_host.clone().unwrap_or_else(|| base.authority_host.to_string());
        let scope = match (&self.arm_scope, &self.arm_endpoint) {
            (Some(s), _) => s.clone(),
            (None, Some(a)) => format!("{}/.default", a.trim_end_matches('/')),
            (None, None) => base.arm_scope.clone(),
        };
        CloudConfig::custom(&authority, &arm, &scope).map_err(|e| anyhow::anyhow!(e))
    }
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

/// The command line of each binary of the workspace: the log flags ([`LogArgs`]), then one of the
/// binary's subcommands `C`.
#[derive(clap::Parser, Debug)]
struct Cli<C: clap::Subcommand> {
    #[command(flatten)]
    log: LogArgs,
    #[command(subcommand)]
    command: C,
}

/// Name, version and one-line description of a binary, as its `--help` and `--version` show them.
#[derive(Clone, Copy, Debug)]
pub struct BinInfo {
    pub name: &'static str,
    pub version: &'static str,
    pub about: &'static str,
}

/// The [`BinInfo`] of the package this expands in: its name, version and description.
#[macro_export]
macro_rules! bin_info {
    () => {
        $crate::controller::run::BinInfo {
            name: env!("CARGO_PKG_NAME"),
            version: env!("CARGO_PKG_VERSION"),
            about: env!("CARGO_PKG_DESCRIPTION"),
        }
    };
}

/// Parse the process's command line as binary `bin` with subcommands `C`, install its `tracing`
/// subscriber ([`LogArgs::init`]) and return the subcommand. A malformed command line, `--help`
/// and `--version` exit the process the way clap does.
pub fn parse_cli<C: clap::Subcommand>(bin: BinInfo) -> C {
    use clap::{CommandFactory as _, FromArgMatches as _};
    let command = Cli::<C>::command().name(bin.name).bin_name(bin.name).version(bin.version).about(bin.about);
    let cli = Cli::<C>::from_arg_matches(&command.get_matches()).unwrap_or_else(|e| e.exit());
    cli.log.init();
    cli.command
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
    /// Planner tuning; `gc_grace` and `resync` are taken from the flags, `prices` when the
    /// flags give a currency.
    pub planner: PlannerConfig,
    pub metrics: Arc<Metrics>,
    /// Source of the now-time (the simulator's clock in tests).
    pub clock: crate::github::Clock,
    /// Signals from the edges that a shared Azure or GitHub list changed.
    pub list_changes: Option<mpsc::Receiver<()>>,
}

/// The tenant policy of `--tenant-policy` (none: the built-in default for every namespace).
pub fn load_tenant_policy(path: Option<&std::path::Path>) -> anyhow::Result<TenantPolicy> {
    let Some(path) = path else {
        info!("no --tenant-policy: no pool may run as the controller's Azure identity");
        return Ok(TenantPolicy::default());
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the tenant policy {}", path.display()))?;
    let policy = TenantPolicy::from_yaml(&text)
        .map_err(|e| anyhow::anyhow!("tenant policy {}: {e}", path.display()))?;
    info!(rules = policy.rules.len(), path = %path.display(), "tenant policy loaded");
    Ok(policy)
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
    let policy = load_tenant_policy(args.tenant_policy.as_deref())?;
    let install = install_id(&args, &client).await?;
    info!(install_id = %install, "install identity");
    let health = Arc::new(Health::default());
    let listener = bind(args.health_listen).await?;
    info!(addr = %listener.local_addr().unwrap_or(args.health_listen), "serving /healthz /readyz /metrics");
    spawn_server("health_server", listener, server::router(metrics.clone(), health.clone()), metrics.clone());

    // Triggers that wake every pool (debounced by the controller): webhook demand, changes of a
    // shared list, the periodic resync.
    let (trigger_tx, trigger_rx) = mpsc::channel::<()>(1024);
    if let (Some((router, events)), Some(addr)) = (webhook, args.webhook_listen) {
        let listener = bind(addr).await?;
        info!(addr = %listener.local_addr().unwrap_or(addr), "serving POST /webhooks/github");
        let counted = metrics.clone();
        super::tasks::spawn("webhook_server", metrics.clone(), async move {
            // Serves until the process ends: returning at all is a failure.
            server::serve_bounded(listener, router, server::ConnLimits::default()).await;
            counted.task_failure("webhook_server");
            error!(task = "webhook_server", "server stopped");
        });
        spawn_demand_intake(events, demand.clone(), metrics.clone(), clock.clone(), trigger_tx.clone());
    }
    if let Some(changes) = list_changes {
        spawn_forward(changes, trigger_tx.clone(), metrics.clone());
    }
    spawn_resync(args.resync_interval, trigger_tx.clone(), metrics.clone());
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
    let prices = args.prices.table()?.or(planner.prices);
    let planner = PlannerConfig { gc_grace: args.gc_grace, resync: args.resync_interval, prices, ..planner };
    let mut ctx = Context::new(client, install, groups, registrations, demand, planner, metrics, all_pools);
    ctx.acting_since = clock();
    ctx.clock = clock;
    ctx.allow_insecure_github_http = args.allow_insecure_github_http;
    ctx.policy = Arc::new(policy);
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

/// The install id: `--install-id` as given (validated), else derived from `--install-name` and
/// the uid of the cluster's `kube-system` namespace (see `InstallId::derive`).
async fn install_id(args: &RunArgs, client: &Client) -> anyhow::Result<InstallId> {
    if let Some(id) = &args.install_id {
        return InstallId::parse(id).context("--install-id");
    }
    let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(client.clone());
    let ns = namespaces.get("kube-system").await.context(
        "reading the kube-system namespace to derive the install id (grant `get` on it, or set --install-id)",
    )?;
    let uid = ns.metadata.uid.filter(|u| !u.is_empty()).context("the kube-system namespace has no uid")?;
    Ok(InstallId::derive(&args.install_name, &uid))
}

async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))
}

/// Serve `app` on `listener` in the background; a failure or panic is logged and counted
/// under `task`.
fn spawn_server(
    task: &'static str,
    listener: tokio::net::TcpListener,
    app: axum::Router,
    metrics: Arc<Metrics>,
) {
    let counted = metrics.clone();
    super::tasks::spawn(task, metrics, async move {
        if let Err(e) = axum::serve(listener, app).await {
            counted.task_failure(task);
            error!(task, error = %e, "server failed");
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
    super::tasks::spawn("demand_intake", metrics.clone(), async move {
        while let Some(ev) = events.recv().await {
            let applied = demand.apply(&ev, clock());
            metrics.webhook(ev.action.as_str(), applied.as_str());
            metrics.demand(demand.len());
            if applied.changed() {
                let _ = tx.try_send(());
            }
        }
    });
}

/// Every signal of `changes` (a shared list changed) wakes every pool.
fn spawn_forward(mut changes: mpsc::Receiver<()>, tx: mpsc::Sender<()>, metrics: Arc<Metrics>) {
    super::tasks::spawn("list_changes", metrics, async move {
        while changes.recv().await.is_some() {
            let _ = tx.try_send(());
        }
    });
}

/// Wake every pool once per `every` (the first tick after one interval).
fn spawn_resync(every: Duration, tx: mpsc::Sender<()>, metrics: Arc<Metrics>) {
    super::tasks::spawn("resync", metrics, async move {
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
/// A pass that panics is counted (`task_failures_total{task="orphan_gc"}`) and logged, its marks
/// are dropped (the grace period starts over: no delete rests on a pass that did not finish),
/// and the next pass runs on the next tick.
fn spawn_orphan_gc(
    ctx: Arc<Context>,
    args: &RunArgs,
    stop: watch::Receiver<bool>,
    lost: watch::Receiver<bool>,
) {
    let every =
        (args.gc_grace / 2).clamp(Duration::from_secs(1), args.resync_interval.max(Duration::from_secs(1)));
    let namespaces = args.namespaces.clone();
    super::tasks::spawn("orphan_gc", ctx.metrics.clone(), async move {
        let mut marks = super::gc::Marks::new();
        let mut t = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = t.tick() => {}
                _ = stopped(stop.clone()) => break,
                _ = stopped(lost.clone()) => break,
            }
            match super::tasks::contain(super::gc::orphan_pass(&ctx, &namespaces, &mut marks)).await {
                Ok(0) => {}
                Ok(n) => info!(deleted = n, "orphan garbage collection pass"),
                Err(panic) => {
                    ctx.metrics.task_failure("orphan_gc");
                    error!(task = "orphan_gc", panic = %panic, "orphan garbage collection pass panicked; next pass on the next tick");
                    marks = super::gc::Marks::new();
                }
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
    use crate::azure::{AzureClientConfig, AzureMetrics, CredentialRegistry, RateLimiter};
    use crate::github::{GithubHub, HubConfig};

    let tls = crate::egress::Tls::with_bundle(args.ca_bundle.as_deref())?;
    if tls.extra_roots() > 0 {
        tracing::info!(certificates = tls.extra_roots(), "CA bundle added to the trusted roots");
    }
    let cloud = crate::azure::CloudConfig { tls: tls.clone(), ..args.cloud()? };
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
        request_timeout: args.github_request_timeout,
        allow_insecure_http: args.allow_insecure_github_http,
        tls,
        ..HubConfig::default()
    });
    let metrics = Arc::new(Metrics::new());
    metrics.register_edges(&azure_metrics, hub.metrics());
    let secrets = webhook_secrets(args)?;
    let demand = Arc::new(DemandStore::new(secrets.app_ids()));
    let webhook = match secrets.is_empty() {
        true => None,
        false => {
            let (sig_tx, mut sig_rx) = mpsc::channel(1024);
            let (ev_tx, ev_rx) = mpsc::channel(1024);
            tokio::spawn(async move {
                while let Some(sig) = sig_rx.recv().await {
                    if ev_tx.send(crate::controller::adapters::github::job_event(&sig)).await.is_err() {
                        break;
                    }
                }
            });
            let router =
                crate::github::webhook::router_with_metrics(secrets, sig_tx, Some(hub.metrics().clone()));
            Some((router, ev_rx))
        }
    };
    Ok(Edges {
        groups: Arc::new(azure_adapter),
        registrations: Arc::new(
            super::adapters::github::GithubAdapter::new(hub, clock.clone()).with_change_signal(changes_tx),
        ),
        webhook,
        demand,
        planner: PlannerConfig::default(),
        metrics,
        clock,
        list_changes: Some(changes_rx),
    })
}

/// The webhook secrets of the flags: the shared one from `--webhook-secret-file`, one per App
/// from the files of `--webhook-secrets-dir` (named by App id; entries starting with `.`, such
/// as a mounted Secret's `..data`, are skipped). Empty when neither flag is set.
fn webhook_secrets(args: &RunArgs) -> anyhow::Result<crate::github::webhook::WebhookSecrets> {
    use secrecy::SecretString;
    let read = |path: &std::path::Path| -> anyhow::Result<SecretString> {
        let secret = std::fs::read_to_string(path)
            .with_context(|| format!("reading the webhook secret {}", path.display()))?;
        let secret = secret.trim_end_matches(['\n', '\r']).to_string();
        anyhow::ensure!(!secret.is_empty(), "the webhook secret file {} is empty", path.display());
        Ok(SecretString::from(secret))
    };
    let shared = args.webhook_secret_file.as_deref().map(read).transpose()?;
    let mut apps = std::collections::BTreeMap::new();
    if let Some(dir) = &args.webhook_secrets_dir {
        let entries = std::fs::read_dir(dir)
            .with_context(|| format!("reading the webhook secrets {}", dir.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("reading the webhook secrets {}", dir.display()))?;
            let name = entry.file_name().to_string_lossy().to_string();
            if name.starts_with('.') {
                continue;
            }
            let app: u64 = name.parse().with_context(|| {
                format!("{}: webhook secret files are named by the App id (a number)", entry.path().display())
            })?;
            apps.insert(app, read(&entry.path())?);
        }
        anyhow::ensure!(
            !apps.is_empty(),
            "the webhook secrets directory {} has no App secret",
            dir.display()
        );
    }
    Ok(crate::github::webhook::WebhookSecrets::new(shared, apps))
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
    fn the_tenant_policy_comes_from_its_file_and_a_bad_one_stops_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("policy.yaml");
        std::fs::write(&file, "rules:\n  - namespaces: [team-a]\n    controllerIdentity: true\n").unwrap();
        let args = parse(&["--tenant-policy", file.to_str().unwrap()]);
        let policy = load_tenant_policy(args.tenant_policy.as_deref()).unwrap();
        assert!(policy.rule_for("team-a").controller_identity);
        assert!(!policy.rule_for("team-b").controller_identity);
        assert_eq!(load_tenant_policy(None).unwrap(), TenantPolicy::default());
        std::fs::write(&file, "rules:\n  - namespaces: [team-a]\n    subscription: [x]\n").unwrap();
        let e = format!("{:#}", load_tenant_policy(Some(&file)).unwrap_err());
        assert!(e.contains("subscription") && e.contains("policy.yaml"), "{e}");
        let e = format!("{:#}", load_tenant_policy(Some(&dir.path().join("missing"))).unwrap_err());
        assert!(e.contains("reading the tenant policy"), "{e}");
    }

    #[test]
    fn webhook_secrets_come_from_a_file_and_a_directory_named_by_app_id() {
        let dir = tempfile::tempdir().unwrap();
        let apps = dir.path().join("apps");
        std::fs::create_dir(&apps).unwrap();
        std::fs::write(apps.join("12"), "twelve\n").unwrap();
        std::fs::write(apps.join("34"), "thirty-four").unwrap();
        // A mounted Secret's bookkeeping entries are skipped.
        std::fs::create_dir(apps.join("..data")).unwrap();
        let shared = dir.path().join("shared");
        std::fs::write(&shared, "s").unwrap();
        let (a, s) = (apps.to_str().unwrap(), shared.to_str().unwrap());
        let got = webhook_secrets(&parse(&["--webhook-secrets-dir", a, "--webhook-secret-file", s])).unwrap();
        assert_eq!(got.app_ids().into_iter().collect::<Vec<_>>(), [12, 34]);
        assert!(webhook_secrets(&parse(&[])).unwrap().is_empty());
        assert!(!webhook_secrets(&parse(&["--webhook-secret-file", s])).unwrap().is_empty());
        std::fs::write(apps.join("not-an-id"), "x").unwrap();
        let e = webhook_secrets(&parse(&["--webhook-secrets-dir", a])).unwrap_err();
        assert!(format!("{e:#}").contains("named by the App id"), "{e:#}");
        std::fs::remove_file(apps.join("not-an-id")).unwrap();
        std::fs::write(apps.join("56"), "\n").unwrap();
        assert!(webhook_secrets(&parse(&["--webhook-secrets-dir", a])).is_err());
    }

    #[test]
    fn limit_flags_default_to_the_documented_quotas() {
        let run = parse(&[]);
        assert_eq!(run.limits, ApiLimitArgs::default());
        assert_eq!(run.limits.azure().unwrap(), crate::azure::RateLimitConfig::default());
        assert_eq!(run.limits.github(), crate::github::PaceConfig::default());
    }

    #[test]
    fn azure_cloud_selects_the_endpoints_and_flags_override_them() {
        let public = parse(&[]).cloud().unwrap();
        assert_eq!(public.arm_endpoint.as_str(), "https://management.azure.com/");
        assert_eq!(public.authority_host.as_str(), "https://login.microsoftonline.com/");
        assert_eq!(public.arm_scope, "https://management.azure.com/.default");
        let china = parse(&["--azure-cloud", "china"]).cloud().unwrap();
        assert_eq!(china.arm_endpoint.as_str(), "https://management.chinacloudapi.cn/");
        assert_eq!(china.authority_host.as_str(), "https://login.chinacloudapi.cn/");
        assert_eq!(china.arm_scope, "https://management.chinacloudapi.cn/.default");
        let gov = parse(&["--azure-cloud", "AzureUSGovernment"]).cloud().unwrap();
        assert_eq!(gov.arm_endpoint.as_str(), "https://management.usgovcloudapi.net/");
        assert_eq!(gov.authority_host.as_str(), "https://login.microsoftonline.us/");
        let custom =
            parse(&["--azure-cloud", "china", "--arm-endpoint", "http://127.0.0.1:9/"]).cloud().unwrap();
        assert_eq!(custom.arm_endpoint.as_str(), "http://127.0.0.1:9/");
        assert_eq!(custom.authority_host.as_str(), "https://login.chinacloudapi.cn/");
        assert_eq!(custom.arm_scope, "http://127.0.0.1:9/.default");
        assert!(Cli::try_parse_from(["run", "--azure-cloud", "mars"]).is_err());
    }

    #[test]
    fn price_flags_make_the_planners_price_table() {
        assert_eq!(parse(&[]).prices.table().unwrap(), None);
        let t = parse(&[
            "--price-currency",
            "USD",
            "--price-vcpu-second",
            "0.0000135",
            "--price-gb-second",
            "0.0000015",
            "--price-spot-vcpu-second",
            "0.000004",
        ])
        .prices
        .table()
        .unwrap()
        .unwrap();
        assert_eq!(t.currency, "USD");
        assert_eq!((t.regular_vcpu_second, t.regular_gb_second), (0.0000135, 0.0000015));
        assert_eq!((t.spot_vcpu_second, t.spot_gb_second), (0.000004, 0.0));
        assert!(parse(&["--price-currency", "USD", "--price-gb-second=-1"]).prices.table().is_err());
        assert!(
            Cli::try_parse_from(["run", "--price-vcpu-second", "1"]).is_err(),
            "a price needs its currency"
        );
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
