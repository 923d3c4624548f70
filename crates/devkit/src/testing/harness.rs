//! The whole product in one process, for the end-to-end tests, the demo and the benchmarks:
//! the simulated Azure and GitHub, the controller's production edges pointed at them, and the
//! controller itself (`run_with`) against a real Kubernetes API server.
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};
use tokio::sync::oneshot;

use crate::sim::arm::ArmSimConfig;
use crate::sim::github::{EnqueueJobs, GithubSimConfig, WebhookTarget};
use crate::sim::{SimOptions, Simulator};
use aci_runner_controller::azure::CredentialSpec;
use aci_runner_controller::controller::run::{Edges, LeaderElectionArgs, RunArgs, build_edges, run_with};
use aci_runner_core::crd::RunnerPool;
use aci_runner_core::plan::PlannerConfig;
use aci_runner_core::policy::TenantPolicy;

/// The subscription the examples of the harness use.
pub const SUBSCRIPTION: &str = "00000000-0000-0000-0000-0000000000aa";
/// The resource group the examples of the harness use.
pub const RESOURCE_GROUP: &str = "rg-runners";
/// The org the simulator's App installation 1001 is on.
pub const ORG: &str = "octo-org";

/// Simulator options with short delays at real time (scale 1), so that the controller's clock,
/// Kubernetes timestamps and the simulator agree while a pass still takes well under a second.
pub fn fast_sim_options(seed: u64) -> SimOptions {
    let arm = ArmSimConfig {
        provisioning_delay_ms: 150,
        image_pull_delay_ms: 400,
        restart_delay_ms: 500,
        delete_delay_ms: 150,
        ..ArmSimConfig::default()
    };
    let github = GithubSimConfig { runner_startup_ms: 200, ..GithubSimConfig::default() };
    SimOptions { time_scale: 1.0, seed, arm, github }
}

/// Planner settings for tests: quick backoffs, short requeues.
pub fn fast_planner() -> PlannerConfig {
    PlannerConfig {
        in_flight_ttl: Duration::from_secs(20),
        backoff_base: Duration::from_millis(500),
        backoff_max: Duration::from_secs(4),
        location_cooldown: Duration::from_secs(30),
        spot_cooldown: Duration::from_secs(30),
        quota_backoff_base: Duration::from_secs(1),
        quota_backoff_max: Duration::from_secs(3),
        demand_ttl: Duration::from_secs(120),
        converging_requeue: Duration::from_millis(500),
        min_requeue: Duration::from_millis(200),
        deletion_grace: Duration::from_secs(3),
        removal_ttl: Duration::from_secs(3),
        predecessor_writes: Duration::from_secs(5),
        ..PlannerConfig::default()
    }
}

/// How to start one controller instance: its `run` flags, and what the harness writes into
/// files for it.
#[derive(Clone, Debug)]
pub struct ControllerOptions {
    /// The `run` flags. At launch the harness sets the health and webhook listeners (free local
    /// ports), `--webhook-secret-file` and `--tenant-policy` (files it writes), and an unset
    /// `--arm-endpoint` becomes the simulator's URL and an unset `--azure-authority-host` the ARM
    /// endpoint. Another host name for the same simulator tells this controller's ARM calls
    /// apart in the call log.
    pub args: RunArgs,
    /// The shared webhook secret (written to a file for the controller); unset: no webhook
    /// listener.
    pub webhook_secret: Option<String>,
    pub planner: PlannerConfig,
    /// `--tenant-policy` (written to a file for the controller); unset: the pools of
    /// `args.namespaces` (every namespace when empty) may run as the controller's identity.
    pub tenant_policy: Option<TenantPolicy>,
}

impl ControllerOptions {
    pub fn for_namespace(ns: &str) -> Self {
        let args = RunArgs {
            namespaces: vec![ns.to_string()],
            selector: None,
            resync_interval: Duration::from_secs(2),
            leader: LeaderElectionArgs {
                leader_election: false,
                lease_name: format!("aci-runner-controller-{ns}"),
                lease_namespace: Some(ns.to_string()),
                identity: None,
            },
            // Set at launch.
            health_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            webhook_listen: None,
            webhook_secret_file: None,
            webhook_secrets_dir: None,
            azure_cloud: Default::default(),
            arm_endpoint: None,
            azure_authority_host: None,
            arm_scope: Some("https://management.azure.com/.default".into()),
            allow_imds: false,
            install_id: None,
            install_name: "aci-runner-controller".into(),
            tenant_policy: None,
            gc_grace: Duration::from_secs(2),
            limits: Default::default(),
            allow_insecure_github_http: false,
            github_request_timeout: Duration::from_secs(30),
            prices: Default::default(),
            ca_bundle: None,
        };
        Self { args, webhook_secret: None, planner: fast_planner(), tenant_policy: None }
    }

    /// These options with leader election on, as `identity` in the Lease `lease_name`.
    pub fn elected(mut self, lease_name: &str, identity: &str) -> Self {
        self.args.leader = LeaderElectionArgs {
            leader_election: true,
            lease_name: lease_name.to_string(),
            identity: Some(identity.to_string()),
            ..self.args.leader
        };
        self
    }
}

/// A running controller; stopped (gracefully) by [`ControllerHandle::stop`] or aborted on drop.
pub struct ControllerHandle {
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    pub health_addr: SocketAddr,
    pub webhook_addr: Option<SocketAddr>,
    _files: tempfile::TempDir,
}

impl ControllerHandle {
    /// Graceful shutdown; returns what `run_with` returned.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        match self.task.take() {
            Some(t) => match tokio::time::timeout(Duration::from_secs(20), t).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => Err(anyhow::anyhow!("controller task failed: {e}")),
                Err(_) => Err(anyhow::anyhow!("controller did not stop within 20 s")),
            },
            None => Ok(()),
        }
    }

    /// Abrupt end (a killed process): no graceful shutdown, no lease release.
    pub fn kill(mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }

    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(|t| t.is_finished())
    }

    /// GET `/metrics`.
    pub async fn metrics(&self) -> Result<String, reqwest::Error> {
        reqwest::get(format!("http://{}/metrics", self.health_addr)).await?.text().await
    }
}

impl Drop for ControllerHandle {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// A free local port (bound, then released for the controller to bind), never one this process
/// handed out before: two controllers started at once do not get the same port.
pub fn free_addr() -> std::io::Result<SocketAddr> {
    static GIVEN: std::sync::Mutex<BTreeSet<u16>> = std::sync::Mutex::new(BTreeSet::new());
    loop {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        if GIVEN.lock().unwrap_or_else(|e| e.into_inner()).insert(addr.port()) {
            return Ok(addr);
        }
    }
}

/// The controller's identity in the simulated Entra ID (the pre-registered app registration).
pub fn sim_identity(sim: &Simulator) -> CredentialSpec {
    CredentialSpec::ClientSecret {
        tenant_id: sim.arm.tenant_id(),
        client_id: sim.arm.client_id(),
        client_secret: sim.arm.client_secret().into(),
    }
}

/// The `run` flags of `opts` for a controller pointed at the simulator, with these listeners and
/// files (see [`ControllerOptions::args`]).
pub fn run_args(
    sim: &Simulator,
    opts: &ControllerOptions,
    health: SocketAddr,
    webhook: Option<(SocketAddr, std::path::PathBuf)>,
    tenant_policy: Option<std::path::PathBuf>,
) -> RunArgs {
    let mut args = opts.args.clone();
    args.health_listen = health;
    args.webhook_listen = webhook.as_ref().map(|(a, _)| *a);
    args.webhook_secret_file = webhook.map(|(_, p)| p);
    args.tenant_policy = tenant_policy;
    let arm = args.arm_endpoint.get_or_insert_with(|| sim.arm.url()).clone();
    args.azure_authority_host.get_or_insert(arm);
    args
}

/// Start a controller in this process, driving the simulator through the production edges.
/// A controller that exits before it answers `/healthz` is an error (what it returned).
///
/// Its ports come from [`free_addr`] (bound, then released): another test may take one before
/// the controller binds it, and then the controller exits at once; it is started again on new
/// ports (up to three times).
pub async fn start_controller(
    client: &Client,
    sim: &Simulator,
    opts: ControllerOptions,
) -> anyhow::Result<ControllerHandle> {
    let mut attempt = 1;
    loop {
        match launch_controller(client, sim, opts.clone()).await {
            Err(e) if attempt < 3 && format!("{e:#}").contains("binding ") => attempt += 1,
            r => return r,
        }
    }
}

async fn launch_controller(
    client: &Client,
    sim: &Simulator,
    opts: ControllerOptions,
) -> anyhow::Result<ControllerHandle> {
    let health = free_addr()?;
    let files = tempfile::tempdir()?;
    let webhook = match &opts.webhook_secret {
        Some(secret) => {
            let path = files.path().join("webhook-secret");
            std::fs::write(&path, secret)?;
            Some((free_addr()?, path))
        }
        None => None,
    };
    let policy = opts
        .tenant_policy
        .clone()
        .unwrap_or_else(|| TenantPolicy::controller_identity_for(opts.args.namespaces.clone()));
    let policy_file = files.path().join("tenant-policy.yaml");
    std::fs::write(&policy_file, serde_json::to_string(&policy)?)?;
    let webhook_addr = webhook.as_ref().map(|(a, _)| *a);
    let args = run_args(sim, &opts, health, webhook, Some(policy_file));
    let clock = sim.clock.clone();
    let edges: Edges = build_edges(&args, Some(sim_identity(sim)), Arc::new(move || clock.now()))?;
    let edges = Edges { planner: opts.planner.clone(), ..edges };
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let client = client.clone();
    let task = tokio::spawn(async move {
        run_with(args, client, edges, async move {
            let _ = stop_rx.await;
        })
        .await
    });
    // Ready when /healthz answers.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if reqwest::get(format!("http://{health}/healthz")).await.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        if task.is_finished() || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if task.is_finished() {
        return Err(match task.await {
            Ok(Ok(())) => anyhow::anyhow!("the controller exited at start"),
            Ok(Err(e)) => e.context("the controller exited at start"),
            Err(e) => anyhow::anyhow!("controller task failed at start: {e}"),
        });
    }
    Ok(ControllerHandle {
        stop: Some(stop_tx),
        task: Some(task),
        health_addr: health,
        webhook_addr,
        _files: files,
    })
}

/// Point the simulated GitHub's `workflow_job` webhooks at a controller.
pub fn connect_webhooks(sim: &Simulator, ctl: &ControllerHandle, secret: &str) {
    if let Some(addr) = ctl.webhook_addr {
        sim.github.set_webhook(Some(WebhookTarget {
            url: format!("http://{addr}{}", aci_runner_controller::github::WEBHOOK_PATH),
            secret: secret.to_string(),
        }));
    }
}

/// Server-side apply any object.
pub async fn apply<K>(api: &Api<K>, name: &str, obj: &Value) -> kube::Result<K>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.patch(name, &PatchParams::apply("e2e").force(), &Patch::Apply(obj)).await
}

/// The simulator's GitHub App credentials as the Secret a pool references (`appSecretRef`).
pub async fn apply_app_secret(
    client: &Client,
    ns: &str,
    name: &str,
    sim: &Simulator,
) -> kube::Result<Secret> {
    let creds = sim.github.app_credentials();
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    apply(
        &api,
        name,
        &json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name},
            "stringData": {
                "appId": creds.app_id.to_string(),
                "installationId": "1001",
                "privateKey": creds.private_key_pem,
            }
        }),
    )
    .await
}

/// A RunnerPool on the simulator: org `octo-org`, labels `[aci]`, App secret `github-app`;
/// `patch` is merged over the spec (JSON merge semantics).
pub fn pool_manifest(name: &str, sim: &Simulator, patch: Value) -> Value {
    let mut spec = json!({
        "github": {
            "organization": ORG,
            "apiUrl": sim.github.url(),
            "labels": ["aci"],
            "appSecretRef": {"name": "github-app"},
        },
        "azure": {
            "subscriptionId": SUBSCRIPTION,
            "resourceGroup": RESOURCE_GROUP,
            "location": "westeurope",
        },
        "runner": {"cpu": 1, "memoryGB": 2},
        "scaling": {"minIdle": 1, "maxRunners": 10, "scaleDownDelay": "1s", "registrationTimeout": "30s", "drainTimeout": "60s"},
    });
    merge(&mut spec, patch);
    json!({
        "apiVersion": "aci-runners.dev/v1alpha1",
        "kind": "RunnerPool",
        "metadata": {"name": name},
        "spec": spec,
    })
}

/// JSON merge patch (RFC 7396) of `patch` into `base`.
pub fn merge(base: &mut Value, patch: Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    b.remove(&k);
                } else {
                    merge(b.entry(k).or_insert(Value::Null), v);
                }
            }
        }
        (b, p) => *b = p,
    }
}

/// Create or update a pool.
pub async fn apply_pool(client: &Client, ns: &str, manifest: &Value) -> kube::Result<RunnerPool> {
    let name = manifest["metadata"]["name"].as_str().unwrap_or_default().to_string();
    apply(&Api::<RunnerPool>::namespaced(client.clone(), ns), &name, manifest).await
}

/// Poll `f` every 100 ms until it returns `Some` or `timeout` passes.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if tokio::time::Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A condition of a pool's status: (status, reason).
pub fn condition(pool: &RunnerPool, type_: &str) -> Option<(String, String)> {
    pool.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

/// Container groups of the simulator that carry a pool's name tag (any uid).
pub fn groups_of(sim: &Simulator, pool: &str) -> Vec<crate::sim::arm::GroupSummary> {
    sim.arm
        .groups()
        .into_iter()
        .filter(|g| {
            g.tags.get(aci_runner_controller::azure::template::TAG_POOL_NAME).is_some_and(|p| p == pool)
        })
        .collect()
}

/// Runner registrations of the simulator whose name starts with `<pool>-`.
pub fn runners_of(sim: &Simulator, pool: &str) -> Vec<crate::sim::github::RunnerRecord> {
    let prefix = format!("{pool}-");
    sim.github.runners().into_iter().filter(|r| r.name.starts_with(&prefix)).collect()
}

/// The PUT body of a one-container runner group (1 vCPU, 2 GB, `run.sh`) in westeurope, tagged
/// as managed by the controller, as the tests send it to the simulated ARM.
pub fn runner_group_body(image: &str, restart: &str, env: Value) -> Value {
    json!({
        "location": "westeurope",
        "tags": {"aci-runners-managed-by": "aci-runner-controller"},
        "properties": {
            "osType": "Linux",
            "restartPolicy": restart,
            "containers": [{
                "name": "runner",
                "properties": {
                    "image": image,
                    "command": ["/home/runner/run.sh"],
                    "resources": {"requests": {"cpu": 1.0, "memoryInGB": 2.0}},
                    "environmentVariables": env,
                }
            }]
        }
    })
}

/// `count` jobs of `octo-org/octo-repo` for the simulated GitHub to queue, with these `runs-on`
/// labels, each running `duration_secs` simulated seconds.
pub fn jobs(labels: &[&str], duration_secs: f64, count: u32) -> EnqueueJobs {
    let labels = labels.iter().map(|l| l.to_string()).collect();
    EnqueueJobs { labels, duration_secs, count, ..EnqueueJobs::default() }
}

/// Log to the test output (filter from `RUST_LOG`, default `warn`); safe to call repeatedly.
pub fn init_test_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
}
