//! `aci-runner-devkit bench demo`: the workload, live view and summary of `scripts/demo`.
//!
//! The script starts the processes (control plane, `sim`, `run`); this command only talks to
//! them: it points the simulated GitHub's webhooks at the controller, waits for the demo pools,
//! enqueues jobs, draws the live view, deletes the pools and checks that nothing leaked.
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use kube::Client;
use kube::api::{Api, DeleteParams};
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::observe::{self, PoolRow, SimApi, SimEndpoints};
use crate::sim::github::EnqueueJobs;
use aci_runner_core::crd::RunnerPool;

/// Flags of `bench demo`.
#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// The JSON object `aci-runner-devkit sim` printed (a file).
    #[arg(long)]
    pub sim_endpoints: PathBuf,
    /// Namespace of the demo pools.
    #[arg(long, default_value = "aci-demo")]
    pub namespace: String,
    /// Names of the pools to wait for, drive and delete.
    #[arg(long, value_delimiter = ',', default_value = "demo-org,demo-repo")]
    pub pools: Vec<String>,
    /// The controller's `/metrics` URL.
    #[arg(long)]
    pub controller_metrics: String,
    /// The controller's webhook receiver URL (`.../webhooks/github`).
    #[arg(long)]
    pub webhook_url: String,
    /// File holding the webhook secret the controller checks.
    #[arg(long)]
    pub webhook_secret_file: PathBuf,
    /// Jobs to enqueue.
    #[arg(long, default_value_t = 60)]
    pub jobs: u32,
    /// Wall time over which the jobs are enqueued.
    #[arg(long, default_value = "120s", value_parser = aci_runner_core::crd::parse_duration)]
    pub over: Duration,
    /// Shortest and longest job duration (seconds; drawn uniformly per job).
    #[arg(long, default_value_t = 3.0)]
    pub job_min_secs: f64,
    #[arg(long, default_value_t = 10.0)]
    pub job_max_secs: f64,
    /// Share of the jobs for the repository pool (label `aci-repo`); the rest go to the org pool.
    #[arg(long, default_value_t = 0.25)]
    pub repo_share: f64,
    /// Seed of the workload.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Leave the pools in place (no deletion, no leak check).
    #[arg(long)]
    pub keep: bool,
    /// Write the summary as JSON to this file too.
    #[arg(long)]
    pub summary_json: Option<PathBuf>,
    /// Give up waiting for the jobs after this long past the workload.
    #[arg(long, default_value = "180s", value_parser = aci_runner_core::crd::parse_duration)]
    pub drain_timeout: Duration,
}

/// What the demo reports at the end (also its JSON form).
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub jobs_total: usize,
    pub jobs_done: usize,
    pub jobs_failed: usize,
    pub job_wait_p50_secs: f64,
    pub job_wait_p95_secs: f64,
    pub job_wait_max_secs: f64,
    pub runners_created: u64,
    pub runners_recycled: u64,
    pub gc_actions: u64,
    pub github_calls: u64,
    pub github_not_modified: u64,
    pub arm_calls: u64,
    pub arm_throttled_429: u64,
    pub github_rate_limited: u64,
    /// `None` with `--keep` (not checked).
    pub leaked_groups: Option<usize>,
    pub leaked_registrations: Option<usize>,
    pub wall_secs: f64,
}

impl Summary {
    pub fn table(&self) -> String {
        let leak =
            |v: Option<usize>| v.map(|n| n.to_string()).unwrap_or_else(|| "not checked (--keep)".into());
        let rows: Vec<(&str, String)> = vec![
            ("jobs done", format!("{}/{} ({} failed)", self.jobs_done, self.jobs_total, self.jobs_failed)),
            (
                "job wait p50 / p95 / max",
                format!(
                    "{:.1} s / {:.1} s / {:.1} s",
                    self.job_wait_p50_secs, self.job_wait_p95_secs, self.job_wait_max_secs
                ),
            ),
            ("runners created (container groups)", self.runners_created.to_string()),
            ("runners recycled (groups deleted)", self.runners_recycled.to_string()),
            ("GC actions", self.gc_actions.to_string()),
            (
                "GitHub API calls",
                format!("{} ({} answered 304)", self.github_calls, self.github_not_modified),
            ),
            ("ARM API calls", self.arm_calls.to_string()),
            (
                "429s (ARM) / rate-limited (GitHub)",
                format!("{} / {}", self.arm_throttled_429, self.github_rate_limited),
            ),
            ("leaked container groups", leak(self.leaked_groups)),
            ("leaked registrations", leak(self.leaked_registrations)),
            ("wall time", format!("{:.0} s", self.wall_secs)),
        ];
        let w = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(10);
        let v = rows.iter().map(|(_, v)| v.len()).max().unwrap_or(10);
        let mut out = format!("+-{}-+-{}-+\n", "-".repeat(w), "-".repeat(v));
        out += &format!("| {:w$} | {:v$} |\n", "summary", "");
        out += &format!("+-{}-+-{}-+\n", "-".repeat(w), "-".repeat(v));
        for (k, val) in rows {
            out += &format!("| {k:w$} | {val:>v$} |\n");
        }
        out += &format!("+-{}-+-{}-+\n", "-".repeat(w), "-".repeat(v));
        out
    }

    pub fn leaks(&self) -> usize {
        self.leaked_groups.unwrap_or(0) + self.leaked_registrations.unwrap_or(0)
    }
}

/// Everything the live view shows at one instant.
#[derive(Clone, Debug, Default)]
pub struct Frame {
    pub pools: Vec<PoolRow>,
    pub groups_running: usize,
    pub groups_other: usize,
    pub runners_online: usize,
    pub runners_busy: usize,
    pub jobs_total: usize,
    pub jobs_queued: usize,
    pub jobs_running: usize,
    pub jobs_done: usize,
    pub github_calls: u64,
    pub arm_calls: u64,
    pub limited: u64,
}

/// Collect one frame (errors show as empty parts: the view must keep going).
pub async fn frame(sim: &SimApi, client: &Client, ns: &str, job_ids: &[i64]) -> Frame {
    let mut f = Frame::default();
    if let Ok(p) = observe::pool_rows(client, ns).await {
        f.pools = p;
    }
    if let Ok(groups) = sim.groups().await {
        for g in groups.iter().filter(|g| g.pool().is_some_and(|(n, _)| n == ns)) {
            if g.state == "Running" {
                f.groups_running += 1;
            } else {
                f.groups_other += 1;
            }
        }
    }
    if let Ok(runners) = sim.runners().await {
        f.runners_online = runners.iter().filter(|r| r.online).count();
        f.runners_busy = runners.iter().filter(|r| r.busy).count();
    }
    if let Ok(jobs) = sim.jobs().await {
        let mine: Vec<_> = jobs.iter().filter(|j| job_ids.contains(&j.id)).collect();
        f.jobs_total = job_ids.len();
        f.jobs_queued = mine.iter().filter(|j| j.status == "queued").count();
        f.jobs_running = mine.iter().filter(|j| j.status == "in_progress").count();
        f.jobs_done = mine.iter().filter(|j| j.status == "completed").count();
    }
    if let Ok(c) = sim.github_calls().await {
        f.github_calls = c.total();
        if let Ok(rl) = sim.rate_limits().await {
            f.limited = rl.iter().map(|r| r.refused).sum();
        }
    }
    if let Ok(c) = sim.arm_calls().await {
        f.arm_calls = c.total();
        f.limited += c.throttled;
    }
    f
}

fn bar(done: usize, total: usize, width: usize) -> String {
    let filled = (done * width).checked_div(total).unwrap_or(0).min(width);
    format!("[{}{}]", "#".repeat(filled), "-".repeat(width - filled))
}

/// The live view's lines.
pub fn render(f: &Frame, elapsed: Duration, phase: &str, enqueued: usize, planned: usize) -> Vec<String> {
    let mut lines = vec![
        format!("aci-runner-controller demo · {phase} · {:>4.0} s elapsed", elapsed.as_secs_f64()),
        String::new(),
        format!(
            "{:<12} {:<26} {:>7} {:>5} {:>5} {:>5} {:>5} {:>6}  {}",
            "POOL", "SCOPE", "DESIRED", "PROV", "IDLE", "BUSY", "TERM", "FAILED", "READY"
        ),
    ];
    for p in &f.pools {
        lines.push(format!(
            "{:<12} {:<26} {:>7} {:>5} {:>5} {:>5} {:>5} {:>6}  {}{}",
            p.name,
            p.scope,
            p.desired,
            p.provisioning,
            p.idle,
            p.busy,
            p.terminating,
            p.failed,
            p.ready,
            p.stalled.as_ref().map(|r| format!(" (Stalled: {r})")).unwrap_or_default()
        ));
    }
    lines.push(String::new());
    lines.push(format!(
        "container groups: {} running, {} starting/stopping   registrations: {} online, {} busy",
        f.groups_running, f.groups_other, f.runners_online, f.runners_busy
    ));
    lines.push(format!(
        "jobs: {enqueued}/{planned} enqueued · {} queued · {} running · {} done",
        f.jobs_queued, f.jobs_running, f.jobs_done
    ));
    lines.push(format!(
        "API calls: GitHub {} · ARM {} · 429/rate-limited {}",
        f.github_calls, f.arm_calls, f.limited
    ));
    lines.push(format!("{} {}/{} jobs done", bar(f.jobs_done, planned, 40), f.jobs_done, planned));
    lines
}

/// Draws frames: in place on a terminal, one line every few seconds otherwise.
pub struct View {
    tty: bool,
    drawn: usize,
    last_plain: Option<Instant>,
}

impl Default for View {
    fn default() -> Self {
        Self::new()
    }
}

impl View {
    pub fn new() -> Self {
        Self { tty: std::io::stdout().is_terminal(), drawn: 0, last_plain: None }
    }

    pub fn draw(&mut self, lines: &[String], f: &Frame, force: bool) {
        let mut out = std::io::stdout().lock();
        if self.tty {
            if self.drawn > 0 {
                let _ = write!(out, "\x1b[{}A\x1b[J", self.drawn);
            }
            for l in lines {
                let _ = writeln!(out, "{l}");
            }
            self.drawn = lines.len();
        } else if force || self.last_plain.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) {
            self.last_plain = Some(Instant::now());
            let pools: Vec<String> = f
                .pools
                .iter()
                .map(|p| {
                    format!(
                        "{} idle={} busy={} prov={} desired={}",
                        p.name, p.idle, p.busy, p.provisioning, p.desired
                    )
                })
                .collect();
            let _ = writeln!(
                out,
                "{} | {} | jobs queued={} running={} done={}/{} | calls github={} arm={} limited={}",
                lines.first().map(String::as_str).unwrap_or(""),
                pools.join("; "),
                f.jobs_queued,
                f.jobs_running,
                f.jobs_done,
                f.jobs_total,
                f.github_calls,
                f.arm_calls,
                f.limited
            );
        }
        let _ = out.flush();
    }

    /// Stop redrawing in place (the next output starts below the view).
    pub fn detach(&mut self) {
        self.drawn = 0;
    }
}

/// One planned job.
struct Planned {
    at: Duration,
    repo_pool: bool,
    duration_secs: f64,
}

fn plan_jobs(args: &DemoArgs) -> Vec<Planned> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
    let n = args.jobs.max(1) as usize;
    let (lo, hi) = (args.job_min_secs.max(0.1), args.job_max_secs.max(args.job_min_secs.max(0.1)));
    let mut v: Vec<Planned> = (0..args.jobs as usize)
        .map(|i| {
            // Bursty arrivals: the slot of job i, pulled toward the start of a burst every fifth.
            let base = args.over.as_secs_f64() * i as f64 / n as f64;
            let burst = (i % 5) as f64 * 0.15 * args.over.as_secs_f64() / n as f64;
            Planned {
                at: Duration::from_secs_f64((base - burst).max(0.0)),
                repo_pool: rng.r#gen::<f64>() < args.repo_share,
                duration_secs: if hi > lo { rng.gen_range(lo..hi) } else { lo },
            }
        })
        .collect();
    v.sort_by_key(|a| a.at);
    v
}

async fn enqueue(sim: &SimApi, p: &Planned) -> anyhow::Result<Vec<i64>> {
    let (repo, label) =
        if p.repo_pool { ("octo-org/octo-repo", "aci-repo") } else { ("octo-org/other-repo", "aci") };
    let req = EnqueueJobs {
        repo: repo.into(),
        labels: vec!["self-hosted".into(), label.into()],
        duration_secs: p.duration_secs,
        count: 1,
        workflow_name: "demo".into(),
        job_name: if p.repo_pool { "repo-build".into() } else { "org-build".into() },
    };
    Ok(sim.enqueue(&req).await?.iter().map(|j| j.id).collect())
}

/// Run the demo's workload, view and summary. Errors (and leaks) make the command fail.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let text = std::fs::read_to_string(&args.sim_endpoints)
        .with_context(|| format!("reading {}", args.sim_endpoints.display()))?;
    let ep: SimEndpoints = serde_json::from_str(text.trim()).context("parsing the simulator's endpoints")?;
    let sim = SimApi::new(&ep.arm_url, &ep.github_url);
    let secret = std::fs::read_to_string(&args.webhook_secret_file)
        .with_context(|| format!("reading {}", args.webhook_secret_file.display()))?;
    sim.set_webhook(&args.webhook_url, secret.trim_end_matches(['\n', '\r'])).await?;
    let client = Client::try_default().await.context("connecting to the Kubernetes API (KUBECONFIG)")?;
    let pools: Api<RunnerPool> = Api::namespaced(client.clone(), &args.namespace);
    let mut view = View::new();
    let plan = plan_jobs(&args);
    let planned = plan.len();

    // 1. The pools become Ready (their idle runners are online).
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let f = frame(&sim, &client, &args.namespace, &[]).await;
        view.draw(
            &render(&f, started.elapsed(), "waiting for the pools' idle runners", 0, planned),
            &f,
            false,
        );
        let ready = args.pools.iter().all(|n| f.pools.iter().any(|p| &p.name == n && p.ready == "True"));
        if ready {
            break;
        }
        if Instant::now() > deadline {
            view.detach();
            anyhow::bail!("the pools {:?} did not become Ready within 120 s", args.pools);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // 2. The workload, then the drain.
    let workload_start = Instant::now();
    let mut job_ids: Vec<i64> = Vec::new();
    let mut next = 0;
    let drain_deadline = workload_start + args.over + args.drain_timeout;
    loop {
        while next < plan.len() && plan[next].at <= workload_start.elapsed() {
            job_ids.extend(enqueue(&sim, &plan[next]).await?);
            next += 1;
        }
        let f = frame(&sim, &client, &args.namespace, &job_ids).await;
        let phase = if next < plan.len() { "running the workload" } else { "draining" };
        view.draw(&render(&f, started.elapsed(), phase, next, planned), &f, false);
        if next == plan.len() && f.jobs_done >= job_ids.len() {
            view.draw(&render(&f, started.elapsed(), "workload done", next, planned), &f, true);
            break;
        }
        if Instant::now() > drain_deadline {
            view.detach();
            eprintln!("the jobs did not finish within {:?} after the workload", args.drain_timeout);
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    view.detach();

    // 3. Figures before the cleanup.
    let mut s = Summary::default();
    let jobs = sim.jobs().await?;
    let mine: Vec<_> = jobs.iter().filter(|j| job_ids.contains(&j.id)).collect();
    s.jobs_total = mine.len();
    s.jobs_done = mine.iter().filter(|j| j.status == "completed").count();
    s.jobs_failed = mine.iter().filter(|j| j.conclusion.as_deref().is_some_and(|c| c != "success")).count();
    let mut waits: Vec<f64> = mine
        .iter()
        .filter_map(|j| j.started_at.map(|st| (st - j.created_at).num_milliseconds() as f64 / 1000.0))
        .collect();
    waits.sort_by(|a, b| a.total_cmp(b));
    s.job_wait_p50_secs = observe::percentile(&waits, 50.0);
    s.job_wait_p95_secs = observe::percentile(&waits, 95.0);
    s.job_wait_max_secs = waits.last().copied().unwrap_or(0.0);
    let arm = sim.arm_calls().await?;
    s.runners_created = arm.creates_accepted;
    s.runners_recycled = arm.count("delete", true);
    let metrics = observe::controller_metrics(&args.controller_metrics).await;
    // Garbage collection (docs/operations.md): every action with reason GarbageCollected or
    // Orphaned, plus the releases of the orphan deletion policy.
    let actions = "aci_runner_controller_actions_total";
    s.gc_actions = (observe::metric_sum(&metrics, actions, &[("reason", "GarbageCollected")])
        + observe::metric_sum(&metrics, actions, &[("reason", "Orphaned")])
        + observe::metric_sum(&metrics, actions, &[("action", "release_group")])) as u64;

    // 4. Delete the pools and check that everything is gone.
    if !args.keep {
        println!("deleting the pools {:?} and waiting for the cleanup ...", args.pools);
        for n in &args.pools {
            if let Err(e) = pools.delete(n, &DeleteParams::default()).await {
                eprintln!("delete pool {n}: {e}");
            }
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let (g, r) = leftovers(&sim, &args.namespace, &args.pools).await?;
            let remaining = pools_left(&pools, &args.pools).await;
            if (g == 0 && r == 0 && remaining == 0) || Instant::now() > deadline {
                s.leaked_groups = Some(g);
                s.leaked_registrations = Some(r);
                if remaining > 0 {
                    eprintln!("{remaining} pool(s) still present after 120 s (finalizer not removed)");
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let gh = sim.github_calls().await?;
    s.github_calls = gh.total();
    s.github_not_modified = gh.with_status("304");
    s.github_rate_limited = sim.rate_limits().await?.iter().map(|r| r.refused).sum();
    let arm = sim.arm_calls().await?;
    s.arm_calls = arm.total();
    s.arm_throttled_429 = arm.throttled;
    s.wall_secs = started.elapsed().as_secs_f64();

    println!();
    print!("{}", s.table());
    if let Some(p) = &args.summary_json {
        std::fs::write(p, serde_json::to_string_pretty(&s)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    if s.leaks() > 0 {
        anyhow::bail!(
            "leaked {} container group(s) and {} registration(s)",
            s.leaked_groups.unwrap_or(0),
            s.leaked_registrations.unwrap_or(0)
        );
    }
    if s.jobs_done < planned {
        anyhow::bail!("only {}/{planned} jobs completed", s.jobs_done);
    }
    Ok(())
}

async fn pools_left(api: &Api<RunnerPool>, names: &[String]) -> usize {
    let mut n = 0;
    for name in names {
        if !matches!(api.get_opt(name).await, Ok(None)) {
            n += 1;
        }
    }
    n
}

/// Container groups tagged with one of the pools, and registrations named after one of them.
pub async fn leftovers(sim: &SimApi, ns: &str, pools: &[String]) -> anyhow::Result<(usize, usize)> {
    let groups = sim
        .groups()
        .await?
        .into_iter()
        .filter(|g| g.managed() && g.pool().is_some_and(|(n, p)| n == ns && pools.iter().any(|x| x == p)))
        .count();
    let runners = sim
        .runners()
        .await?
        .into_iter()
        .filter(|r| pools.iter().any(|p| r.name.starts_with(&format!("{p}-"))))
        .count();
    Ok((groups, runners))
}
