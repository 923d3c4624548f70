//! The reconciler under stress, end to end (issue 6, tests 6–9): a real kube-apiserver
//! (scripts/control-plane), the simulated Azure and GitHub, and the controller (`run_with`,
//! production edges) in this process.
//!
//! 6. a controller killed mid scale-up and restarted: no duplicates, no leaks, Ready.
//! 7. faults: quota, primary-location capacity, inaccessible image, GitHub 5xx bursts.
//! 8. two replicas with leader election: only the leader acts; the standby takes over.
//! 9. missing Secret, bad App key, invalid spec: Stalled with the right reason, nothing deleted.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use aci_runner_core::crd::RunnerPool;
use aci_runner_devkit::sim::Simulator;
use aci_runner_devkit::sim::arm::{FaultConfig, OpFaults, Quotas};
use aci_runner_devkit::sim::github::{GhOpFaults, GithubFaults, OPERATIONS};
use aci_runner_devkit::testing::harness::{
    ControllerHandle, apply_app_secret, condition, eventually, groups_of, jobs, runners_of,
};
use aci_runner_devkit::testing::world::{T, World, cond_is, metric_sum, one_to_one_online, ready_with};
use kube::Api;
use serde_json::json;

/// Samples the number of a pool's container groups until dropped; keeps the maximum.
struct GroupSampler {
    max: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl GroupSampler {
    fn start(sim: &Simulator, pool: &str) -> Self {
        let max = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (sim, pool, m, s) = (sim.clone(), pool.to_string(), max.clone(), stop.clone());
        let task = tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                m.fetch_max(groups_of(&sim, &pool).len(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        Self { max, stop, task }
    }

    async fn finish(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        self.max.load(Ordering::Relaxed)
    }
}

/// Records every distinct (Ready, Reconciling, Stalled) condition triple a pool shows, in order.
struct ConditionTrace {
    seen: Arc<std::sync::Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl ConditionTrace {
    fn start(w: &World, pool: &str) -> Self {
        let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let pools: Api<RunnerPool> = Api::namespaced(w.client.clone(), &w.ns);
        let (pool, seen2, stop2) = (pool.to_string(), seen.clone(), stop.clone());
        let task = tokio::spawn(async move {
            while !stop2.load(Ordering::Relaxed) {
                if let Ok(Some(p)) = pools.get_opt(&pool).await {
                    let show =
                        |t: &str| condition(&p, t).map(|(s, r)| format!("{t}={s}/{r}")).unwrap_or_default();
                    let line = format!("{} {} {}", show("Ready"), show("Reconciling"), show("Stalled"));
                    let mut v = seen2.lock().unwrap();
                    if v.last() != Some(&line) {
                        v.push(line);
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        Self { seen, stop, task }
    }

    async fn finish(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        self.seen.lock().unwrap().clone()
    }
}

// ---------------------------------------------------------------------------------------------
// 6. Kill the controller mid scale-up, restart: no duplicates, converges.
// ---------------------------------------------------------------------------------------------

/// Poll (every 200 µs, for up to 20 s) the numbers of (groups, registrations) of the pool until
/// `hit` holds for them: true; false when `miss` holds first or the time is up. The tests that
/// use it open the window `hit` looks for with a simulated ARM latency of hundreds of
/// milliseconds, so the poll finds it however loaded the machine is.
/// When the ARM simulator refused a container-group create with the error `code`, in order.
fn refused_creates(sim: &Simulator, code: &str) -> Vec<chrono::DateTime<chrono::Utc>> {
    sim.arm
        .calls()
        .into_iter()
        .filter(|c| c.op == "create" && c.code.as_deref() == Some(code))
        .map(|c| c.at)
        .collect()
}

/// How many calls of a simulator's `call_counts` (operation → status → count) were answered
/// with a status `pick` keeps.
fn answers_where(counts: &BTreeMap<String, BTreeMap<u16, u64>>, pick: impl Fn(u16) -> bool) -> u64 {
    counts.values().flat_map(|by_status| by_status.iter().filter(|(s, _)| pick(**s)).map(|(_, n)| *n)).sum()
}

/// Stop the controller, start it again and return the condition lines of `pool` seen from the
/// stop until `watch` after the restart (see [`ConditionTrace`]).
async fn conditions_across_a_restart(w: &mut World, pool: &str, watch: Duration) -> Vec<String> {
    w.stop().await;
    let trace = ConditionTrace::start(w, pool);
    w.start_controller().await;
    tokio::time::sleep(watch).await;
    trace.finish().await
}

async fn counts_reach(
    sim: &Simulator,
    pool: &str,
    hit: impl Fn(usize, usize) -> bool,
    miss: impl Fn(usize, usize) -> bool,
) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (groups, runners) = (groups_of(sim, pool).len(), runners_of(sim, pool).len());
        if hit(groups, runners) {
            return true;
        }
        if miss(groups, runners) || tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

/// Simulated ARM faults: `faults` on the requests of `op`, none on the others.
fn op_faults(op: &str, faults: OpFaults) -> FaultConfig {
    FaultConfig { ops: [(op.to_string(), faults)].into(), ..FaultConfig::default() }
}

/// Every simulated ARM request of `op` waits `ms` before it is answered (no other faults).
fn arm_latency(sim: &Simulator, op: &str, ms: u64) {
    sim.arm.set_faults(op_faults(op, OpFaults { latency_ms: ms, ..OpFaults::default() }));
}

/// Whether a registration of the pool comes to exist without its container group, beyond
/// `baseline` registrations and with at least one group (a create pass is under way between its
/// GitHub registration and its ARM create) before `max` groups exist.
async fn mid_create(sim: &Simulator, pool: &str, baseline: usize, max: usize) -> bool {
    counts_reach(sim, pool, |g, r| g >= 1 && r > baseline && r > g, |g, _| g >= max).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_scale_up_then_restarted_converges_without_duplicates_or_leaks() {
    // Container-group PUTs take 300 ms (real ARM takes longer): every create leaves a window in
    // which its runner is registered on GitHub and its group does not exist yet, so the kill
    // below lands there however loaded the machine is.
    let mut w = World::builder("e2e-kill")
        .seed(6)
        .with_sim(|sim| arm_latency(sim, "create", 300))
        .no_controller()
        .start()
        .await;
    let sampler = GroupSampler::start(&w.sim, "kill");

    w.start_controller().await;
    w.apply("kill", json!({"scaling": {"minIdle": 6, "maxRunners": 6}})).await;
    // Killed in the middle of the pass creating six runners: right after a runner was registered
    // on GitHub and before its container group was created (the registration is left without a
    // group), with at least one group already created.
    let hit = mid_create(&w.sim, "kill", 0, 6).await;
    w.kill();
    let in_flight_first = w.runners_of("kill").len().saturating_sub(w.groups_of("kill").len());
    let at_first_kill = w.world("kill");
    assert!(hit, "no moment with a registration lacking its group: {at_first_kill}");

    // Restarted at once, and killed again in the middle of its own first creates (when the
    // first kill left enough to do); the third one runs to the end.
    let baseline = w.runners_of("kill").len();
    w.start_controller().await;
    let hit = mid_create(&w.sim, "kill", baseline, 6).await;
    w.kill();
    let in_flight_second = w.runners_of("kill").len().saturating_sub(w.groups_of("kill").len());
    let at_second_kill = w.world("kill");
    tracing::info!(%at_first_kill, %at_second_kill, second_mid_create = hit, "killed twice");
    w.start_controller().await;

    let names = w.wait_settled("kill", 6).await;
    // Stays settled: nothing more is created or removed (no late duplicates).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(one_to_one_online(&w.sim, "kill"), Some(names.clone()), "{}", w.world("kill"));
    // A PUT that ARM received before a kill takes effect after it, and the restarted controller
    // has never heard of it: for a moment the pool can hold those groups on top of its own
    // creates. At most the creates on the wire at the kills (registrations without a group)
    // come on top of maxRunners; the surplus is scaled down (checked above: settled at six).
    let max = sampler.finish().await;
    let bound = 6 + in_flight_first + in_flight_second;
    assert!(
        max <= bound,
        "up to {max} container groups existed at once for maxRunners 6 and {} creates on the wire at the kills (at the kills: {at_first_kill} / {at_second_kill})",
        bound - 6
    );
    // Registrations the killed passes left without a group were collected: every registration
    // of the simulated GitHub is one of the six groups.
    let all: Vec<String> = w.sim.github.runners().into_iter().map(|r| r.name).collect();
    assert_eq!(
        all.len(),
        6,
        "leftover registrations: {all:?} (at the kills: {at_first_kill} / {at_second_kill})"
    );
    let m = w.metrics().await;
    assert_eq!(metric_sum(&m, "aci_runner_controller_reconcile_errors_total", &[]), 0.0, "{m}");
    w.stop().await;
}

/// Killed between a runner's unregister and the delete of its group during a scale-down, then
/// restarted: the new controller finishes the scale-down without failures or Warnings.
///
/// The window is opened by a 400 ms latency on the simulated ARM DELETE: polling every 200 µs
/// for the few milliseconds an immediate DELETE leaves missed it in fresh-clone CI runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_scale_down_then_restarted_finishes_it_without_failures() {
    let mut w = World::start("e2e-killdown", 61).await;
    let before = w.apply_settled("down", 6, 6).await;
    let trace = ConditionTrace::start(&w, "down");
    // Container-group DELETEs take 400 ms before they are answered (real ARM takes longer): each
    // removal leaves a window of at least that long in which its runner is unregistered and its
    // group still exists, so the poll below finds one however loaded the machine is.
    arm_latency(&w.sim, "delete", 400);

    // Scale down to one; killed between an unregister and the delete of its group.
    w.apply("down", json!({"scaling": {"minIdle": 1, "maxRunners": 6}})).await;
    let hit = counts_reach(&w.sim, "down", |g, r| r < g && g < 6, |g, _| g <= 1).await;
    w.kill();
    let at_kill = w.world("down");
    assert!(hit, "no moment with a group lacking its registration: {at_kill}");

    w.start_controller().await;
    let after = w.wait_settled("down", 1).await;
    assert!(after.is_subset(&before), "the survivor is one of the old runners: {after:?} vs {before:?}");
    assert_eq!(w.sim.github.runners().len(), 1, "{}", w.world("down"));
    assert_eq!(w.sim.arm.groups().len(), 1, "{}", w.world("down"));
    let seen = trace.finish().await;
    // Runners the killed controller was removing are not failures of the pool.
    assert!(seen.iter().all(|l| l.contains("Stalled=False")), "{seen:#?} (at kill: {at_kill})");
    let warnings: Vec<_> = w.events_of("down").await.into_iter().filter(|(t, _, _)| t == "Warning").collect();
    assert!(warnings.is_empty(), "{warnings:#?} (at kill: {at_kill})");
    w.stop().await;
}

/// Killed while the cleanup of a deleted pool is under way (some registrations removed, some
/// groups left), then restarted: the new controller finishes the cleanup and drops the finalizer.
///
/// The window is opened by a 400 ms latency on the simulated ARM DELETE: each group outlives
/// the unregister of its runner by at least that long. Polling every 200 µs for the few
/// milliseconds an immediate DELETE leaves depended on the scheduler catching them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_deletion_then_restarted_finishes_the_cleanup() {
    let mut w = World::start("e2e-killdel", 62).await;
    w.apply_settled("del", 6, 6).await;

    // Container-group DELETEs take 400 ms before they are answered (real ARM takes longer): the
    // cleanup leaves a window of at least that long with runners unregistered and groups left.
    arm_latency(&w.sim, "delete", 400);

    // Deleted; the controller is killed while the cleanup is under way.
    w.delete_pool("del").await;
    let hit = counts_reach(&w.sim, "del", |g, r| r < 6 && g > 0, |g, _| g == 0).await;
    w.kill();
    let at_kill = w.world("del");
    assert!(hit, "no moment in the middle of the cleanup: {at_kill}");
    assert!(w.get_pool("del").await.is_some(), "the finalizer was dropped before the cleanup ended");

    w.start_controller().await;
    let gone = w.wait_gone("del", T).await;
    let events = w.events_of("del").await;
    assert!(gone, "pool not removed after restart: {}; {events:#?}", w.world("del"));
    assert!(w.sim.arm.groups().is_empty(), "left behind: {} (at kill: {at_kill})", w.world("del"));
    assert!(w.sim.github.runners().is_empty(), "left behind: {} (at kill: {at_kill})", w.world("del"));
    assert!(!events.iter().any(|(_, r, _)| r == "CleanupAbandoned"), "{events:#?}");
    w.stop().await;
}

/// Killed while ARM holds its create of the pool's runner, then the pool is deleted and the
/// controller restarted before that create lands: the new process has never heard of it, and its
/// first lists show no group. It keeps the finalizer until the predecessor's writes can have
/// landed (`predecessor_writes`, 20 s here), sees the late group and removes it with its
/// registration: nothing is left. Before that wait, the restarted controller removed the
/// finalizer on its first empty list, and the group landed after it (a leaked group and
/// registration, the shape of soak seed 32's leftover).
///
/// The window is opened by a 6 s latency on the simulated ARM create (the simulator carries out a
/// request whose client hung up, as ARM does); the kill comes 1 s after the runner's registration
/// appears, so the PUT is on the wire, and the call log proves it landed after the kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_that_lands_after_a_restart_is_removed_before_the_finalizer_goes() {
    let mut w = World::builder("e2e-late")
        .seed(63)
        .with_sim(|sim| arm_latency(sim, "create", 6_000))
        .controller(|o| o.planner.predecessor_writes = Duration::from_secs(20))
        .no_controller()
        .start()
        .await;
    w.start_controller().await;
    w.apply("late", json!({"scaling": {"minIdle": 1, "maxRunners": 1}})).await;
    // The runner is registered and its group's PUT is held by the latency.
    let registered = counts_reach(&w.sim, "late", |g, r| g == 0 && r == 1, |g, _| g >= 1).await;
    assert!(registered, "no registration ahead of its group: {}", w.world("late"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    w.kill();
    let killed_at = w.sim.clock.now();
    assert!(w.groups_of("late").is_empty(), "the create landed before the kill: {}", w.world("late"));

    w.delete_pool("late").await;
    w.start_controller().await;
    let gone = w.wait_gone("late", T).await;
    assert!(gone, "pool not removed: {}; {:#?}", w.world("late"), w.events_of("late").await);
    // However fast the pool went, the held create lands (within its 6 s latency of the send).
    let landed = |w: &World| {
        w.sim
            .arm
            .calls()
            .into_iter()
            .filter(|c| c.op == "create" && c.status < 300 && c.at > killed_at)
            .count()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while landed(&w) == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(landed(&w), 1, "the held create landed after the kill: {:?}", w.sim.arm.calls());
    assert!(w.sim.arm.groups().is_empty(), "left behind: {}", w.world("late"));
    assert!(w.sim.github.runners().is_empty(), "left behind: {}", w.world("late"));
    w.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 7. Faults.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_exceeded_stalls_with_an_event_and_recovers_when_raised() {
    // Room for two 1-vCPU runners in the region.
    let two_cores = Quotas { cores: 2.0, ..Quotas::default() };
    let mut w = World::builder("e2e-quota").seed(71).arm_quotas(two_cores).start_pool("quota", 4, 6).await;

    // docs/planner.md: QuotaExceeded → wait with Stalled `QuotaExceeded` (one event).
    let trace = ConditionTrace::start(&w, "quota");
    let p = w.wait_stalled("quota", "QuotaExceeded").await;
    // A few quota waits and retries (quota backoff 1 s .. 3 s in the test planner).
    tokio::time::sleep(Duration::from_secs(8)).await;
    let during = trace.finish().await;
    // While the quota lasts, the retries do not flap the conditions: Stalled stays True until a
    // create is accepted (docs/planner.md).
    let first = during.iter().position(|l| l.contains("Stalled=True/QuotaExceeded")).unwrap();
    assert!(during[first..].iter().all(|l| l.contains("Stalled=True/QuotaExceeded")), "{during:#?}");
    assert!(w.sim.arm.quota_rejections() >= 2, "no retry after the quota wait");
    // Creates refused for quota are retried only after the quota wait (quota_backoff_base = 1 s
    // here), one at a time: never in the very next pass.
    let refused = refused_creates(&w.sim, "ContainerGroupQuotaReached");
    for pair in refused.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(gap >= chrono::Duration::milliseconds(900), "quota retries {gap} apart: {refused:?}");
    }
    assert!(cond_is(&p, "Ready", "False", None), "{:?}", p.status);
    let msg = w.wait_warning("quota", "QuotaExceeded").await;
    assert!(msg.contains("StandardCores") || msg.to_lowercase().contains("quota"), "{msg}");
    // Within the quota, the two runners that fit were created and nothing beyond it.
    let cores: f64 = w.groups_of("quota").iter().map(|g| g.cpu).sum();
    assert!(cores <= 2.0 + 1e-9, "{}", w.world("quota"));
    assert!(w.sim.arm.quota_rejections() > 0);

    // A controller restart while the quota lasts: still Stalled, no flap.
    let seen = conditions_across_a_restart(&mut w, "quota", Duration::from_secs(3)).await;
    assert!(seen.iter().all(|l| l.contains("Stalled=True/QuotaExceeded")), "{seen:#?}");

    // Quota raised: the pool recovers on its own (no spec change).
    w.sim.arm.set_quotas(Quotas::default());
    w.wait_settled("quota", 4).await;
    let p = w.get_pool("quota").await.unwrap();
    assert!(cond_is(&p, "Stalled", "False", None), "{:?}", p.status);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_unavailable_in_the_primary_location_spills_to_fallback_locations() {
    let mut w = World::builder("e2e-spill")
        .seed(72)
        // westeurope holds one container group, then answers 409 ServiceUnavailable.
        .arm_faults(FaultConfig {
            capacity: [("westeurope".to_string(), 1)].into(),
            ..FaultConfig::default()
        })
        // Locations cool down for 3 s after CapacityUnavailable (so that recovery fits the test).
        .controller(|o| o.planner.location_cooldown = Duration::from_secs(3))
        .start()
        .await;
    w.apply(
        "spill",
        json!({"azure": {"fallbackLocations": ["northeurope"]}, "scaling": {"minIdle": 3, "maxRunners": 5}}),
    )
    .await;

    w.wait_settled("spill", 3).await;
    let groups = w.groups_of("spill");
    let west = groups.iter().filter(|g| g.location == "westeurope").count();
    let north = groups.iter().filter(|g| g.location == "northeurope").count();
    assert!(west <= 1, "{}", w.world("spill"));
    assert_eq!(west + north, 3, "{}", w.world("spill"));
    assert!(north >= 2, "{}", w.world("spill"));
    let msg = w.wait_warning("spill", "CapacityUnavailable").await;
    assert!(msg.contains("westeurope"), "{msg}");
    let p = w.get_pool("spill").await.unwrap();
    assert!(cond_is(&p, "Stalled", "False", None), "{:?}", p.status);

    // Every location full: the pool waits (Reconciling CapacityUnavailable, not Stalled) ...
    let full: std::collections::BTreeMap<String, u32> =
        [("westeurope".to_string(), west as u32), ("northeurope".to_string(), north as u32)].into();
    w.sim.arm.set_faults(FaultConfig { capacity: full, ..FaultConfig::default() });
    w.apply(
        "spill",
        json!({"azure": {"fallbackLocations": ["northeurope"]}, "scaling": {"minIdle": 4, "maxRunners": 5}}),
    )
    .await;
    let p = w
        .wait_pool("spill", "Reconciling/CapacityUnavailable", T, |p| {
            cond_is(p, "Reconciling", "True", Some("CapacityUnavailable"))
        })
        .await;
    assert!(cond_is(&p, "Stalled", "False", None), "{:?}", p.status);
    assert!(cond_is(&p, "Ready", "False", Some("CapacityUnavailable")), "{:?}", p.status);
    assert_eq!(w.groups_of("spill").len(), 3, "{}", w.world("spill"));
    // ... and creates once capacity is back (after the cool-down), without a spec change.
    w.sim.arm.set_faults(FaultConfig::default());
    w.wait_settled("spill", 4).await;
    assert_eq!(w.sim.github.runners().len(), 4, "{}", w.world("spill"));
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inaccessible_image_stalls_with_invalid_image_and_leaks_no_registration() {
    let image = "registry.example.invalid/private/runner:1.0";
    let mut w = World::builder("e2e-image")
        .seed(73)
        .arm_faults(FaultConfig { inaccessible_images: [image.to_string()].into(), ..FaultConfig::default() })
        .start()
        .await;
    w.apply("image", json!({"runner": {"image": image}, "scaling": {"minIdle": 2}})).await;

    let p = w.wait_stalled("image", "InvalidImage").await;
    assert!(cond_is(&p, "Ready", "False", Some("InvalidImage")), "{:?}", p.status);
    let msg = w.wait_warning("image", "InvalidImage").await;
    assert!(msg.contains("InaccessibleImage") || msg.contains("not accessible"), "{msg}");
    assert!(w.groups_of("image").is_empty(), "{}", w.world("image"));
    // Refused creates are retried with the per-pool backoff (0.5 s doubling up to 4 s here):
    // passes of refusals are spaced, the retries go on while Stalled, and never hammer.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let refused = refused_creates(&w.sim, "InaccessibleImage");
    let mut passes: Vec<chrono::DateTime<chrono::Utc>> = Vec::new();
    for t in &refused {
        if passes.last().is_none_or(|last| *t - *last > chrono::Duration::milliseconds(300)) {
            passes.push(*t);
        }
    }
    assert!(passes.len() >= 4, "retries stopped: {refused:?}");
    assert!(refused.len() <= 2 * passes.len(), "more than minIdle creates per pass: {refused:?}");
    for pair in passes.windows(2) {
        assert!(pair[1] - pair[0] >= chrono::Duration::milliseconds(450), "not backed off: {passes:?}");
    }
    // The JIT registrations minted for the refused creates are removed.
    let leaked =
        eventually(Duration::from_secs(10), || async { w.runners_of("image").is_empty().then_some(()) })
            .await;
    assert!(leaked.is_some(), "registrations of refused creates leaked: {}", w.world("image"));

    // A controller restart (rolling update, new leader) does not un-stall the pool: nothing
    // changed, the next attempt fails the same way (no Stalled False/True flap, no alert noise).
    let seen = conditions_across_a_restart(&mut w, "image", Duration::from_secs(5)).await;
    assert!(seen.iter().all(|l| l.contains("Stalled=True/InvalidImage")), "{seen:#?}");

    // The change the Stalled pool waits for: back to the default image → Ready.
    w.apply_settled("image", 2, 10).await;
    w.stop().await;
}

/// The simulators hold one registration and one container group, nothing left over (`pool`
/// names the pool for the failure message).
fn assert_one_runner_left(w: &World, pool: &str) {
    let all: Vec<String> = w.sim.github.runners().into_iter().map(|r| r.name).collect();
    assert_eq!(all.len(), 1, "leftover registrations: {all:?}");
    assert_eq!(w.sim.arm.groups().len(), 1, "leftover groups: {}", w.world(pool));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_server_error_bursts_leave_no_leaked_groups_or_registrations() {
    let mut w = World::start("e2e-gh5xx", 74).await;
    w.apply_settled("gh", 2, 8).await;

    // Bursts of 5xx on every GitHub operation while the pool scales up and then down.
    let burst = GithubFaults {
        ops: OPERATIONS
            .iter()
            .map(|op| (op.to_string(), GhOpFaults { server_error: 0.5, ..GhOpFaults::default() }))
            .collect(),
        ..GithubFaults::default()
    };
    w.sim.github.set_faults(burst.clone());
    w.apply("gh", json!({"scaling": {"minIdle": 5, "maxRunners": 8}})).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    w.sim.github.set_faults(GithubFaults::default());
    tokio::time::sleep(Duration::from_millis(500)).await;
    w.sim.github.set_faults(GithubFaults { seed: 7, ..burst });
    w.apply("gh", json!({"scaling": {"minIdle": 1, "maxRunners": 8}})).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let errors = answers_where(&w.sim.github.call_counts(), |s| s >= 500);
    assert!(errors > 0, "the bursts injected no 5xx: {:?}", w.sim.github.call_counts());
    w.sim.github.set_faults(GithubFaults::default());

    // After the faults: one idle runner, its group, nothing else in Azure or GitHub.
    w.wait_settled("gh", 1).await;
    assert_one_runner_left(&w, "gh");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_errors_and_throttling_leave_no_leaked_groups_or_registrations() {
    let mut w = World::start("e2e-arm5xx", 75).await;
    w.apply_settled("arm", 2, 8).await;
    let sampler = GroupSampler::start(&w.sim, "arm");

    // 500s, 503s and 429s on creates, deletes and lists while the pool scales up, then down.
    let op = |internal_error: f64, unavailable: f64, throttle: f64| OpFaults {
        throttle,
        internal_error,
        unavailable,
        latency_ms: 0,
    };
    let faults = FaultConfig {
        ops: [
            ("create".to_string(), op(0.3, 0.1, 0.2)),
            ("delete".to_string(), op(0.3, 0.2, 0.0)),
            ("list".to_string(), op(0.2, 0.2, 0.1)),
        ]
        .into(),
        ..FaultConfig::default()
    };
    w.sim.arm.set_faults(faults.clone());
    w.apply("arm", json!({"scaling": {"minIdle": 6, "maxRunners": 8}})).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    w.sim.arm.set_faults(FaultConfig { seed: 99, ..faults });
    w.apply("arm", json!({"scaling": {"minIdle": 1, "maxRunners": 8}})).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let errors = answers_where(&w.sim.arm.call_counts(), |s| s >= 500 || s == 429);
    assert!(errors > 0, "no injected errors: {:?}", w.sim.arm.call_counts());
    w.sim.arm.set_faults(FaultConfig::default());

    w.wait_settled("arm", 1).await;
    let max = sampler.finish().await;
    assert!(max <= 8, "{max} groups at once for maxRunners 8");
    assert_one_runner_left(&w, "arm");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashing_runners_stall_the_pool_and_it_recovers_once_they_stop_crashing() {
    // Every runner process exits with 1 before it registers (a broken image entrypoint).
    let crashing = FaultConfig { crash_before_registration: 1.0, ..FaultConfig::default() };
    let mut w = World::builder("e2e-crash").seed(76).arm_faults(crashing).start_pool("crash", 2, 4).await;

    // docs/planner.md: the same failure `stall_after` (3) times in a row → Stalled with it.
    w.wait_stalled("crash", "ContainerCrashed").await;
    w.wait_warning("crash", "ContainerCrashed").await;
    let groups = w.groups_of("crash").len();
    assert!(groups <= 4, "{}", w.world("crash"));

    // The cause goes away without a spec change: creates still retry after the backoff.
    w.sim.arm.set_faults(FaultConfig::default());
    w.wait_settled("crash", 2).await;
    let p = w.get_pool("crash").await.unwrap();
    assert!(cond_is(&p, "Stalled", "False", None), "{:?}", p.status);
    // Crashed groups and their registrations were all removed.
    assert_eq!(w.sim.arm.groups().len(), 2, "{}", w.world("crash"));
    assert_eq!(w.sim.github.runners().len(), 2, "{}", w.world("crash"));
    w.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 8. Two replicas: only the leader acts; the standby takes over after a graceful stop.
// ---------------------------------------------------------------------------------------------

/// The `create_runner` actions that succeeded, from a controller's `/metrics`.
fn runners_created(metrics: &str) -> f64 {
    metric_sum(
        metrics,
        "aci_runner_controller_actions_total",
        &[("action", "create_runner"), ("result", "ok")],
    )
}

async fn readyz(ctl: &ControllerHandle) -> String {
    match reqwest::get(format!("http://{}/readyz", ctl.health_addr)).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(e) => format!("error: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_only_the_leader_acts_and_the_standby_takes_over() {
    let w = World::builder("e2e-leader").seed(8).no_controller().start().await;
    let opts = |id: &str| w.opts.clone().elected("aci-runner-controller-e2e", id);
    // Both start at once (as a Deployment's replicas do): they race to create the Lease.
    let (x, y) = tokio::join!(w.spawn_controller(opts("replica-a")), w.spawn_controller(opts("replica-b")));
    let leader = eventually(Duration::from_secs(15), || async {
        match (readyz(&x).await.as_str(), readyz(&y).await.as_str()) {
            ("ok (leader)", "ok (standby)") => Some(true),
            ("ok (standby)", "ok (leader)") => Some(false),
            _ => None,
        }
    })
    .await;
    let Some(x_leads) = leader else {
        panic!("no single leader: {} / {}", readyz(&x).await, readyz(&y).await);
    };
    assert!(!x.is_finished() && !y.is_finished(), "a replica exited");
    let (a, b) = if x_leads { (x, y) } else { (y, x) };

    let first = w.apply_settled("leader", 2, 10).await;
    // Let the standby see several resync intervals.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ma = a.metrics().await.unwrap();
    let mb = b.metrics().await.unwrap();
    assert!(runners_created(&ma) >= 2.0, "{ma}");
    assert!(metric_sum(&ma, "aci_runner_controller_reconcile_total", &[]) > 0.0, "{ma}");
    assert_eq!(metric_sum(&mb, "aci_runner_controller_actions_total", &[]), 0.0, "standby acted: {mb}");
    assert_eq!(
        metric_sum(&mb, "aci_runner_controller_reconcile_total", &[]),
        0.0,
        "standby reconciled: {mb}"
    );
    assert_eq!(readyz(&b).await, "ok (standby)");
    assert_eq!(one_to_one_online(&w.sim, "leader"), Some(first.clone()));

    // Graceful stop of the leader releases the Lease; the standby takes over and acts.
    a.stop().await.unwrap();
    let took_over =
        eventually(Duration::from_secs(25), || async { (readyz(&b).await == "ok (leader)").then_some(()) })
            .await;
    assert!(took_over.is_some(), "replica-b never took over: {}", readyz(&b).await);
    // The same runners are adopted, not replaced.
    assert_eq!(one_to_one_online(&w.sim, "leader"), Some(first.clone()), "{}", w.world("leader"));
    let after = w.apply_settled("leader", 3, 10).await;
    assert!(first.is_subset(&after), "{first:?} vs {after:?}");
    let mb = b.metrics().await.unwrap();
    assert_eq!(runners_created(&mb), 1.0, "{mb}");
    b.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_lease_is_taken_stops_acting() {
    use k8s_openapi::api::coordination::v1::Lease;
    let w = World::builder("e2e-steal").seed(81).no_controller().start().await;
    let opts = w.opts.clone().elected("aci-runner-controller-steal", "replica-a");
    let a = w.spawn_controller(opts).await;
    w.apply_settled("steal", 1, 10).await;

    // Another holder takes the Lease (e.g. replica-a's renewals did not reach the API server in
    // time and a successor acquired it): replica-a must notice and stop acting.
    let leases: Api<Lease> = Api::namespaced(w.client.clone(), &w.ns);
    let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
    leases
        .patch(
            "aci-runner-controller-steal",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {
                "holderIdentity": "intruder", "acquireTime": now, "renewTime": now,
                "leaseDurationSeconds": 3600
            }})),
        )
        .await
        .unwrap();
    let exited = eventually(Duration::from_secs(25), || async { a.is_finished().then_some(()) }).await;
    assert!(exited.is_some(), "replica-a still runs after losing its Lease");
    let res = a.stop().await;
    assert!(res.as_ref().is_err_and(|e| e.to_string().contains("lost leadership")), "{res:?}");

    // Nobody acts while the intruder holds the Lease.
    w.apply("steal", json!({"scaling": {"minIdle": 2}})).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(w.groups_of("steal").len(), 1, "{}", w.world("steal"));
}

// ---------------------------------------------------------------------------------------------
// 9. Bad input: Stalled with the right reason, a Warning Event, nothing deleted.
// ---------------------------------------------------------------------------------------------

fn other_rsa_key_pem() -> String {
    use rsa::pkcs1::EncodeRsaPrivateKey;
    let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap();
    key.to_pkcs1_pem(rsa::pkcs8::LineEnding::LF).unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_stalls_with_the_reason_and_deletes_nothing() {
    let mut w = World::builder("e2e-badinput").seed(9).no_controller().start().await;
    let creds = w.sim.github.app_credentials();
    w.apply_secret("bad-key",
        json!({"appId": creds.app_id.to_string(), "installationId": "1001", "privateKey": "-----BEGIN RSA PRIVATE KEY-----\nnot a key\n-----END RSA PRIVATE KEY-----\n"}),
    )
    .await;
    w.apply_secret(
        "no-installation",
        json!({"appId": creds.app_id.to_string(), "privateKey": creds.private_key_pem}),
    )
    .await;
    w.start_controller().await;

    // A pool with runners, whose Secret is later deleted, broken, and whose spec is made invalid.
    w.apply("keeps", json!({"github": {"appSecretRef": {"name": "keeps-app"}}, "scaling": {"minIdle": 2}}))
        .await;
    apply_app_secret(&w.client, &w.ns, "keeps-app", &w.sim).await.unwrap();
    // Pools that are bad from the start.
    w.apply("nosecret", json!({"github": {"appSecretRef": {"name": "absent"}}})).await;
    w.apply("badkey", json!({"github": {"appSecretRef": {"name": "bad-key"}}})).await;
    w.apply("nokey", json!({"github": {"appSecretRef": {"name": "no-installation"}}})).await;
    // minIdle > maxRunners: a CEL rule the 1.20 API server does not enforce; validate() does.
    w.apply("invalid", json!({"scaling": {"minIdle": 8, "maxRunners": 4}})).await;

    for (pool, reason) in [
        ("nosecret", "SecretNotFound"),
        ("badkey", "InvalidAppKey"),
        ("nokey", "SecretKeyMissing"),
        ("invalid", "InvalidSpec"),
    ] {
        let p = w.wait_stalled(pool, reason).await;
        assert!(cond_is(&p, "Ready", "False", Some(reason)), "{pool}: {:?}", p.status);
        assert!(cond_is(&p, "Reconciling", "False", None), "{pool}: {:?}", p.status);
        let msg = w.wait_warning(pool, reason).await;
        assert!(!msg.contains("BEGIN") && !msg.contains("not a key"), "{pool}: event leaks the key: {msg}");
        let cond_msg =
            p.status.as_ref().unwrap().conditions.iter().map(|c| c.message.clone()).collect::<Vec<_>>();
        assert!(cond_msg.iter().all(|m| !m.contains("not a key")), "{cond_msg:?}");
        assert!(w.groups_of(pool).is_empty(), "{pool}: {}", w.world(pool));
        assert!(w.runners_of(pool).is_empty(), "{pool}: {}", w.world(pool));
    }
    let p = w.get_pool("invalid").await.unwrap();
    let msg = condition(&p, "Stalled").map(|_| {
        p.status.as_ref().unwrap().conditions.iter().find(|c| c.type_ == "Stalled").unwrap().message.clone()
    });
    assert!(msg.as_deref().is_some_and(|m| m.contains("minIdle")), "{msg:?}");
    // The stalled gauge says the same (what alerts fire on).
    let m = w.metrics().await;
    for (pool, reason) in
        [("nosecret", "SecretNotFound"), ("badkey", "InvalidAppKey"), ("invalid", "InvalidSpec")]
    {
        let v = metric_sum(&m, "aci_runner_controller_pool_stalled", &[("pool", pool), ("reason", reason)]);
        assert_eq!(v, 1.0, "{pool}/{reason}: {m}");
    }

    let names = w.wait_settled("keeps", 2).await;
    let unchanged = |what: &str| {
        assert_eq!(one_to_one_online(&w.sim, "keeps"), Some(names.clone()), "{what}: {}", w.world("keeps"));
    };

    // The Secret is deleted: Stalled SecretNotFound; the runners stay (past gc grace and timeouts).
    w.delete_secret("keeps-app").await;
    w.wait_stalled("keeps", "SecretNotFound").await;
    w.wait_warning("keeps", "SecretNotFound").await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    unchanged("Secret deleted");

    // The Secret comes back with a broken key: Stalled InvalidAppKey; still nothing deleted.
    w.apply_secret(
        "keeps-app",
        json!({"appId": creds.app_id.to_string(), "installationId": "1001", "privateKey": "garbage"}),
    )
    .await;
    w.wait_stalled("keeps", "InvalidAppKey").await;
    w.wait_warning("keeps", "InvalidAppKey").await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    unchanged("bad key");

    // Good Secret, invalid spec: Stalled InvalidSpec; still nothing deleted.
    apply_app_secret(&w.client, &w.ns, "keeps-app", &w.sim).await.unwrap();
    w.apply("keeps",
        json!({"github": {"appSecretRef": {"name": "keeps-app"}}, "scaling": {"minIdle": 8, "maxRunners": 4}}),
    )
    .await;
    w.wait_stalled("keeps", "InvalidSpec").await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    unchanged("invalid spec");

    // Fixed: Ready again with the very same runners.
    w.apply("keeps", json!({"github": {"appSecretRef": {"name": "keeps-app"}}, "scaling": {"minIdle": 2}}))
        .await;
    let again = w.wait_settled("keeps", 2).await;
    assert_eq!(again, names, "{}", w.world("keeps"));
    let m = w.metrics().await;
    assert_eq!(
        metric_sum(&m, "aci_runner_controller_actions_total", &[("action", "delete_group")]),
        0.0,
        "{m}"
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_pool_whose_spec_became_invalid_still_removes_its_runners() {
    let mut w = World::start("e2e-invdel", 91).await;
    w.apply_settled("invdel", 2, 4).await;
    // An edit the 1.20 API server accepts and validate() rejects: Stalled, runners kept.
    w.apply("invdel", json!({"scaling": {"minIdle": 8, "maxRunners": 4}})).await;
    w.wait_stalled("invdel", "InvalidSpec").await;
    assert_eq!(w.groups_of("invdel").len(), 2, "{}", w.world("invdel"));

    // Deleting it: the Secret and Azure are fine, so the cleanup is done, not abandoned.
    w.delete_pool("invdel").await;
    let gone = w.wait_gone("invdel", T).await;
    let events = w.events_of("invdel").await;
    assert!(gone, "the pool was not removed; {}; events {events:#?}", w.world("invdel"));
    assert!(
        w.groups_of("invdel").is_empty() && w.runners_of("invdel").is_empty(),
        "left behind: {}; events {events:#?}",
        w.world("invdel")
    );
    assert!(!events.iter().any(|(_, r, _)| r == "CleanupAbandoned"), "{events:#?}");
    w.stop().await;
}

/// Pool `right.1` in namespace `right.0`, applied with spec `right.2`, settles at one runner;
/// 4 s later pool `wrong` is still Stalled AuthFailed (`borrowed` says what it does otherwise).
async fn still_auth_failed_beside(
    w: &World,
    right: (&str, &str, serde_json::Value),
    wrong: &str,
    borrowed: &str,
) {
    let (ns, name, spec) = right;
    w.apply_in(ns, name, spec).await;
    w.wait_settled_in(ns, name, 1).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let p = w.get_pool(wrong).await.unwrap();
    assert!(
        cond_is(&p, "Stalled", "True", Some("AuthFailed")),
        "{borrowed}: {:#?}; {}",
        p.status,
        w.world(wrong)
    );
}

/// A Secret with a well-formed RSA key that is not the App's (rotated, mixed up, or someone
/// else's installation id with a key of their own): GitHub refuses its JWT, so the pool is
/// Stalled AuthFailed, and stays so when another pool (here in another namespace) holds the
/// right key for the same installation: its installation token must not be lent to a pool that
/// cannot mint one itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_app_key_stalls_auth_failed_and_never_borrows_another_pools_token() {
    let mut w = World::builder("e2e-wrongkey")
        .seed(92)
        .extra_namespace("e2e-rightkey")
        .without_app_secret()
        .no_controller()
        .start()
        .await;
    let other_ns = w.extra_ns[0].clone();
    let creds = w.sim.github.app_credentials();
    w.apply_secret(
        "wrong-key",
        json!({"appId": creds.app_id.to_string(), "installationId": "1001", "privateKey": other_rsa_key_pem()}),
    )
    .await;
    apply_app_secret(&w.client, &other_ns, "github-app", &w.sim).await.unwrap();
    w.start_controller().await;

    w.apply("wrongkey", json!({"github": {"appSecretRef": {"name": "wrong-key"}}})).await;
    w.wait_stalled("wrongkey", "AuthFailed").await;
    w.wait_warning("wrongkey", "AuthFailed").await;

    // The right key for the same installation, in another namespace.
    let right = json!({"scaling": {"minIdle": 1}});
    let borrowed = "the pool with the wrong key acts with another pool's installation token";
    still_auth_failed_beside(&w, (&other_ns, "rightkey", right), "wrongkey", borrowed).await;
    assert!(w.runners_of("wrongkey").is_empty(), "{}", w.world("wrongkey"));
    assert!(w.groups_of("wrongkey").is_empty(), "{}", w.world("wrongkey"));
    w.stop().await;
}

/// Two pools bring their own Azure service principal (`credentialsSecretRef`) with the same
/// tenant and client id, one with a wrong client secret. The wrong one is Stalled AuthFailed
/// and must neither poison the other's credentials (created first) nor borrow them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_azure_client_secret_neither_poisons_nor_borrows_anothers_credentials() {
    let mut w =
        World::builder("e2e-wrongsp").seed(93).extra_namespace("e2e-rightsp").no_controller().start().await;
    let other_ns = w.extra_ns[0].clone();
    let sim = w.sim.clone();
    let sp = |secret: String| json!({"tenantId": sim.arm.tenant_id(), "clientId": sim.arm.client_id(), "clientSecret": secret});
    w.apply_secret("azure-sp", sp("not-the-secret".into())).await;
    w.apply_secret_in(&other_ns, "azure-sp", sp(sim.arm.client_secret())).await;
    w.start_controller().await;
    let with_sp = json!({"azure": {"credentialsSecretRef": {"name": "azure-sp"}}, "scaling": {"minIdle": 1}});

    w.apply("wrongsp", with_sp.clone()).await;
    w.wait_stalled("wrongsp", "AuthFailed").await;
    let msg = w.wait_warning("wrongsp", "AuthFailed").await;
    assert!(!msg.contains("not-the-secret"), "{msg}");

    // Same tenant and client id, right secret, in another namespace: works.
    let borrowed = "the pool with the wrong secret acts with another pool's Azure credentials";
    still_auth_failed_beside(&w, (&other_ns, "rightsp", with_sp), "wrongsp", borrowed).await;
    assert!(w.groups_of("wrongsp").is_empty(), "{}", w.world("wrongsp"));
    w.stop().await;
}

/// Moving a pool to another resource group. Idle runners of the old spec are not replaced
/// (docs/planner.md, known limits), but once they ran their job (ephemeral JIT runners) their
/// finished container groups in the old resource group must be removed, not leaked: they are
/// no longer in the pool's list, and no other pool sweeps that resource group.
///
/// The jobs are queued once the pool's status is of the new generation (the controller acts on
/// the new spec); a fixed 2 s sleep assumed it did by then, else the old runners' replacements
/// would go to the old resource group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runners_left_in_the_old_resource_group_are_removed_after_their_job() {
    let mut w = World::start("e2e-moverg", 94).await;
    let before = w.apply_settled("move", 2, 10).await;

    w.apply("move", json!({"azure": {"resourceGroup": "rg-other"}, "scaling": {"minIdle": 2}})).await;
    w.wait_pool("move", "at the new generation", T, |p| {
        p.status.as_ref().and_then(|s| s.observed_generation) == p.metadata.generation
    })
    .await;
    // The old runners each run a job and finish (ephemeral); new ones come in rg-other.
    w.sim.github.enqueue_jobs(jobs(&["self-hosted", "aci"], 1.0, 2)).unwrap();
    let moved = eventually(T, || async {
        let groups = w.groups_of("move");
        let p = w.get_pool("move").await?;
        (ready_with(&p, 2)
            && groups.len() == 2
            && groups.iter().all(|g| g.resource_group == "rg-other")
            && one_to_one_online(&w.sim, "move").is_some())
        .then_some(())
    })
    .await;
    let groups: Vec<(String, String, String)> =
        w.groups_of("move").into_iter().map(|g| (g.name, g.resource_group, g.state)).collect();
    let jobs: Vec<(String, Option<String>)> =
        w.sim.github.jobs().into_iter().map(|j| (format!("{:?}", j.status), j.runner_name)).collect();
    assert!(moved.is_some(), "old runners {before:?}; now {groups:?}; jobs {jobs:?}; {}", w.world("move"));
    w.stop().await;
}

/// An identity with rights on the resource group only cannot list the subscription (ARM answers
/// every subscription-wide list with an error here): the GC sweep falls back to the resource
/// groups in use, and orphans there are still collected; the live pool's runners are untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphans_are_collected_when_the_subscription_cannot_be_listed() {
    let mut w = World::builder("e2e-gcfallback")
        .seed(95)
        .arm_faults(op_faults("listAll", OpFaults { internal_error: 1.0, ..OpFaults::default() }))
        .start()
        .await;
    w.apply("gone", json!({"scaling": {"minIdle": 2}})).await;
    w.apply("kept", json!({"scaling": {"minIdle": 1}, "github": {"labels": ["spare"]}})).await;
    let gone = w.wait_settled("gone", 2).await;
    let kept = w.wait_settled("kept", 1).await;

    // "gone" disappears while no controller runs, without its finalizer.
    w.stop().await;
    w.delete_without_cleanup("gone").await;
    assert_eq!(w.groups_of("gone").len(), 2, "nothing ran the finalizer");

    w.start_controller().await;
    let collected = eventually(T, || async {
        (w.groups_of("gone").is_empty() && w.runners_of("gone").is_empty()).then_some(())
    })
    .await;
    assert!(collected.is_some(), "orphans {gone:?} never collected; {}", w.world("gone"));
    let failed_list_all: u64 = w
        .sim
        .arm
        .call_counts()
        .get("listAll")
        .map(|m| m.iter().filter(|(s, _)| **s >= 500).map(|(_, n)| n).sum())
        .unwrap_or(0);
    assert!(failed_list_all > 0, "the subscription-wide list was never tried: {:?}", w.sim.arm.call_counts());
    assert_eq!(
        one_to_one_online(&w.sim, "kept"),
        Some(kept),
        "the live pool was touched; {}",
        w.world("kept")
    );
    w.stop().await;
}
