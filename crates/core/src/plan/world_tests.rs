//! Multi-pass scenarios against a tiny in-memory world (container groups + registrations +
//! jobs): the planner must converge, never touch busy runners and leave nothing behind.
use std::collections::BTreeSet;

use chrono::{DateTime, Utc};

use super::tests::{Fx, counter_suffixes, creating};
use super::*;

/// A job being run: the runner finishes it after `passes_left` passes.
struct Running {
    runner: String,
    passes_left: u32,
}

struct World {
    groups: Vec<ObservedGroup>,
    runners: Vec<ObservedRunner>,
    queue: Vec<QueuedJob>,
    running: Vec<Running>,
    next_id: u64,
    next_job: u64,
    /// Every busy runner id ever touched by a destructive action while busy (must stay empty).
    violations: Vec<String>,
    /// Names created (to check that none is reused).
    created: BTreeSet<String>,
    /// Job length in passes.
    job_passes: u32,
    /// Deletes seen by the world.
    deleted: usize,
}

impl World {
    fn new(job_passes: u32) -> Self {
        Self {
            groups: Vec::new(),
            runners: Vec::new(),
            queue: Vec::new(),
            running: Vec::new(),
            next_id: 1,
            next_job: 1,
            violations: Vec::new(),
            created: BTreeSet::new(),
            job_passes,
            deleted: 0,
        }
    }

    fn queue_jobs(&mut self, n: u64, now: DateTime<Utc>) {
        for _ in 0..n {
            self.queue.push(QueuedJob { id: self.next_job, labels: vec!["aci".into()], queued_at: now });
            self.next_job += 1;
        }
    }

    fn apply(&mut self, actions: &[Action], now: DateTime<Utc>) {
        let mut unregistered = BTreeSet::new();
        for a in actions {
            match a {
                Action::CreateRunner { name, priority, registration, .. } => {
                    assert!(self.created.insert(name.clone()), "name reused: {name}");
                    // JIT: the registration exists (offline) before the group.
                    self.runners.push(ObservedRunner {
                        id: self.next_id,
                        name: name.clone(),
                        online: false,
                        busy: false,
                        labels: match registration {
                            RunnerRegistration::Jit { labels, .. }
                            | RunnerRegistration::Token { labels, .. } => labels.clone(),
                        },
                    });
                    self.next_id += 1;
                    self.groups.push(creating(name, now, *priority));
                }
                Action::UnregisterRunner { id, name, .. } => {
                    if self.runners.iter().any(|r| r.id == *id && r.busy) {
                        // GitHub refuses to delete a busy runner.
                        self.violations.push(format!("unregister of busy {name}"));
                        continue;
                    }
                    self.runners.retain(|r| r.id != *id);
                    unregistered.insert(*id);
                }
                Action::DeleteGroup { name, only_if_unregistered, only_if_unlisted, .. } => {
                    if let Some(id) = only_if_unregistered
                        && !unregistered.contains(id)
                    {
                        continue;
                    }
                    // The executor's own read of the runners: the world as it is now.
                    if *only_if_unlisted && self.runners.iter().any(|r| &r.name == name) {
                        continue;
                    }
                    if self.runners.iter().any(|r| &r.name == name && r.busy) {
                        self.violations.push(format!("delete of busy {name}"));
                    }
                    let before = self.groups.len();
                    self.groups.retain(|g| &g.name != name);
                    self.deleted += before - self.groups.len();
                    self.running.retain(|j| &j.runner != name);
                }
                Action::ReleaseGroup { name } => {
                    self.groups.retain(|g| &g.name != name);
                }
            }
        }
    }

    /// One planning pass on the world's current lists, its actions applied.
    fn plan_and_apply(&mut self, fx: &mut Fx) -> Plan {
        fx.groups = Ok(self.groups.clone());
        fx.runners = Ok(self.runners.clone());
        let plan = fx.run();
        self.apply(&plan.actions, fx.now);
        plan
    }

    /// One step of the outside world between passes.
    fn advance(&mut self, now: DateTime<Utc>) {
        // Jobs finish: the ephemeral runner removes its registration and its container exits.
        let mut finished = Vec::new();
        for j in &mut self.running {
            j.passes_left = j.passes_left.saturating_sub(1);
            if j.passes_left == 0 {
                finished.push(j.runner.clone());
            }
        }
        self.running.retain(|j| j.passes_left > 0);
        for name in &finished {
            self.runners.retain(|r| &r.name != name);
            if let Some(g) = self.groups.iter_mut().find(|g| &g.name == name)
                && let Some(c) = g.container.as_mut()
            {
                c.state = ContainerState::Terminated { exit_code: Some(0) };
                c.finished_at = Some(now);
            }
        }
        // Groups start; runners come online.
        for g in &mut self.groups {
            match g.container {
                None => {
                    g.provisioning = GroupProvisioning::Succeeded;
                    g.container = Some(ObservedContainer {
                        state: ContainerState::Running,
                        started_at: Some(now),
                        finished_at: None,
                        restart_count: 0,
                    });
                }
                Some(ObservedContainer { state: ContainerState::Running, .. }) => {
                    if let Some(r) = self.runners.iter_mut().find(|r| r.name == g.name) {
                        r.online = true;
                    }
                }
                _ => {}
            }
        }
        // Idle online runners take queued jobs.
        for r in &mut self.runners {
            if r.online && !r.busy && !self.queue.is_empty() {
                self.queue.remove(0);
                r.busy = true;
                self.running.push(Running { runner: r.name.clone(), passes_left: self.job_passes });
            }
        }
    }
}

/// Run `passes` passes of `step` seconds; `lag` makes the planner see the lists of the previous
/// pass (cached/lagging lists).
fn run(fx: &mut Fx, world: &mut World, passes: usize, step: i64, lag: bool) -> Plan {
    let mut suffixes = counter_suffixes();
    let mut last = None;
    let mut seen_groups = world.groups.clone();
    let mut seen_runners = world.runners.clone();
    for _ in 0..passes {
        if !lag {
            seen_groups = world.groups.clone();
            seen_runners = world.runners.clone();
        }
        fx.groups = Ok(seen_groups.clone());
        fx.runners = Ok(seen_runners.clone());
        fx.jobs = world.queue.clone();
        let p = fx.run_with(&mut suffixes);
        assert!(p.status.desired <= fx.spec.scaling.max_runners);
        assert!(
            world.groups.len() <= fx.spec.scaling.max_runners as usize + 1,
            "too many groups: {}",
            world.groups.len()
        );
        if lag {
            seen_groups = world.groups.clone();
            seen_runners = world.runners.clone();
        }
        world.apply(&p.actions, fx.now);
        fx.carry(&p, chrono::Duration::seconds(step));
        world.advance(fx.now);
        last = Some(p);
    }
    assert!(world.violations.is_empty(), "{:?}", world.violations);
    last.expect("at least one pass")
}

fn scenario_fx() -> Fx {
    let mut fx = Fx::new();
    fx.spec.scaling.min_idle = 2;
    fx.spec.scaling.max_runners = 6;
    fx.spec.scaling.scale_down_delay = "2m".into();
    fx
}

#[test]
fn burst_of_jobs_scales_up_recycles_and_returns_to_min_idle() {
    for lag in [false, true] {
        let mut fx = scenario_fx();
        let mut world = World::new(4);
        // Settle at minIdle.
        let p = run(&mut fx, &mut world, 6, 30, lag);
        assert_eq!((p.status.idle, p.status.busy), (2, 0), "lag {lag}");
        assert!(conditions::is_true(&p.status.conditions, conditions::READY), "lag {lag}");
        // Ten jobs arrive.
        world.queue_jobs(10, fx.now);
        let p = run(&mut fx, &mut world, 3, 30, lag);
        assert!(p.status.desired == 6, "lag {lag}: {:?}", p.status);
        let p = run(&mut fx, &mut world, 60, 30, lag);
        assert!(world.queue.is_empty() && world.running.is_empty(), "lag {lag}");
        // Back to minIdle, nothing else left.
        assert_eq!((p.status.idle, p.status.busy, p.status.desired), (2, 0, 2), "lag {lag}");
        assert_eq!(world.groups.len(), 2, "lag {lag}: {:?}", world.groups);
        assert_eq!(world.runners.len(), 2, "lag {lag}");
        assert!(conditions::is_true(&p.status.conditions, conditions::READY), "lag {lag}");
        assert!(!conditions::is_true(&p.status.conditions, conditions::STALLED));
        assert_eq!(p.state.failures, 0, "lag {lag}: {:?}", p.state.last_failure);
        // 2 + 10 runners were needed (every job recycles its runner).
        assert!(world.created.len() >= 12, "lag {lag}: {}", world.created.len());
        assert!(p.status.usage.as_ref().is_some_and(|u| u.vcpu_seconds > 0.0));
    }
}

#[test]
fn min_idle_lowered_removes_idle_only_and_deletion_drains() {
    let mut fx = scenario_fx();
    fx.spec.scaling.min_idle = 4;
    let mut world = World::new(1000);
    run(&mut fx, &mut world, 6, 30, false);
    assert_eq!(world.groups.len(), 4);
    // Two long jobs.
    world.queue_jobs(2, fx.now);
    run(&mut fx, &mut world, 4, 30, false);
    let busy: BTreeSet<String> = world.runners.iter().filter(|r| r.busy).map(|r| r.name.clone()).collect();
    assert_eq!(busy.len(), 2);
    fx.spec.scaling.min_idle = 0;
    fx.pool.generation = Some(2);
    let p = run(&mut fx, &mut world, 12, 30, false);
    assert_eq!((p.status.idle, p.status.busy), (0, 2));
    let left: BTreeSet<String> = world.groups.iter().map(|g| g.name.clone()).collect();
    assert_eq!(left, busy);
    // Delete the pool: busy runners are drained after drainTimeout (set short), then all gone.
    fx.spec.scaling.drain_timeout = "5m".into();
    fx.pool.deletion_timestamp = Some(fx.now);
    let p = run(&mut fx, &mut world, 4, 30, false);
    assert_eq!(p.finalizer, FinalizerDecision::Keep);
    assert_eq!(world.groups.len(), 2, "busy runners wait for the drain timeout");
    // run() checks violations only for non-forced actions: after the drain timeout the world's
    // busy runners are deleted on purpose, so check the end state instead.
    let mut p = None;
    for _ in 0..12 {
        let plan = world.plan_and_apply(&mut fx);
        // The container is gone: the runner goes offline, GitHub lets it be removed.
        for r in &mut world.runners {
            if !world.groups.iter().any(|g| g.name == r.name) {
                r.online = false;
                r.busy = false;
            }
        }
        fx.carry(&plan, chrono::Duration::seconds(60));
        let done = plan.finalizer == FinalizerDecision::Remove;
        p = Some(plan);
        if done {
            break;
        }
    }
    let p = p.unwrap();
    assert_eq!(p.finalizer, FinalizerDecision::Remove);
    assert!(world.groups.is_empty() && world.runners.is_empty());
}

#[test]
fn crashed_and_stuck_runners_are_replaced() {
    let mut fx = scenario_fx();
    fx.spec.scaling.registration_timeout = "3m".into();
    let mut world = World::new(3);
    run(&mut fx, &mut world, 6, 30, false);
    assert_eq!(world.groups.len(), 2);
    // One container crashes, the other's runner never comes back online.
    let crashed = world.groups[0].name.clone();
    let stuck = world.groups[1].name.clone();
    if let Some(c) = world.groups[0].container.as_mut() {
        c.state = ContainerState::Terminated { exit_code: Some(137) };
        c.finished_at = Some(fx.now);
    }
    world.runners.retain(|r| r.name != crashed);
    if let Some(r) = world.runners.iter_mut().find(|r| r.name == stuck) {
        r.online = false;
    }
    // Keep the stuck one offline while the world runs.
    let mut p = None;
    for _ in 0..20 {
        let plan = world.plan_and_apply(&mut fx);
        fx.carry(&plan, chrono::Duration::seconds(30));
        world.advance(fx.now);
        if let Some(r) = world.runners.iter_mut().find(|r| r.name == stuck) {
            r.online = false;
        }
        p = Some(plan);
    }
    let p = p.unwrap();
    let names: BTreeSet<String> = world.groups.iter().map(|g| g.name.clone()).collect();
    assert!(!names.contains(&crashed) && !names.contains(&stuck), "{names:?}");
    assert_eq!((p.status.idle, world.groups.len()), (2, 2));
    assert!(world.violations.is_empty());
}
