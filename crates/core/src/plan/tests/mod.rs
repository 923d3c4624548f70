//! Table-style unit tests of the planner rules, one file per topic; this module holds the
//! shared builders (`Fx`, groups, runners, suffixes) and assertions.
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};

use super::*;
use crate::crd::{Priority, RunnerPoolSpec, RunnerPoolStatus};

mod capacity;
mod cleanup;
mod deletion;
mod failures;
mod installs;
mod observe;
mod scale;
mod status;

pub(super) fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).single().unwrap()
}

pub(super) fn mins(m: i64) -> chrono::Duration {
    chrono::Duration::minutes(m)
}

pub(super) fn secs(s: i64) -> chrono::Duration {
    chrono::Duration::seconds(s)
}

pub(super) const UID: &str = "uid-pool";
/// This controller's install id in the fixtures.
pub(super) const INSTALL: &str = "test-install";

pub(super) fn install() -> install::InstallId {
    install::InstallId::parse(INSTALL).unwrap()
}

/// The labels a registration of the fixture pool made by this install carries.
pub(super) fn own_labels() -> Vec<String> {
    let mut labels: Vec<String> =
        ["self-hosted", "linux", "x64", "aci"].iter().map(|l| l.to_string()).collect();
    labels.push(install::owner_label(&install(), UID));
    labels
}

pub(crate) fn spec_json(extra: serde_json::Value) -> RunnerPoolSpec {
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

/// A group of this pool just accepted by ARM: `Creating`, no container view yet.
pub(super) fn creating(name: &str, created: DateTime<Utc>, priority: Priority) -> ObservedGroup {
    ObservedGroup {
        name: name.to_string(),
        pool_uid: Some(UID.to_string()),
        install_id: Some(INSTALL.to_string()),
        pool_namespace: Some("ns".into()),
        pool_name: Some("pool".into()),
        location: "westeurope".into(),
        provisioning: GroupProvisioning::Creating,
        container: None,
        failure: None,
        created: Some(created),
        priority,
        cpu: 2.0,
        memory_gb: 4.0,
    }
}

pub(super) fn group(name: &str, state: ContainerState, started_ago_min: i64) -> ObservedGroup {
    ObservedGroup {
        provisioning: GroupProvisioning::Succeeded,
        container: Some(ObservedContainer {
            state,
            started_at: Some(t0() - mins(started_ago_min)),
            finished_at: None,
            restart_count: 0,
        }),
        ..creating(name, t0() - mins(started_ago_min + 1), Priority::Regular)
    }
}

pub(super) fn running(name: &str) -> ObservedGroup {
    group(name, ContainerState::Running, 30)
}

/// A running group tagged with the pool uid `uid` (another pool's, or this one's).
pub(super) fn running_of(name: &str, uid: &str) -> ObservedGroup {
    ObservedGroup { pool_uid: Some(uid.into()), ..running(name) }
}

pub(super) fn runner(id: u64, name: &str, online: bool, busy: bool) -> ObservedRunner {
    ObservedRunner { id, name: name.to_string(), online, busy, labels: own_labels() }
}

/// This pool's registration, online and idle.
pub(super) fn idle_runner(id: u64, name: &str) -> ObservedRunner {
    runner(id, name, true, false)
}

/// This pool's registration, online and busy.
pub(super) fn busy_runner(id: u64, name: &str) -> ObservedRunner {
    runner(id, name, true, true)
}

/// This pool's registration, offline and not busy.
pub(super) fn offline_runner(id: u64, name: &str) -> ObservedRunner {
    runner(id, name, false, false)
}

/// A registration without any owner label (made before owner labels existed).
pub(super) fn unlabelled(id: u64, name: &str, online: bool, busy: bool) -> ObservedRunner {
    let mut r = runner(id, name, online, busy);
    r.labels.retain(|l| install::owner_label_of(std::slice::from_ref(l)).is_none());
    r
}

/// A registration with the owner label `label`.
pub(super) fn labelled(label: String, id: u64, name: &str, online: bool, busy: bool) -> ObservedRunner {
    let mut r = unlabelled(id, name, online, busy);
    r.labels.push(label);
    r
}

/// A registration made by this install for the pool `pool_uid` (e.g. an older pool's).
pub(super) fn runner_of(pool_uid: &str, id: u64, name: &str, online: bool, busy: bool) -> ObservedRunner {
    labelled(install::owner_label(&install(), pool_uid), id, name, online, busy)
}

/// The delete of the group `name`, sent only once the registration `only_if_unregistered` (when
/// set) is gone.
pub(super) fn delete_group(name: &str, reason: RemovalReason, only_if_unregistered: Option<u64>) -> Action {
    Action::DeleteGroup { name: name.into(), reason, only_if_unregistered, only_if_unlisted: false }
}

/// The delete of the group `name`, sent only while the executor's own runner list shows no
/// registration of that name.
pub(super) fn delete_unlisted_group(name: &str, reason: RemovalReason) -> Action {
    Action::DeleteGroup { name: name.into(), reason, only_if_unregistered: None, only_if_unlisted: true }
}

/// The removal of the registration `id` of the runner `name`.
pub(super) fn unregister(id: u64, name: &str, reason: RemovalReason) -> Action {
    Action::UnregisterRunner { id, name: name.into(), reason }
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
    pub install: install::InstallId,
    pub pool: PoolMeta,
    pub spec: RunnerPoolSpec,
    pub prev: Option<RunnerPoolStatus>,
    pub groups: Result<Vec<ObservedGroup>, EdgeError>,
    pub runners: Result<Vec<ObservedRunner>, EdgeError>,
    pub live: BTreeSet<String>,
    pub jobs: Vec<QueuedJob>,
    pub creds: CredentialStatus,
    pub permission: Result<(), crate::policy::NotPermitted>,
    pub failures: Vec<ActionFailure>,
    pub state: PoolState,
    pub config: PlannerConfig,
    /// A day before `now` unless a test says otherwise: no predecessor's write is on the wire.
    pub acting_since: DateTime<Utc>,
    pub deprecation: Option<RunnerDeprecation>,
    pub now: DateTime<Utc>,
}

impl Fx {
    /// [`Fx::new`] with `scaling.minIdle` = `min_idle`.
    pub fn with_min_idle(min_idle: i32) -> Self {
        let mut fx = Fx::new();
        fx.spec.scaling.min_idle = min_idle;
        fx
    }

    pub fn new() -> Self {
        Self {
            install: install(),
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
            permission: Ok(()),
            failures: Vec::new(),
            state: PoolState { generation: Some(1), ..Default::default() },
            config: PlannerConfig::default(),
            acting_since: t0() - chrono::Duration::days(1),
            deprecation: None,
            now: t0(),
        }
    }

    pub fn run_with(&self, suffixes: &mut dyn FnMut() -> String) -> Plan {
        let input = PlanInput {
            install: &self.install,
            pool: &self.pool,
            spec: &self.spec,
            validation: &self.spec.validate(),
            permission: &self.permission,
            previous_status: self.prev.as_ref(),
            groups: self.groups.as_ref().map(|g| g.as_slice()).map_err(|e| e.clone()),
            runners: self.runners.as_ref().map(|r| r.as_slice()).map_err(|e| e.clone()),
            live_pool_uids: &self.live,
            queued_jobs: &self.jobs,
            credentials: &self.creds,
            failures: &self.failures,
            state: &self.state,
            config: &self.config,
            runner_deprecation: self.deprecation.as_ref(),
            acting_since: self.acting_since,
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

fn idle_fx(idle_ago: &[(&str, i64)], busy: &[&str], min_idle: i32) -> Fx {
    let mut fx = Fx::with_min_idle(min_idle);
    let mut groups = Vec::new();
    let mut runners = Vec::new();
    for (i, (n, ago)) in idle_ago.iter().enumerate() {
        groups.push(running(n));
        runners.push(idle_runner(10 + i as u64, n));
        fx.state.idle_since.insert(n.to_string(), t0() - mins(*ago));
        fx.state.seen_online.insert(n.to_string());
    }
    for (i, n) in busy.iter().enumerate() {
        groups.push(running(n));
        runners.push(busy_runner(50 + i as u64, n));
        fx.state.seen_online.insert(n.to_string());
    }
    fx.groups = Ok(groups);
    fx.runners = Ok(runners);
    fx
}

fn deleting(fx: &mut Fx, ago_min: i64) {
    fx.pool.deletion_timestamp = Some(t0() - mins(ago_min));
}
