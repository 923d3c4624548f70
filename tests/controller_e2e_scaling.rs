//! The reconciler end to end (issue 6, tests 2–5): demand scaling through webhooks, scale-down
//! of idle runners only, garbage collection (leaked registrations, crashed groups, orphans of a
//! pool deleted while no controller ran) and deletion (drain, drainTimeout, orphan policy).
//!
//! Real kube-apiserver (scripts/control-plane), the simulated Azure and GitHub, and the
//! controller (`run_with`, production edges) in this process; one namespace, simulator and
//! controller per test.
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use aci_runner_controller::azure::template::{TAG_MANAGED_BY, TAG_POOL_NAME, TAG_POOL_UID};
use aci_runner_devkit::sim::github::{JobRecord, JobStatus, RunnerRecord};
use aci_runner_devkit::sim::{self, Simulator};
use aci_runner_devkit::testing::harness::{
    ORG, condition, eventually, fast_sim_options, groups_of, pool_manifest,
};
use aci_runner_devkit::testing::world::{T, World};
use serde_json::json;

/// The harness's fast simulator, with deletes as Azure answers them: 202 Accepted, the group
/// shows `Deleting` for a while before it is gone.
fn sim_options(seed: u64) -> sim::SimOptions {
    let mut o = fast_sim_options(seed);
    o.arm.delete_mode = aci_runner_devkit::sim::arm::DeleteMode::Async;
    o.arm.delete_delay_ms = 500;
    o
}

/// The usual world of these tests: [`sim_options`] with `seed`, one controller.
async fn scaling_world(prefix: &str, seed: u64) -> World {
    World::builder(prefix).sim_options(sim_options(seed)).start().await
}

/// A [`scaling_world`] with the pool `pool` ready at `idle` runners, one of which then takes a
/// job of 20 s (simulated).
async fn busy_pool(prefix: &str, seed: u64, pool: &str, idle: i32) -> (World, JobRecord, RunnerRecord) {
    let w = scaling_world(prefix, seed).await;
    w.apply_ready(pool, idle).await;
    let (job, busy) = w.busy_with_one_job(pool, 20.0).await;
    (w, job, busy)
}

/// The end of a test that reports its time: no Warning about `pool`, the controller stops, and
/// how long test `test` took since `started`.
async fn finish_timed(mut w: World, pool: &str, test: &str, started: std::time::Instant) {
    w.expect_no_warnings(pool).await;
    w.stop().await;
    eprintln!("test {test} took {:?}", started.elapsed());
}

/// How many of the jobs `job_ids` GitHub shows completed.
fn completed_among(w: &World, job_ids: &BTreeSet<i64>) -> usize {
    w.sim.github.jobs().iter().filter(|j| job_ids.contains(&j.id) && j.status == JobStatus::Completed).count()
}

/// [`scaling_world`] with a GC grace period of 3 s.
async fn gc_world(prefix: &str, seed: u64) -> World {
    World::builder(prefix)
        .sim_options(sim_options(seed))
        .controller(|o| o.args.gc_grace = Duration::from_secs(3))
        .start()
        .await
}

/// The job `job_id` ran on one of the groups of `runners` (name → registration id) and succeeded,
/// and every one of those groups was deleted `grace` or more after `since`: the one that ran the
/// job once the job was done, every other one after its registration was removed.
fn assert_collected_after_grace(
    w: &World,
    runners: &BTreeMap<String, i64>,
    since: chrono::DateTime<chrono::Utc>,
    grace: Duration,
    job_id: i64,
    what: &str,
) {
    let j = w.job(job_id);
    let busy = j.runner_name.clone().unwrap();
    assert!(runners.contains_key(&busy), "{j:?}");
    assert_eq!(j.conclusion.as_deref(), Some("success"), "the {what} was killed mid-job: {j:?}");
    for (name, id) in runners {
        let deleted = group_deleted_at(&w.sim, name).unwrap_or_else(|| panic!("{name} never deleted"));
        let waited = (deleted - since).to_std().unwrap_or_default();
        assert!(waited >= grace, "{name} deleted {waited:?} after the restart (grace {grace:?})");
        if *name == busy {
            assert!(
                j.completed_at.is_some_and(|c| deleted >= c),
                "{name} deleted at {deleted} during its job {j:?}"
            );
        } else {
            let unreg = unregistered_at(&w.sim, *id).unwrap_or_else(|| panic!("{name} never unregistered"));
            assert!(unreg <= deleted, "{name}: group deleted before its registration");
        }
    }
}

/// Groups of the pool that are not being deleted (a `Deleting` group no longer runs a runner).
fn live_groups_of(sim: &Simulator, pool: &str) -> usize {
    groups_of(sim, pool).iter().filter(|g| g.provisioning_state != "Deleting").count()
}

fn names<T>(items: &[T], f: impl Fn(&T) -> &str) -> BTreeSet<String> {
    items.iter().map(|i| f(i).to_string()).collect()
}

/// Sim time of the first successful GitHub `DELETE .../runners/{id}`.
fn unregistered_at(sim: &Simulator, id: i64) -> Option<chrono::DateTime<chrono::Utc>> {
    let suffix = format!("/actions/runners/{id}");
    sim.github
        .calls()
        .into_iter()
        .find(|c| c.op == "delete_runner" && c.path.ends_with(&suffix) && c.status < 300)
        .map(|c| c.at)
}

/// Sim time of the first successful ARM `DELETE .../containerGroups/{name}`.
fn group_deleted_at(sim: &Simulator, name: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    let suffix = format!("/containerGroups/{name}");
    sim.arm
        .calls()
        .into_iter()
        .find(|c| {
            c.op == "delete"
                && c.path.split('?').next().is_some_and(|p| p.ends_with(&suffix))
                && c.status < 300
        })
        .map(|c| c.at)
}

/// Wait until the simulated ARM has answered at least `list_all` subscription-wide and `list`
/// resource-group lists since `since`. Passes that list run one after the other, so the n-th
/// list shows that the passes before it are done.
async fn wait_listed(w: &World, since: chrono::DateTime<chrono::Utc>, list_all: usize, list: usize) {
    let count =
        |op: &str| w.sim.arm.calls().iter().filter(|c| c.op == op && c.at >= since && c.status < 300).count();
    let listed =
        eventually(T, || async { (count("listAll") >= list_all && count("list") >= list).then_some(()) })
            .await;
    assert!(listed.is_some(), "{} listAll and {} list calls since {since}", count("listAll"), count("list"));
}

/// Register a runner directly through the simulated GitHub API (a PAT), as a leaked JIT
/// registration whose container never started: it stays offline.
async fn leak_registration(sim: &Simulator, name: &str, labels: &[&str]) -> i64 {
    let creds = sim.github.app_credentials();
    let pat = creds.pats.first().expect("the simulator has a PAT").clone();
    let r = reqwest::Client::new()
        .post(format!("{}/orgs/{ORG}/actions/runners/generate-jitconfig", sim.github.url()))
        .bearer_auth(pat)
        .header("accept", "application/vnd.github+json")
        .header("user-agent", "e2e")
        .json(&json!({"name": name, "runner_group_id": 1, "labels": labels}))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(status.is_success(), "generate-jitconfig answered {status}: {body}");
    body["runner"]["id"].as_i64().unwrap()
}

/// GitHub `DELETE .../runners/{id}` calls refused (422: the runner is busy).
fn refused_unregisters(sim: &Simulator, id: i64) -> usize {
    let suffix = format!("/actions/runners/{id}");
    sim.github
        .calls()
        .iter()
        .filter(|c| c.op == "delete_runner" && c.path.ends_with(&suffix) && c.status == 422)
        .count()
}

// ---------------------------------------------------------------------------------------------
// 2. demand via webhook → scale up within maxRunners; jobs complete; runners recycled; 2 idle.
// ---------------------------------------------------------------------------------------------
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_jobs_scale_up_within_max_runners_and_converge_back_to_min_idle() {
    let secret = "e2e-burst-webhook-secret";
    let mut w = World::builder("e2e-burst").sim_options(sim_options(2)).webhooks(secret).start().await;
    assert!(w.ctl().webhook_addr.is_some());
    let (min_idle, max_runners) = (2, 6);
    w.apply("burst", json!({"scaling": {"minIdle": min_idle, "maxRunners": max_runners}})).await;
    w.wait_ready("burst", min_idle).await;
    let initial: BTreeSet<String> = names(&w.groups_of("burst"), |g| &g.name);

    // Jobs this pool cannot run (a label it lacks) are no demand for it.
    // The 3 s below start once the controller has answered their webhooks (the simulator's
    // delivery log), however long the delivery took.
    w.enqueue(&["self-hosted", "aci", "gpu"], 3.0, 5);
    let answered = || w.sim.github.deliveries().iter().any(|d| d.action == "queued" && d.status.is_some());
    let delivered = eventually(T, || async { answered().then_some(()) }).await;
    assert!(delivered.is_some(), "no webhook was delivered: {:?}", w.sim.github.deliveries());
    let t = tokio::time::Instant::now();
    while t.elapsed() < Duration::from_secs(3) {
        let p = w.get_pool("burst").await.unwrap();
        let desired = p.status.as_ref().map(|s| s.desired);
        assert_eq!(desired, Some(min_idle), "non-matching jobs counted as demand");
        assert_eq!(w.groups_of("burst").len(), min_idle as usize);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let t0 = std::time::Instant::now();

    let jobs = w.enqueue(&["self-hosted", "aci"], 3.0, 10);
    let job_ids: BTreeSet<i64> = jobs.iter().map(|j| j.id).collect();
    assert_eq!(job_ids.len(), 10);

    // Poll: the most groups that existed at once, and whether the controller ever wanted more
    // than busy + minIdle (only queued demand from the webhooks can make it want that).
    let mut max_groups = 0usize;
    let mut max_registrations = 0usize;
    let mut demand_seen = false;
    let mut all_groups = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut converged = None;
    let mut jobs_done_after = None;
    while tokio::time::Instant::now() < deadline {
        let groups = w.groups_of("burst");
        let regs = w.runners_of("burst");
        max_groups = max_groups.max(live_groups_of(&w.sim, "burst"));
        max_registrations = max_registrations.max(regs.len());
        all_groups.extend(groups.iter().map(|g| g.name.clone()));
        if let Some(p) = w.get_pool("burst").await
            && let Some(st) = p.status.clone()
        {
            if st.desired > st.busy + min_idle {
                demand_seen = true;
            }
            let done = completed_among(&w, &job_ids) == 10;
            if done && jobs_done_after.is_none() {
                jobs_done_after = Some(t0.elapsed());
            }
            let settled = done
                && groups.len() == min_idle as usize
                && regs.len() == min_idle as usize
                && regs.iter().all(|r| r.online && !r.busy)
                && condition(&p, "Ready").map(|c| c.0) == Some("True".into())
                && (st.idle, st.busy, st.desired) == (min_idle, 0, min_idle);
            if settled {
                eprintln!("burst: jobs done after {jobs_done_after:?}, settled after {:?}", t0.elapsed());
                converged = Some(());
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if converged.is_none() {
        let jobs: Vec<_> =
            w.sim.github.jobs().into_iter().map(|j| (j.id, j.status, j.conclusion, j.runner_name)).collect();
        panic!("never converged back to {min_idle} idle; jobs {jobs:?}\n{}", w.describe("burst").await);
    }

    // Scaled up because of the queued jobs, within maxRunners (and no quota was hit).
    assert!(demand_seen, "the controller never wanted more than busy + minIdle: webhook demand was not used");
    assert!(max_groups > min_idle as usize, "never scaled above minIdle: max {max_groups} groups");
    // Groups being deleted (Azure deletes take a while) no longer run a runner and do not count.
    assert!(max_groups <= max_runners as usize, "{max_groups} live groups > maxRunners {max_runners}");
    assert!(max_registrations <= max_runners as usize, "{max_registrations} registrations > maxRunners");
    assert_eq!(w.sim.arm.quota_rejections(), 0);
    // Every webhook delivery was accepted by the controller.
    let deliveries = w.sim.github.deliveries();
    assert!(!deliveries.is_empty());
    assert!(deliveries.iter().all(|d| d.status.is_some_and(|s| (200..300).contains(&s))), "{deliveries:?}");

    // Every job succeeded, each on its own (ephemeral) runner, and none of those runners is left.
    let done: Vec<_> = w.sim.github.jobs().into_iter().filter(|j| job_ids.contains(&j.id)).collect();
    assert!(done.iter().all(|j| j.conclusion.as_deref() == Some("success")), "{done:?}");
    let ran_on: BTreeSet<String> = done.iter().filter_map(|j| j.runner_name.clone()).collect();
    assert_eq!(ran_on.len(), 10, "ephemeral runners take one job each: {ran_on:?}");
    assert!(ran_on.iter().all(|n| n.starts_with("burst-")), "{ran_on:?}");
    assert!(ran_on.iter().all(|n| all_groups.contains(n) || initial.contains(n)));

    // End state: exactly minIdle idle runners; nothing else in Azure or GitHub.
    let groups = w.sim.arm.groups();
    let runners = w.sim.github.runners();
    assert_eq!(groups.len(), min_idle as usize, "{groups:?}");
    assert_eq!(runners.len(), min_idle as usize, "{runners:?}");
    assert_eq!(names(&groups, |g| &g.name), names(&runners, |r| &r.name));
    assert!(runners.iter().all(|r| r.online && !r.busy && r.jobs_done == 0), "{runners:?}");
    assert!(groups.iter().all(|g| !ran_on.contains(&g.name)));
    w.expect_event("burst", "ScaledUp", "").await;
    w.expect_event("burst", "RunnerRecycled", "").await;
    w.expect_no_warnings("burst").await;
    // The 5 jobs no pool can run were never stored (issue 16: demand only for a pool that takes
    // it); nothing is left queued.
    assert_eq!(w.metric("aci_runner_controller_demand_queue_length", &[]).await, 0.0);
    let no_pool = [("action", "queued"), ("result", "no_pool")];
    assert_eq!(w.metric("aci_runner_controller_webhook_deliveries_total", &no_pool).await, 5.0);
    let pool = [("namespace", w.ns.as_str()), ("pool", "burst")];
    assert_eq!(w.metric("aci_runner_controller_runners", &[pool[0], pool[1], ("state", "idle")]).await, 2.0);
    assert_eq!(w.metric("aci_runner_controller_runners", &[pool[0], pool[1], ("state", "busy")]).await, 0.0);
    let recycled = [("action", "delete_group"), ("reason", "Recycled"), ("result", "ok")];
    assert!(w.metric("aci_runner_controller_actions_total", &recycled).await >= 10.0);
    w.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 3. minIdle lowered → idle runners removed (registration, then group); the busy one untouched.
//
// minIdle is lowered as soon as GitHub shows the runner busy, before the controller's shared
// runner list (refreshed at most every 10 s) may have caught up: a stale list that still shows
// the runner idle must not get it removed either (GitHub refuses to unregister a busy runner,
// and the group delete is guarded by that unregister).
// ---------------------------------------------------------------------------------------------
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lowering_min_idle_removes_idle_runners_registration_first_and_never_the_busy_one() {
    let started = std::time::Instant::now();
    // Three runners, one of them busy with a long job.
    let (w, job, busy) = busy_pool("e2e-shrink", 3, "shrink", 3).await;
    assert_eq!(w.job(job.id).runner_name, Some(busy.name.clone()));

    w.apply("shrink", json!({"scaling": {"minIdle": 0}})).await;

    // The idle runners go; the busy one stays (group and registration) while its job runs.
    let mut others: BTreeMap<String, i64> = BTreeMap::new();
    let job_running = || w.job(job.id).status != JobStatus::Completed;
    let deadline = tokio::time::Instant::now() + T;
    let mut shrunk = false;
    while tokio::time::Instant::now() < deadline {
        let running = job_running();
        let groups = names(&w.groups_of("shrink"), |g| &g.name);
        let regs = w.runners_of("shrink");
        others.extend(regs.iter().filter(|r| r.id != busy.id).map(|r| (r.name.clone(), r.id)));
        if running {
            assert!(groups.contains(&busy.name), "the busy runner's group was removed while its job ran");
            assert!(
                regs.iter().any(|r| r.id == busy.id),
                "the busy runner was unregistered while its job ran"
            );
        }
        let only_busy = groups == BTreeSet::from([busy.name.clone()])
            && regs.len() == 1
            && regs[0].id == busy.id
            && regs[0].busy;
        if only_busy
            && let Some(p) = w.get_pool("shrink").await
            && let Some(st) = p.status.as_ref()
            && (st.desired, st.idle, st.busy) == (1, 0, 1)
        {
            shrunk = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !shrunk {
        panic!("idle runners not removed\n{}", w.describe("shrink").await);
    }
    assert!(job_running(), "the job ended before the idle runners were removed: the test proves nothing");
    assert!(others.len() >= 2, "{others:?}");
    assert!(unregistered_at(&w.sim, busy.id).is_none(), "the busy runner was unregistered");
    // A stale list may make the controller try once; GitHub's refusal must then refresh its view
    // instead of the same refused DELETE going out every pass.
    let refused = refused_unregisters(&w.sim, busy.id);
    assert!(refused <= 2, "{refused} refused unregisters of the busy runner");
    assert!(group_deleted_at(&w.sim, &busy.name).is_none(), "the busy runner's group was deleted");
    for (name, id) in &others {
        let unreg = unregistered_at(&w.sim, *id).unwrap_or_else(|| panic!("{name} was never unregistered"));
        let deleted =
            group_deleted_at(&w.sim, name).unwrap_or_else(|| panic!("{name}'s group was never deleted"));
        assert!(unreg <= deleted, "{name}: group deleted at {deleted} before unregistering at {unreg}");
    }

    // When the job ends, the ephemeral runner is recycled and nothing is left (minIdle 0).
    let empty = eventually(T, || async {
        let done =
            w.sim.github.jobs().iter().any(|j| j.id == job.id && j.conclusion.as_deref() == Some("success"));
        let p = w.get_pool("shrink").await?;
        let st = p.status.as_ref()?;
        (done
            && w.groups_of("shrink").is_empty()
            && w.runners_of("shrink").is_empty()
            && (st.desired, st.idle, st.busy) == (0, 0, 0)
            && condition(&p, "Ready").map(|c| c.0) == Some("True".into()))
        .then_some(())
    })
    .await;
    if empty.is_none() {
        panic!("busy runner not recycled after its job\n{}", w.describe("shrink").await);
    }
    assert!(w.sim.arm.groups().is_empty());
    assert!(w.sim.github.runners().is_empty());
    let first_removed = others.keys().next().unwrap().clone();
    w.expect_event("shrink", "ScaledDown", &first_removed).await;
    w.expect_event("shrink", "RunnerRecycled", &busy.name).await;
    finish_timed(w, "shrink", "3", started).await;
}

// ---------------------------------------------------------------------------------------------
// 4a. GC: an offline registration with the pool's prefix, labels and owner label but no group is
// removed; one without the owner label (another install's, or from before owner labels) is not.
// ---------------------------------------------------------------------------------------------
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_removes_an_offline_registration_without_a_group_after_the_grace_period() {
    let mut w = scaling_world("e2e-leak", 4).await;
    let grace = w.opts.args.gc_grace;
    w.apply_ready("leak", 1).await;
    let own = w.runners_of("leak").remove(0);

    // The controller derived its install id from this cluster: its owner label is known.
    let owner = w.owner_label("leak").await;
    assert!(w.runners_of("leak")[0].labels.contains(&owner), "{:?}", w.runners_of("leak"));
    let leaked_at = w.sim.clock.now();
    let leaked = leak_registration(&w.sim, "leak-zzzzz", &["aci", &owner]).await;
    // Not this pool's: other labels; a name that is not `<pool>-<5 chars>`; another prefix; no
    // owner label; another install's owner label.
    let foreign_labels = leak_registration(&w.sim, "leak-yyyyy", &["gpu", &owner]).await;
    let foreign_name = leak_registration(&w.sim, "leak-zzzzzz", &["aci", &owner]).await;
    let foreign_prefix = leak_registration(&w.sim, "leaky-zzzzz", &["aci", &owner]).await;
    let unlabelled = leak_registration(&w.sim, "leak-xxxxx", &["aci"]).await;
    let other = aci_runner_core::plan::install::InstallId::parse("other-install").unwrap();
    let other_label = aci_runner_core::plan::install::owner_label(&other, "uid-elsewhere");
    let other_install = leak_registration(&w.sim, "leak-wwwww", &["aci", &other_label]).await;
    let r = w.sim.github.runners().into_iter().find(|r| r.id == leaked).unwrap();
    assert!(!r.online && r.labels.contains(&"aci".to_string()), "{r:?}");

    let gone =
        eventually(T, || async { w.sim.github.runners().iter().all(|r| r.id != leaked).then_some(()) }).await;
    if gone.is_none() {
        panic!("leaked registration never removed\n{}", w.describe("leak").await);
    }
    // Mark, then confirm: not removed before the grace period.
    let at = unregistered_at(&w.sim, leaked).unwrap();
    let waited = (at - leaked_at).to_std().unwrap_or_default();
    assert!(waited >= grace, "removed {waited:?} after it appeared (grace {grace:?})");

    // A few more passes: nothing else was touched.
    tokio::time::sleep(grace * 2).await;
    let ids: BTreeSet<i64> = w.sim.github.runners().iter().map(|r| r.id).collect();
    for id in [foreign_labels, foreign_name, foreign_prefix, unlabelled, other_install, own.id as i64] {
        assert!(ids.contains(&id), "registration {id} was removed; left: {ids:?}");
    }
    assert_eq!(w.groups_of("leak").len(), 1);
    assert!(group_deleted_at(&w.sim, &own.name).is_none());
    let p = w.get_pool("leak").await.unwrap();
    assert_eq!(condition(&p, "Ready").map(|c| c.0).as_deref(), Some("True"), "{:?}", p.status);
    w.expect_event("leak", "GarbageCollected", "leak-zzzzz").await;
    w.expect_no_warnings("leak").await;
    let gc = [("action", "unregister_runner"), ("reason", "GarbageCollected"), ("result", "ok")];
    assert_eq!(w.metric("aci_runner_controller_actions_total", &gc).await, 1.0);
    w.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 4b. A crashed group is replaced: its registration and group go, a new runner comes up. The
// same for a runner whose registration was removed on GitHub by hand (its process stops).
// ---------------------------------------------------------------------------------------------
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_runner_group_is_removed_and_replaced() {
    let mut w = scaling_world("e2e-crash", 5).await;
    w.apply_ready("crash", 3).await;
    let before = w.runners_of("crash");
    let (victim, removed, survivor) = (before[0].clone(), before[1].clone(), before[2].clone());

    assert!(w.sim.arm.exit_container(&victim.name, 137), "no running container in {}", victim.name);
    let pat = w.sim.github.app_credentials().pats.first().expect("the simulator has a PAT").clone();
    let r = reqwest::Client::new()
        .delete(format!("{}/orgs/{ORG}/actions/runners/{}", w.sim.github.url(), removed.id))
        .bearer_auth(pat)
        .header("user-agent", "e2e")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);

    let replaced = eventually(T, || async {
        let groups = names(&w.groups_of("crash"), |g| &g.name);
        let regs = w.runners_of("crash");
        let p = w.get_pool("crash").await?;
        let st = p.status.as_ref()?;
        let ok = !groups.contains(&victim.name)
            && !groups.contains(&removed.name)
            && regs.iter().all(|r| r.id != victim.id && r.id != removed.id)
            && groups.contains(&survivor.name)
            && groups.len() == 3
            && regs.len() == 3
            && regs.iter().all(|r| r.online && groups.contains(&r.name))
            && (st.idle, st.busy) == (3, 0)
            && condition(&p, "Ready").map(|c| c.0) == Some("True".into());
        ok.then_some(())
    })
    .await;
    if replaced.is_none() {
        panic!(
            "runners {} (crashed) and {} (removed) not replaced\n{}",
            victim.name,
            removed.name,
            w.describe("crash").await
        );
    }
    assert!(unregistered_at(&w.sim, victim.id).is_some());
    assert!(group_deleted_at(&w.sim, &victim.name).is_some());
    assert!(group_deleted_at(&w.sim, &removed.name).is_some());
    assert!(unregistered_at(&w.sim, survivor.id).is_none(), "the healthy runner was touched");
    assert!(group_deleted_at(&w.sim, &survivor.name).is_none(), "the healthy runner was touched");
    // A crash after the runner was online is not a provisioning failure.
    let p = w.get_pool("crash").await.unwrap();
    assert_eq!(condition(&p, "Stalled").map(|c| c.0).as_deref(), Some("False"));
    w.expect_event("crash", "RunnerRecycled", &victim.name).await;
    w.expect_event("crash", "RunnerRecycled", &removed.name).await;
    // The only Warning is the crashed container's log tail, read before its delete.
    let warnings = w.warnings_of("crash").await;
    assert!(
        warnings.len() == 1
            && warnings[0].1 == "RunnerFailedLogs"
            && warnings[0].2.contains(&format!("runner {} removed (Crashed)", victim.name))
            && warnings[0].2.contains("Listening for Jobs"),
        "{warnings:#?}"
    );
    let crashed = [("action", "delete_group"), ("reason", "Crashed"), ("result", "ok")];
    assert_eq!(w.metric("aci_runner_controller_actions_total", &crashed).await, 1.0);
    assert_eq!(w.sim.arm.groups().iter().filter(|g| g.provisioning_state != "Deleting").count(), 3);
    w.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 4c. Orphans: groups of a pool deleted while no controller ran are removed after a restart,
// registration first. One of its runners takes a job after the restarted controller marked the
// groups (its shared runner list, cached for a while, still shows the runner idle): that group
// must survive until the job is done (GitHub refuses to unregister a busy runner).
//
// "After the mark" is read from the simulated ARM's call log (a second subscription-wide list
// since the restart: GC passes run one after the other); a fixed 1.5 s sleep assumed the first
// pass was done by then.
// ---------------------------------------------------------------------------------------------
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_of_a_pool_deleted_while_the_controller_was_down_are_collected_after_restart() {
    let mut w = gc_world("e2e-orphan", 6).await;
    let grace = w.opts.args.gc_grace;
    // Same subscription, resource group and org for both; only "gone" can run `aci` jobs.
    w.apply("gone", json!({"scaling": {"minIdle": 2}})).await;
    w.apply("kept", json!({"scaling": {"minIdle": 1}, "github": {"labels": ["spare"]}})).await;
    w.wait_ready("gone", 2).await;
    w.wait_ready("kept", 1).await;
    let gone_groups = names(&w.groups_of("gone"), |g| &g.name);
    let gone_runners: BTreeMap<String, i64> =
        w.runners_of("gone").into_iter().map(|r| (r.name, r.id)).collect();
    let kept_groups = names(&w.groups_of("kept"), |g| &g.name);
    let kept_runners: BTreeSet<i64> = w.runners_of("kept").iter().map(|r| r.id).collect();

    w.stop().await;
    // Pool "gone" disappears without its finalizer running.
    w.delete_without_cleanup("gone").await;
    assert_eq!(names(&w.groups_of("gone"), |g| &g.name), gone_groups, "nothing ran the finalizer");

    let restarted_at = w.sim.clock.now();
    w.start_controller().await;
    // After the first GC pass marked the orphans (the second one has begun), one of their
    // runners takes a job.
    wait_listed(&w, restarted_at, 2, 0).await;
    let job = w.enqueue_one(8.0);
    let collected = eventually(T, || async {
        let done = w.job(job.id).status == JobStatus::Completed;
        (done && w.groups_of("gone").is_empty()).then_some(())
    })
    .await;
    if collected.is_none() {
        panic!("orphaned groups never collected\n{}", w.describe("gone").await);
    }
    // Same org as the live pool "kept", whose list shows the orphans' registrations: each idle
    // one is unregistered first, then its group goes.
    assert_eq!(names(&gone_runners.keys().collect::<Vec<_>>(), |n| n), gone_groups);
    assert_collected_after_grace(&w, &gone_runners, restarted_at, grace, job.id, "orphan");
    assert!(w.runners_of("gone").is_empty(), "{:?}", w.runners_of("gone"));

    // Pool "kept" is untouched.
    assert_eq!(names(&w.groups_of("kept"), |g| &g.name), kept_groups);
    let now_runners: BTreeSet<i64> = w.runners_of("kept").iter().map(|r| r.id).collect();
    assert_eq!(now_runners, kept_runners);
    for g in &kept_groups {
        assert!(group_deleted_at(&w.sim, g).is_none(), "{g} of the live pool was deleted");
    }
    let p = w.get_pool("kept").await.unwrap();
    assert_eq!(condition(&p, "Ready").map(|c| c.0).as_deref(), Some("True"), "{:?}", p.status);
    let orphaned = [("action", "delete_group"), ("reason", "Orphaned"), ("result", "ok")];
    assert_eq!(w.metric("aci_runner_controller_actions_total", &orphaned).await, gone_groups.len() as f64);
    w.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 4d. A pool deleted and re-created under the same name while no controller ran: the groups of
// the old pool (old uid) are collected by the new pool's passes, its runners are never counted,
// and one that takes a job after the mark keeps its group until the job is done.
//
// "After the mark" is read from the simulated ARM's call log (second lists since the restart),
// as in 4c, instead of a fixed 1.5 s sleep.
// ---------------------------------------------------------------------------------------------
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_of_an_older_pool_with_the_same_name_are_collected_and_never_counted() {
    let mut w = gc_world("e2e-reborn", 10).await;
    let grace = w.opts.args.gc_grace;
    let manifest = pool_manifest("reborn", &w.sim, json!({"scaling": {"minIdle": 2}}));
    let old = w.apply_manifest(&manifest).await;
    w.wait_ready("reborn", 2).await;
    let old_uid = old.metadata.uid.clone().unwrap();
    let old_runners: BTreeMap<String, i64> =
        w.runners_of("reborn").into_iter().map(|r| (r.name, r.id)).collect();

    w.stop().await;
    w.delete_without_cleanup("reborn").await;
    // Re-created with one idle runner: the two old ones must not count towards it.
    let manifest = pool_manifest("reborn", &w.sim, json!({"scaling": {"minIdle": 1}}));
    let new = w.apply_manifest(&manifest).await;
    let new_uid = new.metadata.uid.clone().unwrap();
    assert_ne!(new_uid, old_uid);

    let restarted_at = w.sim.clock.now();
    w.start_controller().await;
    // After the first passes marked the old groups (the second GC pass and the pool's second
    // pass have begun), an old runner (lowest id: GitHub's pick) takes a job.
    wait_listed(&w, restarted_at, 2, 2).await;
    let job = w.enqueue_one(8.0);
    let converged = eventually(T, || async {
        let groups = w.groups_of("reborn");
        let regs = w.runners_of("reborn");
        let done = w.job(job.id).status == JobStatus::Completed;
        let p = w.get_pool("reborn").await?;
        let st = p.status.as_ref()?;
        let ok = done
            && groups.len() == 1
            && groups.iter().all(|g| g.tags.get(TAG_POOL_UID) == Some(&new_uid))
            && regs.len() == 1
            && regs[0].online
            && !old_runners.contains_key(&regs[0].name)
            && (st.idle, st.busy, st.desired) == (1, 0, 1)
            && condition(&p, "Ready").map(|c| c.0) == Some("True".into());
        ok.then_some(())
    })
    .await;
    if converged.is_none() {
        panic!("old groups not collected\n{}", w.describe("reborn").await);
    }
    assert_collected_after_grace(&w, &old_runners, restarted_at, grace, job.id, "old runner");
    let p = w.get_pool("reborn").await.unwrap();
    assert_eq!(condition(&p, "Stalled").map(|c| c.0).as_deref(), Some("False"));
    w.expect_event("reborn", "GarbageCollected", "").await;
    assert!(w.sim.arm.groups().iter().filter(|g| g.provisioning_state != "Deleting").count() == 1);
    assert!(w.sim.github.runners().len() == 1);
    w.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 5a. Deleting a pool with a busy runner: idle ones go at once, the busy one when its job ends.
// The pool is deleted as soon as GitHub shows the runner busy (the controller's list may lag).
// ---------------------------------------------------------------------------------------------
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_pool_waits_for_the_busy_runner_then_removes_everything() {
    let started = std::time::Instant::now();
    let (w, job, busy) = busy_pool("e2e-drain", 7, "drain", 2).await;

    w.delete_pool("drain").await;

    // The idle runners go; the busy one and the pool stay while the job runs.
    let job_running = || w.job(job.id).status != JobStatus::Completed;
    let drained = eventually(T, || async {
        let running = job_running();
        let p = w.get_pool("drain").await;
        if running {
            assert!(p.is_some(), "the finalizer was removed while a runner was busy");
            assert!(w.groups_of("drain").iter().any(|g| g.name == busy.name), "busy group deleted");
            assert!(w.runners_of("drain").iter().any(|r| r.id == busy.id), "busy runner unregistered");
        }
        let p = p?;
        let only_busy = names(&w.groups_of("drain"), |g| &g.name) == BTreeSet::from([busy.name.clone()])
            && w.runners_of("drain").len() == 1;
        let draining = condition(&p, "Ready") == Some(("False".into(), "Draining".into()));
        (only_busy && draining).then_some(())
    })
    .await;
    if drained.is_none() {
        panic!("not draining with only the busy runner left\n{}", w.describe("drain").await);
    }
    assert!(job_running(), "the job ended before the pool was seen draining: the test proves nothing");

    // The job completes; then everything is gone and the finalizer is removed.
    if !w.wait_removed("drain", T).await {
        panic!("pool not removed after its job\n{}", w.describe("drain").await);
    }
    let j = w.job(job.id);
    assert_eq!(j.conclusion.as_deref(), Some("success"), "{j:?}");
    // A stale list may make the controller try once; GitHub's refusal must then refresh its view
    // instead of the same refused DELETE going out every pass.
    let refused = refused_unregisters(&w.sim, busy.id);
    assert!(refused <= 2, "{refused} refused unregisters of the busy runner");
    assert!(unregistered_at(&w.sim, busy.id).is_none() || j.completed_at.is_some());
    assert!(group_deleted_at(&w.sim, &busy.name).is_none_or(|at| j.completed_at.is_some_and(|c| at >= c)));
    assert!(w.sim.arm.groups().is_empty());
    assert!(w.sim.github.runners().is_empty());
    // Cleanup ends without a failed pass (e.g. a finalizer patch refused with 409).
    assert_eq!(w.reconcile_errors().await, 0.0);
    w.expect_event("drain", "CleanupComplete", "").await;
    finish_timed(w, "drain", "5a", started).await;
}

// ---------------------------------------------------------------------------------------------
// 5b. ... or until drainTimeout: then the busy runner is removed too.
// ---------------------------------------------------------------------------------------------
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_pool_removes_a_busy_runner_after_drain_timeout() {
    let mut w = scaling_world("e2e-drainto", 8).await;
    w.apply("hurry", json!({"scaling": {"minIdle": 1, "drainTimeout": "3s"}})).await;
    w.wait_ready("hurry", 1).await;
    let (job, busy) = w.busy_with_one_job("hurry", 120.0).await;

    w.delete_pool("hurry").await;
    // drainTimeout counts from the deletionTimestamp (whole seconds, so up to 1 s before the call).
    let deleted_at = w
        .get_pool("hurry")
        .await
        .and_then(|p| p.metadata.deletion_timestamp)
        .map(|t| chrono::DateTime::<chrono::Utc>::from_timestamp(t.0.as_second(), 0).unwrap())
        .expect("the pool waits for its busy runner");
    if !w.wait_removed("hurry", T).await {
        panic!("pool not removed after drainTimeout\n{}", w.describe("hurry").await);
    }
    // Not before drainTimeout; well before the job would have ended.
    // A stale list may make the controller try once; GitHub's refusal must then refresh its view
    // instead of the same refused DELETE going out every pass.
    let refused = refused_unregisters(&w.sim, busy.id);
    assert!(refused <= 2, "{refused} refused unregisters of the busy runner");
    let at = group_deleted_at(&w.sim, &busy.name).unwrap();
    let waited = (at - deleted_at).to_std().unwrap_or_default();
    assert!(waited >= Duration::from_secs(3), "busy group deleted {waited:?} after the deletionTimestamp");
    let j = w.job(job.id);
    assert_ne!(j.conclusion.as_deref(), Some("success"), "{j:?}");
    assert!(w.sim.arm.groups().is_empty());
    assert!(w.sim.github.runners().is_empty());
    // Cleanup ends without a failed pass (e.g. a finalizer patch refused with 409).
    assert_eq!(w.reconcile_errors().await, 0.0);
    w.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 5c. deletion-policy orphan: resources stay, released (no managed-by tag); finalizer removed.
// ---------------------------------------------------------------------------------------------
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_pool_with_the_orphan_policy_releases_its_runners_and_leaves_them_running() {
    let mut w = scaling_world("e2e-release", 9).await;
    let grace = w.opts.args.gc_grace;
    let mut manifest = pool_manifest("keep", &w.sim, json!({"scaling": {"minIdle": 2}}));
    manifest["metadata"]["annotations"] = json!({"aci-runners.dev/deletion-policy": "orphan"});
    w.apply_manifest(&manifest).await;
    // Another live pool in the same resource group, so that orphan GC sweeps it.
    w.apply("other", json!({"scaling": {"minIdle": 1}})).await;
    let keep = w.wait_ready("keep", 2).await;
    w.wait_ready("other", 1).await;
    let uid = keep.metadata.uid.clone().unwrap();
    let groups = names(&w.groups_of("keep"), |g| &g.name);
    let runners: BTreeSet<i64> = w.runners_of("keep").iter().map(|r| r.id).collect();

    w.delete_pool("keep").await;
    if !w.wait_gone("keep", T).await {
        panic!("finalizer never removed\n{}", w.describe("keep").await);
    }
    // Released: still there, running, no longer tagged as managed; provenance tags kept.
    for name in &groups {
        let g = w.sim.arm.group(name).unwrap_or_else(|| panic!("group {name} was deleted"));
        assert!(!g.tags.contains_key(TAG_MANAGED_BY), "{name} still managed: {:?}", g.tags);
        assert_eq!(g.tags.get(TAG_POOL_UID), Some(&uid));
        assert_eq!(g.tags.get(TAG_POOL_NAME).map(String::as_str), Some("keep"));
        assert!(g.containers.iter().all(|c| c.state == "Running"), "{g:?}");
    }
    // Several GC passes later, nothing was deleted or unregistered.
    tokio::time::sleep(grace * 3).await;
    assert_eq!(names(&w.groups_of("keep"), |g| &g.name), groups);
    let now: BTreeSet<i64> = w.runners_of("keep").iter().filter(|r| r.online).map(|r| r.id).collect();
    assert_eq!(now, runners, "registrations of the released runners changed");
    for name in &groups {
        assert!(group_deleted_at(&w.sim, name).is_none());
    }
    for id in &runners {
        assert!(unregistered_at(&w.sim, *id).is_none());
    }
    assert_eq!(w.groups_of("other").len(), 1);
    // Cleanup ends without a failed pass (e.g. a finalizer patch refused with 409).
    assert_eq!(w.reconcile_errors().await, 0.0);
    let some_group = groups.iter().next().unwrap().clone();
    w.expect_event("keep", "Orphaned", &some_group).await;
    w.expect_no_warnings("keep").await;
    w.expect_no_warnings("other").await;
    w.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 2b. The same demand cycle in token mode (seed-style `RUNNER_*` variables), with ephemeral and
// with persistent runners: scale up within maxRunners, every job succeeds, back to minIdle.
// ---------------------------------------------------------------------------------------------
async fn token_mode_burst(prefix: &str, pool: &str, seed: u64, ephemeral: bool) {
    let secret = format!("{prefix}-webhook-secret");
    let mut w = World::builder(prefix).sim_options(sim_options(seed)).webhooks(&secret).start().await;
    let (min_idle, max_runners, count) = (1, 4, 6u32);
    let manifest = pool_manifest(
        pool,
        &w.sim,
        json!({
            "scaling": {"minIdle": min_idle, "maxRunners": max_runners},
            "runner": {"registration": {"mode": "token", "ephemeral": ephemeral}},
        }),
    );
    w.apply_manifest(&manifest).await;
    w.wait_ready(pool, min_idle).await;
    for g in w.groups_of(pool) {
        let env = w.sim.arm.env_names(&g.name);
        assert!(env.iter().any(|(_, n, secure)| n == "RUNNER_TOKEN" && *secure), "{env:?}");
        assert!(env.iter().any(|(_, n, secure)| n == "RUNNER_EPHEMERAL" && !*secure), "{env:?}");
    }

    // Default labels in GitHub's spelling match case-insensitively.
    let job_ids: BTreeSet<i64> =
        w.enqueue(&["self-hosted", "Linux", "X64", "aci"], 2.0, count).iter().map(|j| j.id).collect();
    let mut max_groups = 0usize;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut settled = false;
    while tokio::time::Instant::now() < deadline {
        let groups = w.groups_of(pool);
        let regs = w.runners_of(pool);
        max_groups = max_groups.max(live_groups_of(&w.sim, pool));
        let done = completed_among(&w, &job_ids) == count as usize;
        if done
            && groups.len() == min_idle as usize
            && regs.len() == min_idle as usize
            && regs.iter().all(|r| r.online && !r.busy)
            && let Some(p) = w.get_pool(pool).await
            && let Some(st) = p.status.as_ref()
            && (st.idle, st.busy, st.desired) == (min_idle, 0, min_idle)
            && condition(&p, "Ready").map(|c| c.0) == Some("True".into())
        {
            settled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !settled {
        panic!("never converged back to {min_idle} idle\n{}", w.describe(pool).await);
    }
    assert!(max_groups > min_idle as usize && max_groups <= max_runners as usize, "max {max_groups} groups");
    let done: Vec<_> = w.sim.github.jobs().into_iter().filter(|j| job_ids.contains(&j.id)).collect();
    assert!(done.iter().all(|j| j.conclusion.as_deref() == Some("success")), "{done:?}");
    let ran_on: BTreeSet<String> = done.iter().filter_map(|j| j.runner_name.clone()).collect();
    if ephemeral {
        assert_eq!(ran_on.len(), count as usize, "ephemeral runners take one job each: {ran_on:?}");
    }
    // Nothing else left: one group per registration, same names.
    let groups = w.sim.arm.groups();
    let runners = w.sim.github.runners();
    assert_eq!(names(&groups, |g| &g.name), names(&runners, |r| &r.name));
    assert_eq!(groups.len(), min_idle as usize);
    w.expect_no_warnings(pool).await;
    assert_eq!(w.reconcile_errors().await, 0.0);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_mode_ephemeral_runners_scale_with_demand_and_recycle() {
    token_mode_burst("e2e-tok-eph", "tokeph", 11, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_mode_persistent_runners_scale_with_demand_and_scale_down() {
    token_mode_burst("e2e-tok-pers", "tokpers", 12, false).await;
}

// ---------------------------------------------------------------------------------------------
// 5d. Deletion never wedges: the App Secret is gone (as when the namespace is deleted) →
// bounded retries, then the finalizer is removed with a Warning naming what may be left behind.
// ---------------------------------------------------------------------------------------------
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_pool_without_its_secret_gives_up_after_bounded_retries_and_says_what_is_left() {
    let mut w = World::builder("e2e-nosecret")
        .sim_options(sim_options(14))
        // A smaller retry budget than the default 10 attempts keeps the test short.
        .controller(|o| o.planner.deletion_max_attempts = 4)
        .start()
        .await;
    w.apply_ready("orphaned", 2).await;
    let groups = names(&w.groups_of("orphaned"), |g| &g.name);

    w.delete_secret("github-app").await;
    w.delete_pool("orphaned").await;
    if !w.wait_gone("orphaned", Duration::from_secs(50)).await {
        panic!("deletion wedged\n{}", w.describe("orphaned").await);
    }
    let evs = w.events_of("orphaned").await;
    let abandoned: Vec<_> =
        evs.iter().filter(|(t, r, _)| t == "Warning" && r == "CleanupAbandoned").collect();
    assert_eq!(abandoned.len(), 1, "{evs:#?}");
    for g in &groups {
        assert!(abandoned[0].2.contains(g.as_str()), "the warning does not name {g}: {}", abandoned[0].2);
    }
    // Nothing was deleted without credentials.
    for g in &groups {
        assert!(group_deleted_at(&w.sim, g).is_none());
    }
    assert_eq!(w.reconcile_errors().await, 0.0);
    w.stop().await;
}
