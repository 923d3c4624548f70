//! The controller as its own process (`aci-runner-controller run`), pointed at an in-process
//! simulator: started, killed (SIGKILL) and restarted by the benchmarks and the soak.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::sim::Simulator;

/// Errors starting or watching the controller process.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("cannot find this program's executable: {0}")]
    Exe(std::io::Error),
    #[error("cannot write {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot start the controller: {0}")]
    Spawn(std::io::Error),
    #[error("the controller did not answer /healthz within 60 s (log: {0})")]
    NotHealthy(PathBuf),
    #[error("the controller exited before answering /healthz (log: {0})")]
    Exited(PathBuf),
}

/// Attempts at a first start whose ports another process took in between.
const PORT_ATTEMPTS: u32 = 3;

/// The `--install-id` of every controller process the benchmarks start (one install; the
/// P5 benchmark seeds groups with it as if that install had created them).
pub const BENCH_INSTALL_ID: &str = "bench";

/// Environment variable naming a command to start the controller under (diagnostics).
pub const WRAPPER_ENV: &str = "ACI_RC_BENCH_CONTROLLER_WRAPPER";

/// How to start the controller.
#[derive(Clone, Debug)]
pub struct ControllerSpec {
    pub kubeconfig: PathBuf,
    pub namespaces: Vec<String>,
    pub resync: String,
    pub gc_grace: String,
    pub leader_election: bool,
    pub lease_namespace: String,
    /// Directory for the log and the webhook secret.
    pub dir: PathBuf,
    pub webhook_secret: String,
    /// `RUST_LOG` of the controller.
    pub log_filter: String,
}

/// A running controller process.
pub struct ControllerProc {
    child: Option<Child>,
    pub health_url: String,
    pub webhook_url: String,
    pub log: PathBuf,
    /// Incarnation (0, 1, ...; each restart appends to the same log).
    pub starts: u32,
    env: Vec<(String, String)>,
    args: Vec<String>,
}

/// A port free at this moment. The controller binds it a little later, so another process (a
/// parallel soak seed's simulator) can take it in between: see [`lost_a_port`].
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Did the incarnation whose log begins at byte `from` of `log` exit because a port it was to
/// listen on was taken?
fn lost_a_port(log: &Path, from: u64) -> bool {
    let Ok(bytes) = std::fs::read(log) else { return false };
    let from = usize::try_from(from).unwrap_or(usize::MAX).min(bytes.len());
    String::from_utf8_lossy(&bytes[from..]).contains("Address already in use")
}

impl ControllerProc {
    /// Start `aci-runner-controller run` against `sim` and wait for `/healthz`.
    pub async fn start(sim: &Simulator, spec: ControllerSpec) -> Result<Self, ProcError> {
        Self::start_with(sim, spec, &[]).await
    }

    /// [`Self::start`] with more `run` flags appended (e.g. raised quotas:
    /// `--aci-creates-per-5m 1000`).
    pub async fn start_with(
        sim: &Simulator,
        spec: ControllerSpec,
        extra_args: &[String],
    ) -> Result<Self, ProcError> {
        std::fs::create_dir_all(&spec.dir)
            .map_err(|source| ProcError::Io { path: spec.dir.clone(), source })?;
        let secret_file = spec.dir.join("webhook-secret");
        std::fs::write(&secret_file, &spec.webhook_secret)
            .map_err(|source| ProcError::Io { path: secret_file.clone(), source })?;
        // The benchmarks' pools run as the controller's identity in the namespaces it watches.
        let policy_file = spec.dir.join("tenant-policy.yaml");
        let policy = aci_runner_core::policy::TenantPolicy::controller_identity_for(spec.namespaces.clone());
        std::fs::write(&policy_file, serde_json::to_string(&policy).unwrap_or_default())
            .map_err(|source| ProcError::Io { path: policy_file.clone(), source })?;
        // The ports are picked before the controller binds them; a start that lost one to another
        // process is tried again on new ports (restarts keep theirs: the simulated GitHub delivers
        // webhooks to the first start's address).
        let log = spec.dir.join("controller.log");
        let mut attempt = 1;
        loop {
            let from = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
            match Self::start_on_free_ports(sim, &spec, extra_args).await {
                Err(ProcError::Exited(path)) if attempt < PORT_ATTEMPTS && lost_a_port(&path, from) => {
                    tracing::warn!(attempt, log = %path.display(), "a port was taken before the controller bound it; starting on others");
                    attempt += 1;
                }
                started => return started,
            }
        }
    }

    async fn start_on_free_ports(
        sim: &Simulator,
        spec: &ControllerSpec,
        extra_args: &[String],
    ) -> Result<Self, ProcError> {
        let secret_file = spec.dir.join("webhook-secret");
        let policy_file = spec.dir.join("tenant-policy.yaml");
        let health_port = free_port().map_err(ProcError::Spawn)?;
        let webhook_port = free_port().map_err(ProcError::Spawn)?;
        let arm = sim.arm.url();
        let mut args: Vec<String> = vec![
            "run".into(),
            format!("--namespaces={}", spec.namespaces.join(",")),
            format!("--leader-election={}", spec.leader_election),
            format!("--lease-namespace={}", spec.lease_namespace),
            format!("--lease-name=aci-runner-controller-{}", spec.lease_namespace),
            format!("--health-listen=127.0.0.1:{health_port}"),
            format!("--webhook-listen=127.0.0.1:{webhook_port}"),
            format!("--webhook-secret-file={}", secret_file.display()),
            format!("--arm-endpoint={arm}"),
            format!("--azure-authority-host={arm}"),
            "--arm-scope=https://management.azure.com/.default".into(),
            format!("--resync-interval={}", spec.resync),
            format!("--gc-grace={}", spec.gc_grace),
            format!("--install-id={BENCH_INSTALL_ID}"),
            format!("--tenant-policy={}", policy_file.display()),
        ];
        args.extend(extra_args.iter().cloned());
        let webhook_url =
            format!("http://127.0.0.1:{webhook_port}{}", aci_runner_controller::github::WEBHOOK_PATH);
        let health_url = format!("http://127.0.0.1:{health_port}");
        let env = vec![("RUST_LOG".to_string(), spec.log_filter.clone())];
        Self::launch(sim, &spec.kubeconfig, &spec.dir, args, env, health_url, webhook_url).await
    }

    /// `aci-runner-controller` with exactly `args` and the variables `env` (e.g. a Deployment's
    /// container; they override the defaults), the controller's Azure identity from `sim`,
    /// `KUBECONFIG` = `kubeconfig`, its log in `dir`; `health_url` (`http://HOST:PORT`) is where
    /// the `--health-listen` of `args` answers.
    pub async fn start_exact(
        sim: &Simulator,
        kubeconfig: &Path,
        dir: &Path,
        args: Vec<String>,
        env: Vec<(String, String)>,
        health_url: String,
    ) -> Result<Self, ProcError> {
        std::fs::create_dir_all(dir).map_err(|source| ProcError::Io { path: dir.to_path_buf(), source })?;
        Self::launch(sim, kubeconfig, dir, args, env, health_url, String::new()).await
    }

    /// The controller with `args`; `extra_env` (after the defaults) may set `RUST_LOG`.
    async fn launch(
        sim: &Simulator,
        kubeconfig: &Path,
        dir: &Path,
        args: Vec<String>,
        extra_env: Vec<(String, String)>,
        health_url: String,
        webhook_url: String,
    ) -> Result<Self, ProcError> {
        let mut env = vec![
            ("KUBECONFIG".to_string(), kubeconfig.display().to_string()),
            ("AZURE_TENANT_ID".to_string(), sim.arm.tenant_id()),
            ("AZURE_CLIENT_ID".to_string(), sim.arm.client_id()),
            ("AZURE_CLIENT_SECRET".to_string(), sim.arm.client_secret()),
            ("RUST_LOG".to_string(), "info".to_string()),
        ];
        env.extend(extra_env);
        let mut p = Self {
            child: None,
            health_url,
            webhook_url,
            log: dir.join("controller.log"),
            starts: 0,
            env,
            args,
        };
        p.spawn().await?;
        Ok(p)
    }

    async fn spawn(&mut self) -> Result<(), ProcError> {
        // The production binary, as a user runs it.
        let exe = crate::testing::controller_bin();
        if !exe.is_file() {
            return Err(ProcError::Exe(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{} not found (build it, or set ACI_RC_BIN)", exe.display()),
            )));
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|source| ProcError::Io { path: self.log.clone(), source })?;
        let err = log.try_clone().map_err(|source| ProcError::Io { path: self.log.clone(), source })?;
        // Diagnostics: `ACI_RC_BENCH_CONTROLLER_WRAPPER="heaptrack -o /tmp/ht"` starts the
        // controller under that command (whitespace-separated; the executable's real path is
        // passed, as the wrapper's `/proc/self/exe` would be the wrapper). Process figures (RSS,
        // CPU) then describe the wrapper, not the controller.
        let wrapper: Vec<String> = std::env::var(WRAPPER_ENV)
            .map(|w| w.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default();
        let mut cmd = match wrapper.split_first() {
            Some((program, wrapper_args)) => {
                let mut c = Command::new(program);
                c.args(wrapper_args).arg(&exe);
                c
            }
            None => Command::new(exe),
        };
        cmd.env_remove(WRAPPER_ENV);
        cmd.args(&self.args).stdin(Stdio::null()).stdout(log).stderr(err);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        // The controller's Azure identity comes from these variables only.
        cmd.env_remove("AZURE_FEDERATED_TOKEN_FILE");
        let child = cmd.spawn().map_err(ProcError::Spawn)?;
        self.child = Some(child);
        self.starts += 1;
        // A minute: on a loaded machine (the soak runs 20 seeds at once on 2 cores) a debug build
        // of the controller can take well over 20 s to serve its first request.
        let deadline = Instant::now() + Duration::from_secs(60);
        let url = format!("{}/healthz", self.health_url);
        loop {
            if reqwest::get(&url).await.is_ok_and(|r| r.status().is_success()) {
                return Ok(());
            }
            if self.exited() {
                return Err(ProcError::Exited(self.log.clone()));
            }
            if Instant::now() > deadline {
                return Err(ProcError::NotHealthy(self.log.clone()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The process id (while running).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Has the process exited on its own?
    pub fn exited(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => !matches!(c.try_wait(), Ok(None)),
            None => true,
        }
    }

    /// SIGKILL: an abrupt end, as when a node dies.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Graceful stop (SIGTERM), SIGKILL after 10 s.
    pub async fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start again on the same ports with the same flags (after `kill` or `stop`).
    pub async fn restart(&mut self) -> Result<(), ProcError> {
        self.kill();
        self.spawn().await
    }

    /// Resident set size in bytes (Linux `/proc`), while running.
    pub fn rss_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let kb: u64 =
            status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    }

    /// User + system CPU time consumed so far (Linux `/proc`), while running.
    pub fn cpu_time(&self) -> Option<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()?)).ok()?;
        // Fields after the command name (which is in parentheses and may contain spaces).
        let rest = stat.rsplit_once(')')?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        let utime: u64 = f.get(11)?.parse().ok()?;
        let stime: u64 = f.get(12)?.parse().ok()?;
        Some(Duration::from_secs_f64((utime + stime) as f64 / clock_ticks() as f64))
    }

    /// Lines of the log that show a panic.
    pub fn panics(&self) -> Vec<String> {
        panics_in(&self.log)
    }
}

impl Drop for ControllerProc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn clock_ticks() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100)
}

/// Lines of a log file that show a panic.
pub fn panics_in(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("panicked at"))
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only the incarnation being started counts: an earlier start's lost port, further up the
    /// shared log, does not make a later failure look like one.
    #[test]
    fn a_lost_port_is_read_from_this_incarnations_part_of_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("controller.log");
        std::fs::write(&log, "Error: binding 127.0.0.1:33663\n    Address already in use (os error 98)\n")
            .unwrap();
        let second = std::fs::metadata(&log).unwrap().len();
        assert!(lost_a_port(&log, 0));
        assert!(!lost_a_port(&log, second));
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        std::io::Write::write_all(&mut f, b"Error: cannot reach the API server\n").unwrap();
        assert!(!lost_a_port(&log, second));
        assert!(!lost_a_port(&dir.path().join("missing.log"), 0));
        assert!(!lost_a_port(&log, u64::MAX));
    }
}
