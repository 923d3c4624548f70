//! Simulated Azure (ARM/ACI container groups, Entra ID token endpoint) and GitHub (App auth,
//! runners API, jobs, webhooks) with simulated runners inside the container groups.
//!
//! Used by tests, the demo and the benchmarks; never by the controller's production path.
pub mod arm;
pub mod clock;
pub mod github;
pub mod runtime;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;
use tokio::task::JoinSet;

use arm::{ArmSim, ArmSimConfig, ArmSimError, ArmSimHandle};
use clock::SimClock;
use github::{GithubSim, GithubSimConfig, GithubSimError, GithubSimHandle};

/// How to start both simulators.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// Simulated seconds per real second.
    pub time_scale: f64,
    /// Seed of every fault draw (overrides both configs' seeds).
    pub seed: u64,
    pub arm: ArmSimConfig,
    pub github: GithubSimConfig,
}

impl Default for SimOptions {
    fn default() -> Self {
        Self { time_scale: 1.0, seed: 1, arm: ArmSimConfig::default(), github: GithubSimConfig::default() }
    }
}

/// Why the simulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error(transparent)]
    Arm(#[from] ArmSimError),
    #[error(transparent)]
    Github(#[from] GithubSimError),
}

/// Both simulators on one clock; the ARM simulator runs simulated runners from the GitHub one.
#[derive(Clone)]
pub struct Simulator {
    pub clock: SimClock,
    pub arm: ArmSimHandle,
    pub github: GithubSimHandle,
}

/// Start the GitHub simulator (the container runtime), then the ARM simulator with it.
pub async fn start(mut opts: SimOptions) -> Result<Simulator, SimError> {
    let clock = SimClock::new(opts.time_scale);
    opts.github.faults.seed = opts.seed;
    opts.arm.faults.seed = opts.seed;
    let github = GithubSim::start(opts.github, clock.clone()).await?;
    let arm = ArmSim::start(opts.arm, clock.clone(), github.runtime()).await?;
    Ok(Simulator { clock, arm, github })
}

/// Bind a simulator's listener on `listen`, with the address it got (port 0 = any free port).
pub(crate) async fn bind(listen: SocketAddr) -> std::io::Result<(tokio::net::TcpListener, SocketAddr)> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

/// Where a simulator listens, and its background tasks (see [`SimHandle::serve`]): shared by
/// the clones of its handle, so the tasks stop with the last clone.
#[derive(Clone)]
pub(crate) struct Server {
    addr: SocketAddr,
    _tasks: Arc<JoinSet<()>>,
}

impl Server {
    pub(crate) fn new(addr: SocketAddr, tasks: JoinSet<()>) -> Self {
        Self { addr, _tasks: Arc::new(tasks) }
    }
    /// `http://127.0.0.1:PORT`.
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// A running simulator: its state (`S`, shared with its server and ticker) and its [`Server`].
/// Cheap to clone; the server stops when the last clone is dropped. Each simulator adds its
/// own methods ([`ArmSimHandle`], [`GithubSimHandle`]): callers reach the state through them.
pub struct SimHandle<S> {
    pub(crate) shared: Arc<S>,
    server: Server,
}

// Not derived: a derive would ask `S: Clone`, and only the `Arc` is cloned.
impl<S> Clone for SimHandle<S> {
    fn clone(&self) -> Self {
        Self { shared: self.shared.clone(), server: self.server.clone() }
    }
}

impl<S: Send + Sync + 'static> SimHandle<S> {
    /// Start the simulator `name`: serve `app` on `listener` (bound by [`bind`]), call `tick` on
    /// `shared` every 10 ms of real time for as long as the state lives, and run the tasks
    /// `spawn_more` adds. The tasks stop with the last handle clone: the [`JoinSet`] that holds
    /// them aborts them when dropped.
    pub(crate) fn serve(
        name: &'static str,
        (listener, addr): (tokio::net::TcpListener, SocketAddr),
        app: axum::Router,
        shared: Arc<S>,
        tick: impl Fn(&Arc<S>) + Send + 'static,
        spawn_more: impl FnOnce(&mut JoinSet<()>),
    ) -> Self {
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "{name} server stopped");
            }
        });
        let weak = Arc::downgrade(&shared);
        tasks.spawn(async move {
            let mut iv = tokio::time::interval(std::time::Duration::from_millis(10));
            iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                iv.tick().await;
                let Some(s) = weak.upgrade() else { break };
                tick(&s);
            }
        });
        spawn_more(&mut tasks);
        let server = Server::new(addr, tasks);
        tracing::info!(url = %server.url(), "{name} listening");
        Self { shared, server }
    }
}

impl<S> SimHandle<S> {
    /// Base URL (`http://127.0.0.1:PORT`).
    pub fn url(&self) -> String {
        self.server.url()
    }
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }
}

/// What `aci-runner-devkit sim` prints on stdout (one JSON object).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoints {
    pub arm_url: String,
    pub token_endpoint: String,
    pub managed_identity_endpoint: String,
    pub tenant_id: String,
    pub client_id: String,
    pub client_secret: String,
    pub github_url: String,
    pub github_app_id: i64,
    pub github_installations: Vec<i64>,
    pub app_credentials_file: Option<PathBuf>,
    pub time_scale: f64,
    pub seed: u64,
}

impl Simulator {
    pub fn endpoints(&self, app_credentials_file: Option<PathBuf>, seed: u64) -> Endpoints {
        let creds = self.github.app_credentials();
        Endpoints {
            arm_url: self.arm.url(),
            token_endpoint: format!("{}/{}/oauth2/v2.0/token", self.arm.url(), self.arm.tenant_id()),
            managed_identity_endpoint: self.arm.managed_identity_endpoint(),
            tenant_id: self.arm.tenant_id(),
            client_id: self.arm.client_id(),
            client_secret: self.arm.client_secret(),
            github_url: self.github.url(),
            github_app_id: creds.app_id,
            github_installations: creds.installations.iter().map(|i| i.id).collect(),
            app_credentials_file,
            time_scale: self.clock.scale(),
            seed,
        }
    }
}

/// `aci-runner-devkit sim`: both simulators, standalone.
#[derive(clap::Args, Debug, Clone)]
pub struct SimArgs {
    /// Listen address of the ARM / Entra ID simulator (port 0 = any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Listen address of the GitHub simulator (default: same IP, any free port).
    #[arg(long)]
    pub github_listen: Option<SocketAddr>,
    /// Simulated seconds per real second.
    #[arg(long, default_value_t = 1.0)]
    pub time_scale: f64,
    /// Seed of every fault draw.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Write the generated GitHub App credentials (JSON: app id, client id, installations,
    /// private key PEM, webhook secret, PATs) to this file (mode 0600).
    #[arg(long)]
    pub app_credentials_out: Option<PathBuf>,
    /// Send `workflow_job` webhooks to this URL.
    #[arg(long)]
    pub webhook_url: Option<String>,
    /// Secret for webhook signatures (default: generated; written to the credentials file).
    #[arg(long, env = "SIM_WEBHOOK_SECRET")]
    pub webhook_secret: Option<String>,
    /// JSON file with a full ARM simulator configuration (`ArmSimConfig`, camelCase, all optional);
    /// the flags above and below override it.
    #[arg(long)]
    pub arm_config: Option<PathBuf>,
    /// JSON file with a full GitHub simulator configuration (`GithubSimConfig`, camelCase).
    #[arg(long)]
    pub github_config: Option<PathBuf>,
    /// Simulated image pull time in milliseconds (ARM).
    #[arg(long)]
    pub image_pull_ms: Option<u64>,
    /// Simulated runner start-up (config + connect) time in milliseconds (GitHub).
    #[arg(long)]
    pub runner_startup_ms: Option<u64>,
}

fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f =
            std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
        f.write_all(text.as_bytes())
    }
    #[cfg(not(unix))]
    {
        std::fs::write(path, text)
    }
}

/// Run `aci-runner-devkit sim` until Ctrl-C / SIGTERM.
pub fn run_cli(args: SimArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let mut opts = SimOptions { time_scale: args.time_scale, seed: args.seed, ..Default::default() };
        if let Some(p) = &args.arm_config {
            let text = std::fs::read_to_string(p)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))?;
            opts.arm = serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
        }
        if let Some(p) = &args.github_config {
            let text = std::fs::read_to_string(p)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))?;
            opts.github = serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
        }
        opts.arm.listen = args.listen;
        opts.github.listen = args.github_listen.unwrap_or_else(|| SocketAddr::new(args.listen.ip(), 0));
        if let Some(ms) = args.image_pull_ms {
            opts.arm.image_pull_delay_ms = ms;
        }
        if let Some(ms) = args.runner_startup_ms {
            opts.github.runner_startup_ms = ms;
        }
        if let Some(url) = &args.webhook_url {
            let secret = args
                .webhook_secret
                .clone()
                .unwrap_or_else(|| format!("whsec_{}", uuid::Uuid::new_v4().simple()));
            opts.github.webhook = Some(github::WebhookTarget { url: url.clone(), secret });
        }
        let sim = start(opts).await?;
        if let Some(p) = &args.app_credentials_out {
            let creds = serde_json::to_string_pretty(&sim.github.app_credentials())?;
            write_private(p, &creds).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", p.display()))?;
        }
        let endpoints = sim.endpoints(args.app_credentials_out.clone(), args.seed);
        println!("{}", serde_json::to_string(&endpoints)?);
        tracing::info!(arm = %endpoints.arm_url, github = %endpoints.github_url, "simulator ready");
        shutdown_signal().await;
        Ok(())
    })
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        if let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
