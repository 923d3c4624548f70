//! Inputs, outputs and carried state of the planner. The controller maps edge types (Azure
//! container groups, GitHub runners, Kubernetes Secrets) into these; the planner never sees a
//! secret value.
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::reasons::{EventReason, StallReason};
use crate::crd::{InvalidSpec, Priority, RunnerPoolSpec, RunnerPoolStatus};

/// Annotation selecting what happens to Azure and GitHub resources when the pool is deleted.
pub const DELETION_POLICY_ANNOTATION: &str = "aci-runners.dev/deletion-policy";
/// Value of [`DELETION_POLICY_ANNOTATION`] that leaves resources in place.
pub const DELETION_POLICY_ORPHAN: &str = "orphan";

/// The pool object's identity and lifecycle metadata.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct PoolMeta {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub generation: Option<i64>,
    pub deletion_timestamp: Option<DateTime<Utc>>,
    /// `metadata.creationTimestamp` (None: not known, treated as older than any process).
    pub created: Option<DateTime<Utc>>,
    pub annotations: BTreeMap<String, String>,
}

impl PoolMeta {
    /// True when the pool carries `aci-runners.dev/deletion-policy: orphan`.
    pub fn orphan_on_delete(&self) -> bool {
        self.annotations
            .get(DELETION_POLICY_ANNOTATION)
            .is_some_and(|v| v.trim().eq_ignore_ascii_case(DELETION_POLICY_ORPHAN))
    }
}

/// ARM `provisioningState` of a container group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum GroupProvisioning {
    Pending,
    Creating,
    #[default]
    Succeeded,
    Failed,
    Deleting,
    /// Any other value: treated like `Succeeded`.
    Unknown,
}

/// State of the runner container inside a group (ACI `instanceView.currentState`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContainerState {
    /// Not started yet; `reason` is ACI's `detailStatus` (e.g. `ErrImagePull`).
    Waiting {
        reason: Option<String>,
    },
    Running,
    Terminated {
        exit_code: Option<i32>,
    },
}

/// The runner container of a group.
#[derive(Clone, Debug, PartialEq)]
pub struct ObservedContainer {
    pub state: ContainerState,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub restart_count: i32,
}

/// One container group from the controller's tagged list (all pools; the planner filters).
#[derive(Clone, Debug, PartialEq)]
pub struct ObservedGroup {
    /// Group name = runner name.
    pub name: String,
    /// `aci-runners-pool-uid` tag (None when missing: such groups are never touched).
    pub pool_uid: Option<String>,
    /// `aci-runners-install-id` tag: the install that created the group (None for groups
    /// created before install ids existed; see [`super::install::claim_group`]).
    pub install_id: Option<String>,
    /// `aci-runners-pool-namespace` tag.
    pub pool_namespace: Option<String>,
    /// `aci-runners-pool-name` tag.
    pub pool_name: Option<String>,
    pub location: String,
    pub provisioning: GroupProvisioning,
    /// `None` while ACI has no instance view for the container yet.
    pub container: Option<ObservedContainer>,
    /// The controller's classification of a failed group (e.g. `InvalidImage` from ACI events),
    /// when it has one. Without it the planner classifies `provisioning == Failed` and image-pull
    /// waiting reasons itself.
    pub failure: Option<EdgeError>,
    /// `aci-runners-created` tag (or ARM's creation time).
    pub created: Option<DateTime<Utc>>,
    pub priority: Priority,
    /// Resources of the group, for usage accounting.
    pub cpu: f64,
    pub memory_gb: f64,
}

/// One self-hosted runner registration from the GitHub list of the pool's scope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedRunner {
    pub id: u64,
    pub name: String,
    pub online: bool,
    pub busy: bool,
    pub labels: Vec<String>,
}

/// What went wrong at an edge (classified by the Azure/GitHub clients, mapped by the controller).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EdgeErrorKind {
    /// Subscription/region quota for container groups or cores is exhausted.
    QuotaExceeded,
    /// The region (or the Spot pool of the region) has no capacity right now.
    CapacityUnavailable,
    /// The image cannot be pulled (`InaccessibleImage`, bad name, registry auth).
    InvalidImage,
    /// The request was rejected as invalid (400 other than the above, missing resource group, ...).
    InvalidRequest,
    /// Credentials rejected or a permission is missing (`permission` names it when known).
    Auth { permission: Option<String> },
    /// Rate limited; retry after the given delay when known.
    Throttled { retry_after: Option<Duration> },
    /// The target does not exist (treated as success for deletions).
    NotFound,
    /// Conflict, e.g. GitHub refusing to delete a busy runner.
    Conflict,
    /// Network errors, 5xx, timeouts.
    Transient,
}

/// A classified edge error with a message that must not contain secrets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EdgeError {
    pub kind: EdgeErrorKind,
    pub message: String,
}

impl EdgeError {
    pub fn new(kind: EdgeErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into() }
    }
}

/// A job waiting for a runner (from `workflow_job` webhooks, `queued` and not yet picked up).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedJob {
    pub id: u64,
    pub labels: Vec<String>,
    pub queued_at: DateTime<Utc>,
}

/// Why credentials are unusable; the message names Secrets and keys, never values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CredentialProblem {
    SecretNotFound,
    SecretKeyMissing,
    InvalidAppKey,
    /// Any other unusable content or reference (e.g. empty token, bad client id).
    InvalidSecret,
}

impl CredentialProblem {
    /// The Stalled reason of this problem.
    pub fn reason(self) -> &'static str {
        StallReason::of_credentials(self).as_str()
    }
}

/// Result of resolving the pool's Secrets (GitHub and, if set, Azure credentials).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum CredentialStatus {
    #[default]
    Ok,
    /// Reading the Secret failed for a transient reason (API server unavailable).
    Unavailable { message: String },
    /// The Secret is missing or unusable: needs a change by the user.
    Invalid { problem: CredentialProblem, message: String },
}

/// How a new runner registers with GitHub.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunnerRegistration {
    /// Mint a JIT config with these labels (defaults + custom) in this runner group.
    Jit { labels: Vec<String>, runner_group: Option<String> },
    /// Mint a registration token; the image runs `config.sh` with these custom labels.
    Token { labels: Vec<String>, runner_group: Option<String>, ephemeral: bool },
}

/// Why a runner or group is removed (used for logs, events and metrics).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum RemovalReason {
    /// Surplus idle runner after scaleDownDelay.
    ScaleDown,
    /// The runner container exited (job done); ephemeral recycle.
    Recycled,
    /// The runner container crashed.
    Crashed,
    /// The container group failed (e.g. image pull).
    Failed,
    /// The runner did not come online within registrationTimeout.
    RegistrationTimeout,
    /// Offline registration without a group, confirmed after the grace period.
    GarbageCollected,
    /// Group of a pool that no longer exists (or an older pool with the same name).
    Orphaned,
    /// The pool is being deleted.
    PoolDeleted,
    /// The pool is being deleted and drainTimeout expired for a busy runner.
    DrainTimeout,
    /// A JIT registration whose container group was never created.
    CreateFailed,
}

impl RemovalReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RemovalReason::ScaleDown => "ScaleDown",
            RemovalReason::Recycled => "Recycled",
            RemovalReason::Crashed => "Crashed",
            RemovalReason::Failed => "Failed",
            RemovalReason::RegistrationTimeout => "RegistrationTimeout",
            RemovalReason::GarbageCollected => "GarbageCollected",
            RemovalReason::Orphaned => "Orphaned",
            RemovalReason::PoolDeleted => "PoolDeleted",
            RemovalReason::DrainTimeout => "DrainTimeout",
            RemovalReason::CreateFailed => "CreateFailed",
        }
    }
}

/// One thing for the controller to do. Execute in order; see each variant for conditions.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Mint the registration (JIT config or token), then create container group `name`
    /// (tags per contracts) in `location` with `priority`.
    CreateRunner { name: String, location: String, priority: Priority, registration: RunnerRegistration },
    /// Delete the GitHub runner registration.
    UnregisterRunner { id: u64, name: String, reason: RemovalReason },
    /// Delete the container group. When `only_if_unregistered` is `Some(id)`, the preceding
    /// `UnregisterRunner { id }` of this plan must have succeeded (or returned NotFound);
    /// otherwise skip the delete (the runner may just have taken a job). When
    /// `only_if_unlisted`, a runner list read by the executor in this execution (not the
    /// pass's, which may be cached) must show no registration named `name`; otherwise skip the
    /// delete (a container that may still run registered after the pass's list was read).
    DeleteGroup {
        name: String,
        reason: RemovalReason,
        only_if_unregistered: Option<u64>,
        only_if_unlisted: bool,
    },
    /// Orphan deletion policy: remove the controller's tags (`aci-runners-managed-by` and the
    /// pool tags) from the group so that garbage collection never touches it again.
    ReleaseGroup { name: String },
}

impl Action {
    /// Group or runner name the action is about.
    pub fn name(&self) -> &str {
        match self {
            Action::CreateRunner { name, .. }
            | Action::UnregisterRunner { name, .. }
            | Action::DeleteGroup { name, .. }
            | Action::ReleaseGroup { name } => name,
        }
    }
    /// True for actions that remove or release something.
    pub fn is_destructive(&self) -> bool {
        !matches!(self, Action::CreateRunner { .. })
    }
}

/// An action of the previous pass that failed, reported back by the controller.
#[derive(Clone, Debug, PartialEq)]
pub struct ActionFailure {
    pub action: Action,
    pub error: EdgeError,
    /// For a failed `CreateRunner` in JIT mode: the runner id GitHub registered before the group
    /// create failed (the planner unregisters it).
    ///
    /// Actions the controller skipped because an earlier one failed (e.g. the remaining creates
    /// after a QuotaExceeded) must be reported too, with the error that stopped execution;
    /// otherwise the planner counts them as in flight until `in_flight_ttl`.
    pub registered_runner: Option<u64>,
}

/// Kubernetes Event type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

/// An Event the controller should publish on the pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedEvent {
    pub type_: EventType,
    /// `Display` gives the Event's reason string.
    pub reason: EventReason,
    pub message: String,
}

/// What to do with the pool's finalizer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinalizerDecision {
    /// Keep it (ensure it is present while the pool is alive).
    Keep,
    /// Remove it: deletion is complete (or abandoned after bounded retries).
    Remove,
}

/// Prices for the estimated cost in `status.usage` (per vCPU-second and GB-second).
#[derive(Clone, Debug, PartialEq)]
pub struct PriceTable {
    pub currency: String,
    pub regular_vcpu_second: f64,
    pub regular_gb_second: f64,
    pub spot_vcpu_second: f64,
    pub spot_gb_second: f64,
}

/// Tunables of the planner (not part of the spec).
#[derive(Clone, Debug, PartialEq)]
pub struct PlannerConfig {
    /// Mark-then-confirm: a GC candidate is acted on when seen again at least this much later.
    pub gc_grace: Duration,
    /// A create not seen in the group list after this long is considered lost.
    pub in_flight_ttl: Duration,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// The same failure this many times in a row → Stalled with its reason.
    pub stall_after: u32,
    /// How long a location is skipped after CapacityUnavailable.
    pub location_cooldown: Duration,
    /// How long Spot is skipped (with spotFallback) after a Spot capacity or quota error.
    pub spot_cooldown: Duration,
    pub quota_backoff_base: Duration,
    pub quota_backoff_max: Duration,
    /// Queued jobs older than this are ignored (a missed `completed` webhook must not pin demand).
    pub demand_ttl: Duration,
    /// Longest requeue interval (periodic resync).
    pub resync: Duration,
    /// Requeue interval while converging.
    pub converging_requeue: Duration,
    /// Shortest requeue interval.
    pub min_requeue: Duration,
    pub max_creates_per_pass: u32,
    /// During deletion: passes with a failure (list, Secret, action) before the finalizer is
    /// removed anyway.
    pub deletion_max_attempts: u32,
    /// During deletion: after drainTimeout plus this grace, every pass that is not done counts
    /// as a failed attempt (a group stuck in `Deleting` cannot wedge the finalizer).
    pub deletion_grace: Duration,
    /// After asking to remove a group or registration, how long to wait for the lists to stop
    /// showing it before asking again (lists may be cached or lag).
    pub removal_ttl: Duration,
    /// How long used names are remembered (beyond what the lists show).
    pub name_retention: Duration,
    /// How long after this process began acting a write of the process before it (killed or
    /// deposed with a create on the wire) may still take effect: ARM carries out a PUT it has
    /// received whether or not its sender reads the answer, and this process does not know of
    /// it. A deletion finishes only once this long has passed, unless the pool is younger than
    /// the process.
    pub predecessor_writes: Duration,
    /// How long before GitHub stops accepting the pool's runner version the pool is warned
    /// (a Warning Event `RunnerVersionDeprecated`, once per version and process).
    pub deprecation_notice: Duration,
    pub prices: Option<PriceTable>,
}

impl Default for PlannerConfig {
    fn default() -> Self {
        Self {
            gc_grace: Duration::from_secs(120),
            in_flight_ttl: Duration::from_secs(600),
            backoff_base: Duration::from_secs(10),
            backoff_max: Duration::from_secs(600),
            stall_after: 3,
            location_cooldown: Duration::from_secs(600),
            spot_cooldown: Duration::from_secs(600),
            quota_backoff_base: Duration::from_secs(60),
            quota_backoff_max: Duration::from_secs(900),
            demand_ttl: Duration::from_secs(3600),
            resync: Duration::from_secs(60),
            converging_requeue: Duration::from_secs(10),
            min_requeue: Duration::from_secs(1),
            max_creates_per_pass: 20,
            deletion_max_attempts: 10,
            deletion_grace: Duration::from_secs(1800),
            removal_ttl: Duration::from_secs(180),
            name_retention: Duration::from_secs(24 * 3600),
            // Twice the controller's total deadline of one ARM or GitHub request (30 s).
            predecessor_writes: Duration::from_secs(60),
            deprecation_notice: Duration::from_secs(30 * 24 * 3600),
            prices: None,
        }
    }
}

/// A create the planner asked for that the group list does not show yet.
#[derive(Clone, Debug, PartialEq)]
pub struct InFlight {
    pub since: DateTime<Utc>,
    pub location: String,
    pub priority: Priority,
}

/// A GC candidate key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum GcKey {
    Group(String),
    Runner(u64),
}

/// Why runners fail to come up (drives backoff and Stalled).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureReason {
    InvalidImage,
    InvalidRequest,
    AuthFailed,
    MissingPermission,
    RegistrationTimeout,
    ContainerCrashed,
    ProvisioningFailed,
    Transient,
}

impl FailureReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::InvalidImage => "InvalidImage",
            FailureReason::InvalidRequest => "InvalidRequest",
            FailureReason::AuthFailed => "AuthFailed",
            FailureReason::MissingPermission => "MissingPermission",
            FailureReason::RegistrationTimeout => "RegistrationTimeout",
            FailureReason::ContainerCrashed => "ContainerCrashed",
            FailureReason::ProvisioningFailed => "ProvisioningFailed",
            FailureReason::Transient => "TransientError",
        }
    }
    /// Consecutive repeats after which the pool is Stalled (None: never).
    pub fn stall_threshold(self, stall_after: u32) -> Option<u32> {
        match self {
            FailureReason::AuthFailed | FailureReason::MissingPermission => Some(1),
            FailureReason::Transient => None,
            _ => Some(stall_after.max(1)),
        }
    }
}

/// The last failure and how many times in a row it happened.
#[derive(Clone, Debug, PartialEq)]
pub struct FailureRecord {
    pub reason: FailureReason,
    pub message: String,
    pub count: u32,
    pub at: DateTime<Utc>,
}

/// Waiting for quota.
#[derive(Clone, Debug, PartialEq)]
pub struct QuotaWait {
    pub until: DateTime<Utc>,
    pub attempts: u32,
    pub message: String,
    /// When the refusal was seen: only creates sent after it prove that quota is back.
    pub since: DateTime<Utc>,
}

/// A removal the planner asked for.
#[derive(Clone, Debug, PartialEq)]
pub struct Removal {
    pub since: DateTime<Utc>,
    pub reason: RemovalReason,
}

/// State carried between passes (in memory). Everything in it is rebuildable: losing it only
/// delays garbage collection, scale-down and backoff decisions.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct PoolState {
    /// Spec generation the failure memory belongs to (a new generation resets it).
    pub generation: Option<i64>,
    /// The runner version whose deprecation this process has already warned of.
    pub deprecation_warned: Option<String>,
    /// False until the first pass with a successful group list (usage baseline).
    pub initialized: bool,
    pub in_flight: BTreeMap<String, InFlight>,
    /// Names used recently (never reused).
    pub used_names: BTreeMap<String, DateTime<Utc>>,
    pub gc_marks: BTreeMap<GcKey, DateTime<Utc>>,
    pub idle_since: BTreeMap<String, DateTime<Utc>>,
    /// Runners that were online once and are now offline while their group runs.
    pub offline_since: BTreeMap<String, DateTime<Utc>>,
    pub seen_online: BTreeSet<String>,
    /// Groups whose failure was already counted.
    pub counted_failures: BTreeSet<String>,
    pub failures: u32,
    pub backoff_until: Option<DateTime<Utc>>,
    pub last_failure: Option<FailureRecord>,
    pub location_cooldown: BTreeMap<String, DateTime<Utc>>,
    pub spot_unavailable_until: Option<DateTime<Utc>>,
    pub quota: Option<QuotaWait>,
    /// JIT registrations whose group create failed: id → name.
    pub pending_unregister: BTreeMap<u64, String>,
    /// Seconds of each group's lifetime already added to `status.usage`.
    pub usage_accounted: BTreeMap<String, f64>,
    pub deletion_attempts: u32,
    pub deletion_last_attempt: Option<DateTime<Utc>>,
    /// Groups/registrations whose removal was requested.
    pub removing: BTreeMap<String, Removal>,
    /// Names of this pool's groups and registrations last observed (for the abandon warning).
    pub last_known: BTreeSet<String>,
}

/// Everything one planning pass needs.
#[derive(Clone, Debug)]
pub struct PlanInput<'a> {
    /// This controller's install: groups of other installs are never touched, and new
    /// registrations carry its owner label.
    pub install: &'a super::install::InstallId,
    pub pool: &'a PoolMeta,
    pub spec: &'a RunnerPoolSpec,
    /// `spec.validate()`, computed once per pass by the caller (which also needs it to decide
    /// whether the pool is observed at all).
    pub validation: &'a Result<(), InvalidSpec>,
    /// The tenant policy's verdict on the pool ([`crate::policy::TenantPolicy::check`]), computed
    /// once per pass by the caller, which makes no Azure or GitHub call for a refused pool.
    pub permission: &'a Result<(), crate::policy::NotPermitted>,
    /// The status as last written (conditions keep their lastTransitionTime; usage accumulates).
    pub previous_status: Option<&'a RunnerPoolStatus>,
    /// Container groups of the pool's resource group carrying the managed-by tag, or the error.
    pub groups: Result<&'a [ObservedGroup], EdgeError>,
    /// Runner registrations of the pool's GitHub scope, or the error.
    pub runners: Result<&'a [ObservedRunner], EdgeError>,
    /// Uids of ALL RunnerPools that exist (not only the watched shard).
    pub live_pool_uids: &'a BTreeSet<String>,
    /// Queued jobs of the pool's scope (the planner filters by labels and TTL).
    pub queued_jobs: &'a [QueuedJob],
    pub credentials: &'a CredentialStatus,
    /// Failed actions of the previous pass.
    pub failures: &'a [ActionFailure],
    pub state: &'a PoolState,
    pub config: &'a PlannerConfig,
    /// When GitHub stops accepting the pool's runner version, if it has published a date
    /// (`None`: no date, or the version or the answer is not known).
    pub runner_deprecation: Option<&'a RunnerDeprecation>,
    /// When this process began acting on pools (took the Lease, or started without leader
    /// election): what a process before it sent is not in `state`.
    pub acting_since: DateTime<Utc>,
    pub now: DateTime<Utc>,
}

/// GitHub's published end of a runner version: from then on it refuses runners of that version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunnerDeprecation {
    pub version: String,
    pub at: DateTime<Utc>,
}

/// The planner's decision for one pass.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub actions: Vec<Action>,
    pub status: RunnerPoolStatus,
    pub state: PoolState,
    pub events: Vec<PlannedEvent>,
    pub requeue_after: Duration,
    pub finalizer: FinalizerDecision,
}
