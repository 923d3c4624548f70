//! `aci-runner-devkit bench soak --seeds N`: randomized fault schedules against the
//! controller process, then invariants after settling.
//!
//! Per seed: a fresh namespace on the shared local control plane, a fresh simulator, the
//! controller as its own process, an org pool and a repo pool, a small job workload. While the
//! jobs run, the seed's faults are active — every fault the simulators offer, each drawn per seed
//! (see [`Schedule::draw`]): ARM throttling, 5xx and latency per operation, exhausted regional
//! capacity (the org pool may spill to a fallback location), an inaccessible runner image, slow
//! provisioning, RBAC denials, lowered quotas; GitHub 5xx, secondary limits, 409 and 422 per
//! operation, hostile GitHub answers (invalid JSON, oversized bodies, absurd headers), dropped
//! webhooks, runners crashing before registration or dying under a job, a skewed GitHub clock; containers crashing before registration; another install's running
//! groups and registrations with the same pool names — and the controller may be SIGKILLed and
//! restarted, the kube-apiserver and etcd restarted. Then the faults stop (quotas
//! restored), the jobs must finish, the pools must be Ready and not Stalled, the pools are
//! deleted and the invariants are checked.
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
use crate::sim::arm::{BucketSpec, DeniedAction, FaultConfig, OpFaults, Quotas};
use crate::sim::github::{EnqueueJobs, GhOpFaults, GithubFaults};
use crate::testing::control_plane::{ControlPlane, install_crd, test_namespace};
use crate::testing::harness::{apply_app_secret, apply_pool, fast_sim_options, pool_manifest};
use aci_runner_core::crd::RunnerPool;

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
    /// How long the faults stay on (the jobs are enqueued over this window; seeds drawn with a
    /// long outage keep the faults on several times longer).
    #[arg(long, default_value = "8s", value_parser = aci_runner_core::crd::parse_duration)]
    pub fault_window: Duration,
    /// Where the per-seed logs, the JSON result and the report go.
    #[arg(long, default_value = "target/soak")]
    pub out: PathBuf,
    /// `RUST_LOG` of the controller processes (e.g. `debug,kube=info,hyper=info` to replay a
    /// failing seed with the controller's decisions in its log).
    #[arg(long, default_value = "info")]
    pub controller_log: String,
    /// Keep the controller logs of passing seeds too.
    #[arg(long)]
    pub keep_logs: bool,
    /// Restart the kube-apiserver (same flags, etcd keeps the state) at random times, about
    /// this far apart; `0s` = never.
    #[arg(long, default_value = "40s", value_parser = aci_runner_core::crd::parse_duration)]
    pub apiserver_restart_every: Duration,
    /// Restart etcd (same flags and data directory; the kube-apiserver reconnects) at random
    /// times, about this far apart; `0s` = never.
    #[arg(long, default_value = "60s", value_parser = aci_runner_core::crd::parse_duration)]
    pub etcd_restart_every: Duration,
}

/// ARM operations of the simulator's fault table (`FaultConfig::ops`). The controller calls
/// `create`, `get`, `delete`, `list`, `listAll`, `update` (orphan release) and `token`; faults on
/// `stop`, `start`, `restart` and `operation` are drawn too, and stay unused unless it starts to.
pub const ARM_OPS: &[&str] = &[
    "create",
    "update",
    "get",
    "delete",
    "list",
    "listAll",
    "stop",
    "start",
    "restart",
    "operation",
    "token",
];

/// GitHub operations (of [`crate::sim::github::OPERATIONS`]) that the controller calls: faults
/// on the others (`get_runner`, `create_runner_group`, `runner_deprecation`, `list_runs`,
/// `list_jobs`, `rate_limit`) could never fire. `registration_token` is called by the repo pool
/// in seeds drawn with token registration, `runner_groups` by the org pool in seeds drawn with
/// a runner group.
pub const GITHUB_OPS: &[&str] =
    &["access_token", "list_runners", "delete_runner", "jitconfig", "registration_token", "runner_groups"];

/// The org pool's primary location and its fallback (capacity faults hit the primary only).
const ORG_LOCATION: &str = "westeurope";
const ORG_FALLBACK: &str = "northeurope";
/// The repo pool's location (its own region: capacity faults of the org pool's region, and
/// per-region quotas, do not block it for the planner's location cooldown).
const REPO_LOCATION: &str = "eastus";

/// The controller's App JWT: `iat` 60 s in the past, `exp` 540 s ahead (src/github/auth.rs).
const JWT_IAT_BACKDATE: i64 = 60;
const JWT_EXP_AHEAD: i64 = 540;

/// The GitHub clock skews the controller's App JWTs survive against a simulator that allows
/// `leeway` seconds: `[-(backdate + leeway), exp_ahead + leeway)`.
pub fn skew_tolerated(skew: i64, leeway: i64) -> bool {
    skew >= -(JWT_IAT_BACKDATE + leeway) && skew < JWT_EXP_AHEAD + leeway
}

/// The faults of one seed.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Schedule {
    /// ARM faults during the window (`denied_actions` name the simulator's default client id;
    /// the run fills in the actual one).
    pub arm: FaultConfig,
    pub github: GithubFaults,
    /// ARM quotas in force during the window; the simulator's own are restored after it.
    pub quotas: Option<Quotas>,
    /// How the two pools are shaped.
    pub pools: PoolShape,
    /// The faults stay on this many times `--fault-window` (long outages reach Stalled).
    pub outage_factor: u32,
    /// The controller SIGKILLed while the workload runs, and restarted.
    pub kill: Option<Kill>,
    /// Another install (another cluster's controller, not running) left a running group and its
    /// online registration per pool in the same subscription, resource group and org, with the
    /// same pool namespace, name, labels and runner-name shape: none may be touched.
    pub second_install: bool,
}

/// The options of the soak's org and repo pools a seed draws.
#[derive(Clone, Copy, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolShape {
    /// The org pool has `fallbackLocations: [northeurope]`.
    pub fallback_location: bool,
    /// The org pool's runners join the runner group `aci` (looked up by name on GitHub).
    pub runner_group: bool,
    /// The repo pool registers with registration tokens (`Some(ephemeral)`) instead of JIT.
    pub token_mode: Option<bool>,
}

/// SIGKILL the controller `after` the workload starts, then restart it `down_for` later.
#[derive(Clone, Copy, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Kill {
    pub after: Duration,
    pub down_for: Duration,
}

fn pct(p: f64) -> String {
    format!("{:.0}%", p * 100.0)
}

/// Gives each of `ops`, with an even chance, the faults `draw` makes for it (drawn from `rng`
/// right after the coin, in the order of `ops`).
fn draw_op_faults<F>(
    rng: &mut rand::rngs::StdRng,
    ops: &[&str],
    into: &mut std::collections::BTreeMap<String, F>,
    mut draw: impl FnMut(&mut rand::rngs::StdRng, &str) -> F,
) {
    for op in ops {
        if rng.gen_bool(0.5) {
            into.insert(op.to_string(), draw(rng, op));
        }
    }
}

impl Schedule {
    /// Draw a schedule from `seed`. Every simulator fault has a fair chance per seed, so a few
    /// hundred seeds cover each of them many times, and in many combinations.
    pub fn draw(seed: u64) -> Self {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut arm = FaultConfig { seed, ..FaultConfig::default() };
        draw_op_faults(&mut rng, ARM_OPS, &mut arm.ops, |rng, op| {
            let mut f = OpFaults {
                throttle: rng.gen_range(0.0..0.15),
                internal_error: rng.gen_range(0.0..0.1),
                unavailable: rng.gen_range(0.0..0.1),
                latency_ms: 0,
            };
            // The token endpoint answers without the per-operation latency.
            if op != "token" && rng.gen_bool(0.3) {
                f.latency_ms = rng.gen_range(50..1_500);
            }
            f
        });
        if rng.gen_bool(0.4) {
            arm.crash_before_registration = rng.gen_range(0.0..0.25);
        }
        let fallback_location = rng.gen_bool(0.5);
        if fallback_location && rng.gen_bool(0.6) {
            // The primary region is (nearly) full: the org pool spills to its fallback.
            arm.capacity.insert(ORG_LOCATION.to_string(), rng.gen_range(0..=2));
        }
        let image_revoked = rng.gen_bool(0.25);
        if image_revoked {
            // Registry credentials revoked for the window: the image cannot be pulled.
            arm.inaccessible_images.insert(aci_runner_core::crd::DEFAULT_RUNNER_IMAGE.to_string());
        }
        if rng.gen_bool(0.3) {
            let loc = if rng.gen_bool(0.5) { ORG_LOCATION } else { REPO_LOCATION };
            // Up to beyond the pools' registrationTimeout (20 s).
            arm.slow_provisioning_ms.insert(loc.to_string(), rng.gen_range(1_000..30_000));
        }
        if rng.gen_bool(0.2) {
            let action = ["write", "delete", "read"][rng.gen_range(0..3)];
            arm.denied_actions.push(DeniedAction {
                client_id: crate::sim::arm::ArmSimConfig::default().client_id,
                action: format!("Microsoft.ContainerInstance/containerGroups/{action}"),
            });
        }
        let quotas = rng.gen_bool(0.3).then(|| {
            let mut q = Quotas::default();
            match rng.gen_range(0..3) {
                // The pools run 1-CPU runners, one idle each; a job needs a second group.
                0 => q.container_groups = rng.gen_range(1..=2),
                1 => q.cores = f64::from(rng.gen_range(1u32..=2)),
                _ => {
                    q.reads = BucketSpec {
                        capacity: rng.gen_range(3.0..10.0),
                        refill_per_sec: rng.gen_range(1.0..4.0),
                    };
                    q.writes = BucketSpec {
                        capacity: rng.gen_range(2.0..6.0),
                        refill_per_sec: rng.gen_range(0.5..2.0),
                    };
                }
            }
            q
        });

        let mut github = GithubFaults { seed, ..GithubFaults::default() };
        draw_op_faults(&mut rng, GITHUB_OPS, &mut github.ops, |rng, _| {
            let mut f = GhOpFaults {
                server_error: rng.gen_range(0.0..0.12),
                rate_limited: rng.gen_range(0.0..0.05),
                conflict: 0.0,
                unprocessable: 0.0,
                hostile: 0.0,
            };
            if rng.gen_bool(0.4) {
                f.conflict = rng.gen_range(0.0..0.08);
            }
            if rng.gen_bool(0.4) {
                f.unprocessable = rng.gen_range(0.0..0.08);
            }
            f
        });
        if rng.gen_bool(0.5) {
            github.webhook_drop_rate = rng.gen_range(0.0..0.4);
        }
        if rng.gen_bool(0.4) {
            github.crash_before_registration = rng.gen_range(0.0..0.25);
        }
        if rng.gen_bool(0.3) {
            github.runner_death_mid_job = rng.gen_range(0.05..0.3);
        }
        if rng.gen_bool(0.3) {
            let leeway = crate::sim::github::GithubSimConfig::default().jwt_leeway_secs;
            github.clock_skew_secs = if rng.gen_bool(0.75) {
                // Within what the JWT's back-dated `iat` and short `exp` absorb.
                rng.gen_range(-(JWT_IAT_BACKDATE + leeway - 20)..JWT_EXP_AHEAD + leeway - 100)
            } else if rng.gen_bool(0.5) {
                rng.gen_range(-900..-(JWT_IAT_BACKDATE + leeway + 30))
            } else {
                rng.gen_range(JWT_EXP_AHEAD + leeway + 30..1_800)
            };
        }
        let runner_group = rng.gen_bool(0.5);
        let token_mode = rng.gen_bool(0.4).then(|| rng.gen_bool(0.5));
        // Only a long outage lets a create failure repeat `stallAfter` (3) times under the
        // planner's back-off (10, 20, 40 s): the revoked image gets one more often, so that the
        // soak sees pools Stalled InvalidImage recover once the image is accessible again.
        let outage_factor = if rng.gen_bool(if image_revoked { 0.5 } else { 0.2 }) { 5 } else { 1 };
        let kill_after = rng.gen_bool(0.7).then(|| Duration::from_millis(rng.gen_range(1_000..7_000)));
        let down_for = Duration::from_millis(rng.gen_range(200..3_000));
        // Drawn last: the draws above stay what they were for every seed.
        let second_install = rng.gen_bool(0.4);
        // Hostile answers (invalid JSON, oversized bodies, absurd headers) on every GitHub
        // operation the controller calls, drawn after everything else for the same reason.
        if rng.gen_bool(0.4) {
            let p = rng.gen_range(0.01..0.08);
            for op in GITHUB_OPS {
                github.ops.entry(op.to_string()).or_default().hostile = p;
            }
        }
        Self {
            arm,
            github,
            quotas,
            pools: PoolShape { fallback_location, runner_group, token_mode },
            outage_factor,
            kill: kill_after.map(|after| Kill { after, down_for }),
            second_install,
        }
    }

    /// Is the GitHub clock skewed beyond what the controller's App JWTs tolerate?
    pub fn skew_beyond_tolerance(&self) -> bool {
        let leeway = crate::sim::github::GithubSimConfig::default().jwt_leeway_secs;
        !skew_tolerated(self.github.clock_skew_secs, leeway)
    }

    /// Do container groups get created in a region with a lowered group or core quota?
    fn count_quota(&self) -> bool {
        let d = Quotas::default();
        self.quotas.as_ref().is_some_and(|q| q.container_groups < d.container_groups || q.cores < d.cores)
    }

    /// Stalled reasons that the injected faults explain, each with the faults that explain it
    /// (src/plan: `stall()` reports list authorization errors, repeated create/runner failures
    /// past `stallAfter` — auth ones at once — and quota waits).
    pub fn explained_reasons(&self) -> BTreeSet<&'static str> {
        let mut r = BTreeSet::new();
        let a = &self.arm;
        let g = &self.github;
        let unprocessable = g.ops.values().any(|f| f.unprocessable > 0.0);
        // An oversized answer is not retried as is: it counts as an invalid request.
        let hostile = g.ops.values().any(|f| f.hostile > 0.0);
        // A skewed GitHub clock rejects the App JWT: installation tokens cannot be minted.
        if self.skew_beyond_tolerance() {
            r.insert("AuthFailed");
        }
        // RBAC: ARM's 403 names the missing action.
        if !a.denied_actions.is_empty() {
            r.insert("MissingPermission");
        }
        if !a.inaccessible_images.is_empty() {
            r.insert("InvalidImage");
        }
        // GitHub's 422 on a create's registration (jitconfig, registration token, runner group,
        // installation token) is an invalid request.
        if unprocessable || hostile {
            r.insert("InvalidRequest");
        }
        if self.count_quota() {
            r.extend(["QuotaExceeded", "ProvisioningFailed"]);
        }
        if !a.capacity.is_empty() {
            r.insert("ProvisioningFailed");
        }
        if a.crash_before_registration > 0.0 || g.crash_before_registration > 0.0 {
            r.extend(["ContainerCrashed", "RegistrationTimeout", "ProvisioningFailed"]);
        }
        // A container whose runner died under a job exits 1; after a controller restart (no
        // memory that it was online) it counts as a crash before registration.
        if g.runner_death_mid_job > 0.0 {
            r.insert("ContainerCrashed");
        }
        // Provisioning slower than registrationTimeout.
        if a.slow_provisioning_ms.values().any(|ms| *ms >= 15_000) {
            r.insert("RegistrationTimeout");
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
    #[serde(flatten)]
    pub outcome: Outcome,
    #[serde(flatten)]
    pub restarts: SeedRestarts,
    pub stalled_reasons: BTreeSet<String>,
    pub unexplained_stalled: BTreeSet<String>,
    pub injected: Vec<String>,
    /// The kinds of fault injected (see [`fault_kinds`]).
    pub fault_kinds: BTreeSet<String>,
    pub secs: f64,
}

/// How often the controller started and the shared control plane restarted while a seed ran.
#[derive(Clone, Copy, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SeedRestarts {
    pub controller_starts: u32,
    /// kube-apiserver restarts while this seed ran.
    pub apiserver_restarts: usize,
    /// etcd restarts while this seed ran.
    pub etcd_restarts: usize,
    /// Seconds of the settle window during which a control-plane restart was in progress (the
    /// window is extended by them).
    pub settle_outage_secs: f64,
    /// The same for the pools' cleanup window.
    pub cleanup_outage_secs: f64,
}

/// What went right and wrong, of one seed or summed over all of them.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    pub jobs_completed: usize,
    /// Failed jobs whose runner the controller removed (a failed job the simulator's
    /// `runnerDeathMidJob` fault killed is counted in `runner_deaths` instead).
    pub busy_runners_killed: usize,
    /// Jobs failed by the `runnerDeathMidJob` fault.
    pub runner_deaths: usize,
    pub leaked_groups: usize,
    pub leaked_registrations: usize,
    pub panics: usize,
    /// Delete calls on another install's groups or registrations ([`Schedule::second_install`]).
    pub other_install_touched: usize,
}

impl std::ops::AddAssign<&Outcome> for Outcome {
    fn add_assign(&mut self, o: &Outcome) {
        self.jobs_completed += o.jobs_completed;
        self.busy_runners_killed += o.busy_runners_killed;
        self.runner_deaths += o.runner_deaths;
        self.leaked_groups += o.leaked_groups;
        self.leaked_registrations += o.leaked_registrations;
        self.panics += o.panics;
        self.other_install_touched += o.other_install_touched;
    }
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
    #[serde(flatten)]
    pub outcome: Outcome,
    pub controller_kills: usize,
    pub apiserver_restarts: usize,
    /// The kube-apiserver was found dead without a planned restart (started again at once).
    pub apiserver_unexpected_exits: usize,
    pub etcd_restarts: usize,
    pub etcd_unexpected_exits: usize,
    pub unexplained_stalled: usize,
    /// Seeds in which each kind of fault was injected (first word(s) of `describe`).
    pub fault_coverage: std::collections::BTreeMap<String, usize>,
    pub wall_secs: f64,
}

/// One line per injected fault; the part before `:` names the kind (coverage counts).
pub fn describe(s: &Schedule) -> Vec<String> {
    let mut v = Vec::new();
    for (op, f) in &s.arm.ops {
        let mut line = format!(
            "arm {op}: 429 {} 500 {} 503 {}",
            pct(f.throttle),
            pct(f.internal_error),
            pct(f.unavailable)
        );
        if f.latency_ms > 0 {
            line += &format!(" latency {} ms", f.latency_ms);
        }
        v.push(line);
    }
    if s.arm.crash_before_registration > 0.0 {
        v.push(format!("aci container crash: {}", pct(s.arm.crash_before_registration)));
    }
    for (loc, cap) in &s.arm.capacity {
        v.push(format!("aci capacity: {loc} holds {cap} group(s)"));
    }
    for image in &s.arm.inaccessible_images {
        v.push(format!("aci inaccessible image: {image}"));
    }
    for (loc, ms) in &s.arm.slow_provisioning_ms {
        v.push(format!("aci slow provisioning: {loc} +{:.1} s", *ms as f64 / 1000.0));
    }
    for d in &s.arm.denied_actions {
        v.push(format!("arm denied action: {}", d.action));
    }
    if let Some(q) = &s.quotas {
        let d = Quotas::default();
        let mut parts = Vec::new();
        if q.container_groups != d.container_groups {
            parts.push(format!("{} container groups per region", q.container_groups));
        }
        if q.cores != d.cores {
            parts.push(format!("{} cores per region", q.cores));
        }
        if q.reads != d.reads {
            parts.push(format!("reads bucket {:.0} +{:.1}/s", q.reads.capacity, q.reads.refill_per_sec));
        }
        if q.writes != d.writes {
            parts.push(format!("writes bucket {:.0} +{:.1}/s", q.writes.capacity, q.writes.refill_per_sec));
        }
        v.push(format!("arm quota lowered: {}", parts.join(", ")));
    }
    for (op, f) in &s.github.ops {
        let mut line = format!("github {op}: 5xx {} limited {}", pct(f.server_error), pct(f.rate_limited));
        if f.conflict > 0.0 {
            line += &format!(" 409 {}", pct(f.conflict));
        }
        if f.unprocessable > 0.0 {
            line += &format!(" 422 {}", pct(f.unprocessable));
        }
        v.push(line);
    }
    if s.github.webhook_drop_rate > 0.0 {
        v.push(format!("webhook drop: {}", pct(s.github.webhook_drop_rate)));
    }
    if s.github.crash_before_registration > 0.0 {
        v.push(format!("runner crash before registration: {}", pct(s.github.crash_before_registration)));
    }
    if s.github.runner_death_mid_job > 0.0 {
        v.push(format!("runner death mid-job: {}", pct(s.github.runner_death_mid_job)));
    }
    if s.github.clock_skew_secs != 0 {
        let beyond = if s.skew_beyond_tolerance() { "beyond" } else { "within" };
        v.push(format!("github clock skew: {:+} s ({beyond} the JWT's tolerance)", s.github.clock_skew_secs));
    }
    if s.pools.fallback_location {
        v.push(format!("org pool fallback: {ORG_LOCATION} -> {ORG_FALLBACK}"));
    }
    if s.pools.runner_group {
        v.push("org pool runner group: aci".into());
    }
    if let Some(eph) = s.pools.token_mode {
        v.push(format!("repo pool token registration: ephemeral {eph}"));
    }
    if s.outage_factor > 1 {
        v.push(format!("long outage: faults on {}x the window", s.outage_factor));
    }
    if let Some(k) = s.kill {
        v.push(format!(
            "controller SIGKILL: at {:.1} s, down {:.1} s",
            k.after.as_secs_f64(),
            k.down_for.as_secs_f64()
        ));
    }
    if s.second_install {
        v.push("second install: a running group and registration of another install per pool".into());
    }
    v
}

/// The kinds of fault a schedule injects (for the coverage table): one entry per kind, whatever
/// the operation or rate.
pub fn fault_kinds(s: &Schedule) -> BTreeSet<String> {
    let mut k = BTreeSet::new();
    let a = &s.arm;
    let g = &s.github;
    for (op, f) in &a.ops {
        if f.throttle > 0.0 || f.internal_error > 0.0 || f.unavailable > 0.0 {
            k.insert(format!("arm {op} 429/500/503"));
        }
        if f.latency_ms > 0 {
            k.insert(format!("arm {op} latency"));
        }
    }
    let mut flag = |on: bool, name: &str| {
        if on {
            k.insert(name.to_string());
        }
    };
    flag(a.crash_before_registration > 0.0, "aci container crash before registration");
    flag(!a.capacity.is_empty(), "aci capacity exhausted");
    flag(!a.inaccessible_images.is_empty(), "aci inaccessible image");
    flag(!a.slow_provisioning_ms.is_empty(), "aci slow provisioning");
    flag(!a.denied_actions.is_empty(), "arm denied action");
    flag(s.count_quota(), "arm quota lowered (groups/cores)");
    let d = Quotas::default();
    flag(
        s.quotas.as_ref().is_some_and(|q| q.reads != d.reads || q.writes != d.writes),
        "arm quota lowered (request buckets)",
    );
    for (op, f) in &g.ops {
        for (on, what) in [
            (f.server_error > 0.0, "5xx"),
            (f.rate_limited > 0.0, "secondary limit"),
            (f.conflict > 0.0, "409"),
            (f.unprocessable > 0.0, "422"),
            (f.hostile > 0.0, "hostile answers"),
        ] {
            if on {
                k.insert(format!("github {op} {what}"));
            }
        }
    }
    let mut flag = |on: bool, name: &str| {
        if on {
            k.insert(name.to_string());
        }
    };
    flag(g.webhook_drop_rate > 0.0, "github webhook drops");
    flag(g.crash_before_registration > 0.0, "github runner crash before registration");
    flag(g.runner_death_mid_job > 0.0, "github runner death mid-job");
    flag(g.clock_skew_secs != 0 && !s.skew_beyond_tolerance(), "github clock skew (tolerated)");
    flag(s.skew_beyond_tolerance(), "github clock skew (beyond tolerance)");
    flag(s.outage_factor > 1, "long outage");
    flag(s.kill.is_some(), "controller SIGKILL + restart");
    flag(s.second_install, "second install's runners present");
    k
}

/// The install id of the [`Schedule::second_install`] leftovers.
const OTHER_INSTALL: &str = "soak-other-install";

/// What another install left in the simulators: group names and registration ids.
#[derive(Default)]
struct OtherInstall {
    groups: BTreeSet<String>,
    runners: BTreeSet<i64>,
}

/// Seed, for each pool manifest, one running container group of another install (same pool
/// namespace and name tags, a pool uid of another cluster, `OTHER_INSTALL` as install id) and
/// its online JIT registration (same labels and name shape, that install's owner label).
fn seed_other_install(
    sim: &crate::sim::Simulator,
    ns: &str,
    manifests: &[&serde_json::Value],
) -> anyhow::Result<OtherInstall> {
    use aci_runner_controller::azure::GroupOwner;
    use aci_runner_core::plan::{install, names};
    let other = install::InstallId::parse(OTHER_INSTALL).map_err(|e| anyhow::anyhow!(e))?;
    let mut out = OtherInstall::default();
    let mut rng = rand::thread_rng();
    for m in manifests {
        let name = m["metadata"]["name"].as_str().context("pool manifest without a name")?;
        let spec: aci_runner_core::crd::RunnerPoolSpec = serde_json::from_value(m["spec"].clone())?;
        let uid = uuid::Uuid::new_v4().to_string();
        let owner = GroupOwner {
            namespace: ns.to_string(),
            name: name.to_string(),
            uid: uid.clone(),
            install_id: OTHER_INSTALL.into(),
            spec_hash: "other".into(),
        };
        let scope = match (&spec.github.organization, &spec.github.repository) {
            (Some(org), _) => crate::sim::github::ScopeKey::Org(org.clone()),
            (None, Some(repo)) => crate::sim::github::ScopeKey::Repo(repo.clone()),
            _ => anyhow::bail!("pool {name} has no organization or repository"),
        };
        let mut labels = aci_runner_core::plan::demand::jit_labels(&spec);
        labels.push(install::owner_label(&other, &uid));
        let runner = format!("{}-{}", names::runner_name_prefix(name), names::random_suffix(&mut rng));
        let id = super::seed_runner(sim, &spec, &owner, &scope, &runner, &labels)?;
        out.groups.insert(runner);
        out.runners.insert(id);
    }
    Ok(out)
}

/// The calls of this seed's controller that deleted (or tried to) another install's group or
/// registration.
fn other_install_touched(sim: &crate::sim::Simulator, other: &OtherInstall) -> Vec<String> {
    let mut v: Vec<String> = sim
        .arm
        .calls()
        .iter()
        .filter(|c| c.method == "DELETE")
        .filter(|c| {
            c.path
                .split("/containerGroups/")
                .nth(1)
                .and_then(|r| r.split(['?', '/']).next())
                .is_some_and(|g| other.groups.contains(g))
        })
        .map(|c| format!("ARM DELETE {}", c.path))
        .collect();
    v.extend(
        sim.github
            .calls()
            .iter()
            .filter(|c| c.op == "delete_runner")
            .filter(|c| {
                c.path
                    .rsplit('/')
                    .next()
                    .and_then(|id| id.parse::<i64>().ok())
                    .is_some_and(|id| other.runners.contains(&id))
            })
            .map(|c| format!("GitHub DELETE {}", c.path)),
    );
    v
}

const POOLS: [&str; 2] = ["soak-org", "soak-repo"];

/// How long the settle phase may take after the faults are cleared: the longest waits the
/// controller's default planner settings leave behind are a 60 s quota back-off and a create
/// back-off of 40 s after a long outage.
const SETTLE: Duration = Duration::from_secs(120);

/// How long the pools' deletion may take (their drain is immediate: every job is done): 90 s,
/// plus the 60 s (`PlannerConfig::predecessor_writes`) a controller restarted shortly before
/// waits before it finishes the deletion of a pool older than itself.
const CLEANUP: Duration = Duration::from_secs(150);

/// The settle and cleanup windows count time with a reachable control plane: each is extended by
/// the kube-apiserver and etcd restarts that overlap it (on a loaded machine one restart keeps
/// the API unavailable for 20-30 s, and restarts go on through every phase), up to this much.
const MAX_OUTAGE_EXTENSION: Duration = Duration::from_secs(120);

/// The end of a window of `len` from `from`, extended by the control-plane outages in it so far.
fn window_end(restarts: &Restarts, from: Instant, len: Duration) -> Instant {
    from + len + restarts.unavailable_between(from, Instant::now()).min(MAX_OUTAGE_EXTENSION)
}

/// Installation tokens of the soak's simulated GitHub live 306 s: the controller renews them
/// 5 minutes before expiry, i.e. every few seconds, so that token-endpoint faults and a skewed
/// GitHub clock hit it during every fault window, not only after a controller restart.
const SOAK_INSTALLATION_TOKEN_SECS: u64 = 306;

/// Run one seed against the control plane at `kubeconfig`.
pub async fn run_seed(
    client: &Client,
    kubeconfig: &Path,
    seed: u64,
    args: &SoakArgs,
    restarts: &Restarts,
) -> anyhow::Result<SeedResult> {
    let started = Instant::now();
    let schedule = Schedule::draw(seed);
    let mut res = SeedResult {
        seed,
        injected: describe(&schedule),
        fault_kinds: fault_kinds(&schedule),
        ..Default::default()
    };
    // Kubernetes writes are retried: the kube-apiserver may be restarting.
    let prefix = format!("soak-{seed}");
    let ns = retry(|| test_namespace(client, &prefix)).await?;
    let mut opts = fast_sim_options(seed);
    opts.github.installation_token_lifetime_secs = SOAK_INSTALLATION_TOKEN_SECS;
    let sim = crate::sim::start(opts).await?;
    let quotas_before = sim.arm.config().quotas;
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
            log_filter: args.controller_log.clone(),
        },
    )
    .await?;
    sim.github.set_webhook(Some(crate::sim::github::WebhookTarget { url: ctl.webhook_url.clone(), secret }));
    let scaling = json!({"scaleDownDelay": "1s", "registrationTimeout": "20s", "drainTimeout": "30s"});
    let mut org = pool_manifest(
        POOLS[0],
        &sim,
        json!({"scaling": {"minIdle": 1, "maxRunners": 6}, "azure": {"location": ORG_LOCATION}}),
    );
    crate::testing::harness::merge(&mut org["spec"]["scaling"], scaling.clone());
    if schedule.pools.fallback_location {
        org["spec"]["azure"]["fallbackLocations"] = json!([ORG_FALLBACK]);
    }
    if schedule.pools.runner_group {
        org["spec"]["github"]["runnerGroup"] = json!("aci");
    }
    let mut repo = pool_manifest(
        POOLS[1],
        &sim,
        json!({"github": {"organization": null, "repository": "octo-org/octo-repo", "labels": ["aci-repo"]},
               "azure": {"location": REPO_LOCATION},
               "scaling": {"minIdle": 1, "maxRunners": 3}}),
    );
    crate::testing::harness::merge(&mut repo["spec"]["scaling"], scaling);
    if let Some(ephemeral) = schedule.pools.token_mode {
        repo["spec"]["runner"]["registration"] = json!({"mode": "token", "ephemeral": ephemeral});
    }
    retry(|| apply_pool(client, &ns, &org)).await?;
    retry(|| apply_pool(client, &ns, &repo)).await?;
    let pools: Api<RunnerPool> = Api::namespaced(client.clone(), &ns);
    let other = if schedule.second_install {
        seed_other_install(&sim, &ns, &[&org, &repo])?
    } else {
        OtherInstall::default()
    };

    // Faults on, workload.
    let mut arm_faults = schedule.arm.clone();
    for d in &mut arm_faults.denied_actions {
        d.client_id = sim.arm.client_id();
    }
    sim.arm.set_faults(arm_faults);
    if let Some(q) = &schedule.quotas {
        sim.arm.set_quotas(q.clone());
    }
    sim.github.set_faults(schedule.github.clone());
    let window = args.fault_window * schedule.outage_factor.max(1);
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
    while t0.elapsed() < window || next < plan.len() {
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
        if let Some(k) = schedule.kill
            && killed_at.is_none()
            && t0.elapsed() >= k.after
        {
            ctl.kill();
            killed_at = Some(Instant::now());
        }
        if let Some((at, k)) = killed_at.zip(schedule.kill)
            && ctl.pid().is_none()
            && at.elapsed() >= k.down_for
        {
            ctl.restart().await?;
        }
        observe_pools(&pools, &mut res.stalled_reasons).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if ctl.pid().is_none() {
        ctl.restart().await?;
    }

    // Faults off, quotas restored; settle: every job runs, every pool is Ready and not Stalled.
    sim.arm.set_faults(FaultConfig { seed, ..FaultConfig::default() });
    sim.github.set_faults(GithubFaults { seed, ..GithubFaults::default() });
    sim.arm.set_quotas(quotas_before);
    let cleared = Instant::now();
    let mut unsettled: Vec<String>;
    loop {
        let jobs = sim.github.jobs();
        let done = jobs.iter().filter(|j| job_ids.contains(&j.id) && j.completed_at.is_some()).count();
        unsettled = observe_pools(&pools, &mut res.stalled_reasons).await;
        if (done >= job_ids.len() && unsettled.is_empty())
            || Instant::now() > window_end(restarts, cleared, SETTLE)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    res.restarts.settle_outage_secs = restarts.unavailable_between(cleared, Instant::now()).as_secs_f64();
    let jobs = sim.github.jobs();
    let mine: Vec<_> = jobs.iter().filter(|j| job_ids.contains(&j.id)).collect();
    res.jobs_total = mine.len();
    res.outcome.jobs_completed = mine.iter().filter(|j| j.completed_at.is_some()).count();
    for j in mine.iter().filter(|j| j.conclusion.as_deref().is_some_and(|c| c != "success")) {
        // The simulator's runnerDeathMidJob fault ends the job at (or, by one tick, after) the
        // drawn instant; a job that ended before it (or had none) lost its runner otherwise.
        if j.die_at.is_some_and(|d| j.completed_at.is_some_and(|c| c >= d)) {
            res.outcome.runner_deaths += 1;
        } else {
            res.outcome.busy_runners_killed += 1;
        }
    }

    // Delete the pools; everything must go.
    for p in POOLS {
        let _ = pools.delete(p, &DeleteParams::default()).await;
    }
    let cleanup_from = Instant::now();
    let mut left;
    let leftover_groups = || -> Vec<crate::sim::arm::GroupSummary> {
        sim.arm
            .groups()
            .into_iter()
            .filter(|g| {
                g.tags
                    .get(aci_runner_controller::azure::template::TAG_POOL_NAMESPACE)
                    .is_some_and(|n| n == &ns)
                    && !other.groups.contains(&g.name)
            })
            .collect()
    };
    let leftover_runners = || -> Vec<crate::sim::github::RunnerRecord> {
        sim.github
            .runners()
            .into_iter()
            .filter(|r| POOLS.iter().any(|p| r.name.starts_with(&format!("{p}-"))))
            .filter(|r| !other.runners.contains(&r.id))
            .collect()
    };
    loop {
        let groups = leftover_groups().len();
        let regs = leftover_runners().len();
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
        res.outcome.leaked_groups = groups;
        res.outcome.leaked_registrations = regs;
        if (groups == 0 && regs == 0 && left == 0)
            || Instant::now() > window_end(restarts, cleanup_from, CLEANUP)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    res.restarts.cleanup_outage_secs =
        restarts.unavailable_between(cleanup_from, Instant::now()).as_secs_f64();
    ctl.stop().await;
    res.restarts.controller_starts = ctl.starts;
    let panics = ctl.panics();
    res.outcome.panics = panics.len();
    let explained = schedule.explained_reasons();
    res.unexplained_stalled =
        res.stalled_reasons.iter().filter(|r| !explained.contains(r.as_str())).cloned().collect();

    let mut v = Vec::new();
    if res.outcome.jobs_completed < res.jobs_total {
        v.push(format!(
            "{} of {} jobs never completed",
            res.jobs_total - res.outcome.jobs_completed,
            res.jobs_total
        ));
    }
    if !unsettled.is_empty() {
        v.push(format!(
            "{} s after the faults cleared (+{:.0} s the control plane was restarting): {}",
            SETTLE.as_secs(),
            res.restarts.settle_outage_secs,
            unsettled.join("; ")
        ));
    }
    if res.outcome.busy_runners_killed > 0 {
        v.push(format!("{} busy runner(s) killed", res.outcome.busy_runners_killed));
    }
    if res.outcome.leaked_groups > 0 {
        v.push(format!("{} leaked container group(s)", res.outcome.leaked_groups));
    }
    if res.outcome.leaked_registrations > 0 {
        v.push(format!("{} leaked registration(s)", res.outcome.leaked_registrations));
    }
    if left > 0 {
        v.push(format!("{left} pool(s) not deleted (finalizer)"));
    }
    let touched = other_install_touched(&sim, &other);
    res.outcome.other_install_touched = touched.len();
    if !touched.is_empty() {
        v.push(format!("another install's runners touched: {}", touched.join("; ")));
    }
    if res.outcome.panics > 0 {
        v.push(format!("{} panic(s) in the controller log: {}", res.outcome.panics, panics.join(" | ")));
    }
    if !res.unexplained_stalled.is_empty() {
        v.push(format!("Stalled reasons without an injected cause: {:?}", res.unexplained_stalled));
    }
    res.passed = v.is_empty();
    res.violations = v;
    res.secs = started.elapsed().as_secs_f64();
    res.restarts.apiserver_restarts = restarts.apiserver.between(started, Instant::now());
    res.restarts.etcd_restarts = restarts.etcd.between(started, Instant::now());
    let _ = Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .delete(&ns, &DeleteParams::default())
        .await;
    if res.outcome.leaked_groups + res.outcome.leaked_registrations > 0 {
        let text = describe_leftovers(&sim, &leftover_groups(), &leftover_runners());
        let _ = std::fs::write(dir.join("leftovers.md"), text);
    }
    if res.passed && !args.keep_logs {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(res)
}

/// What is left of a seed after its cleanup window, with every simulator call that names it:
/// written next to the controller log of a seed that leaks, to trace how the leftover came about.
fn describe_leftovers(
    sim: &crate::sim::Simulator,
    groups: &[crate::sim::arm::GroupSummary],
    runners: &[crate::sim::github::RunnerRecord],
) -> String {
    let mut s = String::from("# Leftovers\n\n");
    let arm_calls = sim.arm.calls();
    for g in groups {
        s += &format!(
            "## group {} ({}, {} / {}, created {}, tags {:?})\n\n",
            g.name, g.location, g.provisioning_state, g.state, g.created, g.tags
        );
        for c in arm_calls.iter().filter(|c| c.path.contains(&format!("/containerGroups/{}", g.name))) {
            s += &format!("- {} {} {} {} {:?}\n", c.at, c.method, c.status, c.op, c.code);
        }
        s += "\n";
    }
    let gh_calls = sim.github.calls();
    for r in runners {
        s += &format!(
            "## registration {} id {} (online {}, busy {}, jit {}, created {}, labels {:?})\n\n",
            r.name, r.id, r.online, r.busy, r.jit, r.created_at, r.labels
        );
        let id = format!("/runners/{}", r.id);
        for c in gh_calls.iter().filter(|c| c.path.ends_with(&id) || c.path.contains(&format!("{id}/"))) {
            s += &format!("- {} {} {} {} {}\n", c.at, c.method, c.status, c.op, c.principal);
        }
        s += "\n";
    }
    s
}

/// Record the Stalled reasons of the pools; return what keeps them from being settled (Ready
/// True and Stalled not True), one entry per pool (empty: all settled).
async fn observe_pools(pools: &Api<RunnerPool>, seen: &mut BTreeSet<String>) -> Vec<String> {
    let list = match pools.list(&Default::default()).await {
        Ok(l) => l,
        Err(e) => return vec![format!("listing the pools failed: {e}")],
    };
    let mut unsettled = Vec::new();
    for name in POOLS {
        let Some(p) = list.items.iter().find(|p| p.metadata.name.as_deref() == Some(name)) else {
            unsettled.push(format!("pool {name} missing"));
            continue;
        };
        let conditions = p.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or(&[]);
        let cond = |t: &str| conditions.iter().find(|c| c.type_ == t);
        let stalled = cond("Stalled").filter(|c| c.status == "True");
        if let Some(c) = stalled {
            seen.insert(c.reason.clone());
        }
        let ready = cond("Ready").is_some_and(|c| c.status == "True");
        if !ready || stalled.is_some() {
            let ready_text = cond("Ready").map_or("no Ready condition".to_string(), |c| {
                format!("Ready {} {}: {}", c.status, c.reason, c.message)
            });
            let stalled_text =
                stalled.map(|c| format!(", Stalled True {}: {}", c.reason, c.message)).unwrap_or_default();
            unsettled.push(format!("pool {name} not settled ({ready_text}{stalled_text})"));
        }
    }
    unsettled
}

/// Run the soak: start a control plane, run the seeds, write `soak.json` and `soak.md` to `out`.
pub async fn run(args: SoakArgs) -> anyhow::Result<SoakReport> {
    let started = Instant::now();
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let cp_dir = std::env::temp_dir().join(format!("aci-rc-soak-cp-{}", std::process::id()));
    let cp = ControlPlane::start_in(&cp_dir)?;
    let restarts = Restarts::default();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut restarters = Vec::new();
    for (component, every) in
        [(Component::Apiserver, args.apiserver_restart_every), (Component::Etcd, args.etcd_restart_every)]
    {
        if !every.is_zero() {
            restarters.push(tokio::spawn(restart_loop(
                cp_dir.clone(),
                component,
                every,
                args.first_seed,
                restarts.clone(),
                stop_rx.clone(),
            )));
        }
    }
    let result = run_on(&cp, &args, &restarts).await;
    let _ = stop_tx.send(true);
    for t in restarters {
        let _ = t.await;
    }
    cp.stop();
    for c in [Component::Apiserver, Component::Etcd] {
        let _ = std::fs::copy(cp_dir.join(c.log_file()), args.out.join(c.log_file()));
    }
    let _ = std::fs::remove_dir_all(&cp_dir);
    let mut report = result?;
    report.totals.wall_secs = started.elapsed().as_secs_f64();
    std::fs::write(args.out.join("soak.json"), serde_json::to_string_pretty(&report)?)?;
    std::fs::write(args.out.join("soak.md"), markdown(&report, &args))?;
    Ok(report)
}

/// Run the seeds on an existing control plane.
pub async fn run_on(cp: &ControlPlane, args: &SoakArgs, restarts: &Restarts) -> anyhow::Result<SoakReport> {
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
                    injected: describe(&Schedule::draw(seed)),
                    fault_kinds: fault_kinds(&Schedule::draw(seed)),
                    ..Default::default()
                },
            }
        }
    }))
    .buffer_unordered(args.parallel.max(1));
    while let Some(r) = runs.next().await {
        let line = if r.passed {
            format!(
                "seed {:>4}: ok   ({:.0} s, {} jobs, {} fault kinds, {} controller start(s), {} apiserver / {} etcd restart(s))",
                r.seed,
                r.secs,
                r.jobs_total,
                r.fault_kinds.len(),
                r.restarts.controller_starts,
                r.restarts.apiserver_restarts,
                r.restarts.etcd_restarts
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

fn summarize(results: &[SeedResult], restarts: &Restarts) -> SoakReport {
    let mut t = SoakTotals::default();
    for r in results {
        t.jobs += r.jobs_total;
        t.outcome += &r.outcome;
        t.controller_kills += r.restarts.controller_starts.saturating_sub(1) as usize;
        t.unexplained_stalled += r.unexplained_stalled.len();
        for k in &r.fault_kinds {
            *t.fault_coverage.entry(k.clone()).or_default() += 1;
        }
    }
    t.apiserver_restarts = restarts.apiserver.count();
    t.apiserver_unexpected_exits = restarts.apiserver.unexpected_exits();
    t.etcd_restarts = restarts.etcd.count();
    t.etcd_unexpected_exits = restarts.etcd.unexpected_exits();
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
        "## Fault soak\n\n`aci-runner-devkit bench soak --seeds {} --first-seed {} --parallel {} --jobs {} --fault-window {}s --apiserver-restart-every {}s --etcd-restart-every {}s`\n\n",
        args.seeds,
        args.first_seed,
        args.parallel,
        args.jobs,
        args.fault_window.as_secs(),
        args.apiserver_restart_every.as_secs(),
        args.etcd_restart_every.as_secs()
    );
    s += "| invariant | result |\n| --- | --- |\n";
    s += &format!("| seeds passed | {}/{} |\n", r.passed, r.seeds);
    s += &format!("| leaked container groups | {} |\n", t.outcome.leaked_groups);
    s += &format!("| leaked registrations | {} |\n", t.outcome.leaked_registrations);
    s += &format!("| busy runners killed (by the controller) | {} |\n", t.outcome.busy_runners_killed);
    s += &format!("| panics in controller logs | {} |\n", t.outcome.panics);
    s += &format!(
        "| another install's groups or registrations touched | {} |\n",
        t.outcome.other_install_touched
    );
    s += &format!("| Stalled reasons without an injected cause | {} |\n", t.unexplained_stalled);
    s += &format!("| jobs completed | {}/{} |\n", t.outcome.jobs_completed, t.jobs);
    s += &format!("| jobs failed by the injected runner death | {} |\n", t.outcome.runner_deaths);
    s += &format!("| controller SIGKILLs + restarts | {} |\n", t.controller_kills);
    s += &format!(
        "| kube-apiserver restarts (shared by the seeds running then) | {} |\n",
        t.apiserver_restarts
    );
    s += &format!("| etcd restarts (shared by the seeds running then) | {} |\n", t.etcd_restarts);
    let (settle, cleanup): (f64, f64) = r
        .results
        .iter()
        .map(|x| (x.restarts.settle_outage_secs, x.restarts.cleanup_outage_secs))
        .fold((0.0, 0.0), |(a, b), (x, y)| (a.max(x), b.max(y)));
    s += &format!(
        "| longest control-plane restart time in a settle / cleanup window (added to it) | {settle:.0} s / {cleanup:.0} s |\n"
    );
    if t.apiserver_unexpected_exits + t.etcd_unexpected_exits > 0 {
        s += &format!(
            "| unplanned exits (kube-apiserver / etcd) | {} / {} |\n",
            t.apiserver_unexpected_exits, t.etcd_unexpected_exits
        );
    }
    s += &format!("| wall time | {:.0} s |\n", t.wall_secs);
    if !t.fault_coverage.is_empty() {
        s += "\nSeeds per injected fault kind:\n\n| fault | seeds |\n| --- | --- |\n";
        for (k, n) in &t.fault_coverage {
            s += &format!("| {k} | {n} |\n");
        }
    }
    let mut stalled: std::collections::BTreeMap<&str, usize> = Default::default();
    for res in &r.results {
        for reason in &res.stalled_reasons {
            *stalled.entry(reason.as_str()).or_default() += 1;
        }
    }
    if !stalled.is_empty() {
        s += "\nStalled reasons seen (seeds): ";
        s += &stalled.iter().map(|(k, n)| format!("`{k}` ({n})")).collect::<Vec<_>>().join(", ");
        s += "\n";
    }
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

/// When a control-plane process was restarted, and how often it was found dead without a restart.
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
    /// Times the process had exited on its own (or was killed by someone else).
    pub fn unexpected_exits(&self) -> usize {
        self.0.lock().map(|v| v.1).unwrap_or(0)
    }
}

/// The control-plane restarts of a soak: one log per process, and one lock so that the
/// kube-apiserver and etcd are never restarted at the same time.
#[derive(Clone, Default)]
pub struct Restarts {
    pub apiserver: RestartLog,
    pub etcd: RestartLog,
    one_at_a_time: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// When a restart of either process began and (once the kube-apiserver answered `/readyz`
    /// again, or the restart failed) ended.
    outages: std::sync::Arc<std::sync::Mutex<Vec<Outage>>>,
}

/// A restart's start and, once over, its end.
type Outage = (Instant, Option<Instant>);

impl Restarts {
    /// Record that a restart begins; returns its index for [`Restarts::outage_ended`].
    fn outage_began(&self) -> Option<usize> {
        let mut v = self.outages.lock().ok()?;
        v.push((Instant::now(), None));
        Some(v.len() - 1)
    }

    fn outage_ended(&self, index: Option<usize>) {
        if let (Some(i), Ok(mut v)) = (index, self.outages.lock())
            && let Some(o) = v.get_mut(i)
        {
            o.1 = Some(Instant::now());
        }
    }

    /// How long restarts were in progress within `[from, to]` (overlapping restarts of the two
    /// processes do not happen: they take turns).
    pub fn unavailable_between(&self, from: Instant, to: Instant) -> Duration {
        let Ok(v) = self.outages.lock() else { return Duration::ZERO };
        v.iter()
            .map(|(b, e)| {
                let (b, e) = ((*b).max(from), e.unwrap_or(to).min(to));
                e.saturating_duration_since(b)
            })
            .sum()
    }

    fn log(&self, c: Component) -> &RestartLog {
        match c {
            Component::Apiserver => &self.apiserver,
            Component::Etcd => &self.etcd,
        }
    }
}

/// A process of the local control plane (`scripts/control-plane` records its PID in the
/// control plane's directory; its `stop` reads the PID files, so a restarted process is still
/// stopped with the control plane).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Component {
    Apiserver,
    Etcd,
}

impl Component {
    pub fn name(self) -> &'static str {
        match self {
            Component::Apiserver => "kube-apiserver",
            Component::Etcd => "etcd",
        }
    }
    fn pid_file(self) -> &'static str {
        match self {
            Component::Apiserver => "apiserver.pid",
            Component::Etcd => "etcd.pid",
        }
    }
    fn log_file(self) -> &'static str {
        match self {
            Component::Apiserver => "apiserver.log",
            Component::Etcd => "etcd.log",
        }
    }
    fn salt(self) -> u64 {
        match self {
            Component::Apiserver => 0xa11ce,
            Component::Etcd => 0xe7cd,
        }
    }
}

fn read_pid(cp_dir: &Path, c: Component) -> Option<u32> {
    std::fs::read_to_string(cp_dir.join(c.pid_file())).ok()?.trim().parse().ok()
}

/// The process's command line (from `/proc`).
fn command_line(cp_dir: &Path, c: Component) -> anyhow::Result<Vec<String>> {
    let pid = read_pid(cp_dir, c).with_context(|| format!("reading {}", c.pid_file()))?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
        .with_context(|| format!("reading the {} command line", c.name()))?;
    let argv: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    anyhow::ensure!(!argv.is_empty(), "empty {} command line", c.name());
    Ok(argv)
}

/// Restart `component` at random times about `every` apart until `stop`; start it again at once
/// if it is found dead in between (counted, reported).
async fn restart_loop(
    cp_dir: PathBuf,
    component: Component,
    every: Duration,
    seed: u64,
    restarts: Restarts,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let argv = match command_line(&cp_dir, component) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("no {} restarts: {e:#}", component.name());
            return;
        }
    };
    let log = restarts.log(component).clone();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ component.salt());
    let mut children: Vec<std::process::Child> = Vec::new();
    let ms = (every.as_millis() as u64).max(4);
    let mut next = Instant::now() + Duration::from_millis(rng.gen_range(ms / 4..=ms / 2));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        let pid = read_pid(&cp_dir, component);
        let dead = !pid.is_some_and(alive);
        if dead {
            eprintln!(
                "{} (pid {pid:?}) exited without a planned restart; starting it again",
                component.name()
            );
            log.found_dead();
        }
        if !dead && Instant::now() < next {
            continue;
        }
        children.retain_mut(|c| matches!(c.try_wait(), Ok(None)));
        let restarted = {
            let _one = restarts.one_at_a_time.lock().await;
            let outage = restarts.outage_began();
            let r = restart_component(&cp_dir, component, &argv).await;
            if r.is_err() {
                // The outage lasts until the API answers again, however slow the start.
                wait_ready(&cp_dir, Duration::from_secs(120)).await;
            }
            restarts.outage_ended(outage);
            r
        };
        match restarted {
            Ok(child) => {
                if !dead {
                    log.push(Instant::now());
                }
                children.push(child);
            }
            Err(e) => eprintln!("{} restart failed: {e:#}", component.name()),
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

/// Stop `component` (SIGTERM, SIGKILL after 15 s) if it runs and start it again with `argv`
/// (etcd: same data directory and ports, so the cluster state survives); wait until the
/// kube-apiserver answers `/readyz` (which checks etcd). The PID file is updated so that the
/// control plane's stop finds the new process.
pub async fn restart_component(
    cp_dir: &Path,
    component: Component,
    argv: &[String],
) -> anyhow::Result<std::process::Child> {
    let pid_file = cp_dir.join(component.pid_file());
    let Some((exe, rest)) = argv.split_first() else {
        anyhow::bail!("empty {} command line", component.name())
    };
    if let Some(pid) = read_pid(cp_dir, component).filter(|p| alive(*p)) {
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
    let log =
        std::fs::OpenOptions::new().create(true).append(true).open(cp_dir.join(component.log_file()))?;
    let err = log.try_clone()?;
    let child = std::process::Command::new(exe)
        .args(rest)
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(err)
        .spawn()
        .with_context(|| format!("starting {} again", component.name()))?;
    std::fs::write(&pid_file, child.id().to_string())?;
    if wait_ready(cp_dir, Duration::from_secs(60)).await {
        return Ok(child);
    }
    anyhow::bail!("the control plane was not ready within 60 s after a {} restart", component.name())
}

/// Wait up to `within` until an authenticated client gets an answer from `/readyz` (etcd
/// included); whether it did.
async fn wait_ready(cp_dir: &Path, within: Duration) -> bool {
    let kubeconfig = cp_dir.join("kubeconfig");
    let deadline = Instant::now() + within;
    loop {
        let ok = std::process::Command::new("kubectl")
            .env("KUBECONFIG", &kubeconfig)
            .args(["get", "--raw", "/readyz"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return true;
        }
        if Instant::now() > deadline {
            return false;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_controllers_github_operations_are_simulator_operations() {
        for op in GITHUB_OPS {
            assert!(crate::sim::github::OPERATIONS.contains(op), "{op}");
        }
    }

    #[test]
    fn two_hundred_seeds_inject_every_fault_kind_many_times() {
        let mut seen: std::collections::BTreeMap<String, usize> = Default::default();
        for seed in 1..=200 {
            for k in fault_kinds(&Schedule::draw(seed)) {
                *seen.entry(k).or_default() += 1;
            }
        }
        let mut wanted: Vec<String> = Vec::new();
        for op in ARM_OPS {
            wanted.push(format!("arm {op} 429/500/503"));
            if *op != "token" {
                wanted.push(format!("arm {op} latency"));
            }
        }
        for op in GITHUB_OPS {
            for what in ["5xx", "secondary limit", "409", "422", "hostile answers"] {
                wanted.push(format!("github {op} {what}"));
            }
        }
        for k in [
            "aci container crash before registration",
            "aci capacity exhausted",
            "aci inaccessible image",
            "aci slow provisioning",
            "arm denied action",
            "arm quota lowered (groups/cores)",
            "arm quota lowered (request buckets)",
            "github webhook drops",
            "github runner crash before registration",
            "github runner death mid-job",
            "github clock skew (tolerated)",
            "github clock skew (beyond tolerance)",
            "long outage",
            "controller SIGKILL + restart",
            "second install's runners present",
        ] {
            wanted.push(k.to_string());
        }
        for k in &wanted {
            let n = seen.get(k).copied().unwrap_or(0);
            assert!(n >= 8, "{k}: only {n} of 200 seeds");
        }
        // And nothing is drawn that the list above does not name.
        for k in seen.keys() {
            assert!(wanted.contains(k), "unlisted fault kind {k}");
        }
    }

    #[test]
    fn skew_tolerance_follows_the_jwt_claims_and_the_leeway() {
        // iat = now - 60 and exp = now + 540, leeway 60: GitHub may be 120 s behind, < 600 s ahead.
        assert!(skew_tolerated(-120, 60));
        assert!(!skew_tolerated(-121, 60));
        assert!(skew_tolerated(599, 60));
        assert!(!skew_tolerated(600, 60));
        // Skews beyond it explain AuthFailed; skews within it explain nothing.
        let mut s = Schedule::draw(1);
        s.github.clock_skew_secs = 900;
        assert!(s.explained_reasons().contains("AuthFailed"));
        s.github.clock_skew_secs = 300;
        s.arm = FaultConfig::default();
        s.github = GithubFaults { clock_skew_secs: 300, ..GithubFaults::default() };
        s.quotas = None;
        assert!(s.explained_reasons().is_empty(), "{:?}", s.explained_reasons());
    }
}
