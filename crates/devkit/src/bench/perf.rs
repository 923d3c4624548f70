//! `aci-runner-devkit bench run`: the performance figures P1..P6 of issue 9, measured with the
//! controller as its own process (production flags unless stated) against the simulator (in this
//! process, time scale 1) and a local control plane. Writes `bench.json` and `bench.md`.
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use kube::Client;
use kube::api::Api;
use serde::Serialize;
use serde_json::json;

use super::observe::percentile;
use super::procs::{ControllerProc, ControllerSpec};
use crate::sim::Simulator;
use crate::sim::arm::Quotas;
use crate::sim::github::{EnqueueJobs, WebhookTarget};
use crate::testing::control_plane::{ControlPlane, install_crd, test_namespace};
use crate::testing::harness::{apply_app_secret, apply_pool, fast_sim_options, pool_manifest};
use aci_runner_core::crd::RunnerPool;

/// Flags of `bench run`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Where `bench.json`, `bench.md` and the controller logs go.
    #[arg(long, default_value = "target/bench")]
    pub out: PathBuf,
    /// P1/P2: jobs sent one after the other to an empty pool.
    #[arg(long, default_value_t = 30)]
    pub p1_samples: usize,
    /// P3: numbers of idle pools (one scope) to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,10,100")]
    pub p3_pools: Vec<usize>,
    /// P3/P6: length of the steady-state window.
    #[arg(long, default_value = "120s", value_parser = aci_runner_core::crd::parse_duration)]
    pub p3_window: Duration,
    /// P4: runners to reach from zero (0 = skip P4), in pools of at most 1,000. At ACI's default
    /// create quotas (100 per 5 minutes, 300 per hour) 150 runners take one window change (about
    /// 5 minutes); 1,000 runners need raised quotas (the `--p4-*` flags below).
    #[arg(long, default_value_t = 150)]
    pub p4_runners: u32,
    /// P4: ACI container-group creates per 5 minutes of the simulated subscription; the controller
    /// is started with the same `--aci-creates-per-5m` (ACI's default: 100).
    #[arg(long, default_value_t = 100)]
    pub p4_creates_per_5m: u32,
    /// P4: ... per hour (`--aci-creates-per-hour`; ACI's default: 300).
    #[arg(long, default_value_t = 300)]
    pub p4_creates_per_hour: u32,
    /// P4: GitHub content-creating requests per minute of the simulated GitHub; the controller is
    /// started with the same `--github-writes-per-minute` (GitHub's documented limit: 80).
    #[arg(long, default_value_t = 80)]
    pub p4_github_writes_per_minute: u32,
    /// P4: ... per hour (`--github-writes-per-hour`; GitHub's documented limit: 500).
    #[arg(long, default_value_t = 500)]
    pub p4_github_writes_per_hour: u32,
    /// P5: runners tracked (0 = skip P5). They are seeded into the simulator (container groups
    /// tagged as the controller tags its own, runners registered and online) for pools of at
    /// most 1,000 that already want them, then the controller is started and adopts them.
    /// Several sizes (comma-separated) give one figure each, which shows how memory grows.
    #[arg(long, value_delimiter = ',', default_value = "10000")]
    pub p5_runners: Vec<u32>,
    /// P5: runners per pool (at most 1,000, the CRD's `maxRunners` limit); fewer per pool means
    /// more pools sharing one organization and one resource group.
    #[arg(long, default_value_t = 1000)]
    pub p5_pool_size: u32,
    /// Parts to run: `p1` (P1, P2), `p3` (P3, P6), `p4` (P4), `p5` (P5).
    #[arg(long, value_delimiter = ',', default_value = "p1,p3,p4,p5")]
    pub only: Vec<String>,
    /// Controller resync interval for every scenario (the production default is 60s).
    #[arg(long, default_value = "60s")]
    pub resync: String,
}

/// One figure beside its goal.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Figure {
    pub id: String,
    pub what: String,
    /// `None` = not measured.
    pub value: Option<f64>,
    pub unit: String,
    pub goal: String,
    /// `None` when not measured.
    pub met: Option<bool>,
    pub notes: String,
}

/// `bench.json`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BenchReport {
    pub started: DateTime<Utc>,
    pub machine: String,
    pub command: String,
    pub figures: Vec<Figure>,
    pub details: serde_json::Value,
    pub wall_secs: f64,
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().next().and_then(|l| l.split_whitespace().nth(1)).and_then(|k| k.parse::<u64>().ok())
        })
        .map(|kb| format!("{:.1} GiB RAM", kb as f64 / 1024.0 / 1024.0))
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpu}, {cores} cores available, {mem}, Linux {}", kernel.trim())
}

struct Scenario {
    client: Client,
    ns: String,
    sim: Simulator,
    ctl: ControllerProc,
}

async fn scenario(
    cp: &ControlPlane,
    client: &Client,
    args: &BenchArgs,
    name: &str,
    tweak: impl FnOnce(&mut crate::sim::SimOptions),
) -> anyhow::Result<Scenario> {
    scenario_with(cp, client, args, name, tweak, &[]).await
}

/// A namespace, a simulator (tweaked) and the controller process with `extra_args`.
async fn scenario_with(
    cp: &ControlPlane,
    client: &Client,
    args: &BenchArgs,
    name: &str,
    tweak: impl FnOnce(&mut crate::sim::SimOptions),
    extra_args: &[String],
) -> anyhow::Result<Scenario> {
    let ns = test_namespace(client, &format!("bench-{name}")).await?;
    let mut opts = fast_sim_options(1);
    tweak(&mut opts);
    let sim = crate::sim::start(opts).await?;
    apply_app_secret(client, &ns, "github-app", &sim).await?;
    let ctl = start_controller(cp, args, name, &ns, &sim, extra_args).await?;
    Ok(Scenario { client: client.clone(), ns, sim, ctl })
}

/// The controller process for one scenario, webhooks from `sim` pointed at it.
async fn start_controller(
    cp: &ControlPlane,
    args: &BenchArgs,
    name: &str,
    ns: &str,
    sim: &Simulator,
    extra_args: &[String],
) -> anyhow::Result<ControllerProc> {
    let secret = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let ctl = ControllerProc::start_with(
        sim,
        ControllerSpec {
            kubeconfig: cp.kubeconfig.clone(),
            namespaces: vec![ns.to_string()],
            resync: args.resync.clone(),
            gc_grace: "2m".into(),
            leader_election: false,
            lease_namespace: ns.to_string(),
            dir: args.out.join(name),
            webhook_secret: secret.clone(),
            log_filter: "info".into(),
        },
        extra_args,
    )
    .await?;
    sim.github.set_webhook(Some(WebhookTarget { url: ctl.webhook_url.clone(), secret }));
    Ok(ctl)
}

impl Scenario {
    async fn finish(mut self) {
        self.ctl.stop().await;
        let _ = Api::<k8s_openapi::api::core::v1::Namespace>::all(self.client.clone())
            .delete(&self.ns, &Default::default())
            .await;
    }
}

async fn wait_for<T, F, Fut>(timeout: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// P1 and P2: jobs one at a time to a pool with no idle runners.
async fn p1_p2(
    cp: &ControlPlane,
    client: &Client,
    args: &BenchArgs,
) -> anyhow::Result<(Vec<Figure>, serde_json::Value)> {
    let s = scenario(cp, client, args, "p1", |_| {}).await?;
    let pool = pool_manifest(
        "lat",
        &s.sim,
        json!({"scaling": {"minIdle": 0, "maxRunners": 5, "scaleDownDelay": "1s"}}),
    );
    apply_pool(client, &s.ns, &pool).await?;
    let pools: Api<RunnerPool> = Api::namespaced(client.clone(), &s.ns);
    wait_for(Duration::from_secs(60), || async {
        let p = pools.get_opt("lat").await.ok().flatten()?;
        (p.status?.observed_generation.is_some()).then_some(())
    })
    .await
    .context("the P1 pool was never reconciled")?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let calls_before = s.sim.github.calls().len();
    let creates_before = s.sim.arm.creates_accepted();
    let mut lat_ms: Vec<f64> = Vec::new();
    let mut missed = 0;
    for _ in 0..args.p1_samples {
        let jobs = s
            .sim
            .github
            .enqueue_jobs(EnqueueJobs {
                repo: "octo-org/other-repo".into(),
                labels: vec!["self-hosted".into(), "aci".into()],
                duration_secs: 0.2,
                count: 1,
                ..EnqueueJobs::default()
            })
            .map_err(|e| anyhow::anyhow!("enqueue: {e}"))?;
        let Some(job) = jobs.first().cloned() else { anyhow::bail!("the simulator enqueued no job") };
        let created = job.created_at;
        let put = wait_for(Duration::from_secs(30), || async {
            s.sim.arm.calls().into_iter().find(|c| c.op == "create" && c.at >= created).map(|c| c.at)
        })
        .await;
        match put {
            Some(at) => lat_ms.push((at - created).num_microseconds().unwrap_or(0) as f64 / 1000.0),
            None => missed += 1,
        }
        // The job runs, its runner goes, the pool is empty again.
        wait_for(Duration::from_secs(60), || async {
            let done = s.sim.github.jobs().iter().any(|j| j.id == job.id && j.completed_at.is_some());
            let empty = s.sim.arm.groups().is_empty();
            (done && empty).then_some(())
        })
        .await
        .context("a P1 job did not finish or its runner was not removed within 60 s")?;
    }
    let calls: Vec<_> = s.sim.github.calls().into_iter().skip(calls_before).collect();
    let lifecycles = (s.sim.arm.creates_accepted() - creates_before).max(1);
    let mut by_op = std::collections::BTreeMap::<String, u64>::new();
    for c in &calls {
        *by_op.entry(c.op.clone()).or_default() += 1;
    }
    let free = calls.iter().filter(|c| c.status == 304).count();
    s.finish().await;
    lat_ms.sort_by(|a, b| a.total_cmp(b));
    let p50 = percentile(&lat_ms, 50.0);
    let p99 = percentile(&lat_ms, 99.0);
    let per = calls.len() as f64 / lifecycles as f64;
    let per_counted = (calls.len() - free) as f64 / lifecycles as f64;
    let figures = vec![
        Figure {
            id: "P1".into(),
            what: "webhook in → container-group PUT out, p50".into(),
            value: Some(p50),
            unit: "ms".into(),
            goal: "—".into(),
            met: None,
            notes: format!(
                "{} jobs one at a time to a pool with minIdle 0; from the job's creation (the webhook is sent then) to the simulator answering the PUT; includes the JIT config call",
                lat_ms.len()
            ),
        },
        Figure {
            id: "P1".into(),
            what: "webhook in → container-group PUT out, p99".into(),
            value: Some(p99),
            unit: "ms".into(),
            goal: "≤ 100 ms".into(),
            met: Some(p99 <= 100.0 && missed == 0),
            notes: format!(
                "{missed} job(s) without a PUT within 30 s; with {} samples p99 is the maximum",
                lat_ms.len()
            ),
        },
        Figure {
            id: "P2".into(),
            what: "GitHub calls per runner lifecycle (lists amortized)".into(),
            value: Some(per),
            unit: "calls".into(),
            goal: "≤ 3".into(),
            met: Some(per <= 3.0),
            notes: format!(
                "{} calls for {lifecycles} lifecycles ({per_counted:.2} per lifecycle counting only non-304 answers); by operation: {by_op:?}",
                calls.len()
            ),
        },
    ];
    Ok((figures, json!({"p1LatenciesMs": lat_ms, "p2CallsByOp": by_op, "lifecycles": lifecycles})))
}

/// P3 and P6 (and an RSS reading): N idle pools of one scope, steady state.
async fn p3(
    cp: &ControlPlane,
    client: &Client,
    args: &BenchArgs,
    n: usize,
) -> anyhow::Result<(f64, f64, u64, serde_json::Value)> {
    let s = scenario(cp, client, args, &format!("p3-{n}"), |_| {}).await?;
    for i in 0..n {
        let pool =
            pool_manifest(&format!("idle-{i}"), &s.sim, json!({"scaling": {"minIdle": 0, "maxRunners": 5}}));
        apply_pool(client, &s.ns, &pool).await?;
    }
    let pools: Api<RunnerPool> = Api::namespaced(client.clone(), &s.ns);
    wait_for(Duration::from_secs(120), || async {
        let l = pools.list(&Default::default()).await.ok()?;
        let done = l
            .items
            .iter()
            .filter(|p| p.status.as_ref().is_some_and(|st| st.observed_generation.is_some()))
            .count();
        (done == n).then_some(())
    })
    .await
    .context("the P3 pools were never all reconciled")?;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let metrics_url = format!("{}/metrics", s.ctl.health_url);
    let reconciles =
        |text: &str| super::observe::metric_sum(text, "aci_runner_controller_reconcile_total", &[]);
    let t0 = Utc::now();
    let rec0 = reconciles(&super::observe::controller_metrics(&metrics_url).await);
    let cpu0 = s.ctl.cpu_time();
    let w0 = Instant::now();
    tokio::time::sleep(args.p3_window).await;
    let wall = w0.elapsed();
    let cpu1 = s.ctl.cpu_time();
    let rec1 = reconciles(&super::observe::controller_metrics(&metrics_url).await);
    let mut arm_ops = std::collections::BTreeMap::<String, u64>::new();
    for c in s.sim.arm.calls().into_iter().filter(|c| c.at >= t0) {
        *arm_ops.entry(format!("{} {}", c.op, c.status)).or_default() += 1;
    }
    let rss = s.ctl.rss_bytes().unwrap_or(0);
    let calls: Vec<_> = s.sim.github.calls().into_iter().filter(|c| c.at >= t0).collect();
    let mut by_op = std::collections::BTreeMap::<String, u64>::new();
    for c in &calls {
        *by_op.entry(format!("{} {}", c.op, c.status)).or_default() += 1;
    }
    let per_hour = calls.len() as f64 * 3600.0 / wall.as_secs_f64();
    let cpu_pct = match (cpu0, cpu1) {
        (Some(a), Some(b)) => (b.saturating_sub(a)).as_secs_f64() / wall.as_secs_f64() * 100.0,
        _ => f64::NAN,
    };
    s.finish().await;
    Ok((
        per_hour,
        cpu_pct,
        rss,
        json!({"pools": n, "windowSecs": wall.as_secs_f64(), "calls": calls.len(), "byOp": by_op,
               "reconciles": rec1 - rec0, "armCallsByOp": arm_ops}),
    ))
}

/// The earliest time the `n`-th create can be sent under ACI's create windows (as fixed windows
/// from the first create), the ARM write bucket, and GitHub's content-creation limits per minute
/// and per hour (one JIT config per runner).
fn quota_bound(n: u32, q: &Quotas, github_writes_per_minute: u64, github_writes_per_hour: u64) -> Duration {
    let n = f64::from(n.max(1));
    let window = |limit: f64, secs: f64| if limit > 0.0 { ((n - 1.0) / limit).floor() * secs } else { 0.0 };
    let creates =
        window(f64::from(q.creates_per_5min), 300.0).max(window(f64::from(q.creates_per_hour), 3600.0));
    let writes = ((n - q.writes.capacity) / q.writes.refill_per_sec).max(0.0);
    let jit =
        window(github_writes_per_minute as f64, 60.0).max(window(github_writes_per_hour as f64, 3600.0));
    Duration::from_secs_f64(creates.max(writes).max(jit))
}

/// Pools of at most `per` (and [`aci_runner_core::crd::MAX_RUNNERS_LIMIT`]) runners sharing `total`:
/// (name, size).
fn fleet_pools(prefix: &str, total: u32, per: u32) -> Vec<(String, u32)> {
    let per = per.clamp(1, aci_runner_core::crd::MAX_RUNNERS_LIMIT.max(1) as u32);
    let n = total.div_ceil(per).max(1);
    (0..n)
        .map(|i| {
            let size = total / n + u32::from(i < total % n);
            (if n == 1 { prefix.to_string() } else { format!("{prefix}-{i}") }, size)
        })
        .filter(|(_, size)| *size > 0)
        .collect()
}

/// Operation → count of the simulated ARM's and GitHub's calls since `t0`.
fn calls_since(
    sim: &Simulator,
    t0: DateTime<Utc>,
) -> (std::collections::BTreeMap<String, u64>, std::collections::BTreeMap<String, u64>) {
    let mut arm = std::collections::BTreeMap::<String, u64>::new();
    for c in sim.arm.calls().into_iter().filter(|c| c.at >= t0) {
        *arm.entry(format!("{} {}", c.op, c.status)).or_default() += 1;
    }
    let mut gh = std::collections::BTreeMap::<String, u64>::new();
    for c in sim.github.calls().into_iter().filter(|c| c.at >= t0) {
        *gh.entry(format!("{} {}", c.op, c.status)).or_default() += 1;
    }
    (arm, gh)
}

/// P4: from zero to `r` runners under the quotas of the `--p4-*` flags, which the simulated
/// subscription and GitHub enforce and the controller is told (`--aci-creates-per-*`,
/// `--github-writes-per-*`); the ARM buckets stay at ARM's defaults.
async fn p4(
    cp: &ControlPlane,
    client: &Client,
    args: &BenchArgs,
) -> anyhow::Result<(Vec<Figure>, serde_json::Value)> {
    let r = args.p4_runners;
    let defaults = crate::sim::SimOptions::default();
    let quotas = Quotas {
        container_groups: r + 100,
        cores: f64::from(r) + 100.0,
        creates_per_5min: args.p4_creates_per_5m,
        creates_per_hour: args.p4_creates_per_hour,
        ..defaults.arm.quotas
    };
    let gh_min = u64::from(args.p4_github_writes_per_minute);
    let gh_hour = u64::from(args.p4_github_writes_per_hour);
    let raised = quotas.creates_per_5min != defaults.arm.quotas.creates_per_5min
        || quotas.creates_per_hour != defaults.arm.quotas.creates_per_hour
        || gh_min != defaults.github.secondary_writes_per_minute
        || gh_hour != defaults.github.secondary_writes_per_hour;
    let extra: Vec<String> = vec![
        format!("--aci-creates-per-5m={}", quotas.creates_per_5min),
        format!("--aci-creates-per-hour={}", quotas.creates_per_hour),
        format!("--github-writes-per-minute={gh_min}"),
        format!("--github-writes-per-hour={gh_hour}"),
    ];
    let s = scenario_with(
        cp,
        client,
        args,
        "p4",
        |o| {
            o.arm.quotas = quotas.clone();
            o.github.secondary_writes_per_minute = gh_min;
            o.github.secondary_writes_per_hour = gh_hour;
            // GitHub's per-minute request limit must leave room for the raised writes and lists.
            o.github.secondary_limit_per_minute = o.github.secondary_limit_per_minute.max(2 * gh_min);
        },
        &extra,
    )
    .await?;
    let opts = fast_sim_options(1);
    let provisioning = Duration::from_millis(
        opts.arm.provisioning_delay_ms + opts.arm.image_pull_delay_ms + opts.github.runner_startup_ms,
    );
    let bound = quota_bound(r, &quotas, gh_min, gh_hour);
    let ideal = bound + provisioning;
    let pools = fleet_pools("fleet", r, u32::MAX);
    let t0 = Instant::now();
    let t0_utc = Utc::now();
    for (name, size) in &pools {
        let pool = pool_manifest(
            name,
            &s.sim,
            json!({"scaling": {"minIdle": size, "maxRunners": size, "scaleDownDelay": "10m"}}),
        );
        apply_pool(client, &s.ns, &pool).await?;
    }
    let mut peak_rss = 0;
    let reached = wait_for(ideal * 2 + Duration::from_secs(60), || {
        peak_rss = peak_rss.max(s.ctl.rss_bytes().unwrap_or(0));
        let online = s.sim.github.runners().iter().filter(|x| x.online).count();
        async move { (online >= r as usize).then_some(()) }
    })
    .await;
    let took = t0.elapsed();
    // Hold the fleet a little: the controller now tracks the runners.
    tokio::time::sleep(Duration::from_secs(15)).await;
    let rss = s.ctl.rss_bytes().unwrap_or(0);
    peak_rss = peak_rss.max(rss);
    let online = s.sim.github.runners().iter().filter(|x| x.online).count();
    let arm429 = s.sim.arm.throttled_count();
    let quota_rejections = s.sim.arm.quota_rejections();
    let gh_refused: u64 = s.sim.github.rate_limits().iter().map(|x| x.refused).sum();
    let paced = 0.0
        + super::observe::metric_sum(
            &super::observe::controller_metrics(&format!("{}/metrics", s.ctl.health_url)).await,
            "aci_runner_controller_github_content_paced_total",
            &[],
        );
    let (arm_ops, gh_ops) = calls_since(&s.sim, t0_utc);
    let ratio = took.as_secs_f64() / ideal.as_secs_f64();
    s.finish().await;
    let quota_text = format!(
        "{} ACI create windows {} per 5 min and {} per hour, ARM writes {} + {}/s, GitHub {gh_min} content-creating requests per minute and {gh_hour} per hour (one JIT config per runner)",
        if raised { "raised quotas (simulator and controller flags):" } else { "default quotas:" },
        quotas.creates_per_5min,
        quotas.creates_per_hour,
        quotas.writes.capacity,
        quotas.writes.refill_per_sec,
    );
    let figures = vec![
        Figure {
            id: "P4".into(),
            what: format!("time to {r} runners from zero / quota-bound ideal"),
            value: reached.map(|_| ratio),
            unit: "×".into(),
            goal: "≤ 1.05 (at 1,000 runners)".into(),
            met: reached.map(|_| ratio <= 1.05),
            notes: format!(
                "{} in {:.1} s; ideal {:.1} s = {:.1} s quota-bound ({quota_text}) + {} ms simulated provisioning; {} pool(s); {online} online at the end",
                if reached.is_some() { "reached" } else { "NOT reached" },
                took.as_secs_f64(),
                ideal.as_secs_f64(),
                bound.as_secs_f64(),
                provisioning.as_millis(),
                pools.len(),
            ),
        },
        Figure {
            id: "P4".into(),
            what: "429s (ARM) + rate-limited answers (GitHub) on the way".into(),
            value: Some((arm429 + gh_refused) as f64),
            unit: "answers".into(),
            goal: "0".into(),
            met: Some(arm429 + gh_refused == 0),
            notes: format!(
                "ARM 429s {arm429} (of which quota rejections {quota_rejections}), GitHub refused {gh_refused}; requests the controller held back itself (GitHub pace) {paced:.0}; controller RSS {:.1} MiB at {online} runners (peak {:.1} MiB)",
                rss as f64 / 1_048_576.0,
                peak_rss as f64 / 1_048_576.0
            ),
        },
    ];
    Ok((
        figures,
        json!({"runners": r, "pools": pools.len(), "raisedQuotas": raised, "tookSecs": took.as_secs_f64(),
               "idealSecs": ideal.as_secs_f64(), "quotaBoundSecs": bound.as_secs_f64(), "online": online,
               "rssBytes": rss, "peakRssBytes": peak_rss, "armCallsByOp": arm_ops, "githubCallsByOp": gh_ops,
               "githubPaced": paced}),
    ))
}

/// P5: the controller's memory while it tracks `n` runners. The fleet is seeded into the
/// simulator before the controller starts (creating 10,000 runners through ACI's create quotas
/// would take days): per pool, runners registered through the simulated GitHub's JIT path and
/// container groups built by the controller's own template (same tags, spec hash and JIT env),
/// provisioned and started by the simulated ACI, so the runners come online in their groups.
/// The pools already want exactly these runners; the controller lists, adopts and holds them.
async fn p5(
    cp: &ControlPlane,
    client: &Client,
    args: &BenchArgs,
    n: u32,
) -> anyhow::Result<(Vec<Figure>, serde_json::Value)> {
    use aci_runner_controller::azure::GroupOwner;
    let ns = test_namespace(client, &format!("bench-p5-{n}")).await?;
    let mut opts = fast_sim_options(1);
    opts.arm.quotas.container_groups = n + 100;
    opts.arm.quotas.cores = f64::from(n) + 100.0;
    let sim = crate::sim::start(opts).await?;
    apply_app_secret(client, &ns, "github-app", &sim).await?;
    let pools = fleet_pools("tracked", n, args.p5_pool_size);
    let api: Api<RunnerPool> = Api::namespaced(client.clone(), &ns);
    let seed_started = Instant::now();
    let mut rng = rand::thread_rng();
    for (name, size) in &pools {
        let manifest = pool_manifest(
            name,
            &sim,
            json!({"scaling": {"minIdle": size, "maxRunners": size, "scaleDownDelay": "10m"}}),
        );
        apply_pool(client, &ns, &manifest).await?;
        let pool = api.get(name).await?;
        let uid = pool.metadata.uid.clone().context("the API server gave the pool no uid")?;
        let meta = GroupOwner {
            namespace: ns.clone(),
            name: name.clone(),
            uid,
            install_id: super::procs::BENCH_INSTALL_ID.into(),
            spec_hash: aci_runner_controller::controller::spec_hash(&pool),
        };
        let spec = &pool.spec;
        let scope = crate::sim::github::ScopeKey::Org(
            spec.github.organization.clone().context("the P5 pools are organization pools")?,
        );
        let labels = aci_runner_core::plan::demand::jit_labels(spec);
        let prefix = aci_runner_core::plan::names::runner_name_prefix(name);
        let mut taken = std::collections::BTreeSet::new();
        while taken.len() < *size as usize {
            let runner = format!("{prefix}-{}", aci_runner_core::plan::names::random_suffix(&mut rng));
            if !taken.insert(runner.clone()) {
                continue;
            }
            super::seed_runner(&sim, spec, &meta, &scope, &runner, &labels)?;
        }
    }
    let online = wait_for(Duration::from_secs(120), || async {
        let online = sim.github.runners().iter().filter(|r| r.online).count();
        (online >= n as usize).then_some(online)
    })
    .await
    .context("the seeded runners did not all come online")?;
    let seed_secs = seed_started.elapsed().as_secs_f64();
    eprintln!("P5: {online} runners seeded and online in {seed_secs:.1} s; starting the controller");

    let creates_before = sim.arm.creates_accepted();
    let t0 = Instant::now();
    let t0_utc = Utc::now();
    let ctl = start_controller(cp, args, &format!("p5-{n}"), &ns, &sim, &[]).await?;
    let want: i32 = pools.iter().map(|(_, s)| *s as i32).sum();
    let mut peak_rss = 0u64;
    let adopted = wait_for(Duration::from_secs(600), || {
        peak_rss = peak_rss.max(ctl.rss_bytes().unwrap_or(0));
        let api = api.clone();
        async move {
            let list = api.list(&Default::default()).await.ok()?;
            let idle: i32 = list.items.iter().filter_map(|p| p.status.as_ref()).map(|st| st.idle).sum();
            (idle >= want).then_some(())
        }
    })
    .await;
    let adopt_secs = t0.elapsed().as_secs_f64();
    // Hold: the controller keeps tracking the fleet (lists, resyncs).
    let hold = Duration::from_secs(30);
    let hold_started = Instant::now();
    while hold_started.elapsed() < hold {
        peak_rss = peak_rss.max(ctl.rss_bytes().unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let rss = ctl.rss_bytes().unwrap_or(0);
    peak_rss = peak_rss.max(rss);
    let wall = t0.elapsed().as_secs_f64();
    let (arm_ops, gh_ops) = calls_since(&sim, t0_utc);
    let list = api.list(&Default::default()).await?;
    let (mut idle, mut busy, mut provisioning, mut terminating, mut failed) = (0, 0, 0, 0, 0);
    let mut stalled = Vec::new();
    for p in &list.items {
        if let Some(st) = &p.status {
            idle += st.idle;
            busy += st.busy;
            provisioning += st.provisioning;
            terminating += st.terminating;
            failed += st.failed;
            for c in st.conditions.iter().filter(|c| c.type_ == "Stalled" && c.status == "True") {
                stalled.push(format!("{}: {}", p.metadata.name.clone().unwrap_or_default(), c.reason));
            }
        }
    }
    let creates = sim.arm.creates_accepted() - creates_before;
    let deletes = arm_ops.iter().filter(|(k, _)| k.starts_with("delete ")).map(|(_, v)| *v).sum::<u64>();
    let online_end = sim.github.runners().iter().filter(|r| r.online).count();
    let metrics_text = super::observe::controller_metrics(&format!("{}/metrics", ctl.health_url)).await;
    // `+ 0.0`: an empty float sum is -0.0.
    let local_throttled = super::observe::metric_sum(
        &metrics_text,
        "aci_runner_controller_azure_ratelimit_local_throttled_total",
        &[],
    ) + 0.0;
    let mut ctl = ctl;
    ctl.stop().await;
    let _ = Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .delete(&ns, &Default::default())
        .await;
    let count = |m: &std::collections::BTreeMap<String, u64>, prefix: &str| -> u64 {
        m.iter().filter(|(k, _)| k.starts_with(prefix)).map(|(_, v)| *v).sum()
    };
    let arm_lists = count(&arm_ops, "list");
    let gh_lists = count(&gh_ops, "list_runners");
    let gh_304 = count(&gh_ops, "list_runners 304");
    let figures = vec![Figure {
        id: "P5".into(),
        what: format!("controller RSS with {n} runners tracked"),
        value: Some(rss as f64 / 1_048_576.0),
        unit: "MiB".into(),
        goal: "≤ 64 MB (61.0 MiB) at 10,000".into(),
        // The goal is stated at 10,000 runners; smaller fleets are points of the growth curve.
        met: (n >= 10_000).then_some(adopted.is_some() && rss as f64 <= 64_000_000.0),
        notes: format!(
            "{n} runners in {} pool(s) (one org, one resource group) seeded into the simulator, then the controller started: pools showed all idle {}; RSS after a {} s hold, peak {:.1} MiB; pool status at the end idle {idle} busy {busy} provisioning {provisioning} terminating {terminating} failed {failed}{}; the controller created {creates} and deleted {deletes} groups; {online_end} runners online at the end; in {wall:.0} s: ARM list pages {arm_lists} (page size 100; controller-side local throttles {local_throttled:.0}), GitHub runner-list pages {gh_lists} (of which 304 {gh_304})",
            pools.len(),
            match adopted {
                Some(()) => format!("after {adopt_secs:.1} s"),
                None => format!("NOT within {adopt_secs:.0} s"),
            },
            hold.as_secs(),
            peak_rss as f64 / 1_048_576.0,
            if stalled.is_empty() { String::new() } else { format!(", Stalled: {}", stalled.join("; ")) },
        ),
    }];
    Ok((
        figures,
        json!({"runners": n, "pools": pools.len(), "seedSecs": seed_secs, "adopted": adopted.is_some(),
               "adoptSecs": adopt_secs, "rssBytes": rss, "peakRssBytes": peak_rss, "armCallsByOp": arm_ops,
               "githubCallsByOp": gh_ops, "creates": creates, "deletes": deletes,
               "status": {"idle": idle, "busy": busy, "provisioning": provisioning, "terminating": terminating,
                          "failed": failed}, "stalled": stalled}),
    ))
}

/// Run the benchmarks; writes `bench.json` and `bench.md` into `args.out`.
pub async fn run(args: BenchArgs, command: String) -> anyhow::Result<BenchReport> {
    let started = Instant::now();
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let cp_dir = std::env::temp_dir().join(format!("aci-rc-bench-cp-{}", std::process::id()));
    let cp = ControlPlane::start_in(&cp_dir)?;
    let res = run_on(&cp, &args).await;
    cp.stop();
    let _ = std::fs::remove_dir_all(&cp_dir);
    let (figures, details) = res?;
    let report = BenchReport {
        started: Utc::now() - chrono::Duration::from_std(started.elapsed()).unwrap_or_default(),
        machine: machine(),
        command,
        figures,
        details,
        wall_secs: started.elapsed().as_secs_f64(),
    };
    std::fs::write(args.out.join("bench.json"), serde_json::to_string_pretty(&report)?)?;
    std::fs::write(args.out.join("bench.md"), markdown(&report))?;
    Ok(report)
}

async fn run_on(cp: &ControlPlane, args: &BenchArgs) -> anyhow::Result<(Vec<Figure>, serde_json::Value)> {
    let client = cp.client().await?;
    install_crd(&client).await?;
    let mut figures = Vec::new();
    let mut details = serde_json::Map::new();
    let part = |p: &str| args.only.iter().any(|o| o.eq_ignore_ascii_case(p));
    if part("p1") {
        eprintln!("P1/P2: {} jobs, one at a time", args.p1_samples);
        let (f, d) = p1_p2(cp, &client, args).await?;
        figures.extend(f);
        details.insert("p1p2".into(), d);
    } else {
        figures.push(not_measured("P1", "webhook in → container-group PUT out, p99", "≤ 100 ms", "p1"));
        figures.push(not_measured("P2", "GitHub calls per runner lifecycle (lists amortized)", "≤ 3", "p1"));
    }
    let p3_pools: Vec<usize> = if part("p3") { args.p3_pools.clone() } else { Vec::new() };
    let mut p3_rows = Vec::new();
    let mut max_n = 0;
    let mut cpu_at_max = f64::NAN;
    if p3_pools.is_empty() {
        figures.push(not_measured("P3", "steady-state GitHub calls per hour per scope", "≤ 120", "p3"));
    }
    for &n in &p3_pools {
        eprintln!("P3: {n} idle pool(s), {} s window", args.p3_window.as_secs());
        let (per_hour, cpu, rss, d) = p3(cp, &client, args, n).await?;
        figures.push(Figure {
            id: "P3".into(),
            what: format!("steady-state GitHub calls per hour per scope, {n} idle pool(s)"),
            value: Some(per_hour),
            unit: "calls/h".into(),
            goal: "≤ 120".into(),
            met: Some(per_hour <= 120.0),
            notes: format!(
                "{} calls in {:.0} s, extrapolated; pools with minIdle 0 on one org; resync {}; {} reconcile passes and ARM calls {} in the window; controller RSS {:.1} MiB, CPU {cpu:.2} %",
                d["calls"],
                d["windowSecs"].as_f64().unwrap_or(0.0),
                args.resync,
                d["reconciles"],
                d["armCallsByOp"],
                rss as f64 / 1_048_576.0
            ),
        });
        if n >= max_n {
            max_n = n;
            cpu_at_max = cpu;
        }
        p3_rows.push(d);
    }
    details.insert("p3".into(), serde_json::Value::Array(p3_rows));
    if p3_pools.is_empty() {
        figures.push(not_measured("P6", "controller CPU in steady state with 100 pools", "≤ 2 %", "p3"));
    } else {
        figures.push(Figure {
            id: "P6".into(),
            what: format!("controller CPU in steady state, {max_n} pools"),
            value: (!cpu_at_max.is_nan()).then_some(cpu_at_max),
            unit: "% of one core".into(),
            goal: "≤ 2 % with 100 pools".into(),
            met: (!cpu_at_max.is_nan() && max_n >= 100).then_some(cpu_at_max <= 2.0),
            notes: format!(
                "user+system time of the controller process over the P3 window ({max_n} idle pools)"
            ),
        });
    }
    if args.p4_runners > 0 && part("p4") {
        eprintln!("P4: zero to {} runners", args.p4_runners);
        let (f, d) = p4(cp, &client, args).await?;
        figures.extend(f);
        details.insert("p4".into(), d);
    } else {
        figures.push(not_measured(
            "P4",
            "time to 1,000 runners from zero / the quota-bound ideal",
            "≤ 1.05, 0 429s",
            "p4 (or with --p4-runners 0)",
        ));
    }
    let p5_sizes: Vec<u32> =
        if part("p5") { args.p5_runners.iter().copied().filter(|n| *n > 0).collect() } else { Vec::new() };
    let mut p5_rows = Vec::new();
    for &n in &p5_sizes {
        eprintln!("P5: {n} runners tracked");
        let (f, d) = p5(cp, &client, args, n).await?;
        figures.extend(f);
        p5_rows.push(d);
    }
    if !p5_rows.is_empty() {
        details.insert("p5".into(), serde_json::Value::Array(p5_rows));
    } else {
        figures.push(not_measured(
            "P5",
            "controller RSS with 10,000 runners tracked",
            "≤ 64 MB",
            "p5 (or with --p5-runners 0)",
        ));
    }
    Ok((figures, serde_json::Value::Object(details)))
}

/// The markdown report: every figure beside its goal.
pub fn markdown(r: &BenchReport) -> String {
    let mut s = format!(
        "## Benchmarks\n\nMachine: {}\n\nCommand: `{}` ({:.0} s wall time, started {})\n\n",
        r.machine,
        r.command,
        r.wall_secs,
        r.started.format("%Y-%m-%d %H:%M UTC")
    );
    s += "| | figure | measured | goal | goal met | notes |\n| --- | --- | --- | --- | --- | --- |\n";
    for f in &r.figures {
        let v = match f.value {
            Some(v) if v.abs() >= 100.0 => format!("{v:.0} {}", f.unit),
            Some(v) => format!("{v:.2} {}", f.unit),
            None => "not measured".into(),
        };
        let met = match f.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "—",
        };
        s += &format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            f.id,
            f.what,
            v,
            f.goal,
            met,
            f.notes.replace('|', "/")
        );
    }
    s
}

fn not_measured(id: &str, what: &str, goal: &str, part: &str) -> Figure {
    Figure {
        id: id.into(),
        what: what.into(),
        value: None,
        unit: String::new(),
        goal: goal.into(),
        met: None,
        notes: format!("not measured in this run (--only without {part})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fleets_split_into_pools_the_crd_accepts() {
        assert_eq!(fleet_pools("f", 150, u32::MAX), [("f".to_string(), 150)]);
        let p = fleet_pools("t", 10_000, u32::MAX);
        assert_eq!(p.len(), 10);
        assert!(p.iter().all(|(_, s)| *s == 1000));
        assert_eq!(p[9].0, "t-9");
        let p = fleet_pools("t", 2_500, 1000);
        assert_eq!(p.iter().map(|(_, s)| *s).collect::<Vec<_>>(), [834, 833, 833]);
        assert_eq!(fleet_pools("t", 5_000, 500).len(), 10);
    }

    #[test]
    fn the_quota_bound_is_the_tightest_limit() {
        let q = Quotas::default();
        // Default ACI windows: the 150th create waits for the second 5-minute window.
        assert_eq!(quota_bound(150, &q, 80, 500), Duration::from_secs(300));
        // Raised ACI and GitHub limits: ARM's write bucket (200 + 10/s) binds at 1,000.
        let raised = Quotas { creates_per_5min: 1000, creates_per_hour: 3000, ..Quotas::default() };
        assert_eq!(quota_bound(1000, &raised, 1000, 5000), Duration::from_secs(80));
        // GitHub.com's 500 content-creating requests per hour bind 1,000 JIT configs at an hour.
        assert_eq!(quota_bound(1000, &raised, 80, 500), Duration::from_secs(3600));
    }
}
