//! The `RunnerPool` API (`aci-runners.dev/v1alpha1`).
//!
//! The schema carries the checks an API server can enforce (types, enums, bounds, patterns,
//! defaults, CEL rules for cross-field checks); [`RunnerPoolSpec::validate`] performs the same
//! checks in Rust, because API servers older than 1.25 ignore CEL rules (`x-kubernetes-validations`).
use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "aci-runners.dev";
pub const VERSION: &str = "v1alpha1";
/// Pinned default runner image: the official, unmodified GitHub Actions runner image.
pub const DEFAULT_RUNNER_IMAGE: &str = "ghcr.io/actions/actions-runner:2.329.0";
pub const DEFAULT_GITHUB_API_URL: &str = "https://api.github.com";

/// ACI per-container-group limits (standard Linux/Windows SKU, most regions).
pub const ACI_MAX_CPU: f64 = 4.0;
pub const ACI_MIN_CPU: f64 = 0.1;
pub const ACI_MAX_MEMORY_GB: f64 = 16.0;
pub const ACI_MIN_MEMORY_GB: f64 = 0.1;
/// ACI's default per-region container-group quota bounds a pool's size.
pub const MAX_RUNNERS_LIMIT: i32 = 1000;
/// Azure allows 50 tags per resource; the controller reserves some for its own.
pub const MAX_USER_TAGS: usize = 40;

pub(crate) const RE_REPOSITORY: &str = r"^[A-Za-z0-9-]{1,39}/[A-Za-z0-9._-]{1,100}$";
pub(crate) const RE_ORG: &str = r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})$";
pub(crate) const RE_ENTERPRISE: &str = r"^[A-Za-z0-9][A-Za-z0-9-]{0,254}$";
pub(crate) const RE_API_URL: &str = r"^https?://[^\s/]+(/[^\s]*)?$";
pub(crate) const RE_LABEL: &str = r"^[A-Za-z0-9._:/-]{1,256}$";
pub(crate) const RE_SECRET_NAME: &str = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$";
pub(crate) const RE_SECRET_KEY: &str = r"^[-._a-zA-Z0-9]{1,253}$";
pub(crate) const RE_UUID: &str =
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$";
pub(crate) const RE_RESOURCE_GROUP: &str = r"^[-\w._()]{0,89}[-\w_()]$";
pub(crate) const RE_LOCATION: &str = r"^[a-z0-9]{2,40}$";
pub(crate) const RE_SUBNET_ID: &str = r"^/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.Network/virtualNetworks/[^/]+/subnets/[^/]+$";
pub(crate) const RE_IDENTITY_ID: &str = r"^/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.ManagedIdentity/userAssignedIdentities/[^/]+$";
pub(crate) const RE_ENV_NAME: &str = r"^[A-Za-z_][A-Za-z0-9_]{0,254}$";
pub(crate) const RE_DURATION: &str = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$";
pub(crate) const RE_REGISTRY_SERVER: &str = r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]{1,5})?$";
pub(crate) const RE_TAG_KEY: &str = r"^[^<>%&\\?/]{1,512}$";

/// A pool of GitHub Actions self-hosted runners, each one an Azure container group.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "aci-runners.dev",
    version = "v1alpha1",
    kind = "RunnerPool",
    plural = "runnerpools",
    singular = "runnerpool",
    shortname = "rp",
    category = "aci-runners",
    namespaced,
    status = "RunnerPoolStatus",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Scope","type":"string","jsonPath":".status.scope"}"#,
    printcolumn = r#"{"name":"Idle","type":"integer","jsonPath":".status.idle"}"#,
    printcolumn = r#"{"name":"Busy","type":"integer","jsonPath":".status.busy"}"#,
    printcolumn = r#"{"name":"Desired","type":"integer","jsonPath":".status.desired"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct RunnerPoolSpec {
    /// Where the runners register: the GitHub scope, runner group, labels and credentials.
    pub github: GithubSpec,
    /// Where the runners run: subscription, resource group, location(s), network, identities.
    pub azure: AzureSpec,
    /// What each runner container looks like.
    #[serde(default)]
    pub runner: RunnerSpec,
    /// How many runners to keep and how fast to change that number.
    #[serde(default)]
    pub scaling: ScalingSpec,
}

/// GitHub side of a pool. Exactly one of `organization`, `repository` or `enterprise`.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("(has(self.organization) ? 1 : 0) + (has(self.repository) ? 1 : 0) + (has(self.enterprise) ? 1 : 0) == 1").message("exactly one of organization, repository or enterprise must be set"),
    validation = Rule::new("has(self.appSecretRef) != has(self.tokenSecretRef)").message("exactly one of appSecretRef or tokenSecretRef must be set"),
    validation = Rule::new("!has(self.enterprise) || has(self.tokenSecretRef)").message("enterprise scope requires tokenSecretRef: GitHub Apps cannot manage enterprise runners")
)]
pub struct GithubSpec {
    /// Organization login (organization-level runners).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})$"))]
    pub organization: Option<String>,
    /// Repository as `owner/repo` (repository-level runners).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^[A-Za-z0-9-]{1,39}/[A-Za-z0-9._-]{1,100}$"))]
    pub repository: Option<String>,
    /// Enterprise slug (enterprise-level runners; needs `tokenSecretRef`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^[A-Za-z0-9][A-Za-z0-9-]{0,254}$"))]
    pub enterprise: Option<String>,
    /// REST API base URL: `https://api.github.com`, or `https://HOST/api/v3` for GitHub Enterprise Server.
    /// Must be https; http only for a loopback host or a controller run with `--allow-insecure-github-http`.
    #[serde(default = "default_api_url")]
    #[schemars(pattern(r"^https?://[^\s/]+(/[^\s]*)?$"))]
    pub api_url: String,
    /// Runner group name (organization and enterprise scope). Default: the scope's default group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub runner_group: Option<String>,
    /// Custom labels of every runner in the pool (workflows select runners with them).
    #[schemars(length(min = 1, max = 100), inner(pattern(r"^[A-Za-z0-9._:/-]{1,256}$")))]
    pub labels: Vec<String>,
    /// Secret (same namespace) with `appId` or `clientId`, `installationId` and `privateKey` of a GitHub App.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_secret_ref: Option<SecretRef>,
    /// Secret (same namespace) holding a personal access token under `key` (default `token`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret_ref: Option<SecretKeyRef>,
}

fn default_api_url() -> String {
    DEFAULT_GITHUB_API_URL.to_string()
}

/// A Secret in the pool's namespace.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
pub struct SecretRef {
    /// Secret name.
    #[schemars(pattern(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"))]
    pub name: String,
}

/// One key of a Secret in the pool's namespace.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
pub struct SecretKeyRef {
    /// Secret name.
    #[schemars(pattern(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"))]
    pub name: String,
    /// Key inside the Secret.
    #[serde(default = "default_token_key")]
    #[schemars(pattern(r"^[-._a-zA-Z0-9]{1,253}$"))]
    pub key: String,
}

fn default_token_key() -> String {
    "token".to_string()
}

/// Azure side of a pool.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AzureSpec {
    /// Subscription that holds the container groups.
    #[schemars(pattern(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"))]
    pub subscription_id: String,
    /// Resource group that holds the container groups (must exist).
    #[schemars(pattern(r"^[-\w._()]{0,89}[-\w_()]$"))]
    pub resource_group: String,
    /// Primary Azure region, e.g. `westeurope`.
    #[schemars(pattern(r"^[a-z0-9]{2,40}$"))]
    pub location: String,
    /// Regions tried in order when the primary one has no capacity.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10), inner(pattern(r"^[a-z0-9]{2,40}$")))]
    pub fallback_locations: Vec<String>,
    /// Subnets (delegated to `Microsoft.ContainerInstance/containerGroups`) to deploy into.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1), inner(pattern(r"^/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.Network/virtualNetworks/[^/]+/subnets/[^/]+$")))]
    pub subnet_ids: Vec<String>,
    /// Extra Azure tags on every container group.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 40))]
    pub tags: BTreeMap<String, String>,
    /// Secret with `tenantId`, `clientId`, `clientSecret` of a per-pool service principal.
    /// Default: the controller's own identity (workload identity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretRef>,
    /// User-assigned managed identities (resource ids) attached to each container group.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20), inner(pattern(r"^/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.ManagedIdentity/userAssignedIdentities/[^/]+$")))]
    pub identities: Vec<String>,
}

/// Container OS.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OsType {
    #[default]
    Linux,
    Windows,
}

/// ACI priority of the container group.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Priority {
    #[default]
    Regular,
    Spot,
}

/// How a runner registers with GitHub.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum RegistrationMode {
    /// Just-in-time config (always ephemeral): the controller registers the runner and passes the
    /// config as the secure variable `ACTIONS_RUNNER_INPUT_JITCONFIG`.
    #[default]
    Jit,
    /// Registration token passed as `RUNNER_TOKEN` with `RUNNER_URL`, `RUNNER_NAME`, ... for
    /// custom images that run `config.sh` themselves.
    Token,
}

/// Runner registration settings.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.mode != 'jit' || self.ephemeral").message("jit registration is always ephemeral")
)]
pub struct Registration {
    /// `jit` (default) or `token`.
    #[serde(default)]
    pub mode: RegistrationMode,
    /// Ephemeral runners take one job, then the container exits and is recycled.
    #[serde(default = "default_true")]
    pub ephemeral: bool,
}

impl Default for Registration {
    fn default() -> Self {
        Self { mode: RegistrationMode::Jit, ephemeral: true }
    }
}

fn default_true() -> bool {
    true
}

/// A plain environment variable.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
pub struct EnvVar {
    #[schemars(pattern(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$"))]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// An environment variable whose value comes from a Secret and is passed as an ACI secure value.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecureEnvFrom {
    /// Variable name inside the container.
    #[schemars(pattern(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$"))]
    pub name: String,
    /// Secret key (same namespace) holding the value.
    pub secret_key_ref: SecretKeyRef,
}

/// Private registry for the runner image.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.identity) != has(self.credentialsSecretRef)").message("exactly one of identity or credentialsSecretRef must be set")
)]
pub struct ImageRegistry {
    /// Registry host, e.g. `myregistry.azurecr.io`.
    #[schemars(pattern(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]{1,5})?$"))]
    pub server: String,
    /// User-assigned identity (resource id) that pulls the image; must also be in `azure.identities`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.ManagedIdentity/userAssignedIdentities/[^/]+$"))]
    pub identity: Option<String>,
    /// Secret with `username` and `password`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretRef>,
}

/// The runner container.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.priority != 'Spot' || self.osType == 'Linux'").message("Spot priority supports Linux containers only"),
    validation = Rule::new("self.registration.mode != 'jit' || self.osType == 'Linux' || has(self.command)").message("jit mode on Windows needs an explicit command")
)]
pub struct RunnerSpec {
    /// Container image. Default: the pinned official `ghcr.io/actions/actions-runner` image.
    #[serde(default = "default_image")]
    #[schemars(length(min = 1, max = 1024))]
    pub image: String,
    /// vCPUs per runner (ACI: at most 4 per container group).
    #[serde(default = "default_cpu")]
    #[schemars(range(min = 0.1, max = 4.0))]
    pub cpu: f64,
    /// Memory in GB per runner (ACI: at most 16 per container group).
    #[serde(default = "default_memory", rename = "memoryGB")]
    #[schemars(range(min = 0.1, max = 16.0))]
    pub memory_gb: f64,
    /// `Linux` (default) or `Windows`.
    #[serde(default)]
    pub os_type: OsType,
    /// Plain environment variables (never secrets: use `secureEnvFrom`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub env: Vec<EnvVar>,
    /// Variables whose values come from Secrets; always passed as ACI secure values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50))]
    pub secure_env_from: Vec<SecureEnvFrom>,
    /// Container command. Default in jit mode: `/home/runner/run.sh`; in token mode: the image's entrypoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub command: Option<Vec<String>>,
    /// How the runner registers.
    #[serde(default)]
    pub registration: Registration,
    /// Private registry credentials for `image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_registry: Option<ImageRegistry>,
    /// `Regular` (default) or `Spot`.
    #[serde(default)]
    pub priority: Priority,
    /// With Spot priority: fall back to Regular when Spot capacity or quota is unavailable.
    #[serde(default)]
    pub spot_fallback: bool,
    /// Runner work folder.
    #[serde(default = "default_work_folder")]
    #[schemars(length(min = 1, max = 255))]
    pub work_folder: String,
}

fn default_image() -> String {
    DEFAULT_RUNNER_IMAGE.to_string()
}
fn default_cpu() -> f64 {
    2.0
}
fn default_memory() -> f64 {
    4.0
}
fn default_work_folder() -> String {
    "_work".to_string()
}

impl Default for RunnerSpec {
    fn default() -> Self {
        Self {
            image: default_image(),
            cpu: default_cpu(),
            memory_gb: default_memory(),
            os_type: OsType::Linux,
            env: Vec::new(),
            secure_env_from: Vec::new(),
            command: None,
            registration: Registration::default(),
            image_registry: None,
            priority: Priority::Regular,
            spot_fallback: false,
            work_folder: default_work_folder(),
        }
    }
}

/// Scaling behaviour.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.minIdle <= self.maxRunners").message("minIdle must not exceed maxRunners")
)]
pub struct ScalingSpec {
    /// Idle runners kept ready for new jobs.
    #[serde(default = "default_min_idle")]
    #[schemars(range(min = 0, max = 1000))]
    pub min_idle: i32,
    /// Upper bound on runners (idle + busy + provisioning).
    #[serde(default = "default_max_runners")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_runners: i32,
    /// How long a surplus idle runner is kept before it is removed.
    #[serde(default = "default_scale_down_delay")]
    #[schemars(pattern(r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub scale_down_delay: String,
    /// How long a running container may take to come online on GitHub before it is replaced.
    #[serde(default = "default_registration_timeout")]
    #[schemars(pattern(r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub registration_timeout: String,
    /// On pool deletion, how long busy runners may finish their job before they are removed.
    #[serde(default = "default_drain_timeout")]
    #[schemars(pattern(r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub drain_timeout: String,
}

fn default_min_idle() -> i32 {
    1
}
fn default_max_runners() -> i32 {
    10
}
fn default_scale_down_delay() -> String {
    "5m".to_string()
}
fn default_registration_timeout() -> String {
    "10m".to_string()
}
fn default_drain_timeout() -> String {
    "60m".to_string()
}

impl Default for ScalingSpec {
    fn default() -> Self {
        Self {
            min_idle: default_min_idle(),
            max_runners: default_max_runners(),
            scale_down_delay: default_scale_down_delay(),
            registration_timeout: default_registration_timeout(),
            drain_timeout: default_drain_timeout(),
        }
    }
}

/// Observed state, written by the controller (server-side apply on `/status`).
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RunnerPoolStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The GitHub scope, e.g. `org/acme` or `repo/acme/app`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// Runners the pool should have now.
    #[serde(default)]
    pub desired: i32,
    /// Container groups created whose runner is not online yet.
    #[serde(default)]
    pub provisioning: i32,
    /// Online runners without a job.
    #[serde(default)]
    pub idle: i32,
    /// Online runners running a job.
    #[serde(default)]
    pub busy: i32,
    /// Runners being removed.
    #[serde(default)]
    pub terminating: i32,
    /// Runners whose container group failed.
    #[serde(default)]
    pub failed: i32,
    /// Standard conditions: Ready, Reconciling, Stalled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Resources consumed by the pool's container groups (accumulated from group lifetimes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<RunnerPoolUsage>,
    /// The last runner whose container group failed, crashed or timed out before it was
    /// deleted, with the end of its container log (secrets redacted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<RunnerFailure>,
}

/// A failed runner as the controller saw it just before deleting its container group.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RunnerFailure {
    /// The runner's name (its container group's name).
    pub runner: String,
    /// Why it was removed: `Failed`, `Crashed` or `RegistrationTimeout`.
    pub reason: String,
    /// When the controller read its log (RFC 3339).
    pub time: String,
    /// The end of the runner container's log (at most 4 KiB, the last 50 lines), secrets
    /// redacted; absent when the log could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_tail: Option<String>,
}

/// Accumulated consumption of a pool's container groups.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RunnerPoolUsage {
    /// vCPU-seconds of all container groups of the pool.
    pub vcpu_seconds: f64,
    /// Memory GB-seconds of all container groups of the pool.
    pub gb_seconds: f64,
    /// Estimated cost from the controller's price table, when one is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_cost: Option<f64>,
    /// Currency of `estimatedCost`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
}

/// One failed check, with the JSON path of the offending field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// All failed checks of a spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid RunnerPool spec: {}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
pub struct InvalidSpec(pub Vec<FieldError>);

/// Parse a Go-style duration (`90s`, `5m`, `1h30m`) as the schema's pattern allows.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let d: kube::core::Duration = s.parse().map_err(|e| format!("{e}"))?;
    if d.is_negative() {
        return Err("must not be negative".into());
    }
    Ok(d.into())
}

struct Checker {
    errors: Vec<FieldError>,
}

/// The compiled form of one of the `RE_*` constants. Every reconcile pass validates its pool's
/// spec, and compiling the patterns each time was most of an idle pass's CPU (profiled: over
/// half of the controller's time with 100 idle pools), so each is compiled once per process.
/// Compile every validation pattern now (the controller calls this at start): the compile's
/// scratch memory (a few MB for the Unicode classes) is then used and freed while the heap is
/// small, instead of during the first passes, when the first lists are being read.
pub fn precompile_patterns() -> Result<(), regex::Error> {
    for re in [
        RE_REPOSITORY,
        RE_ORG,
        RE_ENTERPRISE,
        RE_API_URL,
        RE_LABEL,
        RE_SECRET_NAME,
        RE_SECRET_KEY,
        RE_UUID,
        RE_RESOURCE_GROUP,
        RE_LOCATION,
        RE_SUBNET_ID,
        RE_IDENTITY_ID,
        RE_ENV_NAME,
        RE_DURATION,
        RE_REGISTRY_SERVER,
        RE_TAG_KEY,
    ] {
        compiled(re)?;
    }
    Ok(())
}

/// Shared behind an `Arc`: a cloned `Regex` gets its own (empty) match-cache pool, and one pool
/// per clone per pool's pass is a measurable part of the heap with many pools.
fn compiled(re: &'static str) -> Result<std::sync::Arc<regex::Regex>, regex::Error> {
    type Cache = std::collections::HashMap<&'static str, std::sync::Arc<regex::Regex>>;
    static CACHE: std::sync::LazyLock<std::sync::Mutex<Cache>> = std::sync::LazyLock::new(Default::default);
    // A poisoned lock only means another thread panicked mid-insert; the map is still valid.
    let mut cache = CACHE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(r) = cache.get(re) {
        return Ok(std::sync::Arc::clone(r));
    }
    // Values checked are short: a small lazy-DFA cache per matching thread is plenty (the
    // default is 2 MiB per cache, which would dominate the memory of a controller that checks
    // many pools' specs).
    let r = std::sync::Arc::new(regex::RegexBuilder::new(re).dfa_size_limit(256 * 1024).build()?);
    cache.insert(re, std::sync::Arc::clone(&r));
    Ok(r)
}

impl Checker {
    fn fail(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError { field: field.into(), message: message.into() });
    }
    fn pattern(&mut self, field: &str, value: &str, re: &'static str) {
        // Patterns are compile-time constants; a failure to compile would be a programming
        // error caught by the unit tests, so it is reported as a field error, never a panic.
        match compiled(re) {
            Ok(r) if r.is_match(value) => {}
            Ok(_) => self.fail(field, format!("{value:?} does not match {re}")),
            Err(e) => self.fail(field, format!("internal pattern error: {e}")),
        }
    }
    fn range_f(&mut self, field: &str, v: f64, min: f64, max: f64) {
        if !(v.is_finite() && v >= min && v <= max) {
            self.fail(field, format!("{v} is outside {min}..={max}"));
        }
    }
    fn range_i(&mut self, field: &str, v: i32, min: i32, max: i32) {
        if v < min || v > max {
            self.fail(field, format!("{v} is outside {min}..={max}"));
        }
    }
    fn duration(&mut self, field: &str, v: &str) {
        self.pattern(field, v, RE_DURATION);
        if let Err(e) = parse_duration(v) {
            self.fail(field, e);
        }
    }
}

impl RunnerPoolSpec {
    /// Every check the CRD schema and its CEL rules make, in Rust, with field paths.
    pub fn validate(&self) -> Result<(), InvalidSpec> {
        let mut c = Checker { errors: Vec::new() };
        let g = &self.github;
        let scopes = [g.organization.is_some(), g.repository.is_some(), g.enterprise.is_some()];
        if scopes.iter().filter(|s| **s).count() != 1 {
            c.fail("spec.github", "exactly one of organization, repository or enterprise must be set");
        }
        if let Some(o) = &g.organization {
            c.pattern("spec.github.organization", o, RE_ORG);
        }
        if let Some(r) = &g.repository {
            c.pattern("spec.github.repository", r, RE_REPOSITORY);
        }
        if let Some(e) = &g.enterprise {
            c.pattern("spec.github.enterprise", e, RE_ENTERPRISE);
        }
        c.pattern("spec.github.apiUrl", &g.api_url, RE_API_URL);
        if let Some(rg) = &g.runner_group {
            if rg.is_empty() || rg.len() > 255 {
                c.fail("spec.github.runnerGroup", "length must be 1..=255");
            }
            if g.repository.is_some() {
                c.fail(
                    "spec.github.runnerGroup",
                    "runner groups exist only for organization and enterprise scope",
                );
            }
        }
        if g.labels.is_empty() || g.labels.len() > 100 {
            c.fail("spec.github.labels", "must have 1..=100 items");
        }
        for (i, l) in g.labels.iter().enumerate() {
            c.pattern(&format!("spec.github.labels[{i}]"), l, RE_LABEL);
        }
        match (&g.app_secret_ref, &g.token_secret_ref) {
            (Some(_), Some(_)) | (None, None) => {
                c.fail("spec.github", "exactly one of appSecretRef or tokenSecretRef must be set")
            }
            _ => {}
        }
        if g.enterprise.is_some() && g.token_secret_ref.is_none() {
            c.fail(
                "spec.github.tokenSecretRef",
                "enterprise scope requires tokenSecretRef: GitHub Apps cannot manage enterprise runners",
            );
        }
        if let Some(s) = &g.app_secret_ref {
            c.pattern("spec.github.appSecretRef.name", &s.name, RE_SECRET_NAME);
        }
        if let Some(s) = &g.token_secret_ref {
            c.pattern("spec.github.tokenSecretRef.name", &s.name, RE_SECRET_NAME);
            c.pattern("spec.github.tokenSecretRef.key", &s.key, RE_SECRET_KEY);
        }

        let a = &self.azure;
        c.pattern("spec.azure.subscriptionId", &a.subscription_id, RE_UUID);
        c.pattern("spec.azure.resourceGroup", &a.resource_group, RE_RESOURCE_GROUP);
        c.pattern("spec.azure.location", &a.location, RE_LOCATION);
        if a.fallback_locations.len() > 10 {
            c.fail("spec.azure.fallbackLocations", "must have at most 10 items");
        }
        for (i, l) in a.fallback_locations.iter().enumerate() {
            c.pattern(&format!("spec.azure.fallbackLocations[{i}]"), l, RE_LOCATION);
        }
        if a.subnet_ids.len() > 1 {
            c.fail("spec.azure.subnetIds", "must have at most 1 item (ACI takes one subnet per group)");
        }
        for (i, s) in a.subnet_ids.iter().enumerate() {
            c.pattern(&format!("spec.azure.subnetIds[{i}]"), s, RE_SUBNET_ID);
        }
        if a.tags.len() > MAX_USER_TAGS {
            c.fail("spec.azure.tags", format!("must have at most {MAX_USER_TAGS} entries"));
        }
        for (k, v) in &a.tags {
            c.pattern(&format!("spec.azure.tags[{k}]"), k, RE_TAG_KEY);
            if v.len() > 256 {
                c.fail(format!("spec.azure.tags[{k}]"), "value longer than 256 characters");
            }
        }
        if let Some(s) = &a.credentials_secret_ref {
            c.pattern("spec.azure.credentialsSecretRef.name", &s.name, RE_SECRET_NAME);
        }
        if a.identities.len() > 20 {
            c.fail("spec.azure.identities", "must have at most 20 items");
        }
        for (i, id) in a.identities.iter().enumerate() {
            c.pattern(&format!("spec.azure.identities[{i}]"), id, RE_IDENTITY_ID);
        }

        let r = &self.runner;
        if r.image.is_empty() || r.image.len() > 1024 {
            c.fail("spec.runner.image", "length must be 1..=1024");
        }
        c.range_f("spec.runner.cpu", r.cpu, ACI_MIN_CPU, ACI_MAX_CPU);
        c.range_f("spec.runner.memoryGB", r.memory_gb, ACI_MIN_MEMORY_GB, ACI_MAX_MEMORY_GB);
        if r.env.len() > 100 {
            c.fail("spec.runner.env", "must have at most 100 items");
        }
        for (i, e) in r.env.iter().enumerate() {
            c.pattern(&format!("spec.runner.env[{i}].name"), &e.name, RE_ENV_NAME);
        }
        if r.secure_env_from.len() > 50 {
            c.fail("spec.runner.secureEnvFrom", "must have at most 50 items");
        }
        for (i, e) in r.secure_env_from.iter().enumerate() {
            c.pattern(&format!("spec.runner.secureEnvFrom[{i}].name"), &e.name, RE_ENV_NAME);
            c.pattern(
                &format!("spec.runner.secureEnvFrom[{i}].secretKeyRef.name"),
                &e.secret_key_ref.name,
                RE_SECRET_NAME,
            );
            c.pattern(
                &format!("spec.runner.secureEnvFrom[{i}].secretKeyRef.key"),
                &e.secret_key_ref.key,
                RE_SECRET_KEY,
            );
        }
        if let Some(cmd) = &r.command
            && (cmd.is_empty() || cmd.len() > 64)
        {
            c.fail("spec.runner.command", "must have 1..=64 items");
        }
        if r.registration.mode == RegistrationMode::Jit && !r.registration.ephemeral {
            c.fail("spec.runner.registration.ephemeral", "jit registration is always ephemeral");
        }
        if let Some(reg) = &r.image_registry {
            c.pattern("spec.runner.imageRegistry.server", &reg.server, RE_REGISTRY_SERVER);
            match (&reg.identity, &reg.credentials_secret_ref) {
                (Some(_), Some(_)) | (None, None) => c.fail(
                    "spec.runner.imageRegistry",
                    "exactly one of identity or credentialsSecretRef must be set",
                ),
                (Some(id), None) => {
                    c.pattern("spec.runner.imageRegistry.identity", id, RE_IDENTITY_ID);
                    if !a.identities.iter().any(|x| x.eq_ignore_ascii_case(id)) {
                        c.fail(
                            "spec.runner.imageRegistry.identity",
                            "must also be listed in spec.azure.identities",
                        );
                    }
                }
                (None, Some(s)) => {
                    c.pattern("spec.runner.imageRegistry.credentialsSecretRef.name", &s.name, RE_SECRET_NAME)
                }
            }
        }
        if r.priority == Priority::Spot && r.os_type != OsType::Linux {
            c.fail("spec.runner.priority", "Spot priority supports Linux containers only");
        }
        if r.priority == Priority::Spot && !a.subnet_ids.is_empty() {
            c.fail("spec.runner.priority", "Spot container groups cannot be deployed into a subnet");
        }
        if r.os_type == OsType::Windows && !a.subnet_ids.is_empty() {
            c.fail("spec.azure.subnetIds", "Windows container groups cannot be deployed into a subnet");
        }
        if r.registration.mode == RegistrationMode::Jit && r.os_type != OsType::Linux && r.command.is_none() {
            c.fail("spec.runner.command", "jit mode on Windows needs an explicit command");
        }
        if r.work_folder.is_empty() || r.work_folder.len() > 255 {
            c.fail("spec.runner.workFolder", "length must be 1..=255");
        }

        let s = &self.scaling;
        c.range_i("spec.scaling.minIdle", s.min_idle, 0, MAX_RUNNERS_LIMIT);
        c.range_i("spec.scaling.maxRunners", s.max_runners, 1, MAX_RUNNERS_LIMIT);
        if s.min_idle > s.max_runners {
            c.fail("spec.scaling.minIdle", "minIdle must not exceed maxRunners");
        }
        c.duration("spec.scaling.scaleDownDelay", &s.scale_down_delay);
        c.duration("spec.scaling.registrationTimeout", &s.registration_timeout);
        c.duration("spec.scaling.drainTimeout", &s.drain_timeout);

        if c.errors.is_empty() { Ok(()) } else { Err(InvalidSpec(c.errors)) }
    }
}

impl RunnerPoolSpec {
    /// The scope string shown in `kubectl get rp` (`org/acme`, `repo/acme/app`, `enterprise/x`).
    pub fn scope_display(&self) -> String {
        let g = &self.github;
        if let Some(o) = &g.organization {
            format!("org/{o}")
        } else if let Some(r) = &g.repository {
            format!("repo/{r}")
        } else if let Some(e) = &g.enterprise {
            format!("enterprise/{e}")
        } else {
            String::new()
        }
    }
}

/// The CRD as YAML, exactly as `aci-runner-controller crd` prints it and `crds/runnerpool.yaml` holds it.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    use kube::CustomResourceExt;
    let crd = RunnerPool::crd();
    Ok(format!("# Generated by `aci-runner-controller crd`; do not edit.\n{}", serde_yaml::to_string(&crd)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn valid_spec() -> RunnerPoolSpec {
        serde_json::from_value(serde_json::json!({
            "github": {"organization": "acme", "labels": ["aci"], "appSecretRef": {"name": "gh-app"}},
            "azure": {"subscriptionId": "00000000-0000-0000-0000-000000000000", "resourceGroup": "rg-runners", "location": "westeurope"}
        }))
        .expect("valid fixture")
    }

    #[test]
    fn defaults_apply() {
        let s = valid_spec();
        assert_eq!(s.github.api_url, DEFAULT_GITHUB_API_URL);
        assert_eq!(s.runner.image, DEFAULT_RUNNER_IMAGE);
        assert_eq!(s.scaling.min_idle, 1);
        assert_eq!(s.scaling.max_runners, 10);
        assert_eq!(s.runner.registration.mode, RegistrationMode::Jit);
        assert!(s.runner.registration.ephemeral);
        assert_eq!(parse_duration(&s.scaling.scale_down_delay), Ok(std::time::Duration::from_secs(300)));
        s.validate().expect("valid");
    }

    fn errs(s: &RunnerPoolSpec) -> Vec<String> {
        s.validate().err().map(|e| e.0.iter().map(|f| f.field.clone()).collect()).unwrap_or_default()
    }

    #[test]
    fn cross_field_rules() {
        let mut s = valid_spec();
        s.github.repository = Some("acme/app".into());
        assert!(errs(&s).contains(&"spec.github".to_string()));

        let mut s = valid_spec();
        s.scaling.min_idle = 11;
        assert!(errs(&s).contains(&"spec.scaling.minIdle".to_string()));

        let mut s = valid_spec();
        s.github.organization = None;
        s.github.enterprise = Some("big".into());
        assert!(errs(&s).contains(&"spec.github.tokenSecretRef".to_string()));

        let mut s = valid_spec();
        s.runner.registration.ephemeral = false;
        assert!(errs(&s).contains(&"spec.runner.registration.ephemeral".to_string()));

        let mut s = valid_spec();
        s.runner.priority = Priority::Spot;
        s.azure.subnet_ids = vec![
            "/subscriptions/x/resourceGroups/y/providers/Microsoft.Network/virtualNetworks/v/subnets/s"
                .into(),
        ];
        assert!(errs(&s).contains(&"spec.runner.priority".to_string()));

        let mut s = valid_spec();
        s.runner.image_registry = Some(ImageRegistry {
            server: "acr.azurecr.io".into(),
            identity: Some("/subscriptions/x/resourceGroups/y/providers/Microsoft.ManagedIdentity/userAssignedIdentities/pull".into()),
            credentials_secret_ref: None,
        });
        assert!(errs(&s).contains(&"spec.runner.imageRegistry.identity".to_string()));
    }

    #[test]
    fn bounds_and_patterns() {
        let mut s = valid_spec();
        s.runner.cpu = 8.0;
        s.runner.memory_gb = 0.0;
        s.azure.subscription_id = "nope".into();
        s.scaling.drain_timeout = "soon".into();
        s.github.labels.clear();
        let e = errs(&s);
        for f in [
            "spec.runner.cpu",
            "spec.runner.memoryGB",
            "spec.azure.subscriptionId",
            "spec.scaling.drainTimeout",
            "spec.github.labels",
        ] {
            assert!(e.contains(&f.to_string()), "{f} missing in {e:?}");
        }
    }

    #[test]
    fn schema_patterns_match_rust_patterns() {
        // The same regex constants back the Rust checks and (by value) the schema attributes.
        let crd = serde_json::to_string(&<RunnerPool as kube::CustomResourceExt>::crd()).expect("crd json");
        for re in
            [RE_REPOSITORY, RE_ORG, RE_UUID, RE_LOCATION, RE_SUBNET_ID, RE_IDENTITY_ID, RE_DURATION, RE_LABEL]
        {
            let as_json = serde_json::to_string(re).expect("json");
            assert!(crd.contains(&as_json), "schema lacks pattern {re}");
        }
        assert!(crd.contains("x-kubernetes-validations"));
        assert!(crd.contains("minIdle must not exceed maxRunners"));
    }
}
