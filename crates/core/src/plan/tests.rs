//! Table-style unit tests of the planner rules.
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};

use super::*;
use crate::crd::{Priority, RunnerPoolSpec, RunnerPoolStatus};

pub(super) fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).single().unwrap()
}

pub(super) fn mins(m: i64) -> chrono::Duration {
    chrono::Duration::minutes(m)
}

pub(super) const UID: &str = "uid-pool";

pub(super) fn spec_json(extra: serde_json::Value) -> RunnerPoolSpec {
    let mut base = serde_json::json!({
        "github": {"organization": "acme", "labels": ["aci"], "appSecretRef": {"name": "gh-app"}},
        "azure": {"subscriptionId": "00000000-0000-0000-0000-000000000000", "resourceGroup": "rg", "location": "westeurope"},
        "scaling": {"minIdle": 2, "maxRunners": 5}
    });
    merge(&mut base, extra);
    serde_json::from_value(base).unwrap()
}

fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
    match (a, b) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

pub(super) fn group(name: &str, state: ContainerState, started_ago_min: i64) -> ObservedGroup {
    ObservedGroup {
        name: name.to_string(),
        pool_uid: Some(UID.to_string()),
        pool_namespace: Some("ns".into()),
        pool_name: Some("pool".into()),
        location: "westeurope".into(),
        provisioning: GroupProvisioning::Succeeded,
        container: Some(ObservedContainer {
            state,
            started_at: Some(t0() - mins(started_ago_min)),
            finished_at: None,
            restart_count: 0,
        }),
        failure: None,
        created: Some(t0() - mins(started_ago_min + 1)),
        priority: Priority::Regular,
        cpu: 2.0,
        memory_gb: 4.0,
    }
}

pub(super) fn running(name: &str) -> ObservedGroup {
    group(name, ContainerState::Running, 30)
}

pub(super) fn runner(id: u64, name: &str, online: bool, busy: bool) -> ObservedRunner {
    ObservedRunner {
        id,
        name: name.to_string(),
        online,
        busy,
        labels: vec!["self-hosted".into(), "linux".into(), "x64".into(), "aci".into()],
    }
}

/// A deterministic suffix source: aaaaa, aaaab, ...
pub(super) fn counter_suffixes() -> impl FnMut() -> String {
    let mut n: u64 = 0;
    move || {
        let mut v = n;
        n += 1;
        let alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789";
        let mut s = vec![b'a'; 5];
        for i in (0..5).rev() {
            s[i] = alphabet[(v % 36) as usize];
            v /= 36;
        }
        String::from_utf8(s).unwrap()
    }
}

/// One planning pass worth of inputs, owned.
#[derive(Clone)]
pub(super) struct Fx {
    pub pool: PoolMeta,
    pub spec: RunnerPoolSpec,
    pub prev: Option<RunnerPoolStatus>,
    pub groups: Result<Vec<ObservedGroup>, EdgeError>,
    pub runners: Result<Vec<ObservedRunner>, EdgeError>,
    pub live: BTreeSet<String>,
    pub jobs: Vec<QueuedJob>,
    pub creds: CredentialStatus,
    pub failures: Vec<ActionFailure>,
    pub state: PoolState,
    pub config: PlannerConfig,
    pub now: DateTime<Utc>,
}

impl Fx {
    pub fn new() -> Self {
        Self {
            pool: PoolMeta {
                namespace: "ns".into(),
                name: "pool".into(),
                uid: UID.into(),
                generation: Some(1),
                ..Default::default()
            },
            spec: spec_json(serde_json::json!({})),
            prev: None,
            groups: Ok(Vec::new()),
            runners: Ok(Vec::new()),
            live: [UID.to_string()].into_iter().collect(),
            jobs: Vec::new(),
            creds: CredentialStatus::Ok,
            failures: Vec::new(),
            state: PoolState { generation: Some(1), ..Default::default() },
            config: PlannerConfig::default(),
            now: t0(),
        }
    }

    pub fn run_with(&self, suffixes: &mut dyn FnMut() -> String) -> Plan {
        let input = PlanInput {
            pool: &self.pool,
            spec: &self.spec,
            validation: &self.spec.validate(),
            previous_status: self.prev.as_ref(),
            groups: self.groups.as_ref().map(|g| g.as_slice()).map_err(|e| e.clone()),
            runners: self.runners.as_ref().map(|r| r.as_slice()).map_err(|e| e.clone()),
            live_pool_uids: &self.live,
            queued_jobs: &self.jobs,
            credentials: &self.creds,
            failures: &self.failures,
            state: &self.state,
            config: &self.config,
            now: self.now,
        };
        plan(&input, suffixes)
    }

    pub fn run(&self) -> Plan {
        self.run_with(&mut counter_suffixes())
    }

    /// Carry the plan's state and status into the next pass at `now + advance`.
    pub fn carry(&mut self, p: &Plan, advance: chrono::Duration) {
        self.state = p.state.clone();
        self.prev = Some(p.status.clone());
        self.now += advance;
        self.failures.clear();
    }
}

fn creates(p: &Plan) -> Vec<&Action> {
    p.actions.iter().filter(|a| matches!(a, Action::CreateRunner { .. })).collect()
}

fn destructive(p: &Plan) -> Vec<&Action> {
    p.actions.iter().filter(|a| a.is_destructive()).collect()
}

fn cond<'p>(p: &'p Plan, t: &str) -> &'p k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    conditions::find(&p.status.conditions, t).unwrap()
}

fn cond_is(p: &Plan, t: &str, status: &str, reason: &str) {
    let c = cond(p, t);
    assert_eq!((c.status.as_str(), c.reason.as_str()), (status, reason), "{t}: {}", c.message);
}

fn has_event(p: &Plan, reason: &str) -> bool {
    p.events.iter().any(|e| e.reason == reason)
}

fn create_failure(name: &str, location: &str, priority: Priority, kind: EdgeErrorKind) -> ActionFailure {
    ActionFailure {
        action: Action::CreateRunner {
            name: name.into(),
            location: location.into(),
            priority,
            registration: RunnerRegistration::Jit { labels: vec![], runner_group: None },
        },
        error: EdgeError::new(kind, "boom"),
        registered_runner: None,
    }
}

#[test]
fn scale_up_from_empty_creates_min_idle_jit_runners() {
    let p = Fx::new().run();
    let c = creates(&p);
    assert_eq!(c.len(), 2);
    for a in &c {
        let Action::CreateRunner { name, location, priority, registration } = a else { unreachable!() };
        assert!(names::is_pool_runner_name("pool", name), "{name}");
        assert_eq!(location, "westeurope");
        assert_eq!(*priority, Priority::Regular);
        assert_eq!(
            registration,
            &RunnerRegistration::Jit {
                labels: vec!["self-hosted".into(), "linux".into(), "x64".into(), "aci".into()],
                runner_group: None
            }
        );
    }
    assert_eq!(p.status.desired, 2);
    assert_eq!(p.status.provisioning, 2);
    assert_eq!(p.state.in_flight.len(), 2);
    assert!(has_event(&p, "ScaledUp"));
    cond_is(&p, "Ready", "False", "ScalingUp");
    cond_is(&p, "Reconciling", "True", "ScalingUp");
    cond_is(&p, "Stalled", "False", "NotStalled");
    assert_eq!(p.status.observed_generation, Some(1));
    assert_eq!(p.status.scope.as_deref(), Some("org/acme"));
    assert!(p.requeue_after <= PlannerConfig::default().converging_requeue);
    assert_eq!(p.finalizer, FinalizerDecision::Keep);
}

#[test]
fn desired_formula_table() {
    // (busy, idle, minIdle, maxRunners, queued matching, queued other labels) -> (desired, creates)
    let cases = [
        (0, 0, 2, 5, 0, 0, 2, 2),
        (1, 0, 2, 5, 0, 0, 3, 2),
        (2, 2, 2, 5, 0, 0, 4, 0),
        (0, 0, 1, 5, 3, 0, 3, 3),
        (0, 0, 1, 5, 3, 4, 3, 3),
        (4, 0, 2, 5, 3, 0, 5, 1),
        (0, 0, 0, 5, 0, 0, 0, 0),
        (0, 0, 2, 10, 30, 0, 10, 10),
        (6, 0, 0, 5, 0, 0, 5, 0),
    ];
    for (i, (busy, idle, min_idle, max, queued, other, want_desired, want_creates)) in
        cases.into_iter().enumerate()
    {
        let mut fx = Fx::new();
        fx.spec.scaling.min_idle = min_idle;
        fx.spec.scaling.max_runners = max;
        let mut groups = Vec::new();
        let mut runners = Vec::new();
        for b in 0..busy {
            let n = format!("pool-busy{b}");
            groups.push(running(&n));
            runners.push(runner(100 + b as u64, &n, true, true));
        }
        for b in 0..idle {
            let n = format!("pool-idle{b}");
            groups.push(running(&n));
            runners.push(runner(200 + b as u64, &n, true, false));
        }
        fx.groups = Ok(groups);
        fx.runners = Ok(runners);
        for j in 0..queued {
            fx.jobs.push(QueuedJob {
                id: j,
                labels: vec!["self-hosted".into(), "aci".into()],
                queued_at: t0(),
            });
        }
        for j in 0..other {
            fx.jobs.push(QueuedJob { id: 1000 + j, labels: vec!["gpu".into()], queued_at: t0() });
        }
        let p = fx.run();
        assert_eq!(p.status.desired, want_desired, "case {i}");
        assert_eq!(creates(&p).len(), want_creates, "case {i}");
        assert!(destructive(&p).is_empty(), "case {i}: {:?}", p.actions);
    }
}

#[test]
fn job_label_matching_table() {
    let spec = spec_json(serde_json::json!({"github": {"labels": ["aci", "Big"]}}));
    let labels = demand::pool_label_set(&spec);
    let cases: &[(&[&str], bool)] = &[
        (&["self-hosted"], true),
        (&["self-hosted", "linux", "x64", "aci"], true),
        (&["Self-Hosted", "ACI", "big"], true),
        (&["self-hosted", "windows"], false),
        (&["ubuntu-latest"], false),
        (&["aci", "gpu"], false),
        (&["arm64"], false),
        (&[], false),
    ];
    for (job, want) in cases {
        let job: Vec<String> = job.iter().map(|s| s.to_string()).collect();
        assert_eq!(demand::job_matches(&labels, &job), *want, "{job:?}");
    }
    // TTL and duplicate ids.
    let now = t0();
    let jobs = vec![
        QueuedJob { id: 1, labels: vec!["aci".into()], queued_at: now - mins(5) },
        QueuedJob { id: 1, labels: vec!["aci".into()], queued_at: now - mins(5) },
        QueuedJob { id: 2, labels: vec!["aci".into()], queued_at: now - mins(120) },
    ];
    assert_eq!(demand::matching_queued(&spec, &jobs, now, Duration::from_secs(3600)), 1);
}

#[test]
fn in_flight_creates_count_toward_supply_and_clear_when_listed() {
    let mut fx = Fx::new();
    let p1 = fx.run();
    let names: Vec<String> = creates(&p1).iter().map(|a| a.name().to_string()).collect();
    fx.carry(&p1, chrono::Duration::seconds(10));
    // ARM list lags: nothing listed yet.
    let p2 = fx.run();
    assert!(creates(&p2).is_empty(), "{:?}", p2.actions);
    assert_eq!(p2.status.provisioning, 2);
    fx.carry(&p2, chrono::Duration::seconds(10));
    // Listed now (pending), runner not online yet.
    fx.groups = Ok(names.iter().map(|n| group(n, ContainerState::Waiting { reason: None }, 0)).collect());
    let p3 = fx.run();
    assert!(p3.actions.is_empty(), "{:?}", p3.actions);
    assert!(p3.state.in_flight.is_empty());
    assert_eq!(p3.status.provisioning, 2);
    cond_is(&p3, "Reconciling", "True", "Provisioning");
    cond_is(&p3, "Ready", "False", "Provisioning");
}

#[test]
fn ready_when_idle_plus_busy_equals_desired() {
    let mut fx = Fx::new();
    fx.groups = Ok(vec![running("pool-aaaa1"), running("pool-aaaa2")]);
    fx.runners = Ok(vec![runner(1, "pool-aaaa1", true, false), runner(2, "pool-aaaa2", true, false)]);
    let p = fx.run();
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    cond_is(&p, "Ready", "True", "RunnersReady");
    cond_is(&p, "Reconciling", "False", "Converged");
    cond_is(&p, "Stalled", "False", "NotStalled");
    assert_eq!((p.status.idle, p.status.busy, p.status.desired), (2, 0, 2));
    assert!(has_event(&p, "RunnersReady"));
    assert_eq!(p.requeue_after, PlannerConfig::default().resync);
}

fn idle_fx(idle_ago: &[(&str, i64)], busy: &[&str], min_idle: i32) -> Fx {
    let mut fx = Fx::new();
    fx.spec.scaling.min_idle = min_idle;
    let mut groups = Vec::new();
    let mut runners = Vec::new();
    for (i, (n, ago)) in idle_ago.iter().enumerate() {
        groups.push(running(n));
        runners.push(runner(10 + i as u64, n, true, false));
        fx.state.idle_since.insert(n.to_string(), t0() - mins(*ago));
        fx.state.seen_online.insert(n.to_string());
    }
    for (i, n) in busy.iter().enumerate() {
        groups.push(running(n));
        runners.push(runner(50 + i as u64, n, true, true));
        fx.state.seen_online.insert(n.to_string());
    }
    fx.groups = Ok(groups);
    fx.runners = Ok(runners);
    fx
}

#[test]
fn scale_down_only_idle_past_delay_oldest_first_unregister_then_delete() {
    // minIdle 1, one busy → desired 2; four idle → surplus 3, but only two are past 5m.
    let fx = idle_fx(
        &[("pool-idle1", 1), ("pool-idle2", 20), ("pool-idle3", 6), ("pool-idle4", 2)],
        &["pool-busy1"],
        1,
    );
    let p = fx.run();
    assert_eq!(p.status.desired, 2);
    assert_eq!(
        p.actions,
        vec![
            Action::UnregisterRunner { id: 11, name: "pool-idle2".into(), reason: RemovalReason::ScaleDown },
            Action::DeleteGroup {
                name: "pool-idle2".into(),
                reason: RemovalReason::ScaleDown,
                only_if_unregistered: Some(11)
            },
            Action::UnregisterRunner { id: 12, name: "pool-idle3".into(), reason: RemovalReason::ScaleDown },
            Action::DeleteGroup {
                name: "pool-idle3".into(),
                reason: RemovalReason::ScaleDown,
                only_if_unregistered: Some(12)
            },
        ]
    );
    assert!(has_event(&p, "ScaledDown"));
    // Next due: pool-idle4 idle for 2m → 3m left.
    assert_eq!(p.requeue_after, PlannerConfig::default().converging_requeue);
    cond_is(&p, "Reconciling", "True", "ScalingDown");
}

#[test]
fn scale_down_waits_for_delay_and_requeues_at_due_time() {
    let fx = idle_fx(&[("pool-idle1", 1), ("pool-idle2", 3)], &[], 1);
    let p = fx.run();
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    assert_eq!(p.requeue_after, PlannerConfig::default().converging_requeue);
    let mut fx2 = fx.clone();
    fx2.config.converging_requeue = Duration::from_secs(3600);
    fx2.config.resync = Duration::from_secs(3600);
    let p2 = fx2.run();
    // pool-idle2 becomes removable 2 minutes from now.
    assert_eq!(p2.requeue_after, Duration::from_secs(120));
}

#[test]
fn min_idle_lowered_never_touches_busy_runners() {
    let fx = idle_fx(&[("pool-idle1", 30)], &["pool-busy1", "pool-busy2", "pool-busy3"], 0);
    let p = fx.run();
    assert_eq!(p.status.desired, 3);
    let touched: Vec<&str> = destructive(&p).iter().map(|a| a.name()).collect();
    assert_eq!(touched, vec!["pool-idle1", "pool-idle1"]);
}

#[test]
fn idle_since_is_tracked_and_reset_when_busy() {
    let mut fx = Fx::new();
    fx.groups = Ok(vec![running("pool-aaaa1"), running("pool-aaaa2")]);
    fx.runners = Ok(vec![runner(1, "pool-aaaa1", true, false), runner(2, "pool-aaaa2", true, false)]);
    let p = fx.run();
    assert_eq!(p.state.idle_since.get("pool-aaaa1"), Some(&t0()));
    fx.carry(&p, mins(1));
    fx.runners = Ok(vec![runner(1, "pool-aaaa1", true, true), runner(2, "pool-aaaa2", true, false)]);
    let p = fx.run();
    assert!(!p.state.idle_since.contains_key("pool-aaaa1"));
    assert_eq!(p.state.idle_since.get("pool-aaaa2"), Some(&t0()));
}

#[test]
fn recycle_table() {
    // (container state, restart count, registration) -> (actions, failure counted)
    let term = |c| ContainerState::Terminated { exit_code: Some(c) };
    type Case = (ContainerState, i32, Option<(bool, bool)>, bool, Vec<Action>, bool);
    let unreg = |r| Action::UnregisterRunner { id: 7, name: "pool-done1".into(), reason: r };
    let del = |r| Action::DeleteGroup { name: "pool-done1".into(), reason: r, only_if_unregistered: None };
    let cases: Vec<Case> = vec![
        // exit 0, registration gone (ephemeral runner removed itself) → delete group only.
        (term(0), 0, None, true, vec![del(RemovalReason::Recycled)], false),
        // exit 0 of an ephemeral runner, registration still listed (the list predates GitHub
        // removing it) → delete the group only; GitHub removes the registration itself.
        (term(0), 0, Some((false, false)), true, vec![del(RemovalReason::Recycled)], false),
        (term(0), 0, Some((true, false)), true, vec![del(RemovalReason::Recycled)], false),
        // crash after having been online: recycled, not a provisioning failure.
        (term(1), 0, None, true, vec![del(RemovalReason::Crashed)], false),
        // crash before ever coming online: provisioning failure.
        (term(1), 0, None, false, vec![del(RemovalReason::Crashed)], true),
        // restarted container counts as crashed.
        (
            ContainerState::Running,
            2,
            Some((false, false)),
            false,
            vec![unreg(RemovalReason::Crashed), del(RemovalReason::Crashed)],
            true,
        ),
        // busy registration: never touched, even with a terminated container.
        (term(0), 0, Some((true, true)), true, vec![], false),
    ];
    for (i, (state, restarts, reg, seen, want, counted)) in cases.into_iter().enumerate() {
        let mut fx = Fx::new();
        fx.spec.scaling.min_idle = 0;
        let mut g = group("pool-done1", state, 10);
        if let Some(c) = g.container.as_mut() {
            c.restart_count = restarts;
            c.finished_at = Some(t0() - mins(1));
        }
        fx.groups = Ok(vec![g]);
        fx.runners =
            Ok(reg.map(|(online, busy)| vec![runner(7, "pool-done1", online, busy)]).unwrap_or_default());
        if seen {
            fx.state.seen_online.insert("pool-done1".into());
        }
        let p = fx.run();
        let got: Vec<Action> = p.actions.iter().filter(|a| a.is_destructive()).cloned().collect();
        assert_eq!(got, want, "case {i}");
        assert_eq!(p.state.failures > 0, counted, "case {i}");
        if !want.is_empty() {
            assert!(has_event(&p, "RunnerRecycled"), "case {i}");
        }
    }
}

#[test]
fn finished_persistent_runner_is_unregistered_and_lingering_ephemeral_registration_collected() {
    // A persistent (token mode, not ephemeral) runner that exited 0 keeps its registration:
    // the controller unregisters it before deleting the group.
    let mut fx = Fx::new();
    fx.spec = spec_json(serde_json::json!({
        "github": {"organization": "acme"},
        "runner": {"registration": {"mode": "token", "ephemeral": false}},
        "scaling": {"minIdle": 0}
    }));
    let mut g = group("pool-done1", ContainerState::Terminated { exit_code: Some(0) }, 10);
    if let Some(c) = g.container.as_mut() {
        c.finished_at = Some(t0() - mins(1));
    }
    fx.groups = Ok(vec![g]);
    fx.runners = Ok(vec![runner(7, "pool-done1", false, false)]);
    fx.state.seen_online.insert("pool-done1".into());
    let p = fx.run();
    let got: Vec<Action> = p.actions.iter().filter(|a| a.is_destructive()).cloned().collect();
    assert_eq!(
        got,
        vec![
            Action::UnregisterRunner { id: 7, name: "pool-done1".into(), reason: RemovalReason::Recycled },
            Action::DeleteGroup {
                name: "pool-done1".into(),
                reason: RemovalReason::Recycled,
                only_if_unregistered: None
            },
        ]
    );

    // An ephemeral runner's registration that outlives its deleted group is an offline
    // registration without a group: collected once confirmed after gcGrace, never leaked.
    let mut fx = Fx::new();
    fx.spec.scaling.min_idle = 0;
    fx.runners = Ok(vec![runner(7, "pool-done1", false, false)]);
    let first = fx.run();
    assert!(!first.actions.iter().any(Action::is_destructive), "not before the grace period");
    let mut fx2 = Fx::new();
    fx2.spec.scaling.min_idle = 0;
    fx2.runners = Ok(vec![runner(7, "pool-done1", false, false)]);
    fx2.state = first.state.clone();
    fx2.now = t0() + fx2.config.gc_grace + mins(1);
    let later = fx2.run();
    assert!(later.actions.contains(&Action::UnregisterRunner {
        id: 7,
        name: "pool-done1".into(),
        reason: RemovalReason::GarbageCollected
    }));
}

#[test]
fn failures_are_counted_once_per_group() {
    let mut fx = Fx::new();
    fx.spec.scaling.min_idle = 1;
    let mut g = group("pool-bad01", ContainerState::Waiting { reason: Some("ErrImagePull".into()) }, 1);
    g.provisioning = GroupProvisioning::Failed;
    fx.groups = Ok(vec![g]);
    let p = fx.run();
    assert_eq!(p.state.failures, 1);
    assert_eq!(p.state.last_failure.as_ref().unwrap().reason, FailureReason::InvalidImage);
    assert!(has_event(&p, "ProvisioningFailed"));
    assert_eq!(p.status.failed, 1);
    fx.carry(&p, chrono::Duration::seconds(5));
    // The delete is still in progress: the same group is listed again.
    let p = fx.run();
    assert_eq!(p.state.failures, 1);
    assert!(!has_event(&p, "ProvisioningFailed"));
}

#[test]
fn registration_timeout_replaces_and_counts() {
    let mut fx = Fx::new();
    fx.spec.scaling.min_idle = 1;
    fx.config.backoff_base = Duration::from_secs(30);
    // Running for 11 minutes (timeout 10m), no registration.
    fx.groups = Ok(vec![group("pool-slow1", ContainerState::Running, 11)]);
    let p = fx.run();
    assert_eq!(
        destructive(&p),
        vec![&Action::DeleteGroup {
            name: "pool-slow1".into(),
            reason: RemovalReason::RegistrationTimeout,
            only_if_unregistered: None
        }]
    );
    assert_eq!(p.state.last_failure.as_ref().unwrap().reason, FailureReason::RegistrationTimeout);
    // Replacement is held back by the backoff.
    assert!(creates(&p).is_empty());
    cond_is(&p, "Reconciling", "True", "Backoff");
    assert_eq!(p.state.backoff_until, Some(t0() + chrono::Duration::seconds(30)));

    // Offline registration of a timed-out group is removed first.
    let mut fx = Fx::new();
    fx.groups = Ok(vec![group("pool-slow1", ContainerState::Running, 11)]);
    fx.runners = Ok(vec![runner(3, "pool-slow1", false, false)]);
    let p = fx.run();
    assert_eq!(
        destructive(&p)[0],
        &Action::UnregisterRunner {
            id: 3,
            name: "pool-slow1".into(),
            reason: RemovalReason::RegistrationTimeout
        }
    );

    // Within the timeout: provisioning, requeue at the deadline at the latest.
    let mut fx = Fx::new();
    fx.spec.scaling.min_idle = 1;
    fx.config.converging_requeue = Duration::from_secs(3600);
    fx.config.resync = Duration::from_secs(3600);
    fx.groups = Ok(vec![group("pool-slow1", ContainerState::Running, 4)]);
    let p = fx.run();
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    assert_eq!(p.status.provisioning, 1);
    assert_eq!(p.requeue_after, Duration::from_secs(6 * 60));
}

#[test]
fn runner_that_went_offline_is_replaced_after_timeout_from_when_it_went_offline() {
    let mut fx = Fx::new();
    fx.groups = Ok(vec![group("pool-flap1", ContainerState::Running, 120)]);
    fx.runners = Ok(vec![runner(4, "pool-flap1", false, false)]);
    fx.state.seen_online.insert("pool-flap1".into());
    let p = fx.run();
    assert!(destructive(&p).is_empty(), "{:?}", p.actions);
    assert_eq!(p.state.offline_since.get("pool-flap1"), Some(&t0()));
    fx.carry(&p, mins(11));
    let p = fx.run();
    assert_eq!(destructive(&p).len(), 2);
}

#[test]
fn same_failure_three_times_stalls_with_its_reason() {
    let mut fx = Fx::new();
    fx.spec.scaling.min_idle = 1;
    fx.config.backoff_base = Duration::from_secs(1);
    let mut p = fx.run();
    for round in 1..=3u32 {
        let name = creates(&p)[0].name().to_string();
        fx.carry(&p, chrono::Duration::seconds(10));
        fx.failures =
            vec![create_failure(&name, "westeurope", Priority::Regular, EdgeErrorKind::InvalidImage)];
        p = fx.run();
        assert!(creates(&p).is_empty(), "backoff holds creates back");
        if round < 3 {
            cond_is(&p, "Stalled", "False", "NotStalled");
        } else {
            cond_is(&p, "Stalled", "True", "InvalidImage");
            cond_is(&p, "Ready", "False", "InvalidImage");
            cond_is(&p, "Reconciling", "False", "Stalled");
            assert!(has_event(&p, "InvalidImage"));
            assert!(cond(&p, "Stalled").message.contains("3 time(s)"));
            assert_eq!(p.state.failures, 3);
            // Exponential backoff: 1s, 2s, 4s.
            assert_eq!(p.state.backoff_until, Some(fx.now + chrono::Duration::seconds(4)));
        }
        // Backoff over: a Stalled pool still retries slowly.
        fx.carry(&p, chrono::Duration::seconds(10));
        p = fx.run();
        assert_eq!(creates(&p).len(), 1, "round {round}");
    }
    cond_is(&p, "Stalled", "True", "InvalidImage");
    // A spec change (new generation) is the change a Stalled pool waits for.
    fx.carry(&p, chrono::Duration::seconds(1));
    fx.pool.generation = Some(2);
    let p = fx.run();
    cond_is(&p, "Stalled", "False", "NotStalled");
    assert_eq!(p.state.failures, 0);
}

#[test]
fn different_failures_do_not_stall_and_auth_stalls_at_once() {
    let mut fx = Fx::new();
    fx.spec.scaling.min_idle = 0;
    fx.config.backoff_base = Duration::from_secs(1);
    for kind in [EdgeErrorKind::InvalidImage, EdgeErrorKind::InvalidRequest, EdgeErrorKind::InvalidImage] {
        fx.failures = vec![create_failure("pool-xxxxx", "westeurope", Priority::Regular, kind)];
        let p = fx.run();
        cond_is(&p, "Stalled", "False", "NotStalled");
        fx.carry(&p, mins(30));
    }
    fx.failures = vec![create_failure(
        "pool-xxxxy",
        "westeurope",
        Priority::Regular,
        EdgeErrorKind::Auth { permission: Some("administration:write".into()) },
    )];
    let p = fx.run();
    cond_is(&p, "Stalled", "True", "MissingPermission");
    assert!(has_event(&p, "AuthFailed"));
}

#[test]
fn transient_failures_back_off_but_never_stall() {
    let mut fx = Fx::new();
    fx.spec.scaling.min_idle = 0;
    for _ in 0..6 {
        fx.failures =
            vec![create_failure("pool-xxxxx", "westeurope", Priority::Regular, EdgeErrorKind::Transient)];
        let p = fx.run();
        cond_is(&p, "Stalled", "False", "NotStalled");
        fx.carry(&p, chrono::Duration::hours(1));
    }
    assert_eq!(fx.state.failures, 6);
}

#[test]
fn success_resets_failure_memory() {
    let mut fx = Fx::new();
    fx.state.failures = 2;
    fx.state.backoff_until = Some(t0() + mins(5));
    fx.state.last_failure =
        Some(FailureRecord { reason: FailureReason::InvalidImage, message: "x".into(), count: 2, at: t0() });
    fx.groups = Ok(vec![running("pool-good1")]);
    fx.runners = Ok(vec![runner(1, "pool-good1", true, false)]);
    let p = fx.run();
    assert_eq!(p.state.failures, 0);
    assert!(p.state.last_failure.is_none());
    assert_eq!(creates(&p).len(), 1);
}

#[test]
fn gc_offline_registration_mark_then_confirm() {
    let mut fx = Fx::new();
    fx.spec.scaling.min_idle = 0;
    fx.runners = Ok(vec![
        runner(9, "pool-gone1", false, false),
        // Not ours: other prefix, or our prefix without the pool label, or busy.
        runner(10, "other-gone1", false, false),
        ObservedRunner { labels: vec!["self-hosted".into()], ..runner(11, "pool-gone2", false, false) },
        runner(12, "pool-busy9", false, true),
    ]);
    let p = fx.run();
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    assert_eq!(p.state.gc_marks.get(&GcKey::Runner(9)), Some(&t0()));
    assert_eq!(p.state.gc_marks.len(), 1);
    fx.carry(&p, mins(1));
    let p = fx.run();
    assert!(p.actions.is_empty(), "grace not over: {:?}", p.actions);
    fx.carry(&p, mins(1));
    let p = fx.run();
    assert_eq!(
        p.actions,
        vec![Action::UnregisterRunner {
            id: 9,
            name: "pool-gone1".into(),
            reason: RemovalReason::GarbageCollected
        }]
    );
    assert!(has_event(&p, "GarbageCollected"));
}

#[test]
fn gc_mark_is_dropped_when_candidate_recovers_and_failed_list_keeps_marks() {
    let mut fx = Fx::new();
    fx.spec.scaling.min_idle = 0;
    fx.runners = Ok(vec![runner(9, "pool-gone1", false, false)]);
    let p = fx.run();
    fx.carry(&p, mins(1));
    // A failed list: no action, marks kept.
    fx.groups = Err(EdgeError::new(EdgeErrorKind::Transient, "ARM 503"));
    let p = fx.run();
    assert!(p.actions.is_empty());
    assert_eq!(p.state.gc_marks.len(), 1);
    fx.carry(&p, mins(5));
    // Now the group shows up: no longer a candidate.
    fx.groups = Ok(vec![group("pool-gone1", ContainerState::Running, 1)]);
    let p = fx.run();
    assert!(destructive(&p).is_empty(), "{:?}", p.actions);
    assert!(p.state.gc_marks.is_empty());
}

#[test]
fn stale_group_of_older_pool_with_same_name_is_collected() {
    let mut fx = Fx::new();
    fx.spec.scaling.min_idle = 0;
    let mut old = running("pool-old01");
    old.pool_uid = Some("uid-dead".into());
    let mut other_live = running("pool-live1");
    other_live.pool_uid = Some("uid-other".into());
    fx.live.insert("uid-other".into());
    let mut busy_old = running("pool-old02");
    busy_old.pool_uid = Some("uid-dead".into());
    fx.groups = Ok(vec![old, other_live, busy_old]);
    fx.runners = Ok(vec![runner(5, "pool-old01", false, false), runner(6, "pool-old02", true, true)]);
    let p = fx.run();
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    fx.carry(&p, mins(3));
    let p = fx.run();
    assert_eq!(
        p.actions,
        vec![
            Action::UnregisterRunner { id: 5, name: "pool-old01".into(), reason: RemovalReason::Orphaned },
            Action::DeleteGroup {
                name: "pool-old01".into(),
                reason: RemovalReason::Orphaned,
                only_if_unregistered: None
            },
        ]
    );
}

#[test]
fn stale_group_of_an_online_runner_is_deleted_only_if_its_unregister_succeeds() {
    // The lists may be cached: an online runner shown idle may just have taken a job. GitHub
    // refuses to unregister a busy runner, and then its group must stay.
    let mut fx = Fx::new();
    fx.spec.scaling.min_idle = 0;
    let mut old = running("pool-old01");
    old.pool_uid = Some("uid-dead".into());
    fx.groups = Ok(vec![old]);
    fx.runners = Ok(vec![runner(5, "pool-old01", true, false)]);
    let p = fx.run();
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    fx.carry(&p, mins(3));
    let p = fx.run();
    assert_eq!(
        p.actions,
        vec![
            Action::UnregisterRunner { id: 5, name: "pool-old01".into(), reason: RemovalReason::Orphaned },
            Action::DeleteGroup {
                name: "pool-old01".into(),
                reason: RemovalReason::Orphaned,
                only_if_unregistered: Some(5)
            },
        ]
    );
}

#[test]
fn failed_list_deletes_nothing_and_keeps_counts() {
    for (groups_fail, runners_fail) in [(true, false), (false, true), (true, true)] {
        let mut fx = idle_fx(&[("pool-idle1", 60), ("pool-idle2", 60), ("pool-idle3", 60)], &[], 1);
        let mut done = group("pool-done1", ContainerState::Terminated { exit_code: Some(0) }, 5);
        done.failure = None;
        if let Ok(g) = fx.groups.as_mut() {
            g.push(done);
        }
        fx.prev = Some(RunnerPoolStatus { desired: 1, idle: 3, ..Default::default() });
        if groups_fail {
            fx.groups = Err(EdgeError::new(EdgeErrorKind::Transient, "ARM 500"));
        }
        if runners_fail {
            fx.runners = Err(EdgeError::new(EdgeErrorKind::Transient, "GitHub 502"));
        }
        let p = fx.run();
        assert!(p.actions.is_empty(), "{groups_fail} {runners_fail}: {:?}", p.actions);
        assert_eq!((p.status.desired, p.status.idle), (1, 3));
        cond_is(&p, "Ready", "False", "ObservationFailed");
        cond_is(&p, "Reconciling", "True", "ObservationFailed");
        cond_is(&p, "Stalled", "False", "NotStalled");
    }
    let mut fx = Fx::new();
    fx.runners = Err(EdgeError::new(EdgeErrorKind::Auth { permission: None }, "401 Bad credentials"));
    let p = fx.run();
    assert!(p.actions.is_empty());
    cond_is(&p, "Stalled", "True", "AuthFailed");
    assert!(has_event(&p, "AuthFailed"));
}

#[test]
fn bad_input_stalls_without_touching_anything() {
    let base = idle_fx(&[("pool-idle1", 60), ("pool-idle2", 60), ("pool-idle3", 60)], &[], 0);
    let mut invalid = base.clone();
    invalid.spec.runner.cpu = 64.0;
    let mut missing = base.clone();
    missing.creds = CredentialStatus::Invalid {
        problem: CredentialProblem::SecretNotFound,
        message: "Secret ns/gh-app not found".into(),
    };
    let mut key = base.clone();
    key.creds = CredentialStatus::Invalid {
        problem: CredentialProblem::SecretKeyMissing,
        message: "Secret ns/gh-app has no key privateKey".into(),
    };
    let mut pem = base.clone();
    pem.creds = CredentialStatus::Invalid {
        problem: CredentialProblem::InvalidAppKey,
        message: "Secret ns/gh-app key privateKey is not a PEM RSA key".into(),
    };
    for (fx, reason) in [
        (invalid, "InvalidSpec"),
        (missing, "SecretNotFound"),
        (key, "SecretKeyMissing"),
        (pem, "InvalidAppKey"),
    ] {
        let p = fx.run();
        assert!(p.actions.is_empty(), "{reason}: {:?}", p.actions);
        cond_is(&p, "Stalled", "True", reason);
        cond_is(&p, "Ready", "False", reason);
        assert!(has_event(&p, reason), "{reason}: {:?}", p.events);
        // Event only on the transition.
        let mut again = fx.clone();
        again.carry(&p, mins(1));
        let p2 = again.run();
        assert!(!has_event(&p2, reason), "{reason}");
        assert_eq!(
            cond(&p2, "Stalled").last_transition_time,
            cond(&p, "Stalled").last_transition_time,
            "{reason}"
        );
    }
    // Transient Secret read error: not stalled, nothing done.
    let mut fx = base;
    fx.creds = CredentialStatus::Unavailable { message: "apiserver timeout".into() };
    let p = fx.run();
    assert!(p.actions.is_empty());
    cond_is(&p, "Reconciling", "True", "CredentialsUnavailable");
    cond_is(&p, "Stalled", "False", "NotStalled");
}

#[test]
fn capacity_spills_to_fallback_locations_in_order() {
    let mut fx = Fx::new();
    fx.spec.azure.fallback_locations = vec!["northeurope".into(), "swedencentral".into()];
    fx.failures = vec![create_failure(
        "pool-aaaaa",
        "westeurope",
        Priority::Regular,
        EdgeErrorKind::CapacityUnavailable,
    )];
    let p = fx.run();
    let locs: Vec<&str> = p
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::CreateRunner { location, .. } => Some(location.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(locs, vec!["northeurope", "northeurope"]);
    assert!(has_event(&p, "CapacityUnavailable"));
    assert!(p.state.location_cooldown.contains_key("westeurope"));
    fx.carry(&p, mins(1));
    fx.failures = ["pool-aaaaa", "pool-aaaab"]
        .iter()
        .map(|n| create_failure(n, "northeurope", Priority::Regular, EdgeErrorKind::CapacityUnavailable))
        .collect();
    let p = fx.run();
    assert!(
        creates(&p)
            .iter()
            .all(|a| matches!(a, Action::CreateRunner { location, .. } if location == "swedencentral"))
    );
    fx.carry(&p, mins(1));
    fx.failures = vec![create_failure(
        "pool-aaaac",
        "swedencentral",
        Priority::Regular,
        EdgeErrorKind::CapacityUnavailable,
    )];
    let p = fx.run();
    assert!(creates(&p).is_empty());
    cond_is(&p, "Reconciling", "True", "CapacityUnavailable");
    cond_is(&p, "Stalled", "False", "NotStalled");
    // After the cool-down of the primary location, it is tried again.
    fx.carry(&p, mins(8));
    let p = fx.run();
    assert!(
        creates(&p)
            .iter()
            .all(|a| matches!(a, Action::CreateRunner { location, .. } if location == "westeurope"))
    );
    assert_eq!(creates(&p).len(), 1);
}

#[test]
fn spot_falls_back_to_regular_only_with_spot_fallback() {
    for (fallback, kind) in [
        (true, EdgeErrorKind::CapacityUnavailable),
        (true, EdgeErrorKind::QuotaExceeded),
        (false, EdgeErrorKind::CapacityUnavailable),
    ] {
        let mut fx = Fx::new();
        fx.spec.runner.priority = Priority::Spot;
        fx.spec.runner.spot_fallback = fallback;
        fx.spec.azure.fallback_locations = vec!["northeurope".into()];
        let p = fx.run();
        assert!(
            creates(&p).iter().all(|a| matches!(a, Action::CreateRunner { priority: Priority::Spot, .. }))
        );
        fx.carry(&p, chrono::Duration::seconds(10));
        fx.failures = vec![create_failure("pool-aaaaa", "westeurope", Priority::Spot, kind.clone())];
        let p = fx.run();
        let got: Vec<(String, Priority)> = p
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::CreateRunner { location, priority, .. } => Some((location.clone(), *priority)),
                _ => None,
            })
            .collect();
        let want = if fallback {
            (String::from("westeurope"), Priority::Regular)
        } else {
            (String::from("northeurope"), Priority::Spot)
        };
        assert_eq!(got, vec![want], "fallback {fallback} {kind:?}");
        cond_is(&p, "Stalled", "False", "NotStalled");
        if fallback {
            assert!(has_event(&p, "SpotFallback"));
        }
    }
    // Spot again once the cool-down is over.
    for (until, want) in [(mins(1), Priority::Regular), (-mins(1), Priority::Spot)] {
        let mut fx = Fx::new();
        fx.spec.runner.priority = Priority::Spot;
        fx.spec.runner.spot_fallback = true;
        fx.state.spot_unavailable_until = Some(t0() + until);
        let p = fx.run();
        assert_eq!(creates(&p).len(), 2);
        assert!(
            creates(&p)
                .iter()
                .all(|a| matches!(a, Action::CreateRunner { priority, .. } if *priority == want))
        );
    }
}

#[test]
fn quota_exceeded_waits_and_says_so_then_recovers() {
    let mut fx = Fx::new();
    fx.spec.scaling.min_idle = 1;
    let p = fx.run();
    fx.carry(&p, chrono::Duration::seconds(10));
    fx.failures =
        vec![create_failure("pool-aaaaa", "westeurope", Priority::Regular, EdgeErrorKind::QuotaExceeded)];
    let p = fx.run();
    assert!(creates(&p).is_empty());
    cond_is(&p, "Stalled", "True", "QuotaExceeded");
    cond_is(&p, "Ready", "False", "QuotaExceeded");
    assert_eq!(p.events.iter().filter(|e| e.reason == "QuotaExceeded").count(), 1);
    assert_eq!(p.state.quota.as_ref().unwrap().until, fx.now + mins(1));
    // Still waiting: no create loop, no repeated event.
    fx.carry(&p, chrono::Duration::seconds(30));
    let p = fx.run();
    assert!(creates(&p).is_empty());
    assert!(!has_event(&p, "QuotaExceeded"));
    // Wait over: one retry; a second quota error doubles the wait.
    fx.carry(&p, chrono::Duration::seconds(31));
    let p = fx.run();
    let retry = creates(&p)[0].name().to_string();
    fx.carry(&p, chrono::Duration::seconds(10));
    fx.failures = vec![create_failure(&retry, "westeurope", Priority::Regular, EdgeErrorKind::QuotaExceeded)];
    let p = fx.run();
    assert_eq!(p.state.quota.as_ref().unwrap().until, fx.now + mins(2));
    // Retry succeeds: the group shows up → quota cleared, Stalled False.
    fx.carry(&p, mins(2));
    let p = fx.run();
    let name = creates(&p)[0].name().to_string();
    fx.carry(&p, chrono::Duration::seconds(10));
    fx.groups = Ok(vec![group(&name, ContainerState::Waiting { reason: None }, 0)]);
    let p = fx.run();
    assert!(p.state.quota.is_none());
    cond_is(&p, "Stalled", "False", "NotStalled");
}

#[test]
fn creates_accepted_in_the_pass_of_a_quota_refusal_do_not_end_the_quota_wait() {
    // Pass 1 creates three; ARM accepts two, then refuses the third for quota. In pass 2 the
    // two accepted groups are listed: that says nothing about quota now, so no retry before
    // the quota wait is over.
    let mut fx = Fx::new();
    fx.spec.scaling.min_idle = 3;
    let p = fx.run();
    let names: Vec<String> = creates(&p).iter().map(|a| a.name().to_string()).collect();
    assert_eq!(names.len(), 3);
    fx.carry(&p, chrono::Duration::seconds(1));
    fx.failures =
        vec![create_failure(&names[2], "westeurope", Priority::Regular, EdgeErrorKind::QuotaExceeded)];
    fx.groups =
        Ok(names[..2].iter().map(|n| group(n, ContainerState::Waiting { reason: None }, 0)).collect());
    let p = fx.run();
    assert!(creates(&p).is_empty(), "retried at once: {:?}", p.actions);
    cond_is(&p, "Stalled", "True", "QuotaExceeded");
    assert_eq!(p.state.quota.as_ref().unwrap().until, fx.now + mins(1));
    // After the wait: a single retry; once it is accepted (listed), the quota wait ends.
    fx.carry(&p, mins(1));
    let p = fx.run();
    let retry: Vec<String> = creates(&p).iter().map(|a| a.name().to_string()).collect();
    assert_eq!(retry.len(), 1, "{:?}", p.actions);
    fx.carry(&p, chrono::Duration::seconds(5));
    fx.groups.as_mut().unwrap().push(group(&retry[0], ContainerState::Waiting { reason: None }, 0));
    let p = fx.run();
    assert!(p.state.quota.is_none());
    cond_is(&p, "Stalled", "False", "NotStalled");
}

fn stalled_status(reason: &str, message: &str, generation: i64) -> RunnerPoolStatus {
    let reason = ConditionReason::parse(reason).unwrap();
    let wanted = conditions::Conditions {
        ready: conditions::CondValue::new(false, reason, message),
        reconciling: conditions::CondValue::new(false, ConditionReason::Stalled, message),
        stalled: conditions::CondValue::new(true, reason, message),
    };
    RunnerPoolStatus {
        desired: 2,
        conditions: conditions::build(&[], &wanted, Some(generation), t0() - mins(10)),
        ..Default::default()
    }
}

#[test]
fn a_restart_resumes_a_stall_of_the_same_generation() {
    // Fresh memory (controller restart), the written status says Stalled InvalidImage.
    let mut fx = Fx::new();
    fx.state = PoolState::default();
    fx.prev = Some(stalled_status(
        "InvalidImage",
        "creating runner pool-x1234: image refused (3 time(s) in a row; next attempt at 2026-01-01T11:51:00+00:00)",
        1,
    ));
    let p = fx.run();
    // Still Stalled (no flap, no new Warning), and the next attempt is made at once.
    cond_is(&p, "Stalled", "True", "InvalidImage");
    assert!(!has_event(&p, "InvalidImage"));
    assert_eq!(creates(&p).len(), 2);
    let c = cond(&p, "Stalled");
    assert_eq!(c.message.matches("time(s) in a row").count(), 1, "{}", c.message);
    // It fails the same way: still Stalled, and the backoff continues where it was.
    let name = creates(&p)[0].name().to_string();
    fx.carry(&p, chrono::Duration::seconds(5));
    fx.failures = vec![create_failure(&name, "westeurope", Priority::Regular, EdgeErrorKind::InvalidImage)];
    let p = fx.run();
    cond_is(&p, "Stalled", "True", "InvalidImage");
    assert_eq!(p.state.backoff_until, Some(fx.now + chrono::Duration::seconds(80)));

    // A spec changed while the controller was down is the change the stall waited for.
    let mut fx = Fx::new();
    fx.state = PoolState::default();
    fx.pool.generation = Some(2);
    fx.prev = Some(stalled_status("InvalidImage", "image refused (3 time(s) in a row)", 1));
    let p = fx.run();
    cond_is(&p, "Stalled", "False", "NotStalled");

    // Quota: Stalled until a create is accepted; one retry at once.
    let mut fx = Fx::new();
    fx.state = PoolState::default();
    fx.prev =
        Some(stalled_status("QuotaExceeded", "quota exceeded in westeurope: cores; next attempt at x", 1));
    let p = fx.run();
    cond_is(&p, "Stalled", "True", "QuotaExceeded");
    assert!(!creates(&p).is_empty());
    let names: Vec<String> = creates(&p).iter().map(|a| a.name().to_string()).collect();
    fx.carry(&p, chrono::Duration::seconds(5));
    fx.groups = Ok(names.iter().map(|n| group(n, ContainerState::Waiting { reason: None }, 0)).collect());
    let p = fx.run();
    cond_is(&p, "Stalled", "False", "NotStalled");
}

#[test]
fn jit_registration_of_failed_create_is_unregistered() {
    let mut fx = Fx::new();
    fx.spec.scaling.min_idle = 0;
    let mut f = create_failure("pool-aaaaa", "westeurope", Priority::Regular, EdgeErrorKind::Transient);
    f.registered_runner = Some(77);
    fx.failures = vec![f];
    fx.runners = Ok(vec![runner(77, "pool-aaaaa", false, false)]);
    let p = fx.run();
    assert_eq!(
        p.actions,
        vec![Action::UnregisterRunner {
            id: 77,
            name: "pool-aaaaa".into(),
            reason: RemovalReason::CreateFailed
        }]
    );
    // When it is gone, it is forgotten.
    fx.carry(&p, chrono::Duration::seconds(10));
    fx.runners = Ok(vec![]);
    let p = fx.run();
    assert!(p.state.pending_unregister.is_empty());
    assert!(p.actions.is_empty());
}

#[test]
fn token_mode_registration() {
    let mut fx = Fx::new();
    fx.spec = spec_json(serde_json::json!({
        "github": {"organization": "acme", "runnerGroup": "ci", "labels": ["aci", "big"]},
        "runner": {"registration": {"mode": "token", "ephemeral": false}}
    }));
    let p = fx.run();
    let Action::CreateRunner { registration, .. } = creates(&p)[0] else { unreachable!() };
    assert_eq!(
        registration,
        &RunnerRegistration::Token {
            labels: vec!["aci".into(), "big".into()],
            runner_group: Some("ci".into()),
            ephemeral: false
        }
    );
}

#[test]
fn names_are_never_reused() {
    let mut fx = Fx::new();
    fx.spec.scaling.min_idle = 3;
    fx.groups = Ok(vec![group("pool-aaaaa", ContainerState::Waiting { reason: None }, 0)]);
    fx.runners = Ok(vec![runner(1, "pool-aaaab", false, false)]);
    fx.state.used_names.insert("pool-aaaac".into(), t0() - mins(30));
    fx.state.in_flight.insert(
        "pool-aaaad".into(),
        InFlight { since: t0(), location: "westeurope".into(), priority: Priority::Regular },
    );
    let p = fx.run();
    let got: Vec<&str> = creates(&p).iter().map(|a| a.name()).collect();
    assert_eq!(got, vec!["pool-aaaae"]);
    // Names used long ago (beyond retention) may come back only if no list shows them.
    assert!(p.state.used_names.contains_key("pool-aaaae"));
}

#[test]
fn long_pool_names_give_valid_runner_names() {
    let mut fx = Fx::new();
    fx.pool.name = format!("{}.prod", "a".repeat(70));
    let p = fx.run();
    for a in creates(&p) {
        assert!(names::is_valid_group_name(a.name()), "{}", a.name());
        assert!(a.name().len() <= 63);
    }
}

#[test]
fn lost_in_flight_create_expires_and_counts() {
    let mut fx = Fx::new();
    fx.spec.scaling.min_idle = 1;
    for n in ["pool-lost1", "pool-lost2"] {
        fx.state.in_flight.insert(
            n.into(),
            InFlight { since: t0() - mins(11), location: "westeurope".into(), priority: Priority::Regular },
        );
    }
    let p = fx.run();
    assert!(!p.state.in_flight.contains_key("pool-lost1"));
    assert_eq!(p.state.failures, 1);
    assert!(p.state.used_names.contains_key("pool-lost1"));
}

#[test]
fn last_transition_time_only_changes_on_flip() {
    let mut fx = Fx::new();
    let p1 = fx.run();
    let ready1 = cond(&p1, "Ready").last_transition_time.clone();
    fx.carry(&p1, mins(1));
    let p2 = fx.run();
    assert_eq!(cond(&p2, "Ready").last_transition_time, ready1);
    // Flip to Ready.
    let names: Vec<String> = p1.state.in_flight.keys().cloned().collect();
    fx.carry(&p2, mins(1));
    fx.groups = Ok(names.iter().map(|n| running(n)).collect());
    fx.runners = Ok(names.iter().enumerate().map(|(i, n)| runner(i as u64, n, true, false)).collect());
    let p3 = fx.run();
    cond_is(&p3, "Ready", "True", "RunnersReady");
    assert_ne!(cond(&p3, "Ready").last_transition_time, ready1);
    assert_eq!(cond(&p3, "Stalled").last_transition_time, cond(&p1, "Stalled").last_transition_time);
    assert_eq!(cond(&p3, "Ready").observed_generation, Some(1));
}

#[test]
fn usage_accumulates_without_double_counting_after_restart() {
    let mut fx = Fx::new();
    fx.spec.scaling.min_idle = 1;
    fx.config.prices = Some(PriceTable {
        currency: "USD".into(),
        regular_vcpu_second: 0.001,
        regular_gb_second: 0.0001,
        spot_vcpu_second: 0.0,
        spot_gb_second: 0.0,
    });
    fx.state.initialized = true;
    // Group created 11 minutes ago (container started 10m ago), 2 vCPU, 4 GB.
    fx.groups = Ok(vec![running("pool-use01")]);
    fx.runners = Ok(vec![runner(1, "pool-use01", true, false)]);
    let mut g = fx.groups.as_ref().unwrap()[0].clone();
    g.created = Some(t0() - mins(10));
    fx.groups = Ok(vec![g]);
    let p = fx.run();
    let u = p.status.usage.clone().unwrap();
    assert!((u.vcpu_seconds - 1200.0).abs() < 1e-6, "{u:?}");
    assert!((u.gb_seconds - 2400.0).abs() < 1e-6);
    assert!((u.estimated_cost.unwrap() - (1.2 + 0.24)).abs() < 1e-9);
    assert_eq!(u.currency.as_deref(), Some("USD"));
    fx.carry(&p, mins(1));
    let p = fx.run();
    let u2 = p.status.usage.clone().unwrap();
    assert!((u2.vcpu_seconds - 1320.0).abs() < 1e-6, "{u2:?}");
    // Restart: state lost → baseline only, nothing added twice.
    fx.carry(&p, mins(1));
    fx.state = PoolState::default();
    let p = fx.run();
    assert_eq!(p.status.usage.as_ref().unwrap().vcpu_seconds, u2.vcpu_seconds);
    fx.carry(&p, mins(1));
    let p = fx.run();
    assert!((p.status.usage.as_ref().unwrap().vcpu_seconds - (1320.0 + 120.0)).abs() < 1e-6);
    // A failed list keeps the last usage.
    let mut failed = fx.clone();
    failed.carry(&p, mins(1));
    failed.groups = Err(EdgeError::new(EdgeErrorKind::Transient, "x"));
    let pf = failed.run();
    assert_eq!(pf.status.usage, p.status.usage);
}

fn deleting(fx: &mut Fx, ago_min: i64) {
    fx.pool.deletion_timestamp = Some(t0() - mins(ago_min));
}

#[test]
fn deletion_removes_idle_waits_for_busy_then_drains() {
    let mut fx = idle_fx(&[("pool-idle1", 1)], &["pool-busy1"], 2);
    fx.groups.as_mut().unwrap().push(group("pool-prov1", ContainerState::Waiting { reason: None }, 1));
    deleting(&mut fx, 10);
    let p = fx.run();
    assert_eq!(
        p.actions,
        vec![
            Action::UnregisterRunner {
                id: 10,
                name: "pool-idle1".into(),
                reason: RemovalReason::PoolDeleted
            },
            Action::DeleteGroup {
                name: "pool-idle1".into(),
                reason: RemovalReason::PoolDeleted,
                only_if_unregistered: Some(10)
            },
            Action::DeleteGroup {
                name: "pool-prov1".into(),
                reason: RemovalReason::PoolDeleted,
                only_if_unregistered: None
            },
        ]
    );
    assert_eq!(p.finalizer, FinalizerDecision::Keep);
    assert!(creates(&p).is_empty());
    cond_is(&p, "Ready", "False", "Deleting");
    cond_is(&p, "Reconciling", "True", "Deleting");
    assert!(cond(&p, "Ready").message.contains("draining"));
    // Busy runner still within drainTimeout (60m): waits; requeue at most the resync.
    fx.carry(&p, mins(1));
    fx.groups = Ok(vec![running("pool-busy1")]);
    fx.runners = Ok(vec![runner(50, "pool-busy1", true, true)]);
    let p = fx.run();
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    assert_eq!(p.finalizer, FinalizerDecision::Keep);
    cond_is(&p, "Reconciling", "True", "Draining");
    // drainTimeout passed: the group is deleted first, then the registration.
    fx.carry(&p, mins(60));
    let p = fx.run();
    assert_eq!(
        p.actions,
        vec![
            Action::DeleteGroup {
                name: "pool-busy1".into(),
                reason: RemovalReason::DrainTimeout,
                only_if_unregistered: None
            },
            Action::UnregisterRunner {
                id: 50,
                name: "pool-busy1".into(),
                reason: RemovalReason::DrainTimeout
            },
        ]
    );
    // Everything gone → finalizer removed.
    fx.carry(&p, mins(1));
    fx.groups = Ok(vec![]);
    fx.runners = Ok(vec![]);
    let p = fx.run();
    assert!(p.actions.is_empty());
    assert_eq!(p.finalizer, FinalizerDecision::Remove);
    assert!(has_event(&p, "CleanupComplete"));
}

#[test]
fn deletion_waits_for_in_flight_creates() {
    let mut fx = Fx::new();
    deleting(&mut fx, 0);
    fx.state.in_flight.insert(
        "pool-fly01".into(),
        InFlight { since: t0() - mins(1), location: "westeurope".into(), priority: Priority::Regular },
    );
    let p = fx.run();
    assert_eq!(p.finalizer, FinalizerDecision::Keep);
    fx.carry(&p, mins(1));
    fx.groups = Ok(vec![group("pool-fly01", ContainerState::Waiting { reason: None }, 0)]);
    let p = fx.run();
    assert_eq!(
        p.actions,
        vec![Action::DeleteGroup {
            name: "pool-fly01".into(),
            reason: RemovalReason::PoolDeleted,
            only_if_unregistered: None
        }]
    );
}

#[test]
fn deletion_with_orphan_policy_releases_groups() {
    let mut fx = idle_fx(&[("pool-idle1", 1)], &["pool-busy1"], 2);
    deleting(&mut fx, 0);
    fx.pool.annotations.insert(DELETION_POLICY_ANNOTATION.into(), "orphan".into());
    let p = fx.run();
    assert_eq!(
        p.actions,
        vec![
            Action::ReleaseGroup { name: "pool-idle1".into() },
            Action::ReleaseGroup { name: "pool-busy1".into() }
        ]
    );
    assert!(has_event(&p, "Orphaned"));
    assert_eq!(p.finalizer, FinalizerDecision::Keep);
    fx.carry(&p, mins(1));
    fx.groups = Ok(vec![]);
    // GitHub list failing does not matter with the orphan policy.
    fx.runners = Err(EdgeError::new(EdgeErrorKind::Transient, "502"));
    let p = fx.run();
    assert!(p.actions.is_empty());
    assert_eq!(p.finalizer, FinalizerDecision::Remove);
}

#[test]
fn deletion_never_wedges() {
    let mut fx = idle_fx(&[("pool-idle1", 1)], &[], 1);
    deleting(&mut fx, 0);
    fx.config.deletion_max_attempts = 3;
    // First pass works and remembers what exists.
    let p = fx.run();
    fx.carry(&p, mins(1));
    fx.creds = CredentialStatus::Invalid {
        problem: CredentialProblem::SecretNotFound,
        message: "Secret ns/gh-app not found".into(),
    };
    let mut last = None;
    for attempt in 1..=3 {
        let p = fx.run();
        assert!(p.actions.is_empty());
        if attempt < 3 {
            assert_eq!(p.finalizer, FinalizerDecision::Keep, "attempt {attempt}");
        }
        fx.carry(&p, mins(1));
        last = Some(p);
    }
    let p = last.unwrap();
    assert_eq!(p.finalizer, FinalizerDecision::Remove);
    // Attempts are spaced: many passes within the backoff count once.
    let mut burst = fx.clone();
    burst.state.deletion_attempts = 0;
    burst.state.deletion_last_attempt = None;
    for _ in 0..10 {
        let q = burst.run();
        assert_eq!(q.finalizer, FinalizerDecision::Keep);
        assert_eq!(q.state.deletion_attempts, 1);
        burst.carry(&q, chrono::Duration::seconds(1));
    }
    let warn = p.events.iter().find(|e| e.reason == "CleanupAbandoned").unwrap();
    assert_eq!(warn.type_, EventType::Warning);
    assert!(warn.message.contains("pool-idle1"), "{}", warn.message);
    assert!(warn.message.contains("Secret ns/gh-app not found"));

    // Failing deletes count too.
    let mut fx = idle_fx(&[("pool-idle1", 1)], &[], 1);
    deleting(&mut fx, 0);
    fx.config.deletion_max_attempts = 2;
    let fail = ActionFailure {
        action: Action::DeleteGroup {
            name: "pool-idle1".into(),
            reason: RemovalReason::PoolDeleted,
            only_if_unregistered: None,
        },
        error: EdgeError::new(EdgeErrorKind::Transient, "ARM 500"),
        registered_runner: None,
    };
    fx.failures = vec![fail.clone()];
    let p = fx.run();
    assert_eq!(p.finalizer, FinalizerDecision::Keep);
    assert!(!p.actions.is_empty(), "retries while attempts remain");
    fx.carry(&p, mins(1));
    fx.failures = vec![fail];
    let p = fx.run();
    assert_eq!(p.finalizer, FinalizerDecision::Remove);
}

#[test]
fn orphan_groups_of_deleted_pools() {
    let mut dead = running("gone-aaaaa");
    dead.pool_uid = Some("uid-dead".into());
    dead.pool_name = Some("gone".into());
    let mut live = running("pool-aaaaa");
    live.pool_uid = Some(UID.into());
    let mut renamed = running("pool-bbbbb");
    renamed.pool_uid = Some("uid-older".into());
    let mut busy = running("gone-bbbbb");
    busy.pool_uid = Some("uid-dead".into());
    let mut untagged = running("x-ccccc");
    untagged.pool_uid = None;
    let groups: Vec<SweptGroup> = [dead, live, renamed, busy, untagged]
        .into_iter()
        .map(|group| SweptGroup { resource_group: "rg".into(), group })
        .collect();
    let live_uids: BTreeSet<String> = [UID.to_string()].into();
    let live_pools: BTreeSet<(String, String)> = [("ns".to_string(), "pool".to_string())].into();
    let placements: BTreeMap<String, (String, String)> =
        [(UID.to_string(), ("sub".to_string(), "rg".to_string()))].into();
    let busy_names: BTreeSet<String> = ["gone-bbbbb".to_string()].into();
    let marks = BTreeMap::new();
    let mk =
        |groups: Result<&[SweptGroup], EdgeError>, marks: &BTreeMap<(String, String), DateTime<Utc>>, now| {
            plan_orphan_groups(&OrphanInput {
                subscription: "sub",
                groups,
                live_pool_uids: &live_uids,
                live_pools: &live_pools,
                placements: &placements,
                busy_runners: &busy_names,
                marks,
                grace: Duration::from_secs(120),
                now,
            })
        };
    let p1 = mk(Ok(&groups), &marks, t0());
    assert!(p1.deletes.is_empty());
    assert_eq!(p1.marks.keys().collect::<Vec<_>>(), vec![&("rg".to_string(), "gone-aaaaa".to_string())]);
    assert_eq!(p1.requeue_after, Some(Duration::from_secs(120)));
    let failed = mk(Err(EdgeError::new(EdgeErrorKind::Transient, "x")), &p1.marks, t0() + mins(5));
    assert!(failed.deletes.is_empty());
    assert_eq!(failed.marks, p1.marks);
    let p2 = mk(Ok(&groups), &p1.marks, t0() + mins(2));
    assert_eq!(
        p2.deletes,
        vec![SweepDelete { resource_group: "rg".into(), name: "gone-aaaaa".into(), stranded_from: None }]
    );
    assert_eq!(p2.events.len(), 1);
}

#[test]
fn failures_of_one_pass_count_once_per_reason() {
    let mut fx = Fx::new();
    fx.spec.scaling.min_idle = 3;
    fx.failures = ["pool-x0001", "pool-x0002", "pool-x0003"]
        .iter()
        .map(|n| create_failure(n, "westeurope", Priority::Regular, EdgeErrorKind::InvalidImage))
        .chain(
            ["pool-x0004", "pool-x0005"]
                .iter()
                .map(|n| create_failure(n, "westeurope", Priority::Regular, EdgeErrorKind::QuotaExceeded)),
        )
        .collect();
    let p = fx.run();
    assert_eq!(p.state.failures, 1);
    assert_eq!(p.state.last_failure.as_ref().unwrap().count, 1);
    assert_eq!(p.state.quota.as_ref().unwrap().attempts, 1);
    assert_eq!(p.events.iter().filter(|e| e.reason == "ProvisioningFailed").count(), 1);
    // Quota is what is reported (the image failure has not repeated yet).
    cond_is(&p, "Stalled", "True", "QuotaExceeded");
}

#[test]
fn unusable_credentials_are_not_reported_as_list_auth_failures() {
    let mut fx = Fx::new();
    let unusable = EdgeError::new(EdgeErrorKind::Auth { permission: None }, "credentials unavailable");
    fx.groups = Err(unusable.clone());
    fx.runners = Err(unusable);
    fx.creds = CredentialStatus::Unavailable { message: "apiserver timeout".into() };
    let p = fx.run();
    assert!(p.actions.is_empty());
    cond_is(&p, "Stalled", "False", "NotStalled");
    cond_is(&p, "Reconciling", "True", "CredentialsUnavailable");
    fx.creds = CredentialStatus::Invalid {
        problem: CredentialProblem::SecretKeyMissing,
        message: "Secret ns/gh-app has no key installationId".into(),
    };
    let p = fx.run();
    cond_is(&p, "Stalled", "True", "SecretKeyMissing");
}

#[test]
fn no_demand_clears_quota_and_failure_stall() {
    let mut fx = Fx::new();
    fx.spec.scaling.min_idle = 0;
    fx.state.quota = Some(QuotaWait {
        until: t0() + mins(5),
        attempts: 2,
        message: "quota".into(),
        since: t0() - mins(1),
    });
    fx.state.last_failure = Some(FailureRecord {
        reason: FailureReason::InvalidImage,
        message: "image".into(),
        count: 5,
        at: t0() - mins(1),
    });
    fx.state.failures = 5;
    let p = fx.run();
    assert!(p.state.quota.is_none());
    assert!(p.state.last_failure.is_none());
    cond_is(&p, "Stalled", "False", "NotStalled");
    cond_is(&p, "Ready", "True", "RunnersReady");
    // With demand, the stall stays.
    let mut fx2 = fx.clone();
    fx2.spec.scaling.min_idle = 1;
    let p = fx2.run();
    cond_is(&p, "Stalled", "True", "InvalidImage");
}

#[test]
fn deletion_stuck_in_deleting_is_bounded() {
    let mut fx = Fx::new();
    fx.pool.deletion_timestamp = Some(t0());
    fx.config.deletion_max_attempts = 2;
    let mut g = running("pool-stuck");
    g.provisioning = GroupProvisioning::Deleting;
    fx.groups = Ok(vec![g]);
    let p = fx.run();
    assert_eq!(p.finalizer, FinalizerDecision::Keep);
    assert_eq!(p.state.deletion_attempts, 0);
    // drainTimeout (60m) + deletion grace (30m) later, passes count as failed attempts.
    fx.carry(&p, mins(90));
    let p = fx.run();
    assert_eq!(p.finalizer, FinalizerDecision::Keep);
    fx.carry(&p, mins(1));
    let p = fx.run();
    assert_eq!(p.finalizer, FinalizerDecision::Remove);
    let warn = p.events.iter().find(|e| e.reason == "CleanupAbandoned").unwrap();
    assert!(warn.message.contains("pool-stuck"), "{}", warn.message);
}

#[test]
fn removals_are_not_repeated_or_misread_while_lists_lag() {
    // Scale-down of an idle runner; the (cached) lists still show the group afterwards, and the
    // registration is gone: it must not look like a registration timeout.
    let mut fx = idle_fx(&[("pool-idle1", 30), ("pool-idle2", 30)], &[], 1);
    let p = fx.run();
    assert_eq!(destructive(&p).len(), 2);
    let removed = destructive(&p)[0].name().to_string();
    assert!(p.state.removing.contains_key(&removed));
    fx.carry(&p, mins(1));
    let keep: Vec<ObservedRunner> =
        fx.runners.as_ref().unwrap().iter().filter(|r| r.name != removed).cloned().collect();
    fx.runners = Ok(keep);
    let p = fx.run();
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    assert_eq!(p.state.failures, 0);
    assert_eq!((p.status.idle, p.status.terminating), (1, 1));
    // Still listed after removal_ttl: asked again.
    fx.carry(&p, mins(3));
    let p = fx.run();
    assert_eq!(
        destructive(&p),
        vec![&Action::DeleteGroup {
            name: removed.clone(),
            reason: RemovalReason::ScaleDown,
            only_if_unregistered: None
        }]
    );
    assert_eq!(p.state.failures, 0);
    // Gone from the lists: forgotten.
    fx.carry(&p, mins(1));
    fx.groups = Ok(fx.groups.as_ref().unwrap().iter().filter(|g| g.name != removed).cloned().collect());
    let p = fx.run();
    assert!(!p.state.removing.contains_key(&removed));

    // A failed delete is asked again at once.
    let mut fx = idle_fx(&[("pool-idle1", 30), ("pool-idle2", 30)], &[], 1);
    let p = fx.run();
    let actions = p.actions.clone();
    fx.carry(&p, chrono::Duration::seconds(10));
    fx.failures = vec![ActionFailure {
        action: actions[1].clone(),
        error: EdgeError::new(EdgeErrorKind::Transient, "ARM 500"),
        registered_runner: None,
    }];
    let p = fx.run();
    let again: Vec<&Action> = destructive(&p).into_iter().filter(|a| a.name() == actions[1].name()).collect();
    assert!(!again.is_empty(), "{:?}", p.actions);
    assert!(
        again.iter().all(|a| matches!(
            a,
            Action::DeleteGroup { reason: RemovalReason::ScaleDown, .. }
                | Action::UnregisterRunner { reason: RemovalReason::ScaleDown, .. }
        )),
        "{again:?}"
    );
    // GitHub refusing the unregister (busy): the decision is dropped, and the busy runner kept.
    let mut fx = idle_fx(&[("pool-idle1", 30), ("pool-idle2", 30)], &[], 1);
    let p = fx.run();
    let unreg = p.actions[0].clone();
    let name = unreg.name().to_string();
    fx.carry(&p, chrono::Duration::seconds(10));
    fx.failures = vec![ActionFailure {
        action: unreg,
        error: EdgeError::new(EdgeErrorKind::Conflict, "runner is busy"),
        registered_runner: None,
    }];
    let runners: Vec<ObservedRunner> = fx
        .runners
        .as_ref()
        .unwrap()
        .iter()
        .map(|r| if r.name == name { ObservedRunner { busy: true, ..r.clone() } } else { r.clone() })
        .collect();
    fx.runners = Ok(runners);
    let p = fx.run();
    assert!(!p.state.removing.contains_key(&name));
    assert!(p.actions.iter().all(|a| a.name() != name), "{:?}", p.actions);
    assert_eq!(p.status.busy, 1);
}

#[test]
fn a_denied_removal_escalates_the_backoff_once_per_period_not_once_per_pass() {
    // A finished runner whose group delete is denied (RBAC) pass after pass, 100 ms apart, for
    // 40 s; then the permission comes back and a job is queued. Found by the fault soak (seed 7):
    // the back-off had reached backoffMax, and the pool stayed Stalled with no create for 10
    // minutes after the permission came back.
    let mut fx = Fx::new();
    fx.spec.scaling.min_idle = 1;
    fx.config.backoff_base = Duration::from_secs(10);
    fx.config.backoff_max = Duration::from_secs(600);
    let done = group("pool-done1", ContainerState::Terminated { exit_code: Some(0) }, 5);
    fx.groups = Ok(vec![running("pool-idle1"), done]);
    fx.runners = Ok(vec![runner(1, "pool-idle1", true, false)]);
    let mut p = fx.run();
    let denied =
        EdgeErrorKind::Auth { permission: Some("Microsoft.ContainerInstance/containerGroups/delete".into()) };
    for _ in 0..400 {
        let delete: Vec<Action> = p
            .actions
            .iter()
            .filter(|a| matches!(a, Action::DeleteGroup { name, .. } if name == "pool-done1"))
            .cloned()
            .collect();
        assert_eq!(delete.len(), 1, "the removal is asked again every pass: {:?}", p.actions);
        fx.carry(&p, chrono::Duration::milliseconds(100));
        fx.failures = delete
            .into_iter()
            .map(|a| ActionFailure {
                action: a,
                error: EdgeError::new(denied.clone(), "denied"),
                registered_runner: None,
            })
            .collect();
        p = fx.run();
        cond_is(&p, "Stalled", "True", "MissingPermission");
    }
    // 40 s of denial: failures at 0, 10 and 30 s (back-off 10, 20, 40 s), not one per pass.
    assert!(p.state.failures <= 4, "failures {}", p.state.failures);
    let until = p.state.backoff_until.unwrap();
    assert!(until <= fx.now + chrono::Duration::seconds(80), "back-off until {until}, now {}", fx.now);

    // The permission is back: the delete succeeds (the group is gone); a job is queued. Once the
    // back-off has passed the pool creates, and it is no longer Stalled when the runner is online.
    fx.carry(&p, chrono::Duration::milliseconds(100));
    fx.groups = Ok(vec![running("pool-idle1")]);
    let job = QueuedJob { id: 77, labels: vec!["self-hosted".into(), "aci".into()], queued_at: fx.now };
    fx.jobs = vec![job];
    fx.runners = Ok(vec![runner(1, "pool-idle1", true, true)]);
    let p = fx.run();
    fx.carry(&p, until - fx.now + chrono::Duration::seconds(1));
    let p = fx.run();
    let c = creates(&p);
    assert_eq!(c.len(), 1, "{:?}", p.actions);
    let name = c[0].name().to_string();
    fx.carry(&p, chrono::Duration::seconds(5));
    fx.jobs.clear();
    fx.groups = Ok(vec![running("pool-idle1"), running(&name)]);
    fx.runners = Ok(vec![runner(1, "pool-idle1", true, true), runner(9, &name, true, false)]);
    let p = fx.run();
    cond_is(&p, "Stalled", "False", "NotStalled");
}

#[test]
fn a_restarted_persistent_runner_is_never_removed_under_a_job_it_may_have_taken() {
    // restartPolicy Always: the runner died under a job (seen online before), its container
    // restarted and runs again. Found by the fault soak (seed 38): on a runner list that still
    // showed the old registration offline, the group was deleted while the re-registered runner
    // was running the next job.
    let mut fx = Fx::new();
    fx.spec = spec_json(serde_json::json!({
        "github": {"organization": "acme"},
        "runner": {"registration": {"mode": "token", "ephemeral": false}},
        "scaling": {"minIdle": 1}
    }));
    let mut g = running("pool-back1");
    if let Some(c) = g.container.as_mut() {
        c.restart_count = 1;
    }
    fx.groups = Ok(vec![g]);
    fx.state.seen_online.insert("pool-back1".into());
    // The list (stale) shows the old registration offline: wait for it, remove nothing.
    fx.runners = Ok(vec![runner(7, "pool-back1", false, false)]);
    let p = fx.run();
    assert!(!p.actions.iter().any(Action::is_destructive), "{:?}", p.actions);
    // Back online (a new registration of the same name): healed by ACI's restart, kept and
    // counted idle; nothing removed (a newer registration may take a job at any moment).
    fx.carry(&p, chrono::Duration::seconds(2));
    fx.runners = Ok(vec![runner(8, "pool-back1", true, false)]);
    let p = fx.run();
    assert!(!p.actions.iter().any(Action::is_destructive), "{:?}", p.actions);
    assert_eq!(p.status.idle, 1);
    // Never back within registrationTimeout: removed as timed out.
    let mut fx2 = Fx::new();
    fx2.spec = fx.spec.clone();
    let mut g = running("pool-gone1");
    if let Some(c) = g.container.as_mut() {
        c.restart_count = 1;
    }
    fx2.groups = Ok(vec![g]);
    fx2.state.seen_online.insert("pool-gone1".into());
    fx2.runners = Ok(vec![runner(9, "pool-gone1", false, false)]);
    let p = fx2.run();
    assert!(!p.actions.iter().any(Action::is_destructive), "{:?}", p.actions);
    fx2.carry(&p, chrono::Duration::minutes(10));
    let p = fx2.run();
    assert!(
        p.actions.iter().any(|a| matches!(a, Action::DeleteGroup { name, reason: RemovalReason::RegistrationTimeout, .. } if name == "pool-gone1")),
        "{:?}",
        p.actions
    );
}

#[test]
fn the_ports_filter_drops_nothing_the_plan_looks_at() {
    // The reconcile pass reads only the groups and runners that concern the pool
    // (`names::group_concerns_pool`, `names::is_pool_runner_name`). Planning with the filtered
    // lists must give exactly the plan of the whole shared lists.
    let tagged = |name: &str, uid: &str, ns: &str, pool: &str, state| {
        let mut g = group(name, state, 20);
        g.pool_uid = Some(uid.into());
        g.pool_namespace = Some(ns.into());
        g.pool_name = Some(pool.into());
        g
    };
    let untagged = |name: &str| {
        let mut g = running(name);
        g.pool_uid = None;
        g.pool_namespace = None;
        g.pool_name = None;
        g
    };
    let mut done = group("pool-done1", ContainerState::Terminated { exit_code: Some(0) }, 5);
    if let Some(c) = done.container.as_mut() {
        c.finished_at = Some(t0() - mins(1));
    }
    let all_groups = vec![
        running("pool-idle1"),
        running("pool-busy1"),
        done,
        // An older pool of the same namespace and name (deleted and re-created).
        tagged("pool-old01", "uid-old", "ns", "pool", ContainerState::Running),
        // Another pool's groups, one of them with this pool's runner-name shape.
        tagged("other-aaaa1", "uid-other", "ns", "other", ContainerState::Running),
        tagged("pool-other", "uid-other", "ns", "other", ContainerState::Running),
        tagged("pool-zzzz1", "uid-other", "ns2", "pool", ContainerState::Running),
        // Not the controller's pool tags at all.
        untagged("pool-zzzz2"),
        untagged("build-box"),
    ];
    let mut foreign_labels = runner(40, "other-aaaa1", true, true);
    foreign_labels.labels = vec!["self-hosted".into(), "gpu".into()];
    let all_runners = vec![
        runner(1, "pool-idle1", true, false),
        runner(2, "pool-busy1", true, true),
        runner(3, "pool-done1", false, false),
        runner(4, "pool-old01", true, false),
        runner(5, "pool-gone1", false, false),
        runner(6, "pool-zzzz1", true, false),
        runner(7, "pool-zzzz2", true, false),
        foreign_labels,
        runner(41, "pool-other", true, false),
        runner(42, "laptop", true, false),
    ];
    let prefix = names::runner_name_prefix("pool");
    let pool = Fx::new().pool;
    let concerns = |g: &ObservedGroup| names::group_concerns_pool(&pool, &prefix, g);
    let some_groups: Vec<ObservedGroup> = all_groups.iter().filter(|g| concerns(g)).cloned().collect();
    let some_runners: Vec<ObservedRunner> =
        all_runners.iter().filter(|r| names::is_pool_runner_name(&prefix, &r.name)).cloned().collect();
    assert!(some_groups.len() < all_groups.len() && some_runners.len() < all_runners.len());

    for (min_idle, deleting, after_grace) in
        [(1, false, false), (4, false, false), (0, false, true), (2, true, false), (0, true, true)]
    {
        let run = |groups: &[ObservedGroup], runners: &[ObservedRunner]| {
            let mut fx = Fx::new();
            fx.spec.scaling.min_idle = min_idle;
            fx.state.pending_unregister.insert(5, "pool-gone1".into());
            if deleting {
                fx.pool.deletion_timestamp = Some(t0() - mins(1));
            }
            fx.groups = Ok(groups.to_vec());
            fx.runners = Ok(runners.to_vec());
            let first = fx.run();
            if !after_grace {
                return first;
            }
            fx.carry(&first, chrono::Duration::minutes(30));
            fx.run()
        };
        let whole = run(&all_groups, &all_runners);
        let part = run(&some_groups, &some_runners);
        let ctx = format!("minIdle {min_idle} deleting {deleting} after grace {after_grace}");
        assert_eq!(whole.actions, part.actions, "{ctx}");
        assert_eq!(whole.status, part.status, "{ctx}");
        assert_eq!(whole.state, part.state, "{ctx}");
        assert_eq!(whole.finalizer, part.finalizer, "{ctx}");
    }
}
