//! kube-runtime wiring: watch RunnerPools, feed the pure planner, execute its actions through
//! the edges, write status by server-side apply, publish Events, hold the finalizer.
pub mod azure_port;
pub mod demand;
pub mod gc;
pub mod github_port;
pub mod metrics;
pub mod ports;
pub mod run;
pub mod secrets;
pub mod server;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action as RequeueAction, Config as ControllerConfig, Controller};
use kube::runtime::events::{Event, EventType as KubeEventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use tracing::{info, warn};

use crate::crd::RunnerPool;
use crate::plan::{
    self, Action, ActionFailure, CredentialStatus, EdgeError, EdgeErrorKind, EventType, FinalizerDecision,
    PlanInput, PlannerConfig, PoolMeta, PoolState, RunnerRegistration,
};
use demand::DemandStore;
use ports::{Cloud, CreateGroup, Forge, PoolContext, RunnerSecret};

/// Finalizer that holds a pool until its runners are drained and removed.
pub const FINALIZER: &str = "aci-runners.dev/cleanup";
/// Field manager of status writes.
pub const FIELD_MANAGER: &str = "aci-runner-controller";

/// Errors of one reconcile (each is retried with backoff by the controller loop).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("pool has no namespace or uid")]
    MissingMeta,
}

/// Carried planner state and last action failures of one pool (in memory; rebuildable).
#[derive(Default, Debug, Clone)]
struct PoolMemory {
    state: PoolState,
    failures: Vec<ActionFailure>,
    /// When `status.usage` was last written (usage alone changes every pass; it is written at
    /// most once per [`USAGE_WRITE_INTERVAL`] unless something else in the status changed).
    usage_written: Option<std::time::Instant>,
}

/// Shortest interval between status writes that only update `status.usage`.
pub const USAGE_WRITE_INTERVAL: Duration = Duration::from_secs(60);

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub cloud: Arc<dyn Cloud>,
    pub forge: Arc<dyn Forge>,
    pub demand: Arc<DemandStore>,
    pub planner: PlannerConfig,
    pub recorder: Recorder,
    pub metrics: Arc<metrics::Metrics>,
    /// Every RunnerPool in the cluster (not only this shard), for orphan detection.
    pub all_pools: Store<RunnerPool>,
    memory: Mutex<HashMap<String, PoolMemory>>,
    /// Source of the now-time (injectable for tests).
    pub clock: Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>,
}

impl Context {
    pub fn new(
        client: Client,
        cloud: Arc<dyn Cloud>,
        forge: Arc<dyn Forge>,
        demand: Arc<DemandStore>,
        planner: PlannerConfig,
        metrics: Arc<metrics::Metrics>,
        all_pools: Store<RunnerPool>,
    ) -> Self {
        let reporter =
            Reporter { controller: "aci-runner-controller".into(), instance: std::env::var("POD_NAME").ok() };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            cloud,
            forge,
            demand,
            planner,
            metrics,
            all_pools,
            memory: Mutex::new(HashMap::new()),
            clock: Arc::new(Utc::now),
        }
    }
}

/// Short stable hash of the spec (tag `aci-runners-spec-hash`).
pub fn spec_hash(pool: &RunnerPool) -> String {
    use sha2::{Digest, Sha256};
    let bytes = serde_json::to_vec(&pool.spec).unwrap_or_default();
    hex::encode(&Sha256::digest(&bytes)[..6])
}

fn pool_meta(pool: &RunnerPool) -> Result<PoolMeta, ReconcileError> {
    let namespace = pool.namespace().ok_or(ReconcileError::MissingMeta)?;
    let uid = pool.uid().ok_or(ReconcileError::MissingMeta)?;
    Ok(PoolMeta {
        namespace,
        name: pool.name_any(),
        uid,
        generation: pool.metadata.generation,
        deletion_timestamp: pool.metadata.deletion_timestamp.as_ref().and_then(|t| {
            DateTime::<Utc>::from_timestamp(t.0.as_second(), t.0.subsec_nanosecond().max(0) as u32)
        }),
        annotations: pool.annotations().clone(),
    })
}

fn random_suffix() -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    (0..5).map(|_| CHARS[rng.gen_range(0..CHARS.len())] as char).collect()
}

async fn set_finalizers(
    api: &Api<RunnerPool>,
    pool: &RunnerPool,
    finalizers: Vec<String>,
) -> Result<(), kube::Error> {
    // A merge patch with the resourceVersion as precondition: a concurrent change to the list
    // makes the patch fail (409) and the pass retries, instead of dropping someone's finalizer.
    let patch = serde_json::json!({
        "metadata": {"finalizers": finalizers, "resourceVersion": pool.resource_version()}
    });
    match api.patch(&pool.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

async fn ensure_finalizer(api: &Api<RunnerPool>, pool: &RunnerPool) -> Result<(), kube::Error> {
    if pool.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(());
    }
    let mut f = pool.finalizers().to_vec();
    f.push(FINALIZER.to_string());
    set_finalizers(api, pool, f).await
}

async fn remove_finalizer(api: &Api<RunnerPool>, pool: &RunnerPool) -> Result<(), kube::Error> {
    if !pool.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(());
    }
    let f = pool.finalizers().iter().filter(|f| *f != FINALIZER).cloned().collect();
    set_finalizers(api, pool, f).await
}

/// Execute the planner's actions in order. Returns the failures (reported to the next pass).
async fn execute(ctx: &Context, pool: &PoolContext, actions: &[Action]) -> Vec<ActionFailure> {
    let mut failures = Vec::new();
    let mut unregistered: BTreeSet<u64> = BTreeSet::new();
    // Set by the first create that hit quota, capacity or throttling: the rest of this pass's
    // creates would hit the same wall, so they are reported with that error instead of sent.
    let mut create_wall: Option<EdgeError> = None;
    for action in actions {
        if let (Action::CreateRunner { .. }, Some(error)) = (action, &create_wall) {
            ctx.metrics.action("create_runner", "Create", "skipped");
            failures.push(ActionFailure {
                action: action.clone(),
                error: error.clone(),
                registered_runner: None,
            });
            continue;
        }
        let result: Result<Option<u64>, (EdgeError, Option<u64>)> = match action {
            Action::CreateRunner { name, location, priority, registration } => {
                create_runner(ctx, pool, name, location, *priority, registration).await
            }
            Action::UnregisterRunner { id, .. } => match ctx.forge.unregister(pool, *id).await {
                Ok(()) => {
                    unregistered.insert(*id);
                    Ok(None)
                }
                Err(e) if e.kind == EdgeErrorKind::NotFound => {
                    unregistered.insert(*id);
                    Ok(None)
                }
                Err(e) => Err((e, None)),
            },
            Action::DeleteGroup { name, only_if_unregistered, .. } => {
                if let Some(id) = only_if_unregistered
                    && !unregistered.contains(id)
                {
                    // The registration could not be removed (it may have just taken a job):
                    // never delete the group under a possibly busy runner.
                    continue;
                }
                ctx.cloud.delete_group(pool, name).await.map(|_| None).map_err(|e| (e, None))
            }
            Action::ReleaseGroup { name } => {
                ctx.cloud.release_group(pool, name).await.map(|_| None).map_err(|e| (e, None))
            }
        };
        let kind = action_kind(action);
        let reason = match action {
            Action::CreateRunner { .. } => "Create",
            Action::UnregisterRunner { reason, .. } | Action::DeleteGroup { reason, .. } => reason.as_str(),
            Action::ReleaseGroup { .. } => "Release",
        };
        match result {
            Ok(_) => ctx.metrics.action(kind, reason, "ok"),
            Err((error, registered_runner)) => {
                ctx.metrics.action(kind, reason, "error");
                warn!(pool = %pool.meta.name, action = kind, name = action.name(), error = %error.message, "action failed");
                let quota_or_capacity =
                    matches!(error.kind, EdgeErrorKind::QuotaExceeded | EdgeErrorKind::CapacityUnavailable);
                let throttled = matches!(error.kind, EdgeErrorKind::Throttled { .. });
                if matches!(action, Action::CreateRunner { .. }) && (quota_or_capacity || throttled) {
                    create_wall = Some(error.clone());
                }
                failures.push(ActionFailure { action: action.clone(), error, registered_runner });
            }
        }
    }
    failures
}

fn action_kind(a: &Action) -> &'static str {
    match a {
        Action::CreateRunner { .. } => "create_runner",
        Action::UnregisterRunner { .. } => "unregister_runner",
        Action::DeleteGroup { .. } => "delete_group",
        Action::ReleaseGroup { .. } => "release_group",
    }
}

async fn create_runner(
    ctx: &Context,
    pool: &PoolContext,
    name: &str,
    location: &str,
    priority: crate::crd::Priority,
    registration: &RunnerRegistration,
) -> Result<Option<u64>, (EdgeError, Option<u64>)> {
    let (secret, runner_id) = match registration {
        RunnerRegistration::Jit { labels, runner_group } => {
            let reg = ctx
                .forge
                .register_jit(pool, name, labels, runner_group.as_deref())
                .await
                .map_err(|e| (e, None))?;
            (RunnerSecret::Jit { encoded: reg.encoded }, Some(reg.runner_id))
        }
        RunnerRegistration::Token { labels, runner_group, ephemeral } => {
            let (url, token) = ctx.forge.registration_token(pool).await.map_err(|e| (e, None))?;
            (
                RunnerSecret::Token {
                    url,
                    token,
                    labels: labels.clone(),
                    runner_group: runner_group.clone(),
                    ephemeral: *ephemeral,
                },
                None,
            )
        }
    };
    let req = CreateGroup {
        name: name.to_string(),
        location: location.to_string(),
        priority,
        secret,
        created: (ctx.clock)(),
    };
    ctx.cloud.create_group(pool, req).await.map(|_| runner_id).map_err(|e| (e, runner_id))
}

async fn publish_events(ctx: &Context, pool: &RunnerPool, events: &[plan::PlannedEvent]) {
    let reference = pool.object_ref(&());
    for e in events {
        let ev = Event {
            type_: match e.type_ {
                EventType::Normal => KubeEventType::Normal,
                EventType::Warning => KubeEventType::Warning,
            },
            reason: e.reason.clone(),
            note: Some(e.message.chars().take(1024).collect()),
            action: e.reason.clone(),
            secondary: None,
        };
        if let Err(err) = ctx.recorder.publish(&ev, &reference).await {
            warn!(pool = %pool.name_any(), error = %err, "publishing event failed");
        }
    }
}

/// One reconcile pass of one pool.
pub async fn reconcile(pool: Arc<RunnerPool>, ctx: Arc<Context>) -> Result<RequeueAction, ReconcileError> {
    let started = std::time::Instant::now();
    let meta = pool_meta(&pool)?;
    let api: Api<RunnerPool> = Api::namespaced(ctx.client.clone(), &meta.namespace);
    let deleting = meta.deletion_timestamp.is_some();
    if !deleting {
        ensure_finalizer(&api, &pool).await?;
    } else if !pool.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(RequeueAction::await_change());
    }
    let now = (ctx.clock)();
    let hash = spec_hash(&pool);

    // Credentials (Secrets are read every pass: they may be fixed or rotated at any time).
    let secrets = secrets::KubeSecrets(Api::namespaced(ctx.client.clone(), &meta.namespace));
    let resolved = secrets::resolve(&secrets, &meta, &pool.spec, &hash).await;
    let (credentials, pool_ctx) = match resolved {
        Ok(c) => (CredentialStatus::Ok, Some(c)),
        Err(status) => (status, None),
    };

    // Observe through the edges (only with usable credentials; otherwise the lists count as failed).
    let unusable = || EdgeError::new(EdgeErrorKind::Auth { permission: None }, "credentials unavailable");
    // Fix: a pool being deleted is observed even when its spec is invalid (e.g. minIdle above
    // maxRunners, which API servers before 1.25 accept): its cleanup needs only the Secret and the
    // Azure coordinates, and without the lists it was abandoned after the bounded retries,
    // leaking every runner. A live pool with an invalid spec is still not observed.
    let (groups, runners) = match &pool_ctx {
        Some(pc) if deleting || pool.spec.validate().is_ok() => {
            let (g, r) = futures::join!(ctx.cloud.list_pool_groups(pc), ctx.forge.list_pool_runners(pc));
            (g, r)
        }
        _ => (Err(unusable()), Err(unusable())),
    };
    ctx.demand.expire(now, ctx.planner.demand_ttl);
    let queued = ctx.demand.for_scope(&pool.spec);
    let live: BTreeSet<String> = ctx.all_pools.state().iter().filter_map(|p| p.uid()).collect();

    let memory = {
        let Ok(mut m) = ctx.memory.lock() else { return Ok(RequeueAction::requeue(Duration::from_secs(5))) };
        // Taken, not copied (the state of a pool with 1,000 runners is hundreds of KB); put back
        // below. kube-runtime never runs two passes of one pool at once, and nothing between
        // here and the put-back returns early.
        m.remove(&meta.uid).unwrap_or_default()
    };
    let groups_slice = groups.as_deref().map_err(Clone::clone);
    let runners_slice = runners.as_deref().map_err(Clone::clone);
    let input = PlanInput {
        pool: &meta,
        spec: &pool.spec,
        previous_status: pool.status.as_ref(),
        groups: groups_slice,
        runners: runners_slice,
        live_pool_uids: &live,
        queued_jobs: &queued,
        credentials: &credentials,
        failures: &memory.failures,
        state: &memory.state,
        config: &ctx.planner,
        now,
    };
    let mut suffixes = random_suffix;
    let mut decided = plan::plan(&input, &mut suffixes);
    let gc_pending = decided.state.gc_marks.len();

    // Act.
    let failures = match &pool_ctx {
        Some(pc) if !decided.actions.is_empty() => execute(&ctx, pc, &decided.actions).await,
        _ => Vec::new(),
    };
    if let Ok(mut m) = ctx.memory.lock() {
        m.insert(
            meta.uid.clone(),
            PoolMemory {
                state: std::mem::take(&mut decided.state),
                failures,
                usage_written: memory.usage_written,
            },
        );
    }

    // Report. kube-apiserver 1.20's server-side apply turns an empty string into null, which the
    // CRD schema then rejects; an empty condition message is written as its reason instead.
    let mut status = decided.status.clone();
    for c in &mut status.conditions {
        if c.message.is_empty() {
            c.message = c.reason.clone();
        }
    }
    let status_patch = serde_json::json!({
        "apiVersion": "aci-runners.dev/v1alpha1",
        "kind": "RunnerPool",
        "status": status,
    });
    let without_usage =
        |s: &crate::crd::RunnerPoolStatus| crate::crd::RunnerPoolStatus { usage: None, ..s.clone() };
    let changed = pool.status.as_ref().map(without_usage) != Some(without_usage(&status));
    let usage_due = pool.status.as_ref().map(|s| &s.usage) != Some(&status.usage)
        && memory.usage_written.is_none_or(|t| t.elapsed() >= USAGE_WRITE_INTERVAL);
    // The object as of our status write: a status write bumps the resourceVersion, and the
    // finalizer patch below is conditional on it (an older version always answers 409).
    let mut written: Option<RunnerPool> = None;
    if changed || usage_due {
        if let Ok(mut m) = ctx.memory.lock()
            && let Some(entry) = m.get_mut(&meta.uid)
        {
            entry.usage_written = Some(std::time::Instant::now());
        }
        match api
            .patch_status(
                &meta.name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&status_patch),
            )
            .await
        {
            Ok(updated) => written = Some(updated),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    publish_events(&ctx, &pool, &decided.events).await;
    ctx.metrics.observe_pool(&meta, &decided.status, started.elapsed());
    ctx.metrics.observe_pool_health(&meta, &decided.status, gc_pending);

    if deleting && decided.finalizer == FinalizerDecision::Remove {
        info!(pool = %meta.name, namespace = %meta.namespace, "cleanup done; removing finalizer");
        // Fix: with the resourceVersion of the pass's own status write, not the stale one of
        // `pool` (which made every cleanup fail once with 409 and wait for the error requeue).
        remove_finalizer(&api, written.as_ref().unwrap_or(&pool)).await?;
        if let Ok(mut m) = ctx.memory.lock() {
            m.remove(&meta.uid);
        }
        return Ok(RequeueAction::await_change());
    }
    Ok(RequeueAction::requeue(decided.requeue_after))
}

/// Backoff on reconcile errors (Kubernetes API failures).
pub fn error_policy(pool: Arc<RunnerPool>, error: &ReconcileError, ctx: Arc<Context>) -> RequeueAction {
    warn!(pool = %pool.name_any(), error = %error, "reconcile failed");
    ctx.metrics.reconcile_error();
    RequeueAction::requeue(Duration::from_secs(5))
}

/// Which RunnerPools this controller instance handles.
#[derive(Clone, Debug, Default)]
pub struct Shard {
    /// Empty: all namespaces.
    pub namespaces: Vec<String>,
    pub label_selector: Option<String>,
}

/// Run the controller until `shutdown` resolves.
pub async fn run_controller(
    ctx: Arc<Context>,
    shard: Shard,
    triggers: impl futures::Stream<Item = ()> + Send + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let mut wc = watcher::Config::default().any_semantic();
    if let Some(sel) = &shard.label_selector {
        wc = wc.labels(sel);
    }
    let cfg = ControllerConfig::default().debounce(Duration::from_millis(20)).concurrency(16);
    let client = ctx.client.clone();
    let streams: Vec<Api<RunnerPool>> = if shard.namespaces.is_empty() {
        vec![Api::all(client)]
    } else {
        shard.namespaces.iter().map(|ns| Api::namespaced(client.clone(), ns)).collect()
    };
    let (reader, writer) = reflector::store();
    let watch = futures::stream::select_all(streams.into_iter().map(|api| watcher(api, wc.clone()).boxed()));
    let stream = watch.default_backoff().reflect(writer).touched_objects().boxed();
    Controller::for_stream(stream, reader)
        .with_config(cfg)
        .reconcile_all_on(triggers)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "reconcile result");
            }
        })
        .await;
}

/// A store of every RunnerPool in the cluster (for orphan detection), ready once listed.
pub async fn all_pools_store(client: Client) -> (Store<RunnerPool>, tokio::task::JoinHandle<()>) {
    let (reader, writer) = reflector::store();
    let api: Api<RunnerPool> = Api::all(client);
    let task = tokio::spawn(async move {
        watcher(api, watcher::Config::default().any_semantic())
            .default_backoff()
            .reflect(writer)
            .for_each(|_| async {})
            .await;
    });
    (reader, task)
}

/// Labels of a pool's runner registrations, for metrics and logs.
pub fn labels_of(pool: &RunnerPool) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("namespace".to_string(), pool.namespace().unwrap_or_default()),
        ("pool".to_string(), pool.name_any()),
    ])
}
