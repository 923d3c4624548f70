//! The Kubernetes-side shell blocks of the install guides, run as printed with bash against fresh
//! local control planes (kube-apiserver v1.20.2 from the devkit harness), with helm from
//! `scripts/helm` and kubectl on `PATH` and `KUBECONFIG` set.
//!
//! A guide marks each fenced block with an HTML comment on the line before it (the grammar is in
//! docs/README.md, "Docs that are executed"):
//! `<!-- test: run -->` (run as printed), `<!-- test: syntax-only; reason: …; sets: VAR … -->`
//! (`bash -n` only; the test gives the variables the block would set stand-in values),
//! `<!-- test: skip; reason: … -->`, `<!-- test: stand-in NAME; reason: … -->` (`bash -n`, and
//! the test does NAME at that point), `<!-- test: file NAME -->` (a YAML block the reader saves as
//! NAME). Every reason is printed. The blocks of one session are one bash script
//! (`set -euo pipefail`), in the order printed, in a copy of the repository's `charts/`, `crds/`
//! and `examples/`, so a reordered or missing step fails on the real API server
//! (`quickstart_in_the_old_order_fails_on_the_apiserver` shows it for the quickstart).
//!
//! What runs and what does not:
//! - quickstart + webhook guide: every Kubernetes step as printed on one control plane; the `az`
//!   steps only `bash -n` (their outputs are stand-in values); the GitHub App is the GitHub
//!   simulator's (App ID and installation id as the quickstart prints them, the key file written
//!   where the quickstart reads it). The chart's pods cannot run (no nodes, no images), so in
//!   place of `rollout status` the test starts the controller out of cluster with the installed
//!   Deployment's own arguments, impersonating the chart's ServiceAccount (so under the chart's
//!   RBAC), against the Azure simulator (`--arm-endpoint`, a client secret instead of workload
//!   identity) and with `https://api.github.com` routed to the GitHub simulator. The quickstart's
//!   own `kubectl wait … --for=condition=Ready` then proves the pool Ready. After the webhook
//!   guide's upgrade the stand-in restarts with the upgraded Deployment's arguments and the
//!   guide's Secret as its mounted secret file, and the GitHub simulator, given that secret as
//!   the App's, gets its signed `workflow_job` delivery accepted. Not proven here: the container
//!   image, workload identity, the Deployment's rollout and pods, the Ingress and NetworkPolicy
//!   in action, real Azure and GitHub.
//! - docs/helm.md: the install and the `--reuse-values` image upgrade as printed.
//! - Flux and Argo CD: their controllers do not run here. Their README commands are `bash -n`
//!   only; the test replays what those controllers apply, in their order, on a fresh control
//!   plane (see `flux_example_converges_in_dependency_order` and
//!   `argocd_application_syncs_in_wave_order`).
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use aci_runner_controller::controller::ports::{
    JitRegistration, JitRunner, PoolContext, RunnerRegistrations,
};
use aci_runner_controller::controller::run::{Edges, RunArgs, build_edges, run_with};
use aci_runner_core::plan::{EdgeError, ObservedRunner};
use aci_runner_devkit::sim::github::{EnqueueJobs, InstallationSpec, WebhookTarget};
use aci_runner_devkit::testing::control_plane::ControlPlane;
use aci_runner_devkit::testing::harness;
use aci_runner_devkit::testing::tools::{helm_bin, kubectl_bin};
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

const QUICKSTART: &str = "docs/quickstart-aks.md";
const HELM_GUIDE: &str = "docs/helm.md";
const WEBHOOK_GUIDE: &str = "examples/webhook-autoscaling/README.md";
const FLUX_README: &str = "examples/flux/README.md";
const ARGOCD_README: &str = "examples/argocd/README.md";
/// The guides whose shell blocks are executed; every shell block in them carries a marker.
const EXECUTED_DOCS: [&str; 5] = [QUICKSTART, HELM_GUIDE, WEBHOOK_GUIDE, FLUX_README, ARGOCD_README];

// ---- extraction ----

#[derive(Clone, Debug, PartialEq)]
enum Mark {
    Run,
    SyntaxOnly { reason: String, sets: Vec<String> },
    Skip { reason: String },
    StandIn { name: String, reason: String },
    File { name: String },
}

#[derive(Clone, Debug)]
struct Block {
    doc: &'static str,
    /// 1-based line of the opening fence.
    line: usize,
    /// The nearest heading above the block.
    section: String,
    lang: String,
    body: String,
    mark: Option<Mark>,
}

fn is_shell(lang: &str) -> bool {
    matches!(lang, "sh" | "bash" | "shell")
}

fn parse_mark(text: &str) -> Result<Mark, String> {
    let mut parts = text.split(';').map(str::trim);
    let head = parts.next().unwrap_or_default();
    let mut reason = None;
    let mut sets = Vec::new();
    for p in parts {
        match p.split_once(':') {
            Some(("reason", r)) if !r.trim().is_empty() => reason = Some(r.trim().to_string()),
            Some(("sets", v)) => sets = v.split_whitespace().map(str::to_string).collect(),
            _ => return Err(format!("unknown marker part {p:?}")),
        }
    }
    let need_reason = |r: Option<String>| r.ok_or_else(|| format!("{head:?} needs a `reason: …`"));
    let (kind, arg) = head.split_once(' ').map(|(k, a)| (k, a.trim())).unwrap_or((head, ""));
    let stray_sets = !sets.is_empty() && kind != "syntax-only";
    if stray_sets {
        return Err("`sets:` belongs to syntax-only blocks".into());
    }
    let mark = match (kind, arg) {
        ("run", "") => Mark::Run,
        ("syntax-only", "") => Mark::SyntaxOnly { reason: need_reason(reason)?, sets },
        ("skip", "") => Mark::Skip { reason: need_reason(reason)? },
        ("stand-in", name) if !name.is_empty() => {
            Mark::StandIn { name: name.to_string(), reason: need_reason(reason)? }
        }
        ("file", name) if !name.is_empty() && !name.contains('/') => Mark::File { name: name.to_string() },
        _ => return Err(format!("unknown marker {head:?}")),
    };
    Ok(mark)
}

/// Every fenced block of `doc` with its marker.
fn blocks(doc: &'static str) -> Vec<Block> {
    let text = std::fs::read_to_string(repo().join(doc)).unwrap_or_else(|e| panic!("{doc}: {e}"));
    let marker = regex::Regex::new(r"^<!-- test: (.*) -->$").unwrap();
    let mut out = Vec::new();
    let mut section = String::new();
    let mut pending: Option<(usize, Mark)> = None;
    let mut lines = text.lines().enumerate();
    while let Some((i, line)) = lines.next() {
        if let Some(c) = marker.captures(line) {
            let mark = parse_mark(&c[1]).unwrap_or_else(|e| panic!("{doc}:{}: {e}", i + 1));
            pending = Some((i + 1, mark));
            continue;
        }
        if let Some(lang) = line.strip_prefix("```") {
            let mut body = String::new();
            for (_, l) in lines.by_ref() {
                if l == "```" {
                    break;
                }
                body.push_str(l);
                body.push('\n');
            }
            let mark = pending.take().map(|(at, m)| {
                assert_eq!(at, i, "{doc}:{at}: a marker belongs on the line right before a fence");
                m
            });
            out.push(Block {
                doc,
                line: i + 1,
                section: section.clone(),
                lang: lang.trim().into(),
                body,
                mark,
            });
            continue;
        }
        if let Some((at, _)) = &pending {
            panic!("{doc}:{at}: a marker belongs on the line right before a fence");
        }
        if line.starts_with('#') {
            section = line.trim_start_matches('#').trim().to_string();
        }
    }
    out
}

fn syntax_ok(b: &Block) -> Result<(), String> {
    let out = Command::new("bash").arg("-n").arg("-c").arg(&b.body).output().unwrap();
    if out.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&out.stderr).into_owned()) }
}

/// What the `sets:` of a syntax-only block give the later blocks (stand-ins for Azure's answers).
fn stand_in_value(var: &str) -> &'static str {
    match var {
        "OIDC_ISSUER" => "https://oidc.sim.local",
        "CLIENT_ID" => "11111111-2222-3333-4444-555555555555",
        "PRINCIPAL_ID" => "66666666-7777-8888-9999-000000000000",
        "TENANT_ID" => "72f988bf-86f1-41af-91ab-2d7cd011db47",
        "RUNNER_RG_ID" => "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg-ci-runners",
        other => panic!("no stand-in value for {other}: add one to stand_in_value"),
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// One bash script from blocks of several guides; `checkpoint`s pause it for the test's checks.
struct Script {
    text: String,
}

enum Part<'a> {
    Blocks(&'a [Block]),
    Checkpoint(&'a str),
}

impl Script {
    fn new(parts: &[Part]) -> Self {
        let mut text = String::from(
            "set -euo pipefail\n\
             __docs_test_pause() {\n\
             \x20 : > \"$DOCS_TEST_DIR/$1.request\"\n\
             \x20 local i=0\n\
             \x20 while [ ! -e \"$DOCS_TEST_DIR/$1.done\" ]; do\n\
             \x20   i=$((i + 1)); [ \"$i\" -le 3000 ] || { echo \"the test did not answer $1\" >&2; exit 70; }\n\
             \x20   sleep 0.1\n\
             \x20 done\n\
             }\n",
        );
        for part in parts {
            match part {
                Part::Checkpoint(name) => {
                    text.push_str(&format!(
                        "echo '### checkpoint {name}' >&2\n__docs_test_pause checkpoint-{name}\n"
                    ));
                }
                Part::Blocks(blocks) => {
                    for b in blocks.iter() {
                        Self::block(&mut text, b);
                    }
                }
            }
        }
        Self { text }
    }

    fn block(text: &mut String, b: &Block) {
        let Some(mark) = &b.mark else {
            assert!(!is_shell(&b.lang), "{}:{}: a shell block without a test marker", b.doc, b.line);
            return;
        };
        let at = format!("{}:{}", b.doc, b.line);
        if let Err(e) = if is_shell(&b.lang) { syntax_ok(b) } else { Ok(()) } {
            panic!("{at}: bash -n fails:\n{e}");
        }
        let say = |what: &str| format!("echo {} >&2\n", shell_quote(&format!("### {at} {what}")));
        match mark {
            Mark::Run => {
                text.push_str(&say("run"));
                text.push_str(&b.body);
            }
            Mark::SyntaxOnly { reason, sets } => {
                eprintln!("{at}: bash -n only: {reason}");
                text.push_str(&say(&format!("syntax-only: {reason}")));
                for var in sets {
                    text.push_str(&format!("{var}={}   # stand-in\n", shell_quote(stand_in_value(var))));
                }
            }
            Mark::Skip { reason } => {
                eprintln!("{at}: skipped: {reason}");
                text.push_str(&say(&format!("skipped: {reason}")));
            }
            Mark::StandIn { name, reason } => {
                eprintln!("{at}: stand-in {name}: {reason}");
                text.push_str(&say(&format!("stand-in {name}: {reason}")));
                text.push_str(&format!("__docs_test_pause standin-{name}\n"));
            }
            Mark::File { name } => {
                assert!(!b.body.contains("DOCS_TEST_EOF"), "{at}");
                text.push_str(&say(&format!("saved as {name}")));
                text.push_str(&format!(
                    "cat > {} <<'DOCS_TEST_EOF'\n{}DOCS_TEST_EOF\n",
                    shell_quote(name),
                    b.body
                ));
            }
        }
    }
}

// ---- tools and the environment of a run ----

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let ty = e.file_type().unwrap();
        assert!(!ty.is_symlink(), "{}: a symlink (GitOps sources drop symlinks)", e.path().display());
        if ty.is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// A fresh control plane (stopped on drop) and a checkout to run the guides in.
struct Env {
    cp: ControlPlane,
    work: PathBuf,
    bin: PathBuf,
    pauses: PathBuf,
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let cp = ControlPlane::start_in(&dir.path().join("cp")).unwrap_or_else(|e| panic!("{e}"));
        let work = dir.path().join("checkout");
        for sub in ["charts", "crds", "examples"] {
            copy_dir(&repo().join(sub), &work.join(sub));
        }
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::os::unix::fs::symlink(helm_bin(), bin.join("helm")).unwrap();
        std::os::unix::fs::symlink(kubectl_bin(), bin.join("kubectl")).unwrap();
        let pauses = dir.path().join("pauses");
        std::fs::create_dir_all(&pauses).unwrap();
        Self { cp, work, bin, pauses, dir }
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        let path = format!("{}:{}", self.bin.display(), std::env::var("PATH").unwrap_or_default());
        let home = self.dir.path().join("helm-home");
        cmd.current_dir(&self.work)
            .env("PATH", path)
            .env("KUBECONFIG", &self.cp.kubeconfig)
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_DATA_HOME", home.join("data"))
            .env("DOCS_TEST_DIR", &self.pauses)
            .env_remove("HELM_NAMESPACE");
        cmd
    }

    /// Run a tool (`kubectl` or `helm`, from the run's PATH) with optional stdin: whether it
    /// succeeded, and its stdout and stderr together.
    fn tool(&self, program: &str, args: &[&str], stdin: Option<&[u8]>) -> (bool, String) {
        let out = self.output(program, args, stdin);
        (out.status.success(), text(&out))
    }

    /// The tool's stdout; its failure fails the test.
    fn ok(&self, program: &str, args: &[&str], stdin: Option<&[u8]>) -> String {
        let out = self.output(program, args, stdin);
        assert!(out.status.success(), "{program} {args:?} failed:\n{}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn output(&self, program: &str, args: &[&str], stdin: Option<&[u8]>) -> Output {
        use std::io::Write;
        let mut child = self
            .command(program)
            .args(args)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(input) = stdin {
            child.stdin.take().unwrap().write_all(input).unwrap();
        }
        child.wait_with_output().unwrap()
    }

    fn start(&self, script: &Script) -> Running {
        let path = self.dir.path().join(format!("script-{}.sh", uuid::Uuid::new_v4().simple()));
        std::fs::write(&path, &script.text).unwrap();
        let log_path = path.with_extension("log");
        let log = std::fs::File::create(&log_path).unwrap();
        let child = self
            .command("bash")
            .arg("--noprofile")
            .arg("--norc")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Running { child, log: log_path, script: path, pauses: self.pauses.clone(), seen: BTreeSet::new() }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.cp.stop();
    }
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

/// A running guide script.
struct Running {
    child: std::process::Child,
    log: PathBuf,
    script: PathBuf,
    pauses: PathBuf,
    seen: BTreeSet<String>,
}

impl Running {
    /// The next pause the script asks for, or `None` once it has exited.
    async fn next_pause(&mut self) -> Option<String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
        loop {
            if let Some(name) = std::fs::read_dir(&self.pauses)
                .unwrap()
                .filter_map(|e| e.unwrap().file_name().into_string().ok())
                .filter_map(|f| f.strip_suffix(".request").map(str::to_string))
                .find(|n| !self.seen.contains(n))
            {
                self.seen.insert(name.clone());
                return Some(name);
            }
            if self.child.try_wait().unwrap().is_some() {
                return None;
            }
            if tokio::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the guide script did not finish within 300 s:\n{}", self.output());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn resume(&self, name: &str) {
        std::fs::write(self.pauses.join(format!("{name}.done")), "").unwrap();
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait for the end: (exit status success, output).
    fn finish(mut self) -> (bool, String) {
        let status = self.child.wait().unwrap();
        (status.success(), self.output())
    }

    fn expect_success(self) -> String {
        let script = std::fs::read_to_string(&self.script).unwrap_or_default();
        let (ok, out) = self.finish();
        assert!(ok, "the guide's commands failed:\n{out}\n---- script ----\n{script}");
        out
    }
}

fn yaml_docs(s: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(s)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn docs_of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

// ---- the stand-ins: GitHub's host routed to the simulator, the controller out of cluster ----

/// The controller's GitHub edge with `https://api.github.com` (the pools' default `apiUrl`)
/// answered by the GitHub simulator; every other field of the pool is passed on unchanged.
struct GithubComIsTheSimulator {
    inner: Arc<dyn RunnerRegistrations>,
    simulator: String,
}

impl GithubComIsTheSimulator {
    fn routed(&self, pool: &PoolContext) -> PoolContext {
        let mut p = pool.clone();
        if p.spec.github.api_url.trim_end_matches('/') == aci_runner_controller::github::DEFAULT_API_URL {
            p.spec.github.api_url = self.simulator.clone();
        }
        p
    }
}

#[async_trait::async_trait]
impl RunnerRegistrations for GithubComIsTheSimulator {
    async fn list_runners(&self, pool: &PoolContext) -> Result<Vec<ObservedRunner>, EdgeError> {
        self.inner.list_runners(&self.routed(pool)).await
    }
    async fn list_pool_runners(&self, pool: &PoolContext) -> Result<Vec<ObservedRunner>, EdgeError> {
        self.inner.list_pool_runners(&self.routed(pool)).await
    }
    async fn register_jit(
        &self,
        pool: &PoolContext,
        runner: JitRunner<'_>,
    ) -> Result<JitRegistration, EdgeError> {
        self.inner.register_jit(&self.routed(pool), runner).await
    }
    async fn registration_token(&self, pool: &PoolContext) -> Result<(String, SecretString), EdgeError> {
        self.inner.registration_token(&self.routed(pool)).await
    }
    async fn is_registered_now(&self, pool: &PoolContext, name: &str) -> Result<bool, EdgeError> {
        self.inner.is_registered_now(&self.routed(pool), name).await
    }
    async fn unregister(&self, pool: &PoolContext, runner_id: u64) -> Result<(), EdgeError> {
        self.inner.unregister(&self.routed(pool), runner_id).await
    }
    async fn runner_version_deprecation(
        &self,
        pool: &PoolContext,
        version: &str,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>, EdgeError> {
        self.inner.runner_version_deprecation(&self.routed(pool), version).await
    }
}

/// `run`'s flags as the binary parses them (the global `--log-format` is not `run`'s).
#[derive(clap::Parser)]
struct RunCli {
    #[command(flatten)]
    run: RunArgs,
}

/// The simulator as the quickstart's GitHub App: App ID 123456, installation 7654321 on `my-org`.
async fn quickstart_simulator() -> aci_runner_devkit::sim::Simulator {
    let mut opts = harness::fast_sim_options(17);
    opts.github.app_id = 123456;
    opts.github.repositories = vec!["my-org/app".into()];
    let perms = [
        ("organization_self_hosted_runners", "write"),
        ("administration", "write"),
        ("actions", "read"),
        ("metadata", "read"),
    ];
    opts.github.installations = vec![InstallationSpec {
        id: 7654321,
        account: "my-org".into(),
        account_type: "Organization".into(),
        repositories: None,
        permissions: perms.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    }];
    aci_runner_devkit::sim::start(opts).await.unwrap()
}

struct StandInController {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    /// Where the webhook receiver listens, when the release switched it on.
    webhook: Option<std::net::SocketAddr>,
}

/// The installed release's Deployment: its `run` arguments (parsed by the controller's own CLI)
/// and its ServiceAccount as `system:serviceaccount:NS:NAME`.
fn installed_controller(env: &Env) -> (RunArgs, String) {
    use clap::Parser;
    let releases: Value = serde_json::from_str(&env.ok("helm", &["list", "-A", "-o", "json"], None)).unwrap();
    let releases = releases.as_array().unwrap();
    assert_eq!(releases.len(), 1, "one release expected: {releases:?}");
    let (name, ns) = (releases[0]["name"].as_str().unwrap(), releases[0]["namespace"].as_str().unwrap());
    let manifest = yaml_docs(&env.ok("helm", &["get", "manifest", name, "-n", ns], None));
    let deploy = docs_of_kind(&manifest, "Deployment")[0];
    let pod = &deploy["spec"]["template"]["spec"];
    let args: Vec<String> = pod["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    assert_eq!(args[0], "run", "{args:?}");
    let argv = std::iter::once("run".to_string())
        .chain(args[1..].iter().filter(|a| !a.starts_with("--log-format")).cloned());
    let run = RunCli::try_parse_from(argv).unwrap_or_else(|e| panic!("{args:?}: {e}")).run;
    let sa = format!("system:serviceaccount:{ns}:{}", pod["serviceAccountName"].as_str().unwrap());
    (run, sa)
}

/// The controller as the installed chart would run it, out of cluster: the Deployment's
/// arguments, the chart's ServiceAccount (impersonated), the simulators for Azure and GitHub.
/// With the receiver switched on, its secret file holds what the kubelet would mount from the
/// release's webhook Secret, and it listens on a free local port.
async fn start_stand_in_controller(env: &Env, sim: &aci_runner_devkit::sim::Simulator) -> StandInController {
    use kube::config::{KubeConfigOptions, Kubeconfig};
    let (mut args, sa) = installed_controller(env);
    args.health_listen = harness::free_addr().unwrap();
    if args.webhook_listen.is_some() {
        args.webhook_listen = Some(harness::free_addr().unwrap());
        let file = env.dir.path().join("github-webhook-secret");
        std::fs::write(&file, webhook_secret(env)).unwrap();
        args.webhook_secret_file = Some(file);
    }
    // The tenant policy as the pod reads it: the release's ConfigMap, mounted.
    if args.tenant_policy.is_some() {
        let file = env.dir.path().join("tenant-policy.yaml");
        std::fs::write(&file, tenant_policy(env)).unwrap();
        args.tenant_policy = Some(file);
    }
    let webhook = args.webhook_listen;
    args.arm_endpoint = Some(sim.arm.url());
    args.azure_authority_host = Some(sim.arm.url());
    args.arm_scope = Some("https://management.azure.com/.default".into());
    let mut kc = Kubeconfig::read_from(&env.cp.kubeconfig).unwrap();
    for named in &mut kc.auth_infos {
        if let Some(a) = named.auth_info.as_mut() {
            a.impersonate = Some(sa.clone());
        }
    }
    let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await.unwrap();
    let client = kube::Client::try_from(cfg).unwrap();
    // The impersonation holds: the chart grants no Secret access outside the watched namespaces.
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(client.clone(), "kube-system");
    let denied = secrets.get_opt("anything").await;
    assert!(
        matches!(&denied, Err(kube::Error::Api(s)) if s.code == 403),
        "{sa} must not read Secrets in kube-system: {denied:?}"
    );
    let clock = sim.clock.clone();
    let edges = build_edges(&args, Some(harness::sim_identity(sim)), Arc::new(move || clock.now())).unwrap();
    let registrations =
        Arc::new(GithubComIsTheSimulator { inner: edges.registrations.clone(), simulator: sim.github.url() });
    let edges = Edges { registrations, ..edges };
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let health = args.health_listen;
    let task = tokio::spawn(run_with(args, client, edges, async move {
        let _ = stop_rx.await;
    }));
    let healthy = harness::eventually(Duration::from_secs(30), || async {
        let r = reqwest::get(format!("http://{health}/healthz")).await.ok()?;
        r.status().is_success().then_some(())
    })
    .await;
    assert!(healthy.is_some() && !task.is_finished(), "the stand-in controller did not become healthy");
    StandInController { stop, task, webhook }
}

/// The release's tenant policy (ConfigMap `aci-runner-controller-tenant-policy`).
fn tenant_policy(env: &Env) -> String {
    let template = r#"--template={{index .data "policy.yaml"}}"#;
    let args = [
        "-n",
        "aci-runner-controller",
        "get",
        "configmap",
        "aci-runner-controller-tenant-policy",
        "-o",
        "go-template",
        template,
    ];
    env.ok("kubectl", &args, None)
}

/// The value of the release's webhook Secret (`github-webhook`, key `secret`).
fn webhook_secret(env: &Env) -> String {
    let template = "--template={{.data.secret | base64decode}}";
    let args =
        ["-n", "aci-runner-controller", "get", "secret", "github-webhook", "-o", "go-template", template];
    let secret = env.ok("kubectl", &args, None);
    assert_eq!(secret.len(), 64, "the guide's secret is 32 random bytes in hex");
    secret
}

impl StandInController {
    fn is_running(&self) -> bool {
        !self.task.is_finished()
    }

    /// Stop it. What it returns is not checked: the clean-up's `helm uninstall` has removed its
    /// Lease rights by then, so it may have ended on losing the Lease.
    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(30), self.task).await;
    }
}

/// `helm get values --all` of the one release.
fn release_values(env: &Env) -> Value {
    serde_json::from_str(&env.ok(
        "helm",
        &["get", "values", "aci-runner-controller", "-n", "aci-runner-controller", "--all", "-o", "json"],
        None,
    ))
    .unwrap()
}

/// Whether the release still has the install's client id and watched namespaces.
fn install_values_kept(values: &Value) -> bool {
    values["azure"]["workloadIdentity"]["clientId"] == stand_in_value("CLIENT_ID")
        && values["controller"]["watchNamespaces"] == serde_json::json!(["ci-runners"])
}

fn assert_install_values_kept(values: &Value) {
    assert!(install_values_kept(values), "the install's client id and watched namespaces are gone: {values}");
}

// ---- the guides ----

fn section_is(b: &Block, s: &str) -> bool {
    b.section == s
}

/// The quickstart's Kubernetes steps, then the webhook guide on the same install, then the
/// quickstart's clean-up: as printed, on a fresh control plane, with the simulators as Azure and
/// GitHub and the controller out of cluster. The pool of the quickstart becomes Ready (the
/// quickstart's own `kubectl wait`), the webhook guide's upgrade keeps the install's values and
/// its receiver accepts a delivery signed with the guide's secret, and the clean-up removes the
/// pool's container groups.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart_and_webhook_guide_run_as_printed_and_bring_a_pool_to_ready() {
    let sim = quickstart_simulator().await;
    let env = Env::new();
    // The GitHub App step (web UI) is the simulator's App: its key where the quickstart reads it.
    std::fs::write(env.work.join("my-app.private-key.pem"), sim.github.app_credentials().private_key_pem)
        .unwrap();
    let quick = blocks(QUICKSTART);
    let (main, cleanup): (Vec<Block>, Vec<Block>) =
        quick.into_iter().partition(|b| !section_is(b, "Clean up"));
    assert!(!cleanup.is_empty(), "the quickstart has a Clean up section");
    let webhook = blocks(WEBHOOK_GUIDE);
    let script = Script::new(&[
        Part::Blocks(&main),
        Part::Checkpoint("quickstart"),
        Part::Blocks(&webhook),
        Part::Checkpoint("webhook-guide"),
        Part::Blocks(&cleanup),
    ]);
    let mut run = env.start(&script);
    let mut controller = None;
    let mut pauses = Vec::new();
    while let Some(pause) = run.next_pause().await {
        match pause.as_str() {
            "standin-controller" => controller = Some(start_stand_in_controller(&env, &sim).await),
            "checkpoint-quickstart" => {
                let values = release_values(&env);
                assert_install_values_kept(&values);
                assert_eq!(values["image"]["repository"], "myregistry.azurecr.io/aci-runner-controller");
                let sa = env.ok(
                    "kubectl",
                    &["-n", "aci-runner-controller", "get", "sa", "aci-runner-controller", "-o", "json"],
                    None,
                );
                let sa: Value = serde_json::from_str(&sa).unwrap();
                assert_eq!(
                    sa["metadata"]["annotations"]["azure.workload.identity/client-id"],
                    stand_in_value("CLIENT_ID")
                );
                let groups = harness::groups_of(&sim, "org-linux");
                assert!(
                    !groups.is_empty() && groups.iter().all(|g| g.resource_group == "rg-ci-runners"),
                    "the Ready pool's runner runs in the quickstart's resource group: {groups:?}"
                );
                assert!(!harness::runners_of(&sim, "org-linux").is_empty(), "a registered runner on my-org");
            }
            "checkpoint-webhook-guide" => {
                let old = controller.take().expect("the quickstart started the controller");
                assert!(old.is_running(), "the controller ran until the upgrade");
                old.stop().await;
                // The upgraded release's controller, and the App's webhook with the guide's secret.
                let ctl = start_stand_in_controller(&env, &sim).await;
                let addr = ctl.webhook.expect("the upgraded release runs the webhook receiver");
                sim.github.set_webhook(Some(WebhookTarget {
                    url: format!("http://{addr}{}", aci_runner_controller::github::WEBHOOK_PATH),
                    secret: webhook_secret(&env),
                }));
                controller = Some(ctl);
                let job = EnqueueJobs {
                    repo: "my-org/app".into(),
                    labels: vec!["aci".into(), "linux-x64".into()],
                    duration_secs: 1.0,
                    count: 1,
                    ..EnqueueJobs::default()
                };
                sim.github.enqueue_jobs(job).unwrap();
                let accepted = harness::eventually(Duration::from_secs(60), || async {
                    sim.github
                        .deliveries()
                        .into_iter()
                        .find(|d| d.action == "queued" && d.status == Some(202))
                })
                .await;
                assert!(
                    accepted.is_some(),
                    "the receiver accepts a signed delivery: {:?}",
                    sim.github.deliveries()
                );
                let values = release_values(&env);
                assert_install_values_kept(&values);
                assert_eq!(values["azure"]["workloadIdentity"]["tenantId"], stand_in_value("TENANT_ID"));
                assert_eq!(values["image"]["repository"], "myregistry.azurecr.io/aci-runner-controller");
                assert_eq!(values["webhook"]["enabled"], true);
                let manifest = env.ok(
                    "helm",
                    &["get", "manifest", "aci-runner-controller", "-n", "aci-runner-controller"],
                    None,
                );
                assert!(manifest.contains("--webhook-listen="), "the upgrade switched the receiver on");
                let (ok, _) = env.tool("kubectl", &["-n", "ci-runners", "get", "rp", "on-demand"], None);
                assert!(ok, "the webhook guide's pool exists");
            }
            other => panic!("unexpected pause {other}"),
        }
        pauses.push(pause.clone());
        run.resume(&pause);
    }
    let out = run.expect_success();
    assert_eq!(pauses, ["standin-controller", "checkpoint-quickstart", "checkpoint-webhook-guide"]);
    assert!(out.contains("runnerpool.aci-runners.dev/org-linux condition met"), "{out}");
    // The clean-up's `kubectl delete rp` returned once the controller had removed the finalizer.
    let left = harness::groups_of(&sim, "org-linux");
    assert!(left.is_empty(), "the deleted pool's container groups are gone: {left:?}");
    let releases = env.ok("helm", &["list", "-A", "-q"], None);
    assert!(releases.trim().is_empty(), "helm uninstall removed the release: {releases}");
    controller.expect("the quickstart starts the controller").stop().await;
}

/// The quickstart's old order (the pools' namespace created after the chart install) fails on
/// the API server with the error a reader saw: the executed docs catch a reordered step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart_in_the_old_order_fails_on_the_apiserver() {
    let env = Env::new();
    let create_ns = "kubectl create namespace \"$POOLS\"\n";
    let mut moved = false;
    let reordered: Vec<Block> = blocks(QUICKSTART)
        .into_iter()
        .take_while(|b| !matches!(b.mark, Some(Mark::StandIn { .. })))
        .map(|mut b| {
            if b.body.starts_with(create_ns) {
                b.body = format!("{}{create_ns}", &b.body[create_ns.len()..]);
                moved = true;
            }
            b
        })
        .collect();
    assert!(moved, "the quickstart's install block starts with {create_ns:?}");
    let mut run = env.start(&Script::new(&[Part::Blocks(&reordered)]));
    assert_eq!(run.next_pause().await, None);
    let (ok, out) = run.finish();
    assert!(!ok, "the reordered quickstart must fail:\n{out}");
    assert!(out.contains("namespaces \"ci-runners\" not found"), "{out}");
}

/// docs/helm.md as printed: the install, the image upgrade and the chart upgrade with
/// `--reuse-values` (the install's values stay), the uninstall (pools, release, CRD).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_guide_runs_as_printed_and_the_upgrade_keeps_the_values() {
    let env = Env::new();
    let (main, uninstall): (Vec<Block>, Vec<Block>) =
        blocks(HELM_GUIDE).into_iter().partition(|b| !section_is(b, "Uninstalling"));
    assert!(!uninstall.is_empty(), "docs/helm.md has an Uninstalling section");
    let script = Script::new(&[Part::Blocks(&main), Part::Checkpoint("upgraded"), Part::Blocks(&uninstall)]);
    let mut run = env.start(&script);
    assert_eq!(run.next_pause().await.as_deref(), Some("checkpoint-upgraded"));
    let values = release_values(&env);
    assert_install_values_kept(&values);
    assert_eq!(values["image"]["repository"], "myregistry.azurecr.io/aci-runner-controller");
    assert_eq!(values["image"]["tag"], "0.1.0");
    let (ok, out) = env.tool("kubectl", &["-n", "ci-runners", "get", "role", "aci-runner-controller"], None);
    assert!(ok, "the chart's Role in the watched namespace: {out}");
    // The webhook guide's upgrade without its `--reuse-values` would drop the install's values
    // (the client id, the namespaces): the chart refuses it, since watched namespaces are
    // required, and the release keeps its values.
    let upgrade = blocks(WEBHOOK_GUIDE).into_iter().find(|b| b.body.contains("--reuse-values")).unwrap();
    let without = upgrade.body.replace("--reuse-values ", "");
    assert_ne!(without, upgrade.body);
    let out = env.command("bash").arg("-euo").arg("pipefail").arg("-c").arg(&without).output().unwrap();
    assert!(!out.status.success(), "an upgrade that drops the watched namespaces: {}", text(&out));
    assert!(text(&out).contains("controller.watchNamespaces"), "{}", text(&out));
    assert_install_values_kept(&release_values(&env));
    run.resume("checkpoint-upgraded");
    assert_eq!(run.next_pause().await, None);
    run.expect_success();
    let releases = env.ok("helm", &["list", "-A", "-q"], None);
    assert!(releases.trim().is_empty(), "helm uninstall removed the release: {releases}");
    let (crd_left, _) = env.tool("kubectl", &["get", "crd", "runnerpools.aci-runners.dev"], None);
    assert!(!crd_left, "the guide deletes the CRD last");
}

/// The chart README shows docs/helm.md's executed install block, word for word.
#[test]
fn chart_readme_shows_the_helm_guides_executed_install() {
    let install = blocks(HELM_GUIDE)
        .into_iter()
        .find(|b| b.mark == Some(Mark::Run) && b.body.contains("helm upgrade --install"))
        .expect("docs/helm.md has an executed install block");
    let readme = std::fs::read_to_string(repo().join("charts/aci-runner-controller/README.md")).unwrap();
    assert!(
        readme.contains(&format!("```sh\n{}```", install.body)),
        "charts/aci-runner-controller/README.md must show docs/helm.md's install block:\n{}",
        install.body
    );
}

/// Every shell block of the executed guides has a marker, the markers are well-formed (parsed
/// by `blocks`), non-run shell blocks pass `bash -n`, and no other Markdown file has markers
/// (they would be ignored).
#[test]
fn every_shell_block_of_the_guides_is_marked_and_parses() {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for doc in EXECUTED_DOCS {
        let bs = blocks(doc);
        for b in bs.iter().filter(|b| is_shell(&b.lang)) {
            assert!(b.mark.is_some(), "{}:{}: a shell block without a test marker", b.doc, b.line);
            syntax_ok(b).unwrap_or_else(|e| panic!("{}:{}: bash -n: {e}", b.doc, b.line));
            if let Some(Mark::SyntaxOnly { sets, .. }) = &b.mark {
                sets.iter().for_each(|v| {
                    stand_in_value(v);
                });
            }
        }
        for b in bs.iter().filter(|b| matches!(b.mark, Some(Mark::File { .. }))) {
            assert!(!is_shell(&b.lang), "{}:{}: `file` is for a YAML block", b.doc, b.line);
        }
        counts.insert(doc, bs.iter().filter(|b| b.mark.is_some()).count());
    }
    assert!(counts.values().all(|&n| n >= 1), "{counts:?}");
    assert!(parse_mark("run; reason: x; sets: A").is_err() && parse_mark("skip").is_err());
    assert!(parse_mark("stand-in controller; reason: no nodes").is_ok());
    // Markers anywhere else would be silently ignored.
    let mut stack = vec![repo().join("docs"), repo().join("examples"), repo().join("charts")];
    let executed: BTreeSet<PathBuf> = EXECUTED_DOCS.iter().map(|d| repo().join(d)).collect();
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "md") && !executed.contains(&p) {
                let text = std::fs::read_to_string(&p).unwrap();
                let tagged = text.lines().any(|l| l.starts_with("<!-- test:"));
                assert!(!tagged, "{}: test markers outside EXECUTED_DOCS are not run", p.display());
            }
        }
    }
}

// ---- GitOps: what Flux and Argo CD would apply, in their order ----

/// Apply objects: CRDs client-side without the client's schema check (Kubernetes 1.20 knows no
/// CEL rules and a server-side apply rejects them, see docs/helm.md), then wait for them to be
/// Established; everything else with `kubectl apply`.
fn apply_objects(env: &Env, objects: &[Value], what: &str) {
    if objects.is_empty() {
        return;
    }
    let (crds, rest): (Vec<&Value>, Vec<&Value>) =
        objects.iter().partition(|o| o["kind"] == "CustomResourceDefinition");
    let list = |items: &[&Value]| {
        serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string()
    };
    if !crds.is_empty() {
        let (ok, out) =
            env.tool("kubectl", &["apply", "--validate=false", "-f", "-"], Some(list(&crds).as_bytes()));
        assert!(ok, "{what}: the CRDs were rejected:\n{out}");
        for c in &crds {
            let name = format!("crd/{}", c["metadata"]["name"].as_str().unwrap());
            env.ok("kubectl", &["wait", "--for", "condition=established", &name, "--timeout=60s"], None);
        }
    }
    if !rest.is_empty() {
        let (ok, out) = env.tool("kubectl", &["apply", "-f", "-"], Some(list(&rest).as_bytes()));
        assert!(ok, "{what}: rejected by the API server:\n{out}");
    }
}

/// The chart's CRDs (`helm show crds`), then `helm template` with the server's capabilities
/// (`--dry-run=server`; `--include-crds` there would check the CRDs against the 1.20 schema).
fn helm_render(env: &Env, release: &str, chart: &str, ns: &str, values: &Value) -> Vec<Value> {
    let f = env.dir.path().join(format!("values-{}.json", uuid::Uuid::new_v4().simple()));
    std::fs::write(&f, values.to_string()).unwrap();
    let mut docs = yaml_docs(&env.ok("helm", &["show", "crds", chart], None));
    let args = ["template", release, chart, "--namespace", ns, "--dry-run=server", "-f", f.to_str().unwrap()];
    docs.extend(yaml_docs(&env.ok("helm", &args, None)));
    docs
}

fn assert_crd_is_the_generated_one(rendered: &[Value], what: &str) {
    let crds = docs_of_kind(rendered, "CustomResourceDefinition");
    let generated = yaml_docs(&aci_runner_core::crd::crd_yaml().unwrap());
    assert_eq!(crds, generated.iter().collect::<Vec<_>>(), "{what}: the chart's CRD");
}

/// Flux replayed: the Kustomizations of `sync.yaml` in `dependsOn` order; for each, `kubectl
/// kustomize` of its path applied (every object but HelmReleases, whose CRD is Flux's), then each
/// HelmRelease as helm-controller installs it (`helm template` of its chart and values, CRDs
/// included for `crds: CreateReplace`). A Role in a namespace that only a later Kustomization
/// creates, or a ServiceMonitor without the Prometheus Operator CRDs, fails here as in Flux.
/// Not replayed: the GitRepository fetch (its ignore rules and the absence of symlinks are
/// checked instead), health checks, remediation, SOPS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flux_example_converges_in_dependency_order() {
    let env = Env::new();
    assert_only_syntax_checked(FLUX_README, "Flux");
    let sync = yaml_docs(&std::fs::read_to_string(repo().join("examples/flux/sync.yaml")).unwrap());
    let source = docs_of_kind(&sync, "GitRepository")[0];
    let kept: Vec<&str> = source["spec"]["ignore"]
        .as_str()
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("!/"))
        .map(|l| l.trim_end_matches('/'))
        .collect();
    let in_artifact = |path: &str| {
        let path = path.trim_start_matches("./").trim_end_matches('/');
        kept.iter().any(|k| path == *k || path.starts_with(&format!("{k}/")))
    };
    // The Kustomizations in dependsOn order (a loop never empties the list).
    let mut pending: Vec<&Value> = docs_of_kind(&sync, "Kustomization");
    let mut done: Vec<String> = Vec::new();
    let mut ordered = Vec::new();
    while !pending.is_empty() {
        let next = pending.iter().position(|k| {
            k["spec"]["dependsOn"]
                .as_array()
                .is_none_or(|d| d.iter().all(|x| done.contains(&x["name"].as_str().unwrap().to_string())))
        });
        let k = pending.remove(next.unwrap_or_else(|| panic!("a dependsOn loop among {pending:?}")));
        done.push(k["metadata"]["name"].as_str().unwrap().to_string());
        ordered.push(k);
    }
    assert_eq!(done, ["aci-runner-controller", "runner-pools"]);
    let mut releases = 0;
    for k in ordered {
        let path = k["spec"]["path"].as_str().unwrap();
        assert!(in_artifact(path), "{path} is not in the GitRepository's artifact");
        let built =
            yaml_docs(&env.ok("kubectl", &["kustomize", env.work.join(path).to_str().unwrap()], None));
        let (helm_releases, objects): (Vec<Value>, Vec<Value>) =
            built.into_iter().partition(|o| o["kind"] == "HelmRelease");
        apply_objects(&env, &objects, path);
        for hr in &helm_releases {
            let spec = &hr["spec"];
            let chart = spec["chart"]["spec"]["chart"].as_str().unwrap();
            assert!(in_artifact(chart), "{chart} is not in the GitRepository's artifact");
            for phase in ["install", "upgrade"] {
                assert_eq!(spec[phase]["crds"], "CreateReplace", "{phase}.crds");
            }
            let ns = spec["targetNamespace"].as_str().or(hr["metadata"]["namespace"].as_str()).unwrap();
            let name = spec["releaseName"].as_str().or(hr["metadata"]["name"].as_str()).unwrap();
            let rendered =
                helm_render(&env, name, env.work.join(chart).to_str().unwrap(), ns, &spec["values"]);
            assert_crd_is_the_generated_one(&rendered, "the HelmRelease");
            apply_objects(&env, &rendered, "the HelmRelease");
            releases += 1;
        }
    }
    assert_eq!(releases, 1);
    env.ok("kubectl", &["-n", "ci-runners", "get", "rp", "org-linux"], None);
    env.ok("kubectl", &["-n", "ci-runners", "get", "rolebinding", "aci-runner-controller"], None);
}

/// The README's commands need `tool`, which does not run here: they are only `bash -n` checked.
fn assert_only_syntax_checked(doc: &'static str, tool: &str) {
    for b in blocks(doc).iter().filter(|b| is_shell(&b.lang)) {
        assert!(
            matches!(b.mark, Some(Mark::SyntaxOnly { .. })),
            "{}:{}: {tool} is not run here",
            b.doc,
            b.line
        );
    }
}

/// Kinds the replay treats as cluster-scoped (no destination namespace is added).
const CLUSTER_SCOPED: [&str; 4] =
    ["Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"];

/// Argo CD replayed: the Application's sources rendered as Argo CD does (`helm template` of the
/// chart with its `valuesObject` and CRDs; a directory's manifests), the destination namespace
/// added to namespaced objects and created first (`CreateNamespace=true`), then applied wave by
/// wave (within a wave Namespaces, then CRDs, then the rest), each wave's CRDs Established
/// before the next. RunnerPools, whose kind only exists once the sync has applied the CRD, must
/// skip Argo CD's dry run; the sync must retry. Not replayed: Argo CD's health waits
/// (the Deployment cannot become healthy without nodes), pruning, self-heal, the health script
/// (tests/chart.rs runs it), server-side apply of the CRD (Kubernetes 1.20 rejects CEL there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn argocd_application_syncs_in_wave_order() {
    let env = Env::new();
    assert_only_syntax_checked(ARGOCD_README, "Argo CD");
    let apps = yaml_docs(&std::fs::read_to_string(repo().join("examples/argocd/application.yaml")).unwrap());
    assert_eq!(apps.len(), 1, "one Application holds the controller and the pools");
    let app = &apps[0];
    let policy = &app["spec"]["syncPolicy"];
    let options: Vec<&str> =
        policy["syncOptions"].as_array().unwrap().iter().map(|o| o.as_str().unwrap()).collect();
    assert!(options.contains(&"CreateNamespace=true"), "{options:?}");
    assert!(policy["retry"]["limit"].as_i64().is_some_and(|l| l >= 3), "the sync retries: {policy}");
    assert!(policy["retry"]["backoff"]["duration"].is_string(), "with backoff: {policy}");
    let dest_ns = app["spec"]["destination"]["namespace"].as_str().unwrap();
    let mut objects: Vec<Value> = Vec::new();
    for source in app["spec"]["sources"].as_array().unwrap() {
        let path = env.work.join(source["path"].as_str().unwrap());
        if path.join("Chart.yaml").exists() {
            let helm = &source["helm"];
            let release = helm["releaseName"].as_str().unwrap();
            let rendered = helm_render(&env, release, path.to_str().unwrap(), dest_ns, &helm["valuesObject"]);
            assert_crd_is_the_generated_one(&rendered, "the Application's chart");
            objects.extend(rendered);
        } else {
            let mut files: Vec<PathBuf> =
                std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()).collect();
            files.sort();
            for f in files.iter().filter(|f| f.extension().is_some_and(|x| x == "yaml" || x == "yml")) {
                objects.extend(yaml_docs(&std::fs::read_to_string(f).unwrap()));
            }
        }
    }
    let crd_kinds: BTreeSet<(String, String)> = docs_of_kind(&objects, "CustomResourceDefinition")
        .iter()
        .map(|c| {
            let s = &c["spec"];
            (s["group"].as_str().unwrap().to_string(), s["names"]["kind"].as_str().unwrap().to_string())
        })
        .collect();
    let annotation = |o: &Value, key: &str| o["metadata"]["annotations"][key].as_str().map(str::to_string);
    let mut waves: BTreeMap<i64, Vec<Value>> = BTreeMap::new();
    for mut o in objects {
        let kind = o["kind"].as_str().unwrap().to_string();
        let group = o["apiVersion"]
            .as_str()
            .unwrap()
            .rsplit_once('/')
            .map(|(g, _)| g.to_string())
            .unwrap_or_default();
        if crd_kinds.contains(&(group, kind.clone())) {
            let opts = annotation(&o, "argocd.argoproj.io/sync-options").unwrap_or_default();
            assert!(
                opts.contains("SkipDryRunOnMissingResource=true")
                    || options.contains(&"SkipDryRunOnMissingResource=true"),
                "{kind} {}: its CRD comes with the same sync, so it must skip the dry run",
                o["metadata"]["name"]
            );
        }
        if !CLUSTER_SCOPED.contains(&kind.as_str()) && o["metadata"]["namespace"].is_null() {
            o["metadata"]["namespace"] = dest_ns.into();
        }
        let wave =
            annotation(&o, "argocd.argoproj.io/sync-wave").map(|w| w.parse::<i64>().unwrap()).unwrap_or(0);
        waves.entry(wave).or_default().push(o);
    }
    env.ok("kubectl", &["create", "namespace", dest_ns], None);
    let rank = |o: &Value| match o["kind"].as_str() {
        Some("Namespace") => 0,
        Some("CustomResourceDefinition") => 1,
        _ => 2,
    };
    for (wave, mut objs) in waves {
        objs.sort_by_key(rank);
        apply_objects(&env, &objs, &format!("sync wave {wave}"));
    }
    env.ok("kubectl", &["-n", "ci-runners", "get", "rp", "repo-builds"], None);
    env.ok("kubectl", &["-n", "ci-runners", "get", "rolebinding", "aci-runner-controller"], None);
}
