//! A real local Kubernetes control plane (etcd + kube-apiserver v1.20.2) for tests and the demo,
//! started through `scripts/control-plane`. One control plane per process (per test binary);
//! tests isolate themselves by namespace. The processes stop when this process exits.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, CustomResourceExt};

use aci_runner_core::crd::RunnerPool;

/// Where the control-plane script lives (this repository's `scripts/`).
pub fn script_path() -> PathBuf {
    super::repo_root().join("scripts").join("control-plane")
}

/// A running control plane.
#[derive(Debug)]
pub struct ControlPlane {
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    #[error(
        "local control plane could not start: {0}\n\
         Install it once with: sudo scripts/control-plane install   (builds kube-apiserver v1.20.2 from \
         Debian's source package and installs etcd-server; cached under ~/.cache/aci-runner-controller)"
    )]
    Start(String),
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    #[error("CRD not established in time")]
    NotEstablished,
}

impl ControlPlane {
    /// Start a new control plane in `dir`, stopped when this process exits.
    pub fn start_in(dir: &Path) -> Result<Self, ControlPlaneError> {
        Self::start_with_env(dir, &[]).map(|(cp, _)| cp)
    }

    /// [`ControlPlane::start_in`] with extra environment for the script (e.g.
    /// `CONTROL_PLANE_FIRST_PORTS`); also returns what the script wrote to stderr.
    pub fn start_with_env(dir: &Path, env: &[(&str, &str)]) -> Result<(Self, String), ControlPlaneError> {
        let out = Command::new("bash")
            .arg(script_path())
            .arg("start")
            .arg(dir)
            .arg("--watch-pid")
            .arg(std::process::id().to_string())
            .envs(env.iter().copied())
            .output()
            .map_err(|e| ControlPlaneError::Start(format!("running {}: {e}", script_path().display())))?;
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if !out.status.success() {
            return Err(ControlPlaneError::Start(stderr));
        }
        Ok((Self { dir: dir.to_path_buf(), kubeconfig: dir.join("kubeconfig") }, stderr))
    }

    /// A fresh client (create one per tokio runtime: clients are bound to the runtime they run on).
    pub async fn client(&self) -> Result<Client, ControlPlaneError> {
        let kc = Kubeconfig::read_from(&self.kubeconfig)
            .map_err(|e| ControlPlaneError::Kubeconfig(e.to_string()))?;
        let cfg = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .map_err(|e| ControlPlaneError::Kubeconfig(e.to_string()))?;
        Ok(Client::try_from(cfg)?)
    }

    /// Stop the processes (normally left to the exit watchdog).
    pub fn stop(&self) {
        let _ = Command::new("bash").arg(script_path()).arg("stop").arg(&self.dir).status();
    }
}

static SHARED: OnceLock<Result<ControlPlane, String>> = OnceLock::new();

/// The control plane of this process, started on first use. A missing install makes the
/// caller fail (never skip) with the install command in the message.
pub fn shared() -> &'static ControlPlane {
    let r = SHARED.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("aci-rc-cp-{}", std::process::id()));
        ControlPlane::start_in(&dir).map_err(|e| e.to_string())
    });
    match r {
        Ok(cp) => cp,
        Err(e) => panic!("{e}"),
    }
}

/// Install (server-side apply) the RunnerPool CRD and wait until it is Established.
pub async fn install_crd(client: &Client) -> Result<(), ControlPlaneError> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut crd =
        serde_json::to_value(RunnerPool::crd()).map_err(|e| ControlPlaneError::Start(e.to_string()))?;
    let name = crd["metadata"]["name"].as_str().unwrap_or_default().to_string();
    if !server_supports_cel(client).await? {
        // Servers before 1.25 reject the unknown schema field in a server-side apply (and ignore
        // it in a plain create). The controller enforces the same rules in Rust.
        strip_key(&mut crd, "x-kubernetes-validations");
    }
    api.patch(&name, &PatchParams::apply("aci-runner-controller-tests").force(), &Patch::Apply(&crd)).await?;
    for _ in 0..200 {
        let c = api.get(&name).await?;
        let established = c
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        if established {
            // Discovery of the new resource can lag a little behind Established.
            let rp: Api<RunnerPool> = Api::all(client.clone());
            for _ in 0..100 {
                if rp.list(&Default::default()).await.is_ok() {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(ControlPlaneError::NotEstablished)
}

/// Whether the API server evaluates CEL rules in CRD schemas (Kubernetes >= 1.25).
pub async fn server_supports_cel(client: &Client) -> Result<bool, ControlPlaneError> {
    let v = client.apiserver_version().await?;
    let minor: u32 = v.minor.trim_end_matches('+').parse().unwrap_or(0);
    let major: u32 = v.major.parse().unwrap_or(0);
    Ok(major > 1 || (major == 1 && minor >= 25))
}

/// Remove every occurrence of `key` from a JSON document.
pub fn strip_key(v: &mut serde_json::Value, key: &str) {
    match v {
        serde_json::Value::Object(m) => {
            m.remove(key);
            m.values_mut().for_each(|x| strip_key(x, key));
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(|x| strip_key(x, key)),
        _ => {}
    }
}

/// Create a uniquely named namespace for one test.
pub async fn test_namespace(client: &Client, prefix: &str) -> Result<String, ControlPlaneError> {
    let name = format!("{}-{}", prefix, &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}
    }))
    .map_err(|e| ControlPlaneError::Start(e.to_string()))?;
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await?;
    Ok(name)
}

/// Client + CRD installed + fresh namespace: the usual start of an e2e test.
pub async fn setup(prefix: &str) -> Result<(Client, String), ControlPlaneError> {
    let client = shared().client().await?;
    install_crd(&client).await?;
    let ns = test_namespace(&client, prefix).await?;
    Ok((client, ns))
}
