//! `aci-runner-controller bench soak --seeds N`: randomized fault schedules against the
//! controller process, then invariants after settling.
//!
//! Per seed: a fresh namespace on the shared local control plane, a fresh simulator, the
//! controller as its own process, an org pool and a repo pool, a small job workload. While the
//! jobs run, the seed's faults are active (ARM throttling and 5xx, GitHub 5xx and secondary rate
//! limits, token endpoint errors, dropped webhooks, containers and runners crashing before
//! registration) and the controller may be SIGKILLed and restarted. Then the faults stop, the
//! jobs must finish, the pools are deleted and the invariants are checked.
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt;
use kube::Client;
use kube::api::{Api, DeleteParams};
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::json;

use super::procs::{ControllerProc, ControllerSpec};
use crate::crd::RunnerPool;
use crate::sim::arm::{FaultConfig, OpFaults};
use crate::sim::github::{EnqueueJobs, GhOpFaults, GithubFaults};
use crate::testing::control_plane::{ControlPlane, install_crd, test_namespace};
use crate::testing::harness::{apply_app_secret, apply_pool, fast_sim_options, pool_manifest};

/// Flags of `bench soak`.
#[derive(clap::Args, Debug, Clone)]
pub struct SoakArgs {
    /// Number of seeds (fault schedules).
    #[arg(long, default_value_t = 5)]
    pub seeds: u64,
    /// First seed.
    #[arg(long, default_value_t = 1)]
    pub first_seed: u64,
    /// Seeds run at the same time (each with its own simulator and controller process).
    #[arg(long, default_value_t = 2)]
    pub parallel: usize,
    /// Jobs per seed.
    #[arg(long, default_value_t = 8)]
    pub jobs: u32,
    /// How long the faults stay on.
    #[arg(long, default_value = "8s", value_parser = parse_duration)]
    pub fault_window: Duration,
    /// Where the per-seed logs, the JSON result and the report go.
    #[arg(long, default_value = "target/soak")]
    pub out: PathBuf,
    /// Keep the controller logs of passing seeds too.
    #[arg(long)]
    pub keep_logs: bool,
    /// Restart the kube-apiserver (same flags, etcd keeps the state) at random times, about
    /// this far apart; `0s` = never.
    #[arg(long, default_value = "40s", value_parser = parse_duration)]
    pub apiserver_restart_every: Duration,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::crd::parse_duration(s)
}

/// The faults of one seed.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Schedule {
    pub arm: FaultConfig,
    pub github: GithubFaults,
    /// SIGKILL the controller this long after the workload starts, then restart it after `down_for`.
    pub kill_after: Option<Duration>,
    pub down_for: Duration,
}

impl Schedule {
    /// Draw a schedule from `seed`.
    pub fn draw(seed: u64) -> Self {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut arm = FaultConfig { seed, ..FaultConfig::default() };
        for op in ["create", "get", "delete", "list", "listAll", "token"] {
            if rng.gen_bool(0.5) {
                arm.ops.insert(
                    op.to_string(),
                    OpFaults {
                        throttle: rng.gen_range(0.0..0.15),
                        internal_error: rng.gen_range(0.0..0.1),
                        unavailable: rng.gen_range(0.0..0.1),
                        latency_ms: 0,
                    },
                );
            }
        }
        if rng.gen_bool(0.4) {
            arm.crash_before_registration = rng.gen_range(0.0..0.25);
        }
        let mut github = GithubFaults { seed, ..GithubFaults::default() };
        for op in
            ["access_token", "list_runners", "get_runner", "delete_runner", "jitconfig", "runner_groups"]
        {
            if rng.gen_bool(0.5) {
                github.ops.insert(
                    op.to_string(),
                    GhOpFaults {
                        server_error: rng.gen_range(0.0..0.12),
                        rate_limited: rng.gen_range(0.0..0.05),
                        conflict: 0.0,
                        unprocessable: 0.0,
                    },
                );
            }
        }
        if rng.gen_bool(0.5) {
            github.webhook_drop_rate = rng.gen_range(0.0..0.4);
        }
        if rng.gen_bool(0.4) {
            github.crash_before_registration = rng.gen_range(0.0..0.25);
        }
        let kill_after = rng.gen_bool(0.7).then(|| Duration::from_millis(rng.gen_range(1_000..7_000)));
        let down_for = Duration::from_millis(rng.gen_range(200..3_000));
        Self { arm, github, kill_after, down_for }
    }

    /// Stalled reasons that the injected faults explain.
    pub fn explained_reasons(&self) -> BTreeSet<&'static str> {
        let mut r = BTreeSet::new();
        let api_faults = !self.arm.ops.is_empty() || !self.github.ops.is_empty();
        if api_faults {
            r.extend([
                "ObservationFailed",
                "Backoff",
                "CredentialsUnavailable",
                "QuotaExceeded",
                "ProvisioningFailed",
            ]);
        }
        if self.arm.crash_before_registration > 0.0 || self.github.crash_before_registration > 0.0 {
            r.extend(["ContainerCrashed", "RegistrationTimeout", "ProvisioningFailed"]);
        }
        r
    }
}

/// What one seed showed.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SeedResult {
    pub seed: u64,
    pub passed: bool,
    pub violations: Vec<String>,
    pub jobs_total: usize,
    pub jobs_completed: usize,
    /// Jobs that failed: a runner died under a job. No fault kills a busy runner here, so each
    /// one is a busy runner the controller removed.
    pub busy_runners_killed: usize,
    pub leaked_groups: usize,
    pub leaked_registrations: usize,
    pub panics: usize,
    pub controller_starts: u32,
    /// kube-apiserver restarts while this seed ran.
    pub apiserver_restarts: usize,
    pub stalled_reasons: BTreeSet<String>,
    pub unexplained_stalled: BTreeSet<String>,
    pub injected: Vec<String>,
    pub secs: f64,
}

/// The soak's JSON result.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SoakReport {
    pub seeds: usize,
    pub passed: usize,
    pub failed_seeds: Vec<u64>,
    pub totals: SoakTotals,
    pub results: Vec<SeedResult>,
}

#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SoakTotals {
    pub jobs: usize,
    pub jobs_completed: usize,
    pub busy_runners_killed: usize,
    pub leaked_groups: usize,
    pub leaked_registrations: usize,
    pub panics: usize,
    pub controller_kills: usize,
    pub apiserver_restarts: usize,
    /// The kube-apiserver was found dead without a planned restart (started again at once).
    pub apiserver_unexpected_exits: usize,
    pub unexplained_stalled: usize,
    pub wall_secs: f64,
}

fn describe(s: &Schedule) -> Vec<String> {
    let mut v = Vec::new();
    for (op, f) in &s.arm.ops {
        v.push(format!(
            "arm {op}: 429 {:.0}% 500 {:.0}% 503 {:.0}%",
            f.throttle * 100.0,
            f.internal_error * 100.0,
            f.unavailable * 100.0
        ));
    }
    if s.arm.crash_before_registration > 0.0 {
        v.push(format!("aci container crash {:.0}%", s.arm.crash_before_registration * 100.0));
    }
    for (op, f) in &s.github.ops {
        v.push(format!(
            "github {op}: 5xx {:.0}% limited {:.0}%",
            f.server_error * 100.0,
            f.rate_limited * 100.0
        ));
    }
    if s.github.webhook_drop_rate > 0.0 {
        v.push(format!("webhook drop {:.0}%", s.github.webhook_drop_rate * 100.0));
    }
    if s.github.crash_before_registration > 0.0 {
        v.push(format!(
            "runner crash before registration {:.0}%",
            s.github.crash_before_registration * 100.0
        ));
    }
    if let Some(k) = s.kill_after {
        v.push(format!(
            "controller SIGKILL at {:.1} s, down {:.1} s",
            k.as_secs_f64(),
            s.down_for.as_secs_f64()
        ));
    }
    v
}

const POOLS: [&str; 2] = ["soak-org", "soak-repo"];

/// Run one seed against the control plane at `kubeconfig`.
pub async fn run_seed(
    client: &Client,
    kubeconfig: &Path,
    seed: u64,
    args: &SoakArgs,
    restarts: &RestartLog,
) -> anyhow::Result<SeedResult> {
    let started = Instant::now();
    let schedule = Schedule::draw(seed);
    let mut res = SeedResult { seed, injected: describe(&schedule), ..Default::default() };
    // Kubernetes writes are retried: the kube-apiserver may be restarting.
    let prefix = format!("soak-{seed}");
    let ns = retry(|| test_namespace(client, &prefix)).await?;
    let sim = crate::sim::start(fast_sim_options(seed)).await?;
    retry(|| apply_app_secret(client, &ns, "github-app", &sim)).await?;
    let dir = args.out.join(format!("seed-{seed}"));
    let secret = format!("soak-{}", uuid::Uuid::new_v4().simple());
    let mut ctl = ControllerProc::start(
        &sim,
        ControllerSpec {
            kubeconfig: kubeconfig.to_path_buf(),
            namespaces: vec![ns.clone()],
            resync: "2s".into(),
            gc_grace: "2s".into(),
            leader_election: false,
            lease_namespace: ns.clone(),
            dir: dir.clone(),
            webhook_secret: secret.clone(),
            log_filter: "info".into(),
        },
    )
    .await?;
    sim.github.set_webhook(Some(crate::sim::github::WebhookTarget { url: ctl.webhook_url.clone(), secret }));
    let scaling = json!({"scaleDownDelay": "1s", "registrationTimeout": "20s", "drainTimeout": "30s"});
    let mut org = pool_manifest(POOLS[0], &sim, json!({"scaling": {"minIdle": 1, "maxRunners": 6}}));
    crate::testing::harness::merge(&mut org["spec"]["scaling"], scaling.clone());
    let mut repo = pool_manifest(
        POOLS[1],
        &sim,
        json!({"github": {"organization": null, "repository": "octo-org/octo-repo", "labels": ["aci-repo"]},
               "scaling": {"minIdle": 1, "maxRunners": 3}}),
    );
    crate::testing::harness::merge(&mut repo["spec"]["scaling"], scaling);
    retry(|| apply_pool(client, &ns, &org)).await?;
    retry(|| apply_pool(client, &ns, &repo)).await?;
    let pools: Api<RunnerPool> = Api::namespaced(client.clone(), &ns);

    // Faults on, workload.
    sim.arm.set_faults(schedule.arm.clone());
    sim.github.set_faults(schedule.github.clone());
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed);
    let plan: Vec<(Duration, bool, f64)> = (0..args.jobs)
        .map(|_| {
            (
                Duration::from_millis(rng.gen_range(0..(args.fault_window.as_millis() as u64).max(1))),
                rng.gen_bool(0.3),
                rng.gen_range(0.3..2.0),
            )
        })
        .collect();
    let mut plan = plan;
    plan.sort_by_key(|a| a.0);
    let t0 = Instant::now();
    let mut next = 0;
    let mut job_ids: Vec<i64> = Vec::new();
    let mut killed_at: Option<Instant> = None;
    while t0.elapsed() < args.fault_window || next < plan.len() {
        while next < plan.len() && plan[next].0 <= t0.elapsed() {
            let (_, repo_pool, secs) = plan[next];
            let (repo, label) =
                if repo_pool { ("octo-org/octo-repo", "aci-repo") } else { ("octo-org/other-repo", "aci") };
            let jobs = sim
                .github
                .enqueue_jobs(EnqueueJobs {
                    repo: repo.into(),
                    labels: vec!["self-hosted".into(), label.into()],
                    duration_secs: secs,
                    count: 1,
                    ..EnqueueJobs::default()
                })
                .map_err(|e| anyhow::anyhow!("enqueue: {e}"))?;
            job_ids.extend(jobs.iter().map(|j| j.id));
            next += 1;
        }
        if let Some(k) = schedule.kill_after
            && killed_at.is_none()
            && t0.elapsed() >= k
        {
            ctl.kill();
            killed_at = Some(Instant::now());
        }
        if let Some(at) = killed_at
            && ctl.pid().is_none()
            && at.elapsed() >= schedule.down_for
        {
            ctl.restart().await?;
        }
        observe_stalled(&pools, &mut res.stalled_reasons).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if ctl.pid().is_none() {
        ctl.restart().await?;
    }

    // Faults off; settle: every job runs.
    sim.arm.set_faults(FaultConfig { seed, ..FaultConfig::default() });
    sim.github.set_faults(GithubFaults { seed, ..GithubFaults::default() });
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let jobs = sim.github.jobs();
        let done = jobs.iter().filter(|j| job_ids.contains(&j.id) && j.completed_at.is_some()).count();
        if done >= job_ids.len() || Instant::now() > deadline {
            break;
        }
        observe_stalled(&pools, &mut res.stalled_reasons).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let jobs = sim.github.jobs();
    let mine: Vec<_> = jobs.iter().filter(|j| job_ids.contains(&j.id)).collect();
    res.jobs_total = mine.len();
    res.jobs_completed = mine.iter().filter(|j| j.completed_at.is_some()).count();
    res.busy_runners_killed =
        mine.iter().filter(|j| j.conclusion.as_deref().is_some_and(|c| c != "success")).count();

    // Delete the pools; everything must go.
    for p in POOLS {
        let _ = pools.delete(p, &DeleteParams::default()).await;
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut left;
    loop {
        let groups = sim
            .arm
            .groups()
            .into_iter()
            .filter(|g| g.tags.get(crate::azure::template::TAG_POOL_NAMESPACE).is_some_and(|n| n == &ns))
            .count();
        let regs = sim
            .github
            .runners()
            .into_iter()
            .filter(|r| POOLS.iter().any(|p| r.name.starts_with(&format!("{p}-"))))
            .count();
        left = 0;
        for p in POOLS {
            match pools.get_opt(p).await {
                Ok(None) => {}
                // The delete may have been lost in a control-plane restart: ask again.
                Ok(Some(pool)) if pool.metadata.deletion_timestamp.is_none() => {
                    let _ = pools.delete(p, &DeleteParams::default()).await;
                    left += 1;
                }
                _ => left += 1,
            }
        }
        res.leaked_groups = groups;
        res.leaked_registrations = regs;
        if (groups == 0 && regs == 0 && left == 0) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    ctl.stop().await;
    res.controller_starts = ctl.starts;
    let panics = ctl.panics();
    res.panics = panics.len();
    let explained = schedule.explained_reasons();
    res.unexplained_stalled =
        res.stalled_reasons.iter().filter(|r| !explained.contains(r.as_str())).cloned().collect();

    let mut v = Vec::new();
    if res.jobs_completed < res.jobs_total {
        v.push(format!("{} of {} jobs never completed", res.jobs_total - res.jobs_completed, res.jobs_total));
    }
    if res.busy_runners_killed > 0 {
        v.push(format!("{} busy runner(s) killed", res.busy_runners_killed));
    }
    if res.leaked_groups > 0 {
        v.push(format!("{} leaked container group(s)", res.leaked_groups));
    }
    if res.leaked_registrations > 0 {
        v.push(format!("{} leaked registration(s)", res.leaked_registrations));
    }
    if left > 0 {
        v.push(format!("{left} pool(s) not deleted (finalizer)"));
    }
    if res.panics > 0 {
        v.push(format!("{} panic(s) in the controller log: {}", res.panics, panics.join(" | ")));
    }
    if !res.unexplained_stalled.is_empty() {
        v.push(format!("Stalled reasons without an injected cause: {:?}", res.unexplained_stalled));
    }
    res.passed = v.is_empty();
    res.violations = v;
    res.secs = started.elapsed().as_secs_f64();
    res.apiserver_restarts = restarts.between(started, Instant::now());
    let _ = Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .delete(&ns, &DeleteParams::default())
        .await;
    if res.passed && !args.keep_logs {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(res)
}

async fn observe_stalled(pools: &Api<RunnerPool>, seen: &mut BTreeSet<String>) {
    if let Ok(list) = pools.list(&Default::default()).await {
        for p in list.items {
            for c in p.status.map(|s| s.conditions).unwrap_or_default() {
                if c.type_ == "Stalled" && c.status == "True" {
                    seen.insert(c.reason);
                }
            }
        }
    }
}

/// Run the soak: start a control plane, run the seeds, write `soak.json` and `soak.md` to `out`.
pub async fn run(args: SoakArgs) -> anyhow::Result<SoakReport> {
    let started = Instant::now();
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let cp_dir = std::env::temp_dir().join(format!("aci-rc-soak-cp-{}", std::process::id()));
    let cp = ControlPlane::start_in(&cp_dir)?;
    let restarts = RestartLog::default();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let restarter = (!args.apiserver_restart_every.is_zero()).then(|| {
        tokio::spawn(restart_apiserver_loop(
            cp_dir.clone(),
            args.apiserver_restart_every,
            args.first_seed,
            restarts.clone(),
            stop_rx,
        ))
    });
    let result = run_on(&cp, &args, &restarts).await;
    let _ = stop_tx.send(true);
    if let Some(t) = restarter {
        let _ = t.await;
    }
    cp.stop();
    let _ = std::fs::copy(cp_dir.join("apiserver.log"), args.out.join("apiserver.log"));
    let _ = std::fs::remove_dir_all(&cp_dir);
    let mut report = result?;
    report.totals.wall_secs = started.elapsed().as_secs_f64();
    std::fs::write(args.out.join("soak.json"), serde_json::to_string_pretty(&report)?)?;
    std::fs::write(args.out.join("soak.md"), markdown(&report, &args))?;
    Ok(report)
}

/// Run the seeds on an existing control plane.
pub async fn run_on(cp: &ControlPlane, args: &SoakArgs, restarts: &RestartLog) -> anyhow::Result<SoakReport> {
    let client = cp.client().await?;
    install_crd(&client).await?;
    let seeds: Vec<u64> = (args.first_seed..args.first_seed + args.seeds).collect();
    let started = Instant::now();
    let mut results = Vec::new();
    // Up to `parallel` seeds at a time; a new one starts as soon as one ends.
    let mut runs = futures::stream::iter(seeds.into_iter().map(|seed| {
        let client = client.clone();
        let kubeconfig = cp.kubeconfig.clone();
        let args = args.clone();
        let restarts = restarts.clone();
        async move {
            match run_seed(&client, &kubeconfig, seed, &args, &restarts).await {
                Ok(r) => r,
                Err(e) => SeedResult {
                    seed,
                    violations: vec![format!("the seed could not run: {e:#}")],
                    ..Default::default()
                },
            }
        }
    }))
    .buffer_unordered(args.parallel.max(1));
    while let Some(r) = runs.next().await {
        let line = if r.passed {
            format!(
                "seed {:>4}: ok   ({:.0} s, {} jobs, {} controller start(s), {} apiserver restart(s))",
                r.seed, r.secs, r.jobs_total, r.controller_starts, r.apiserver_restarts
            )
        } else {
            format!("seed {:>4}: FAIL {}", r.seed, r.violations.join("; "))
        };
        println!("{line}");
        results.push(r);
        // The report so far (a long soak can be stopped and still leaves its figures).
        let mut partial = summarize(&results, restarts);
        partial.totals.wall_secs = started.elapsed().as_secs_f64();
        if let Ok(text) = serde_json::to_string_pretty(&partial) {
            let _ = std::fs::write(args.out.join("soak.json"), text);
        }
        let _ = std::fs::write(args.out.join("soak.md"), markdown(&partial, args));
    }
    results.sort_by_key(|r| r.seed);
    Ok(summarize(&results, restarts))
}

fn summarize(results: &[SeedResult], restarts: &RestartLog) -> SoakReport {
    let mut t = SoakTotals::default();
    for r in results {
        t.jobs += r.jobs_total;
        t.jobs_completed += r.jobs_completed;
        t.busy_runners_killed += r.busy_runners_killed;
        t.leaked_groups += r.leaked_groups;
        t.leaked_registrations += r.leaked_registrations;
        t.panics += r.panics;
        t.controller_kills += r.controller_starts.saturating_sub(1) as usize;
        t.unexplained_stalled += r.unexplained_stalled.len();
    }
    t.apiserver_restarts = restarts.count();
    t.apiserver_unexpected_exits = restarts.unexpected_exits();
    SoakReport {
        seeds: results.len(),
        passed: results.iter().filter(|r| r.passed).count(),
        failed_seeds: results.iter().filter(|r| !r.passed).map(|r| r.seed).collect(),
        totals: t,
        results: results.to_vec(),
    }
}

/// The markdown report.
pub fn markdown(r: &SoakReport, args: &SoakArgs) -> String {
    let t = &r.totals;
    let mut s = format!(
        "## Fault soak\n\n`aci-runner-controller bench soak --seeds {} --first-seed {} --parallel {} --jobs {} --fault-window {}s --apiserver-restart-every {}s`\n\n",
        args.seeds,
        args.first_seed,
        args.parallel,
        args.jobs,
        args.fault_window.as_secs(),
        args.apiserver_restart_every.as_secs()
    );
    s += "| invariant | result |\n| --- | --- |\n";
    s += &format!("| seeds passed | {}/{} |\n", r.passed, r.seeds);
    s += &format!("| leaked container groups | {} |\n", t.leaked_groups);
    s += &format!("| leaked registrations | {} |\n", t.leaked_registrations);
    s += &format!("| busy runners killed | {} |\n", t.busy_runners_killed);
    s += &format!("| panics in controller logs | {} |\n", t.panics);
    s += &format!("| Stalled reasons without an injected cause | {} |\n", t.unexplained_stalled);
    s += &format!("| jobs completed | {}/{} |\n", t.jobs_completed, t.jobs);
    s += &format!("| controller SIGKILLs + restarts | {} |\n", t.controller_kills);
    s += &format!(
        "| kube-apiserver restarts (shared by the seeds running then) | {} |\n",
        t.apiserver_restarts
    );
    s += &format!("| wall time | {:.0} s |\n", t.wall_secs);
    if !r.failed_seeds.is_empty() {
        s += "\nFailed seeds:\n\n";
        for res in r.results.iter().filter(|x| !x.passed) {
            s += &format!(
                "- seed {}: {} (faults: {})\n",
                res.seed,
                res.violations.join("; "),
                res.injected.join(", ")
            );
        }
    }
    s
}

/// When the kube-apiserver was restarted, and how often it was found dead without a restart.
#[derive(Clone, Default)]
pub struct RestartLog(std::sync::Arc<std::sync::Mutex<(Vec<Instant>, usize)>>);

impl RestartLog {
    fn push(&self, at: Instant) {
        if let Ok(mut v) = self.0.lock() {
            v.0.push(at);
        }
    }
    fn found_dead(&self) {
        if let Ok(mut v) = self.0.lock() {
            v.1 += 1;
        }
    }
    /// Restarts within `[from, to]`.
    pub fn between(&self, from: Instant, to: Instant) -> usize {
        self.0.lock().map(|v| v.0.iter().filter(|t| **t >= from && **t <= to).count()).unwrap_or(0)
    }
    pub fn count(&self) -> usize {
        self.0.lock().map(|v| v.0.len()).unwrap_or(0)
    }
    /// Times the kube-apiserver had exited on its own (or was killed by someone else).
    pub fn unexpected_exits(&self) -> usize {
        self.0.lock().map(|v| v.1).unwrap_or(0)
    }
}

fn read_pid(cp_dir: &Path) -> Option<u32> {
    std::fs::read_to_string(cp_dir.join("apiserver.pid")).ok()?.trim().parse().ok()
}

/// The kube-apiserver's command line (from `/proc`).
fn apiserver_argv(cp_dir: &Path) -> anyhow::Result<Vec<String>> {
    let pid = read_pid(cp_dir).context("reading apiserver.pid")?;
    let cmdline =
        std::fs::read(format!("/proc/{pid}/cmdline")).context("reading the apiserver's command line")?;
    let argv: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    anyhow::ensure!(!argv.is_empty(), "empty apiserver command line");
    Ok(argv)
}

/// Restart the control plane's kube-apiserver at random times about `every` apart until `stop`;
/// start it again at once if it is found dead in between (counted, reported).
async fn restart_apiserver_loop(
    cp_dir: PathBuf,
    every: Duration,
    seed: u64,
    log: RestartLog,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let argv = match apiserver_argv(&cp_dir) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("no kube-apiserver restarts: {e:#}");
            return;
        }
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0xa11ce);
    let mut children: Vec<std::process::Child> = Vec::new();
    let ms = every.as_millis() as u64;
    let mut next = Instant::now() + Duration::from_millis(rng.gen_range(ms / 4..=ms / 2));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        let pid = read_pid(&cp_dir);
        let dead = !pid.is_some_and(alive);
        if dead {
            eprintln!("kube-apiserver (pid {pid:?}) exited without a planned restart; starting it again");
            log.found_dead();
        }
        if !dead && Instant::now() < next {
            continue;
        }
        children.retain_mut(|c| matches!(c.try_wait(), Ok(None)));
        match restart_apiserver(&cp_dir, &argv).await {
            Ok(child) => {
                if !dead {
                    log.push(Instant::now());
                }
                children.push(child);
            }
            Err(e) => eprintln!("kube-apiserver restart failed: {e:#}"),
        }
        next = Instant::now() + Duration::from_millis(rng.gen_range(ms / 2..=ms * 3 / 2));
    }
    // The control plane's stop (by the PID file) ends the last one; the exited ones are reaped
    // here, the last one when this process exits.
    children.retain_mut(|c| matches!(c.try_wait(), Ok(None)));
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| !rest.trim_start().starts_with('Z')))
        .unwrap_or(false)
}

/// Stop the kube-apiserver (SIGTERM) if it runs and start it again with `argv`; wait until it
/// answers `/readyz`. The PID file is updated so that the control plane's stop finds it.
pub async fn restart_apiserver(cp_dir: &Path, argv: &[String]) -> anyhow::Result<std::process::Child> {
    let pid_file = cp_dir.join("apiserver.pid");
    let Some((exe, rest)) = argv.split_first() else { anyhow::bail!("empty apiserver command line") };
    if let Some(pid) = read_pid(cp_dir).filter(|p| alive(*p)) {
        std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status()?;
        let deadline = Instant::now() + Duration::from_secs(15);
        while alive(pid) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if alive(pid) {
            std::process::Command::new("kill").arg("-KILL").arg(pid.to_string()).status()?;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let log = std::fs::OpenOptions::new().create(true).append(true).open(cp_dir.join("apiserver.log"))?;
    let err = log.try_clone()?;
    let child = std::process::Command::new(exe)
        .args(rest)
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(err)
        .spawn()
        .context("starting the kube-apiserver again")?;
    std::fs::write(&pid_file, child.id().to_string())?;
    // Ready when an authenticated client gets an answer.
    let kubeconfig = cp_dir.join("kubeconfig");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ok = std::process::Command::new("kubectl")
            .env("KUBECONFIG", &kubeconfig)
            .args(["get", "--raw", "/readyz"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Ok(child);
        }
        if Instant::now() > deadline {
            anyhow::bail!("the kube-apiserver did not become ready within 60 s after a restart");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Retry `f` for up to 60 s (the kube-apiserver may be restarting).
async fn retry<T, E, F, Fut>(mut f: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}
