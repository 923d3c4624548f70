//! One reconcile pass of one pool, as its pipeline:
//!
//! 0. [`acknowledge`]: a generation not acted on yet is marked in the status at once
//!    (Reconciling True), so GitOps tools wait for the pass instead of reading "done";
//! 1. [`credentials`]: the pool's Secrets, read every pass (they may be fixed or rotated at any
//!    time) — only for a pool within its namespace's tenant policy (`Context::policy`): a
//!    refused one goes on with no credentials, so no step calls Azure or GitHub for it, and the
//!    planner marks it `Stalled` (`NotPermitted`);
//! 2. [`observe`]: the pool's container groups and runner registrations through the ports, the
//!    webhook demand of its scope, the uids of every live pool;
//! 3. [`plan_pass`]: the pure planner ([`aci_runner_core::plan::plan`]) turns them into actions,
//!    status and Events;
//! 4. [`super::execute::execute`]: the actions, through the ports;
//! 5. [`report`]: status by server-side apply, Events, metrics, and the finalizer once the
//!    cleanup is done.
//!
//! The planner's memory of the pool (carried state and the last pass's failures) is taken out of
//! the context for the pass and put back after execution.
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action as RequeueAction;
use kube::runtime::events::{Event, EventType as KubeEventType};
use kube::{Resource, ResourceExt};
use tracing::{info, warn};

use super::demand::app_id_of;
use super::execute::execute;
use super::finalizer::{ensure_finalizer, has_finalizer, remove_finalizer};
use super::ports::PoolContext;
use super::{Context, FIELD_MANAGER, PoolMemory, USAGE_WRITE_INTERVAL, secrets};
use crate::sync::lock;
use aci_runner_core::crd::{InvalidSpec, RunnerPool, RunnerPoolStatus};
use aci_runner_core::plan::{
    self, CredentialStatus, EdgeError, EdgeErrorKind, EventType, FinalizerDecision, ObservedGroup,
    ObservedRunner, Plan, PlanInput, PoolMeta, QueuedJob, RunnerDeprecation,
};

/// Errors of one reconcile (each is retried with backoff by the controller loop).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("pool has no namespace or uid")]
    MissingMeta,
}

/// What the pipeline learns of the world in one pass.
struct Observed {
    groups: Result<Vec<ObservedGroup>, EdgeError>,
    runners: Result<Vec<ObservedRunner>, EdgeError>,
    queued: Vec<QueuedJob>,
    live_pool_uids: BTreeSet<String>,
    deprecation: Option<RunnerDeprecation>,
}

/// How long a pool whose pass panicked waits for the next pass.
pub const PANIC_REQUEUE: Duration = Duration::from_secs(60);

/// [`reconcile`] with a panic contained: the pool is marked `Stalled` (`InternalError`) with a
/// Warning Event, the panic is logged and counted (`task_failures_total{task="reconcile"}`),
/// and the pass is retried on the next trigger, at the latest after [`PANIC_REQUEUE`]; the
/// process and the other pools go on.
pub async fn reconcile_contained(
    pool: Arc<RunnerPool>,
    ctx: Arc<Context>,
) -> Result<RequeueAction, ReconcileError> {
    match super::tasks::contain(reconcile(pool.clone(), ctx.clone())).await {
        Ok(r) => r,
        Err(panic) => {
            report_panic(&ctx, &pool, &panic).await;
            Ok(RequeueAction::requeue(PANIC_REQUEUE))
        }
    }
}

/// Status, Event, log and metric of a pass that panicked. The panic's message goes to the log
/// only (it may quote any value); the status and the Event say what happened and where to look.
async fn report_panic(ctx: &Context, pool: &RunnerPool, panic: &str) {
    ctx.metrics.task_failure("reconcile");
    ctx.metrics.reconcile_error();
    let name = pool.name_any();
    let namespace = pool.namespace().unwrap_or_default();
    tracing::error!(pool = %name, %namespace, panic, "reconcile panicked; pool marked Stalled (InternalError), other pools go on");
    let message = format!(
        "internal error: the reconcile of this pool panicked (see the controller log); retried on the next \
         pass, at the latest in {}s",
        PANIC_REQUEUE.as_secs()
    );
    let mut status = pool.status.clone().unwrap_or_default();
    status.conditions = plan::conditions::internal_error(
        &status.conditions,
        &message,
        pool.metadata.generation,
        (ctx.clock)(),
    );
    fill_empty_messages(&mut status);
    if let Ok(meta) = pool_meta(pool) {
        let api: Api<RunnerPool> = Api::namespaced(ctx.client.clone(), &meta.namespace);
        if let Err(e) = write_status(&api, &meta.name, &status).await {
            warn!(pool = %name, error = %e, "writing the InternalError status failed");
        }
        ctx.metrics.observe_pool_health(&meta, &status, 0);
    }
    let event = plan::PlannedEvent {
        type_: EventType::Warning,
        reason: plan::conditions::EventReason::InternalError,
        message,
    };
    publish_events(ctx, pool, std::slice::from_ref(&event)).await;
}

/// One reconcile pass of one pool.
pub async fn reconcile(pool: Arc<RunnerPool>, ctx: Arc<Context>) -> Result<RequeueAction, ReconcileError> {
    let started = Instant::now();
    let meta = pool_meta(&pool)?;
    let api: Api<RunnerPool> = Api::namespaced(ctx.client.clone(), &meta.namespace);
    let deleting = meta.deletion_timestamp.is_some();
    if !deleting {
        ensure_finalizer(&api, &pool).await?;
    } else if !has_finalizer(&pool) {
        return Ok(RequeueAction::await_change());
    }
    let now = (ctx.clock)();
    let pool = acknowledge(&api, pool, &meta, deleting, now).await?;
    let validation = validate(&pool.spec, ctx.allow_insecure_github_http);
    let permission = ctx.policy.check(&meta.namespace, &pool.spec);

    let (credentials, pool_ctx) = match &permission {
        Ok(()) => credentials(&ctx, &pool, &meta).await,
        // Refused by the tenant policy: no Secret is read, so nothing below can call Azure or
        // GitHub for this pool.
        Err(refused) => (CredentialStatus::Unavailable { message: refused.to_string() }, None),
    };
    let observed = observe(&ctx, &pool, pool_ctx.as_ref(), deleting, validation.is_ok(), now).await;
    let memory = take_memory(&ctx, &meta);
    let checks = Checks { validation: &validation, permission: &permission };
    let mut decided = plan_pass(&ctx, &pool, &meta, checks, &credentials, &observed, &memory, now);
    let executed = match &pool_ctx {
        Some(pc) if !decided.actions.is_empty() => execute(&ctx, pc, &decided.actions).await,
        _ => Default::default(),
    };
    record_failed_runners(&mut decided, executed.failed_runners);
    let failures = executed.failures;
    let gc_pending = decided.state.gc_marks.len();
    lock(&ctx.memory).insert(
        meta.uid.clone(),
        PoolMemory {
            state: std::mem::take(&mut decided.state),
            failures,
            usage_written: memory.usage_written,
        },
    );
    let written =
        report(&ctx, &api, &pool, &meta, &decided, memory.usage_written, gc_pending, started).await?;

    if deleting && decided.finalizer == FinalizerDecision::Remove {
        info!(pool = %meta.name, namespace = %meta.namespace, "cleanup done; removing finalizer");
        // Conditional on the resourceVersion of this pass's own status write: the one of `pool`
        // is older once the status was written, and would always answer 409.
        remove_finalizer(&api, written.as_ref().unwrap_or(&pool)).await?;
        lock(&ctx.memory).remove(&meta.uid);
        return Ok(RequeueAction::await_change());
    }
    Ok(RequeueAction::requeue(decided.requeue_after))
}

/// The spec's own checks, and the controller's: `spec.github.apiUrl` is https unless loopback or
/// `--allow-insecure-github-http` (an invalid spec is never observed: no GitHub call).
fn validate(
    spec: &aci_runner_core::crd::RunnerPoolSpec,
    allow_insecure_http: bool,
) -> Result<(), InvalidSpec> {
    let mut errors = match spec.validate() {
        Ok(()) => Vec::new(),
        Err(InvalidSpec(e)) => e,
    };
    if let Err(message) = crate::github::check_api_url(&spec.github.api_url, allow_insecure_http)
        && !errors.iter().any(|e| e.field == "spec.github.apiUrl")
    {
        errors.push(aci_runner_core::crd::FieldError { field: "spec.github.apiUrl".into(), message });
    }
    if errors.is_empty() { Ok(()) } else { Err(InvalidSpec(errors)) }
}

/// Backoff on reconcile errors (Kubernetes API failures).
pub fn error_policy(pool: Arc<RunnerPool>, error: &ReconcileError, ctx: Arc<Context>) -> RequeueAction {
    warn!(pool = %pool.name_any(), error = %error, "reconcile failed");
    ctx.metrics.reconcile_error();
    RequeueAction::requeue(Duration::from_secs(5))
}

/// Short stable hash of the spec (tag `aci-runners-spec-hash`).
pub fn spec_hash(pool: &RunnerPool) -> String {
    use sha2::{Digest, Sha256};
    let bytes = serde_json::to_vec(&pool.spec).unwrap_or_default();
    hex::encode(&Sha256::digest(&bytes)[..6])
}

/// A Kubernetes timestamp as chrono's (None when out of chrono's range).
fn utc(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> Option<DateTime<Utc>> {
    DateTime::<Utc>::from_timestamp(t.0.as_second(), t.0.subsec_nanosecond().max(0) as u32)
}

pub(super) fn pool_meta(pool: &RunnerPool) -> Result<PoolMeta, ReconcileError> {
    let namespace = pool.namespace().ok_or(ReconcileError::MissingMeta)?;
    let uid = pool.uid().ok_or(ReconcileError::MissingMeta)?;
    Ok(PoolMeta {
        namespace,
        name: pool.name_any(),
        uid,
        generation: pool.metadata.generation,
        deletion_timestamp: pool.metadata.deletion_timestamp.as_ref().and_then(utc),
        created: pool.metadata.creation_timestamp.as_ref().and_then(utc),
        annotations: pool.annotations().clone(),
    })
}

/// Step 0: a generation not acted on yet is acknowledged in the status at once (Reconciling
/// True), before the slower steps; the object as written goes on through the pass.
async fn acknowledge(
    api: &Api<RunnerPool>,
    pool: Arc<RunnerPool>,
    meta: &PoolMeta,
    deleting: bool,
    now: DateTime<Utc>,
) -> Result<Arc<RunnerPool>, ReconcileError> {
    if deleting {
        return Ok(pool);
    }
    let Some(mut status) = plan::acknowledge(pool.status.as_ref(), meta.generation, now) else {
        return Ok(pool);
    };
    fill_empty_messages(&mut status);
    Ok(write_status(api, &meta.name, &status).await?.map_or(pool, Arc::new))
}

/// kube-apiserver 1.20's server-side apply turns an empty string into null, which the CRD
/// schema then rejects; an empty condition message is written as its reason instead.
fn fill_empty_messages(status: &mut RunnerPoolStatus) {
    for c in &mut status.conditions {
        if c.message.is_empty() {
            c.message = c.reason.clone();
        }
    }
}

/// Step 1: the pool's credentials from its Secrets; without usable ones the pool is not observed
/// and the status says why.
async fn credentials(
    ctx: &Context,
    pool: &RunnerPool,
    meta: &PoolMeta,
) -> (CredentialStatus, Option<PoolContext>) {
    let secrets = secrets::KubeSecrets(Api::namespaced(ctx.client.clone(), &meta.namespace));
    match secrets::resolve(&secrets, meta, &pool.spec, &spec_hash(pool)).await {
        Ok(c) => (CredentialStatus::Ok, Some(c)),
        Err(status) => (status, None),
    }
}

/// Step 2: the lists through the ports, the webhook demand and the live pools.
///
/// A pool is observed only with usable credentials, and a live pool only with a valid spec;
/// otherwise the lists count as failed. A pool being deleted is observed even with an invalid
/// spec (e.g. minIdle above maxRunners, which API servers before 1.25 accept): its cleanup needs
/// only the Secret and the Azure coordinates, and without the lists it could not remove anything.
async fn observe(
    ctx: &Context,
    pool: &RunnerPool,
    pool_ctx: Option<&PoolContext>,
    deleting: bool,
    spec_valid: bool,
    now: DateTime<Utc>,
) -> Observed {
    let unusable = || EdgeError::new(EdgeErrorKind::Auth { permission: None }, "credentials unavailable");
    let (groups, runners) = match pool_ctx {
        Some(pc) if deleting || spec_valid => {
            futures::join!(ctx.groups.list_pool_groups(pc), ctx.registrations.list_pool_runners(pc))
        }
        _ => (Err(unusable()), Err(unusable())),
    };
    let live_pool_uids: BTreeSet<String> = ctx.all_pools.state().iter().filter_map(|p| p.uid()).collect();
    ctx.demand.retain_pools(&live_pool_uids);
    ctx.demand.expire(now, ctx.planner.demand_ttl);
    // A live pool with usable credentials takes demand (and registers for it); a pool being
    // deleted takes none. A pool whose Secret cannot be read this pass keeps its registration.
    let uid = pool.uid().unwrap_or_default();
    let queued = match pool_ctx {
        _ if deleting => {
            ctx.demand.forget(&uid);
            Vec::new()
        }
        Some(pc) if spec_valid => ctx.demand.queued_for(&uid, &pool.spec, app_id_of(&pc.github)),
        _ => Vec::new(),
    };
    let deprecation = match pool_ctx {
        Some(pc) if !deleting && spec_valid => runner_deprecation(ctx, pc).await,
        _ => None,
    };
    Observed { groups, runners, queued, live_pool_uids, deprecation }
}

/// GitHub's end date of the runner version the pool's image pins, if it has published one. Not
/// known (a custom tag, a failed lookup) is no warning: the lookup is advice, never a blocker.
async fn runner_deprecation(ctx: &Context, pc: &PoolContext) -> Option<RunnerDeprecation> {
    let version = plan::names::runner_version_of(&pc.spec.runner.image)?;
    match ctx.registrations.runner_version_deprecation(pc, version).await {
        Ok(at) => at.map(|at| RunnerDeprecation { version: version.to_string(), at }),
        Err(e) => {
            tracing::debug!(pool = %pc.meta.name, version, error = %e.message, "runner version deprecation not known");
            None
        }
    }
}

/// The pool's planner memory, taken out of the context for the pass (the state of a pool with
/// 1,000 runners is hundreds of KB: moved, not copied). kube-runtime never runs two passes of one
/// pool at once, and [`reconcile`] puts it back after execution on every path.
fn take_memory(ctx: &Context, meta: &PoolMeta) -> PoolMemory {
    lock(&ctx.memory).remove(&meta.uid).unwrap_or_default()
}

/// The pass's verdicts on the spec: its own validation and the tenant policy's.
#[derive(Clone, Copy)]
struct Checks<'a> {
    validation: &'a Result<(), InvalidSpec>,
    permission: &'a Result<(), aci_runner_core::policy::NotPermitted>,
}

/// Step 3: the pure planner.
#[allow(clippy::too_many_arguments)]
fn plan_pass(
    ctx: &Context,
    pool: &RunnerPool,
    meta: &PoolMeta,
    checks: Checks<'_>,
    credentials: &CredentialStatus,
    observed: &Observed,
    memory: &PoolMemory,
    now: DateTime<Utc>,
) -> Plan {
    let input = PlanInput {
        install: &ctx.install,
        pool: meta,
        spec: &pool.spec,
        validation: checks.validation,
        permission: checks.permission,
        previous_status: pool.status.as_ref(),
        groups: observed.groups.as_deref().map_err(Clone::clone),
        runners: observed.runners.as_deref().map_err(Clone::clone),
        live_pool_uids: &observed.live_pool_uids,
        queued_jobs: &observed.queued,
        credentials,
        failures: &memory.failures,
        state: &memory.state,
        config: &ctx.planner,
        runner_deprecation: observed.deprecation.as_ref(),
        acting_since: ctx.acting_since,
        now,
    };
    let mut rng = rand::thread_rng();
    plan::plan(&input, &mut || plan::names::random_suffix(&mut rng))
}

/// Largest Event note Kubernetes accepts (bytes).
const EVENT_NOTE_BYTES: usize = 1024;

/// Failed runners removed this pass: a `RunnerFailedLogs` Warning for each whose log tail was
/// read, with as much of the end of that (already redacted) tail as fits an Event note, and the
/// last one, tail or not, as `status.lastFailure`. A runner without a tail (no container ever
/// ran, or the read failed) gets no Event of its own: its failure already has one.
fn record_failed_runners(decided: &mut Plan, failed: Vec<aci_runner_core::crd::RunnerFailure>) {
    for f in &failed {
        let Some(tail) = &f.log_tail else { continue };
        let head = format!("runner {} removed ({}); last lines of its log:\n", f.runner, f.reason);
        let room = EVENT_NOTE_BYTES.saturating_sub(head.len());
        decided.events.push(plan::PlannedEvent {
            type_: EventType::Warning,
            reason: plan::conditions::EventReason::RunnerFailedLogs,
            message: format!("{head}{}", super::failure_logs::keep_end(tail, room)),
        });
    }
    if let Some(last) = failed.into_iter().last() {
        decided.status.last_failure = Some(last);
    }
}

/// Step 5: status by server-side apply (when it changed, or when only the usage changed and the
/// last usage write is older than [`USAGE_WRITE_INTERVAL`]), Events and metrics. Returns the
/// object as of the status write, when there was one.
#[allow(clippy::too_many_arguments)]
async fn report(
    ctx: &Context,
    api: &Api<RunnerPool>,
    pool: &RunnerPool,
    meta: &PoolMeta,
    decided: &Plan,
    usage_written: Option<Instant>,
    gc_pending: usize,
    started: Instant,
) -> Result<Option<RunnerPool>, ReconcileError> {
    let mut status = decided.status.clone();
    fill_empty_messages(&mut status);
    let without_usage = |s: &RunnerPoolStatus| RunnerPoolStatus { usage: None, ..s.clone() };
    let changed = pool.status.as_ref().map(without_usage) != Some(without_usage(&status));
    let usage_due = pool.status.as_ref().map(|s| &s.usage) != Some(&status.usage)
        && usage_written.is_none_or(|t| t.elapsed() >= USAGE_WRITE_INTERVAL);
    let mut written = None;
    if changed || usage_due {
        if let Some(entry) = lock(&ctx.memory).get_mut(&meta.uid) {
            entry.usage_written = Some(Instant::now());
        }
        written = write_status(api, &meta.name, &status).await?;
    }
    publish_events(ctx, pool, &decided.events).await;
    ctx.metrics.observe_pool(meta, &decided.status, started.elapsed());
    ctx.metrics.observe_pool_health(meta, &decided.status, gc_pending);
    Ok(written)
}

/// Apply the status (server-side, forced: the controller owns `/status`). A pool deleted
/// meanwhile is no error.
async fn write_status(
    api: &Api<RunnerPool>,
    name: &str,
    status: &RunnerPoolStatus,
) -> Result<Option<RunnerPool>, ReconcileError> {
    let patch = serde_json::json!({
        "apiVersion": "aci-runners.dev/v1alpha1",
        "kind": "RunnerPool",
        "status": status,
    });
    match api.patch_status(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch)).await {
        Ok(updated) => Ok(Some(updated)),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
        Err(e) => Err(e.into()),
    }
}

async fn publish_events(ctx: &Context, pool: &RunnerPool, events: &[plan::PlannedEvent]) {
    let reference = pool.object_ref(&());
    for e in events {
        let ev = Event {
            type_: match e.type_ {
                EventType::Normal => KubeEventType::Normal,
                EventType::Warning => KubeEventType::Warning,
            },
            reason: e.reason.to_string(),
            note: Some(note(&e.message)),
            action: e.reason.to_string(),
            secondary: None,
        };
        if let Err(err) = ctx.recorder.publish(&ev, &reference).await {
            warn!(pool = %pool.name_any(), error = %err, "publishing event failed");
        }
    }
}

/// The first [`EVENT_NOTE_BYTES`] bytes of `message`, cut at a character boundary.
fn note(message: &str) -> String {
    let mut end = message.len().min(EVENT_NOTE_BYTES);
    while !message.is_char_boundary(end) {
        end = end.saturating_sub(1);
    }
    message[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use aci_runner_core::crd::RunnerFailure;

    fn empty_plan() -> Plan {
        Plan {
            actions: Vec::new(),
            status: RunnerPoolStatus::default(),
            state: Default::default(),
            events: Vec::new(),
            requeue_after: Duration::from_secs(1),
            finalizer: FinalizerDecision::Keep,
        }
    }

    fn failure(runner: &str, log_tail: Option<String>) -> RunnerFailure {
        RunnerFailure { runner: runner.into(), reason: "Crashed".into(), time: "t".into(), log_tail }
    }

    /// The Event note keeps the end of the tail within 1 KiB; a failure without a tail has no
    /// Event; the status names the last failure of the pass.
    #[test]
    fn failed_runners_become_bounded_events_and_the_last_failure() {
        let tail: String = (0..40).map(|i| format!("log line {i:02} {}\n", "ä".repeat(40))).collect();
        let mut plan = empty_plan();
        record_failed_runners(
            &mut plan,
            vec![failure("p-aaaaa", Some(tail.clone())), failure("p-bbbbb", None)],
        );
        assert_eq!(plan.events.len(), 1);
        let m = &plan.events[0].message;
        assert!(m.len() <= EVENT_NOTE_BYTES, "{}", m.len());
        assert!(m.starts_with("runner p-aaaaa removed (Crashed); last lines of its log:\n"), "{m}");
        assert!(m.ends_with(&format!("log line 39 {}\n", "ä".repeat(40))), "{m}");
        assert!(m.contains("log line 39"), "{m}");
        assert!(!m.contains("log line 00"), "{m}");
        assert_eq!(plan.events[0].reason, plan::conditions::EventReason::RunnerFailedLogs);
        assert_eq!(plan.status.last_failure.as_ref().map(|f| f.runner.as_str()), Some("p-bbbbb"));
        assert_eq!(note(&"é".repeat(600)).len(), EVENT_NOTE_BYTES);
    }
}
