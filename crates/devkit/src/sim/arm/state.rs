//! Container groups, their lifecycle over simulated time, quotas, throttling and fault draws.
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, SecondsFormat, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::{Value, json};

use super::entra::Entra;
use super::{ArmSimConfig, BucketSpec, DeleteMode, FaultConfig, OpFaults, Quotas};
use crate::sim::clock::SimClock;
use crate::sim::runtime::{ContainerEnv, ContainerRuntime, ExitNotifier, StartedContainer};

pub(crate) const RESOURCE_TYPE: &str = "Microsoft.ContainerInstance/containerGroups";
const MAX_CALL_RECORDS: usize = 200_000;

/// One ARM call as the simulator answered it.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CallRecord {
    pub op: String,
    pub method: String,
    /// Path and query as received.
    pub path: String,
    pub status: u16,
    pub code: Option<String>,
    pub at: DateTime<Utc>,
    /// The request's `Host` header for ARM resource calls (tells apart clients that reach the
    /// simulator under different host names, e.g. two controllers of two installs).
    pub host: Option<String>,
}

/// What the inspection API reports about a group.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GroupSummary {
    pub id: String,
    pub subscription: String,
    pub resource_group: String,
    pub name: String,
    pub location: String,
    pub provisioning_state: String,
    pub state: String,
    pub restart_policy: String,
    pub tags: BTreeMap<String, String>,
    pub cpu: f64,
    pub containers: Vec<ContainerSummary>,
    pub created: DateTime<Utc>,
}

/// One container of a [`GroupSummary`].
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ContainerSummary {
    pub name: String,
    /// `Waiting`, `Running` or `Terminated`.
    pub state: String,
    pub exit_code: Option<i32>,
    pub restart_count: i32,
}

/// Env-var names each group received (values are never recorded).
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EnvRecord {
    pub group_id: String,
    /// Distinguishes re-created groups with the same id.
    pub incarnation: u64,
    pub group_name: String,
    pub container: String,
    /// (name, secure)
    pub names: Vec<(String, bool)>,
}

/// A complete ARM answer, before HTTP encoding.
#[derive(Debug)]
pub(crate) struct Answer {
    pub status: u16,
    pub body: Option<Value>,
    pub headers: Vec<(String, String)>,
    pub code: Option<String>,
}

impl Answer {
    pub fn ok(status: u16, body: Value) -> Self {
        Self { status, body: Some(body), headers: Vec::new(), code: None }
    }
    pub fn empty(status: u16) -> Self {
        Self { status, body: None, headers: Vec::new(), code: None }
    }
    pub fn error(status: u16, code: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        Self {
            status,
            body: Some(json!({"error": {"code": code, "message": message}})),
            headers: Vec::new(),
            code: Some(code.to_string()),
        }
    }
    pub fn header(mut self, k: &str, v: impl Into<String>) -> Self {
        self.headers.push((k.to_string(), v.into()));
        self
    }
}

#[derive(Clone, Debug)]
struct Event {
    name: String,
    message: String,
    count: i32,
    first: DateTime<Utc>,
    last: DateTime<Utc>,
}

#[derive(Clone, Debug)]
struct CState {
    state: &'static str,
    start: Option<DateTime<Utc>>,
    finish: Option<DateTime<Utc>>,
    exit: Option<i32>,
    detail: Option<String>,
}

impl CState {
    /// Before its group is provisioned: waiting for the image.
    fn creating() -> Self {
        Self {
            state: "Waiting",
            start: None,
            finish: None,
            exit: None,
            detail: Some("ContainerCreating".into()),
        }
    }
    fn running(now: DateTime<Utc>) -> Self {
        Self { state: "Running", start: Some(now), finish: None, exit: None, detail: None }
    }
}

#[derive(Clone, Debug)]
struct Ctr {
    name: String,
    image: String,
    command: Vec<String>,
    env: Vec<ContainerEnv>,
    restart_count: i32,
    current: CState,
    previous: Option<CState>,
    events: Vec<Event>,
    restart_due: Option<DateTime<Utc>>,
    crash_due: Option<DateTime<Utc>>,
    generation: u64,
    /// What the container's processes wrote, over its restarts (the last [`LOG_LINES`]).
    log: VecDeque<(DateTime<Utc>, String)>,
}

/// Lines of each container's log the simulator keeps.
const LOG_LINES: usize = 10_000;

#[derive(Clone, Debug)]
struct Group {
    id: String,
    sub: String,
    rg: String,
    name: String,
    location: String,
    spec: Value,
    tags: BTreeMap<String, String>,
    cpu: f64,
    restart_policy: String,
    created: DateTime<Utc>,
    prov: &'static str,
    creating_at: DateTime<Utc>,
    running_at: DateTime<Utc>,
    state: &'static str,
    events: Vec<Event>,
    containers: Vec<Ctr>,
    stopped: bool,
    deleting_until: Option<DateTime<Utc>>,
}

#[derive(Clone, Debug)]
enum OpKind {
    Create,
    Delete,
}

#[derive(Clone, Debug)]
struct Op {
    kind: OpKind,
    group_key: String,
    started: DateTime<Utc>,
}

#[derive(Clone, Debug)]
struct Bucket {
    tokens: f64,
    last: DateTime<Utc>,
}

struct State {
    groups: BTreeMap<String, Group>,
    ops: HashMap<String, Op>,
    calls: VecDeque<CallRecord>,
    counts: BTreeMap<String, BTreeMap<u16, u64>>,
    throttled: u64,
    quota_rejections: u64,
    creates_accepted: u64,
    env_records: Vec<EnvRecord>,
    rng: StdRng,
    buckets: HashMap<(String, bool), Bucket>,
    creates: HashMap<(String, String), VecDeque<DateTime<Utc>>>,
    generation: u64,
}

/// The simulator's state, shared by its HTTP handlers, its ticker and every handle. `pub` as
/// the parameter of [`ArmSimHandle`](super::ArmSimHandle); its module is private, so nothing outside the crate
/// names it, and its own items are crate-private.
pub struct Shared {
    cfg: Mutex<ArmSimConfig>,
    pub(crate) clock: SimClock,
    runtime: Arc<dyn ContainerRuntime>,
    /// Held around every hand-over to the runtime (a start after its re-check, a kill after the
    /// state change that causes it), so that a start decided before a delete or stop never
    /// reaches the runtime after that group's kill: a deleted group's container never runs.
    runtime_gate: Mutex<()>,
    pub(crate) url: String,
    pub(crate) entra: Entra,
    st: Mutex<State>,
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn ms(v: u64) -> chrono::Duration {
    chrono::Duration::milliseconds(i64::try_from(v).unwrap_or(i64::MAX / 4))
}

pub(crate) fn group_key(sub: &str, rg: &str, name: &str) -> String {
    format!("{}/{}/{}", sub.to_ascii_lowercase(), rg.to_ascii_lowercase(), name.to_ascii_lowercase())
}

fn push_log(c: &mut Ctr, now: DateTime<Utc>, line: &str) {
    if c.log.len() >= LOG_LINES {
        c.log.pop_front();
    }
    c.log.push_back((now, line.to_string()));
}

fn push_event(events: &mut Vec<Event>, name: &str, message: String, now: DateTime<Utc>) {
    if let Some(e) = events.iter_mut().find(|e| e.name == name && e.message == message) {
        e.count += 1;
        e.last = now;
    } else {
        events.push(Event { name: name.to_string(), message, count: 1, first: now, last: now });
    }
}

fn events_json(events: &[Event]) -> Value {
    Value::Array(
        events
            .iter()
            .map(|e| {
                json!({
                    "count": e.count,
                    "firstTimestamp": ts(e.first),
                    "lastTimestamp": ts(e.last),
                    "name": e.name,
                    "message": e.message,
                    "type": "Normal",
                })
            })
            .collect(),
    )
}

fn cstate_json(s: &CState) -> Value {
    let mut m = serde_json::Map::new();
    m.insert("state".into(), json!(s.state));
    if let Some(t) = s.start {
        m.insert("startTime".into(), json!(ts(t)));
    }
    if let Some(c) = s.exit {
        m.insert("exitCode".into(), json!(c));
    }
    if let Some(t) = s.finish {
        m.insert("finishTime".into(), json!(ts(t)));
    }
    if let Some(d) = &s.detail {
        m.insert("detailStatus".into(), json!(d));
    }
    Value::Object(m)
}

/// A request body that passed ACI's validation.
pub(crate) struct ValidGroup {
    pub location: String,
    pub spec: Value,
    pub tags: BTreeMap<String, String>,
    pub cpu: f64,
    pub restart_policy: String,
    pub containers: Vec<(String, String, Vec<String>, Vec<ContainerEnv>)>,
}

fn is_aci_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
        && !s.contains("--")
}

fn is_env_name(s: &str) -> bool {
    let mut it = s.chars();
    matches!(it.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && it.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-')
}

/// Validate a PUT body the way ACI does and strip read-only properties.
pub(crate) fn validate(name: &str, body: &Value, cfg: &ArmSimConfig) -> Result<ValidGroup, Answer> {
    let bad = |code: &str, msg: String| Err(Answer::error(400, code, msg));
    if !is_aci_name(name) {
        return bad(
            "ContainerGroupNameInvalid",
            format!(
                "The container group name '{name}' is invalid. The name must be between 1 and 63 characters long, only contain lowercase alphanumeric characters or '-', start and end with an alphanumeric character, and the '-' character can't be consecutive."
            ),
        );
    }
    let Some(obj) = body.as_object() else {
        return bad(
            "InvalidRequestContent",
            "The request content was invalid and could not be deserialized.".into(),
        );
    };
    let location = match obj.get("location").and_then(Value::as_str) {
        Some(l) if !l.is_empty() => l.to_ascii_lowercase().replace(' ', ""),
        _ => return bad("LocationRequired", "The location property is required for this definition.".into()),
    };
    if !cfg.locations.iter().any(|l| l.eq_ignore_ascii_case(&location)) {
        return bad(
            "LocationNotAvailableForResourceType",
            format!(
                "The provided location '{location}' is not available for resource type '{RESOURCE_TYPE}'. List of available regions for the resource type is '{}'.",
                cfg.locations.join(",")
            ),
        );
    }
    let mut tags = BTreeMap::new();
    if let Some(t) = obj.get("tags") {
        let Some(t) = t.as_object() else {
            return bad("InvalidRequestContent", "The 'tags' property must be an object of strings.".into());
        };
        if t.len() > 50 {
            return bad("InvalidTag", format!("The resource has {} tags; at most 50 are allowed.", t.len()));
        }
        for (k, v) in t {
            let Some(v) = v.as_str() else {
                return bad("InvalidTemplate", format!("The value of tag '{k}' must be a string."));
            };
            if k.is_empty() || k.len() > 512 || v.len() > 256 {
                return bad("InvalidTag", format!("The tag name '{k}' or its value has an invalid length."));
            }
            if k.chars().any(|c| matches!(c, '<' | '>' | '%' | '&' | '\\' | '?' | '/')) {
                return bad(
                    "InvalidTagNameCharacters",
                    format!(
                        "The tag names '{k}' have reserved characters '<,>,%,&,\\,?,/' or control characters."
                    ),
                );
            }
            tags.insert(k.clone(), v.to_string());
        }
    }
    let Some(props) = obj.get("properties").and_then(Value::as_object) else {
        return bad("InvalidRequestContent", "The request content must contain 'properties'.".into());
    };
    let os = props.get("osType").and_then(Value::as_str).unwrap_or_default();
    if os != "Linux" && os != "Windows" {
        return bad(
            "InvalidOsType",
            format!("The 'osType' '{os}' is invalid. The supported values are 'Linux' and 'Windows'."),
        );
    }
    let restart_policy = props.get("restartPolicy").and_then(Value::as_str).unwrap_or("Always").to_string();
    if !matches!(restart_policy.as_str(), "Always" | "OnFailure" | "Never") {
        return bad(
            "InvalidRestartPolicy",
            format!(
                "The restart policy '{restart_policy}' is invalid. The supported values are 'Always', 'OnFailure' and 'Never'."
            ),
        );
    }
    let priority = props.get("priority").and_then(Value::as_str).unwrap_or("Regular");
    if !matches!(priority, "Regular" | "Spot") {
        return bad("InvalidPriority", format!("The priority '{priority}' is invalid."));
    }
    let has_subnets = props.get("subnetIds").and_then(Value::as_array).is_some_and(|a| !a.is_empty());
    if priority == "Spot" && (os != "Linux" || has_subnets) {
        return bad(
            "SpotPriorityNotSupported",
            "Spot priority is supported only for Linux container groups without virtual network deployment."
                .into(),
        );
    }
    let Some(containers) = props.get("containers").and_then(Value::as_array) else {
        return bad(
            "ContainerGroupContainersRequired",
            "The container group must contain at least one container.".into(),
        );
    };
    if containers.is_empty() || containers.len() > 60 {
        return bad(
            "ContainerGroupContainersRequired",
            "The container group must contain between 1 and 60 containers.".into(),
        );
    }
    let mut out = Vec::new();
    let (mut cpu_sum, mut mem_sum) = (0.0, 0.0);
    for c in containers {
        let cname = c.get("name").and_then(Value::as_str).unwrap_or_default();
        if !is_aci_name(cname) {
            return bad(
                "InvalidContainerName",
                format!(
                    "The container name '{cname}' in container group '{name}' is invalid. It must be 1-63 lowercase alphanumeric characters or '-', starting and ending with an alphanumeric character."
                ),
            );
        }
        if out.iter().any(|(n, ..): &(String, String, Vec<String>, Vec<ContainerEnv>)| n == cname) {
            return bad(
                "DuplicateContainerName",
                format!("The container name '{cname}' is used more than once."),
            );
        }
        let cp = c.get("properties").cloned().unwrap_or(Value::Null);
        let image = cp.get("image").and_then(Value::as_str).unwrap_or_default().to_string();
        if image.trim().is_empty() {
            return bad("ContainerImageRequired", format!("The image of container '{cname}' is required."));
        }
        let req = cp.pointer("/resources/requests");
        let cpu = req.and_then(|r| r.get("cpu")).and_then(Value::as_f64);
        let mem = req.and_then(|r| r.get("memoryInGB")).and_then(Value::as_f64);
        let (Some(cpu), Some(mem)) = (cpu, mem) else {
            return bad(
                "ResourceRequestsNotSpecified",
                format!("The resource requests of container '{cname}' are not specified."),
            );
        };
        let off_step = |x: f64, steps: f64| ((x * steps).round() - x * steps).abs() > 1e-6;
        if cpu <= 0.0 || mem <= 0.0 || off_step(cpu, 100.0) || off_step(mem, 10.0) {
            return bad(
                "InvalidContainerResourceRequests",
                format!(
                    "The resource requests of container '{cname}' are invalid: cpu {cpu}, memoryInGB {mem}. CPU must be positive in steps of 0.01 and memory positive in steps of 0.1 GB."
                ),
            );
        }
        cpu_sum += cpu;
        mem_sum += mem;
        let command: Vec<String> = cp
            .get("command")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        let mut env = Vec::new();
        for e in cp.get("environmentVariables").and_then(Value::as_array).into_iter().flatten() {
            let en = e.get("name").and_then(Value::as_str).unwrap_or_default();
            if !is_env_name(en) {
                return bad(
                    "InvalidEnvironmentVariableName",
                    format!("The environment variable name '{en}' in container '{cname}' is invalid."),
                );
            }
            if env.iter().any(|x: &ContainerEnv| x.name == en) {
                return bad(
                    "DuplicateEnvironmentVariables",
                    format!("The environment variable name '{en}' in container '{cname}' is duplicated."),
                );
            }
            let value = e.get("value").and_then(Value::as_str);
            let secure = e.get("secureValue").and_then(Value::as_str);
            if value.is_some() && secure.is_some() {
                return bad(
                    "InvalidEnvironmentVariable",
                    format!(
                        "The environment variable '{en}' must have either 'value' or 'secureValue', not both."
                    ),
                );
            }
            env.push(ContainerEnv {
                name: en.to_string(),
                value: secure.or(value).unwrap_or_default().to_string(),
                secure: secure.is_some(),
            });
        }
        out.push((cname.to_string(), image, command, env));
    }
    if cpu_sum > 4.0 + 1e-9 || mem_sum > 16.0 + 1e-9 {
        return bad(
            "ResourceSkuRequestsExceedLimits",
            format!(
                "The requested resource with 'CPU: {cpu_sum}, memoryInGB: {mem_sum}' in location '{location}' exceeds the limit 'CPU: 4, memoryInGB: 16' of a container group."
            ),
        );
    }
    // Keep what the client sent, minus read-only properties.
    let mut spec = body.clone();
    if let Some(o) = spec.as_object_mut() {
        for k in ["id", "name", "type"] {
            o.remove(k);
        }
        o.insert("location".into(), json!(location));
    }
    if let Some(p) = spec.get_mut("properties").and_then(Value::as_object_mut) {
        p.remove("provisioningState");
        p.remove("instanceView");
        if let Some(cs) = p.get_mut("containers").and_then(Value::as_array_mut) {
            for c in cs {
                if let Some(cp) = c.get_mut("properties").and_then(Value::as_object_mut) {
                    cp.remove("instanceView");
                }
            }
        }
    }
    Ok(ValidGroup { location, spec, tags, cpu: cpu_sum, restart_policy, containers: out })
}

impl Shared {
    pub(crate) fn new(
        cfg: ArmSimConfig,
        clock: SimClock,
        runtime: Arc<dyn ContainerRuntime>,
        url: String,
    ) -> Self {
        let seed = cfg.faults.seed;
        Self {
            cfg: Mutex::new(cfg),
            clock,
            runtime,
            runtime_gate: Mutex::new(()),
            url,
            entra: Entra::new(),
            st: Mutex::new(State {
                groups: BTreeMap::new(),
                ops: HashMap::new(),
                calls: VecDeque::new(),
                counts: BTreeMap::new(),
                throttled: 0,
                quota_rejections: 0,
                creates_accepted: 0,
                env_records: Vec::new(),
                rng: StdRng::seed_from_u64(seed),
                buckets: HashMap::new(),
                creates: HashMap::new(),
                generation: 0,
            }),
        }
    }

    fn st(&self) -> MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn cfg(&self) -> ArmSimConfig {
        self.cfg.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn set_faults(&self, faults: FaultConfig) {
        let seed = faults.seed;
        self.cfg.lock().unwrap_or_else(|p| p.into_inner()).faults = faults;
        self.st().rng = StdRng::seed_from_u64(seed);
    }

    pub(crate) fn set_quotas(&self, quotas: Quotas) {
        self.cfg.lock().unwrap_or_else(|p| p.into_inner()).quotas = quotas;
    }

    pub(crate) fn record(&self, op: &str, method: &str, path: &str, status: u16, code: Option<String>) {
        self.record_from(op, method, path, status, code, None)
    }

    /// [`Self::record`] with the request's `Host` header.
    pub(crate) fn record_from(
        &self,
        op: &str,
        method: &str,
        path: &str,
        status: u16,
        code: Option<String>,
        host: Option<String>,
    ) {
        let at = self.clock.now();
        let mut st = self.st();
        if status == 429 {
            st.throttled += 1;
        }
        *st.counts.entry(op.to_string()).or_default().entry(status).or_default() += 1;
        if st.calls.len() >= MAX_CALL_RECORDS {
            st.calls.pop_front();
        }
        st.calls.push_back(CallRecord {
            op: op.to_string(),
            method: method.to_string(),
            path: path.to_string(),
            status,
            code,
            at,
            host,
        });
    }

    pub(crate) fn calls(&self) -> Vec<CallRecord> {
        self.st().calls.iter().cloned().collect()
    }
    pub(crate) fn call_counts(&self) -> BTreeMap<String, BTreeMap<u16, u64>> {
        self.st().counts.clone()
    }
    pub(crate) fn throttled_count(&self) -> u64 {
        self.st().throttled
    }
    pub(crate) fn quota_rejections(&self) -> u64 {
        self.st().quota_rejections
    }
    pub(crate) fn creates_accepted(&self) -> u64 {
        self.st().creates_accepted
    }
    pub(crate) fn env_records(&self) -> Vec<EnvRecord> {
        self.st().env_records.clone()
    }
    pub(crate) fn env_names(&self, group: &str) -> Vec<(String, String, bool)> {
        let st = self.st();
        let Some(last) = st.env_records.iter().rev().find(|r| r.group_name == group) else {
            return Vec::new();
        };
        let (gid, inc) = (last.group_id.clone(), last.incarnation);
        st.env_records
            .iter()
            .filter(|r| r.group_id == gid && r.incarnation == inc)
            .flat_map(|r| r.names.iter().map(|(n, s)| (r.container.clone(), n.clone(), *s)))
            .collect()
    }

    pub(crate) fn groups(&self) -> Vec<GroupSummary> {
        self.st()
            .groups
            .values()
            .map(|g| GroupSummary {
                id: g.id.clone(),
                subscription: g.sub.clone(),
                resource_group: g.rg.clone(),
                name: g.name.clone(),
                location: g.location.clone(),
                provisioning_state: if g.deleting_until.is_some() {
                    "Deleting".into()
                } else {
                    g.prov.into()
                },
                state: g.state.into(),
                restart_policy: g.restart_policy.clone(),
                tags: g.tags.clone(),
                cpu: g.cpu,
                containers: g
                    .containers
                    .iter()
                    .map(|c| ContainerSummary {
                        name: c.name.clone(),
                        state: c.current.state.to_string(),
                        exit_code: c.current.exit,
                        restart_count: c.restart_count,
                    })
                    .collect(),
                created: g.created,
            })
            .collect()
    }

    /// Draw the injected fault for an operation, if any.
    pub(crate) fn draw_fault(&self, op: &str) -> Option<Answer> {
        let f: OpFaults = self.cfg().faults.ops.get(op).copied()?;
        let mut st = self.st();
        let r: f64 = st.rng.r#gen();
        if r < f.throttle {
            return Some(
                Answer::error(429, "TooManyRequests", "The request is being throttled. Please retry after the period in the Retry-After header.")
                    .header("Retry-After", "1"),
            );
        }
        if r < f.throttle + f.internal_error {
            return Some(Answer::error(
                500,
                "InternalServerError",
                "Encountered internal server error. Diagnostic information: timestamp, subscription id, tracking id.",
            ));
        }
        if r < f.throttle + f.internal_error + f.unavailable {
            return Some(
                Answer::error(
                    503,
                    "ServiceUnavailable",
                    "The service is temporarily unavailable. Please retry later.",
                )
                .header("Retry-After", "1"),
            );
        }
        None
    }

    /// Take one token from the subscription's ARM read or write bucket. On success, the
    /// remaining count (for `x-ms-ratelimit-remaining-subscription-*`); else the 429 answer.
    pub(crate) fn take_arm_token(&self, sub: &str, write: bool) -> Result<(String, u64), Answer> {
        let q = self.cfg().quotas;
        let spec: BucketSpec = if write { q.writes } else { q.reads };
        let now = self.clock.now();
        let scale = self.clock.scale();
        let mut st = self.st();
        let b = st
            .buckets
            .entry((sub.to_ascii_lowercase(), write))
            .or_insert(Bucket { tokens: spec.capacity, last: now });
        // Microseconds: truncating each interval to whole milliseconds would lose up to a
        // millisecond of refill per request (a client pacing exactly at the rate then sees 429s).
        let dt = (now - b.last).num_microseconds().unwrap_or(i64::MAX).max(0) as f64 / 1e6;
        b.tokens = (b.tokens + dt * spec.refill_per_sec).min(spec.capacity);
        b.last = now;
        let header = if write {
            "x-ms-ratelimit-remaining-subscription-writes"
        } else {
            "x-ms-ratelimit-remaining-subscription-reads"
        };
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Ok((header.to_string(), b.tokens.floor() as u64));
        }
        let wait_sim =
            if spec.refill_per_sec > 0.0 { (1.0 - b.tokens) / spec.refill_per_sec } else { 3600.0 };
        let retry = (wait_sim / scale).ceil().max(1.0) as u64;
        let kind = if write { "write" } else { "read" };
        Err(Answer::error(
            429,
            "SubscriptionRequestsThrottled",
            format!("Number of '{kind}' requests for subscription '{sub}' exceeded. Please try again after '{retry}' seconds after the last request."),
        )
        .header("Retry-After", retry.to_string())
        .header(header, "0"))
    }

    /// A line written by container `idx` of the group `key` (its process, through the runtime).
    pub(crate) fn container_log(&self, key: &str, idx: usize, line: &str) {
        let now = self.clock.now();
        let mut st = self.st();
        if let Some(c) = st.groups.get_mut(key).and_then(|g| g.containers.get_mut(idx)) {
            push_log(c, now, line);
        }
    }

    /// `GET .../containers/{container}/logs` (`Containers_ListLogs`): the last `tail` lines (all
    /// kept ones without it), each prefixed by its RFC 3339 time with `timestamps`.
    pub(crate) fn logs(
        &self,
        sub: &str,
        rg: &str,
        name: &str,
        container: &str,
        tail: Option<usize>,
        timestamps: bool,
    ) -> Answer {
        let st = self.st();
        let Some(g) = st.groups.get(&group_key(sub, rg, name)) else {
            return not_found(rg, name);
        };
        let Some(c) = g.containers.iter().find(|c| c.name == container) else {
            return Answer::error(
                404,
                "ContainerNotFound",
                format!("The container '{container}' could not be found in container group '{name}'."),
            );
        };
        let skip = tail.map_or(0, |t| c.log.len().saturating_sub(t));
        let content: String = c
            .log
            .iter()
            .skip(skip)
            .map(|(t, l)| if timestamps { format!("{} {l}\n", ts(*t)) } else { format!("{l}\n") })
            .collect();
        Answer::ok(200, json!({ "content": content }))
    }

    pub(crate) fn get(&self, sub: &str, rg: &str, name: &str) -> Answer {
        let st = self.st();
        match st.groups.get(&group_key(sub, rg, name)) {
            Some(g) => Answer::ok(200, self.render(g)),
            None => not_found(rg, name),
        }
    }

    pub(crate) fn list(
        &self,
        sub: &str,
        rg: Option<&str>,
        path: &str,
        api_version: &str,
        skip: usize,
    ) -> Answer {
        let page = self.cfg().page_size.max(1);
        let st = self.st();
        let all: Vec<&Group> = st
            .groups
            .values()
            .filter(|g| g.sub.eq_ignore_ascii_case(sub) && rg.is_none_or(|r| g.rg.eq_ignore_ascii_case(r)))
            .collect();
        let value: Vec<Value> = all.iter().skip(skip).take(page).map(|g| self.render(g)).collect();
        let mut body = json!({ "value": value });
        if skip + page < all.len() {
            body["nextLink"] =
                json!(format!("{}{}?api-version={}&$skiptoken={}", self.url, path, api_version, skip + page));
        }
        Answer::ok(200, body)
    }

    fn async_headers(&self, a: Answer, sub: &str, location: &str, op_id: &str, api_version: &str) -> Answer {
        let op_url = format!(
            "{}/subscriptions/{sub}/providers/Microsoft.ContainerInstance/locations/{location}/operations/{op_id}?api-version={api_version}",
            self.url
        );
        a.header("Azure-AsyncOperation", op_url)
    }

    pub(crate) fn create_or_update(
        &self,
        sub: &str,
        rg: &str,
        name: &str,
        body: &Value,
        api_version: &str,
    ) -> Answer {
        let cfg = self.cfg();
        let v = match validate(name, body, &cfg) {
            Ok(v) => v,
            Err(a) => return a,
        };
        for (_, image, _, _) in &v.containers {
            if cfg.faults.inaccessible_images.contains(image) {
                return Answer::error(
                    400,
                    "InaccessibleImage",
                    format!(
                        "The image '{image}' in container group '{name}' is not accessible. Please check the image and registry credential."
                    ),
                );
            }
        }
        let now = self.clock.now();
        let key = group_key(sub, rg, name);
        let mut st = self.st();
        if let Some(g) = st.groups.get_mut(&key) {
            if g.deleting_until.is_some() {
                return Answer::error(
                    409,
                    "Conflict",
                    format!("The container group '{name}' is being deleted."),
                );
            }
            if g.location != v.location {
                return Answer::error(
                    409,
                    "InvalidResourceLocation",
                    format!(
                        "The resource '{name}' already exists in location '{}' in resource group '{rg}'. A resource with the same name cannot be created in location '{}'. Please select a new resource name.",
                        g.location, v.location
                    ),
                );
            }
            g.spec = v.spec;
            g.tags = v.tags;
            g.restart_policy = v.restart_policy;
            let body = self.render(g);
            return Answer::ok(200, body);
        }
        // Quotas per subscription·region.
        let q = &cfg.quotas;
        let in_region: Vec<&Group> = st
            .groups
            .values()
            .filter(|g| {
                g.sub.eq_ignore_ascii_case(sub) && g.location == v.location && g.deleting_until.is_none()
            })
            .collect();
        let used_cores: f64 = in_region.iter().map(|g| g.cpu).sum();
        let count = in_region.len();
        if count as u64 >= u64::from(q.container_groups) {
            st.quota_rejections += 1;
            return Answer::error(
                409,
                "ContainerGroupQuotaReached",
                format!(
                    "Resource type '{RESOURCE_TYPE}' container group quota 'ContainerGroups' exceeded in region '{}'. Limit: '{}', Usage: '{count}' Requested: '1'.",
                    v.location, q.container_groups
                ),
            );
        }
        if used_cores + v.cpu > q.cores + 1e-9 {
            st.quota_rejections += 1;
            return Answer::error(
                409,
                "ContainerGroupQuotaReached",
                format!(
                    "Resource type '{RESOURCE_TYPE}' container group quota 'StandardCores' exceeded in region '{}'. Limit: '{}', Usage: '{used_cores}' Requested: '{}'.",
                    v.location, q.cores, v.cpu
                ),
            );
        }
        let window = st.creates.entry((sub.to_ascii_lowercase(), v.location.clone())).or_default();
        while window.front().is_some_and(|t| now - *t >= chrono::Duration::hours(1)) {
            window.pop_front();
        }
        let in_5 = window.iter().filter(|t| now - **t < chrono::Duration::minutes(5)).count();
        // When a full window frees a slot: the grant that keeps it full expires.
        let free_at = |times: Vec<DateTime<Utc>>, limit: u32, span: chrono::Duration| {
            if limit == 0 {
                return Some(now + span);
            }
            (times.len() as u64 >= u64::from(limit))
                .then(|| times.get(times.len() - limit as usize).map(|t| *t + span))
                .flatten()
        };
        let five = chrono::Duration::minutes(5);
        let recent: Vec<DateTime<Utc>> = window.iter().filter(|t| now - **t < five).copied().collect();
        let limited = free_at(recent, q.creates_per_5min, five)
            .map(|t| (t, "5 minutes", q.creates_per_5min))
            .or_else(|| {
                free_at(window.iter().copied().collect(), q.creates_per_hour, chrono::Duration::hours(1))
                    .map(|t| (t, "hour", q.creates_per_hour))
            });
        let remaining_5 = u64::from(q.creates_per_5min).saturating_sub(in_5 as u64 + 1);
        let remaining_h = u64::from(q.creates_per_hour).saturating_sub(window.len() as u64 + 1);
        if let Some((free_at, per, limit)) = limited {
            let wait_sim = (free_at - now).num_milliseconds().max(0) as f64 / 1000.0;
            let retry = (wait_sim / self.clock.scale()).ceil().max(1.0) as u64;
            st.quota_rejections += 1;
            return Answer::error(
                429,
                "ContainerGroupCreationRateExceeded",
                format!("The container group creation rate limit of {limit} per {per} in region '{}' was exceeded. Please retry after {retry} seconds.", v.location),
            )
            .header("Retry-After", retry.to_string());
        }
        // Regional capacity.
        if let Some(cap) = cfg.faults.capacity.get(&v.location) {
            let all_in_loc =
                st.groups.values().filter(|g| g.location == v.location && g.deleting_until.is_none()).count();
            if all_in_loc as u64 >= u64::from(*cap) {
                return Answer::error(
                    409,
                    "ServiceUnavailable",
                    format!(
                        "The requested resource is not available in the location '{}' at this moment. Please retry with a different resource request or in another location. Resource requested: '{} CPU {} memory GB Linux OS' for container group '{name}'.",
                        v.location, v.cpu, 0
                    ),
                );
            }
        }
        if let Some(w) = st.creates.get_mut(&(sub.to_ascii_lowercase(), v.location.clone())) {
            w.push_back(now);
        }
        st.creates_accepted += 1;
        let location = v.location.clone();
        let body = self.insert_new_group(&mut st, &cfg, sub, rg, name, v, now);
        let op_id = uuid::Uuid::new_v4().to_string();
        st.ops.insert(op_id.clone(), Op { kind: OpKind::Create, group_key: key, started: now });
        drop(st);
        let resource = format!(
            "Microsoft.ContainerInstance/ContainerGroupCreates5Min;{remaining_5},Microsoft.ContainerInstance/ContainerGroupCreates1Hour;{remaining_h}"
        );
        self.async_headers(Answer::ok(201, body), sub, &location, &op_id, api_version)
            .header("x-ms-ratelimit-remaining-resource", resource)
    }

    /// A new group as an accepted PUT creates it (state `Pending`, provisioned over simulated
    /// time); returns its rendered body.
    #[allow(clippy::too_many_arguments)]
    fn insert_new_group(
        &self,
        st: &mut State,
        cfg: &ArmSimConfig,
        sub: &str,
        rg: &str,
        name: &str,
        v: ValidGroup,
        now: DateTime<Utc>,
    ) -> Value {
        let key = group_key(sub, rg, name);
        let slow = cfg.faults.slow_provisioning_ms.get(&v.location).copied().unwrap_or(0);
        let creating_at = now + ms(cfg.provisioning_delay_ms) + ms(slow);
        let running_at = creating_at + ms(cfg.image_pull_delay_ms);
        let id = format!("/subscriptions/{sub}/resourceGroups/{rg}/providers/{RESOURCE_TYPE}/{name}");
        st.generation += 1;
        let generation = st.generation;
        let containers: Vec<Ctr> = v
            .containers
            .iter()
            .map(|(n, image, command, env)| Ctr {
                name: n.clone(),
                image: image.clone(),
                command: command.clone(),
                env: env.clone(),
                restart_count: 0,
                current: CState::creating(),
                previous: None,
                events: Vec::new(),
                restart_due: None,
                crash_due: None,
                generation,
                log: VecDeque::new(),
            })
            .collect();
        for c in &containers {
            st.env_records.push(EnvRecord {
                group_id: id.clone(),
                incarnation: generation,
                group_name: name.to_string(),
                container: c.name.clone(),
                names: c.env.iter().map(|e| (e.name.clone(), e.secure)).collect(),
            });
        }
        let g = Group {
            id,
            sub: sub.to_string(),
            rg: rg.to_string(),
            name: name.to_string(),
            location: v.location.clone(),
            spec: v.spec,
            tags: v.tags,
            cpu: v.cpu,
            restart_policy: v.restart_policy,
            created: now,
            prov: "Pending",
            creating_at,
            running_at,
            state: "Pending",
            events: Vec::new(),
            containers,
            stopped: false,
            deleting_until: None,
        };
        let body = self.render(&g);
        st.groups.insert(key.to_string(), g);
        body
    }

    /// Benchmark setup: create a group from a PUT body (validated like a PUT) without counting it
    /// against quotas, throttling buckets, create windows or the call log; it is provisioned and
    /// its containers started through the runtime like any other group.
    pub(crate) fn seed_group(&self, sub: &str, rg: &str, name: &str, body: &Value) -> Result<(), String> {
        let cfg = self.cfg();
        let v = validate(name, body, &cfg).map_err(|a| {
            a.body
                .as_ref()
                .and_then(|b| b.pointer("/error/message"))
                .and_then(Value::as_str)
                .unwrap_or("invalid")
                .to_string()
        })?;
        let now = self.clock.now();
        let mut st = self.st();
        if st.groups.contains_key(&group_key(sub, rg, name)) {
            return Err(format!("container group {name} already exists"));
        }
        self.insert_new_group(&mut st, &cfg, sub, rg, name, v, now);
        Ok(())
    }

    /// `PATCH` (the `Resource` body): only tags can be updated.
    pub(crate) fn update_tags(&self, sub: &str, rg: &str, name: &str, body: &Value) -> Answer {
        let mut st = self.st();
        let Some(g) = st.groups.get_mut(&group_key(sub, rg, name)) else {
            return not_found(rg, name);
        };
        if let Some(t) = body.get("tags") {
            let Some(t) = t.as_object() else {
                return Answer::error(
                    400,
                    "InvalidRequestContent",
                    "The 'tags' property must be an object of strings.",
                );
            };
            let mut tags = BTreeMap::new();
            for (k, v) in t {
                let Some(v) = v.as_str() else {
                    return Answer::error(
                        400,
                        "InvalidTemplate",
                        format!("The value of tag '{k}' must be a string."),
                    );
                };
                if k.chars().any(|c| matches!(c, '<' | '>' | '%' | '&' | '\\' | '?' | '/')) {
                    return Answer::error(
                        400,
                        "InvalidTagNameCharacters",
                        format!(
                            "The tag names '{k}' have reserved characters '<,>,%,&,\\,?,/' or control characters."
                        ),
                    );
                }
                tags.insert(k.clone(), v.to_string());
            }
            if tags.len() > 50 {
                return Answer::error(
                    400,
                    "InvalidTag",
                    format!("The resource has {} tags; at most 50 are allowed.", tags.len()),
                );
            }
            g.tags = tags;
        }
        Answer::ok(200, self.render(g))
    }

    pub(crate) fn delete(&self, sub: &str, rg: &str, name: &str, api_version: &str) -> Answer {
        let cfg = self.cfg();
        let key = group_key(sub, rg, name);
        let now = self.clock.now();
        let mut st = self.st();
        let Some(g) = st.groups.get_mut(&key) else {
            return Answer::empty(204);
        };
        let kill_id = g.id.clone();
        let answer = match cfg.delete_mode {
            DeleteMode::Sync => {
                let body = self.render(g);
                st.groups.remove(&key);
                Answer::ok(200, body)
            }
            DeleteMode::Async => {
                if g.deleting_until.is_none() {
                    g.deleting_until = Some(now + ms(cfg.delete_delay_ms));
                    g.stopped = true;
                }
                let location = g.location.clone();
                let op_id = uuid::Uuid::new_v4().to_string();
                st.ops.insert(op_id.clone(), Op { kind: OpKind::Delete, group_key: key, started: now });
                self.async_headers(Answer::empty(202), sub, &location, &op_id, api_version)
            }
        };
        drop(st);
        self.kill_in_runtime(&kill_id);
        answer
    }

    pub(crate) fn stop(&self, sub: &str, rg: &str, name: &str) -> Answer {
        let now = self.clock.now();
        let key = group_key(sub, rg, name);
        let mut st = self.st();
        let Some(g) = st.groups.get_mut(&key) else {
            return not_found(rg, name);
        };
        g.stopped = true;
        for c in &mut g.containers {
            if c.current.state != "Terminated" {
                c.previous = Some(c.current.clone());
                c.current = CState {
                    state: "Terminated",
                    start: c.current.start,
                    finish: Some(now),
                    exit: None,
                    detail: Some("Stopped".into()),
                };
            }
            c.restart_due = None;
            c.crash_due = None;
            c.generation = u64::MAX;
        }
        push_event(&mut g.events, "Stopped", format!("Container group '{name}' was stopped"), now);
        g.state = "Stopped";
        let id = g.id.clone();
        drop(st);
        self.kill_in_runtime(&id);
        Answer::empty(204)
    }

    pub(crate) fn operation(&self, op_id: &str) -> Option<Value> {
        let st = self.st();
        let op = st.ops.get(op_id)?;
        let g = st.groups.get(&op.group_key);
        let status = match (&op.kind, g) {
            (OpKind::Create, Some(g)) => match g.prov {
                "Succeeded" => "Succeeded",
                "Failed" => "Failed",
                _ => "InProgress",
            },
            (OpKind::Create, None) => "Canceled",
            (OpKind::Delete, Some(_)) => "InProgress",
            (OpKind::Delete, None) => "Succeeded",
        };
        Some(json!({
            "id": op_id,
            "name": op_id,
            "status": status,
            "startTime": ts(op.started),
        }))
    }

    /// The ARM representation of a group (secure values and registry passwords removed).
    fn render(&self, g: &Group) -> Value {
        let mut body = g.spec.clone();
        let Some(o) = body.as_object_mut() else { return body };
        o.insert("id".into(), json!(g.id));
        o.insert("name".into(), json!(g.name));
        o.insert("type".into(), json!(RESOURCE_TYPE));
        o.insert("location".into(), json!(g.location));
        if g.tags.is_empty() {
            o.remove("tags");
        } else {
            o.insert("tags".into(), json!(g.tags));
        }
        if let Some(p) = o.get_mut("properties").and_then(Value::as_object_mut) {
            let prov = if g.deleting_until.is_some() { "Deleting" } else { g.prov };
            p.insert("provisioningState".into(), json!(prov));
            p.insert("restartPolicy".into(), json!(g.restart_policy));
            p.entry("sku").or_insert(json!("Standard"));
            p.insert("instanceView".into(), json!({"events": events_json(&g.events), "state": g.state}));
            // `x-ms-secret` properties are never echoed back.
            if let Some(la) = p
                .get_mut("diagnostics")
                .and_then(|d| d.get_mut("logAnalytics"))
                .and_then(Value::as_object_mut)
            {
                la.remove("workspaceKey");
            }
            if let Some(vols) = p.get_mut("volumes").and_then(Value::as_array_mut) {
                for v in vols {
                    if let Some(v) = v.as_object_mut() {
                        v.remove("secret");
                        if let Some(af) = v.get_mut("azureFile").and_then(Value::as_object_mut) {
                            af.remove("storageAccountKey");
                        }
                    }
                }
            }
            if let Some(creds) = p.get_mut("imageRegistryCredentials").and_then(Value::as_array_mut) {
                for c in creds {
                    if let Some(c) = c.as_object_mut() {
                        c.remove("password");
                    }
                }
            }
            if let Some(cs) = p.get_mut("containers").and_then(Value::as_array_mut) {
                for (cv, c) in cs.iter_mut().zip(g.containers.iter()) {
                    let Some(cp) = cv.get_mut("properties").and_then(Value::as_object_mut) else { continue };
                    if let Some(envs) = cp.get_mut("environmentVariables").and_then(Value::as_array_mut) {
                        for e in envs {
                            if let Some(e) = e.as_object_mut() {
                                e.remove("secureValue");
                            }
                        }
                    }
                    let mut iv = serde_json::Map::new();
                    iv.insert("restartCount".into(), json!(c.restart_count));
                    iv.insert("currentState".into(), cstate_json(&c.current));
                    if let Some(p) = &c.previous {
                        iv.insert("previousState".into(), cstate_json(p));
                    }
                    iv.insert("events".into(), events_json(&c.events));
                    cp.insert("instanceView".into(), Value::Object(iv));
                }
            }
        }
        body
    }

    /// Advance every group's lifecycle to the current simulated time.
    pub(crate) fn tick(self: &Arc<Self>) {
        let (kills, starts) = self.advance();
        for id in kills {
            self.kill_in_runtime(&id);
        }
        self.run_starts(starts);
    }

    /// The state part of [`Shared::tick`]: the lifecycle moves on under the state lock; the
    /// kills and starts it decides are handed to the runtime after the lock is released.
    #[allow(clippy::type_complexity)]
    fn advance(&self) -> (Vec<String>, Vec<(StartedContainer, String, usize, u64)>) {
        let cfg = self.cfg();
        let now = self.clock.now();
        let mut starts: Vec<(StartedContainer, String, usize, u64)> = Vec::new();
        let mut kills = Vec::new();
        {
            let mut st = self.st();
            let st = &mut *st;
            let mut gone = Vec::new();
            for (key, g) in st.groups.iter_mut() {
                if let Some(until) = g.deleting_until {
                    if now >= until {
                        gone.push(key.clone());
                        kills.push(g.id.clone());
                    }
                    continue;
                }
                if g.stopped {
                    continue;
                }
                if g.prov == "Pending" && now >= g.creating_at {
                    g.prov = "Creating";
                    for c in &mut g.containers {
                        push_event(&mut c.events, "Pulling", format!("pulling image \"{}\"", c.image), now);
                    }
                }
                if g.prov == "Creating" && now >= g.running_at {
                    g.prov = "Succeeded";
                    for i in 0..g.containers.len() {
                        let c = &mut g.containers[i];
                        let pulled = format!("Successfully pulled image \"{}\"", c.image);
                        push_event(&mut c.events, "Pulled", pulled, now);
                        Self::start_container(&cfg, &mut st.rng, g, key, i, now, &mut starts);
                    }
                }
                for i in 0..g.containers.len() {
                    let c = &mut g.containers[i];
                    if c.crash_due.is_some_and(|t| now >= t) {
                        c.crash_due = None;
                        Self::apply_exit(&cfg, &g.restart_policy, c, 1, now);
                    }
                    if c.restart_due.is_some_and(|t| now >= t) {
                        c.restart_due = None;
                        c.restart_count += 1;
                        c.previous = Some(c.current.clone());
                        st.generation += 1;
                        c.generation = st.generation;
                        Self::start_container(&cfg, &mut st.rng, g, key, i, now, &mut starts);
                    }
                }
                g.state = group_state(g);
            }
            for k in gone {
                st.groups.remove(&k);
            }
            // Operation-status records live for a simulated day after their group is gone.
            if st.ops.len() > 1000 {
                let groups = &st.groups;
                st.ops.retain(|_, op| {
                    groups.contains_key(&op.group_key) || now - op.started < chrono::Duration::days(1)
                });
            }
        }
        (kills, starts)
    }

    /// The group's containers are gone: the runtime ends their processes.
    fn kill_in_runtime(&self, group_id: &str) {
        let _gate = aci_runner_controller::sync::lock(&self.runtime_gate);
        self.runtime.kill(group_id);
    }

    /// Does container `idx` of group `key` still run as incarnation `generation`? A start decided
    /// under the state lock is handed to the runtime only while this holds.
    fn still_running(&self, key: &str, idx: usize, generation: u64) -> bool {
        let st = self.st();
        st.groups.get(key).is_some_and(|g| {
            !g.stopped
                && g.deleting_until.is_none()
                && g.containers
                    .get(idx)
                    .is_some_and(|c| c.generation == generation && c.current.state == "Running")
        })
    }

    fn run_starts(self: &Arc<Self>, starts: Vec<(StartedContainer, String, usize, u64)>) {
        for (sc, key, idx, generation) in starts {
            // The state lock is released between the decision and this hand-over; a delete, stop
            // or restart in between makes the start stale. The gate keeps the re-check and the
            // start together against the kill that such a change sends.
            let _gate = aci_runner_controller::sync::lock(&self.runtime_gate);
            if !self.still_running(&key, idx, generation) {
                continue;
            }
            let weak = Arc::downgrade(self);
            let (weak_log, log_key) = (weak.clone(), key.clone());
            let notifier = ExitNotifier::new(move |code| {
                if let Some(s) = weak.upgrade() {
                    s.container_exited(&key, idx, generation, code);
                }
            })
            .with_log(move |line| {
                if let Some(s) = weak_log.upgrade() {
                    s.container_log(&log_key, idx, line);
                }
            });
            self.runtime.start(sc, notifier);
        }
    }

    /// `POST .../start`: a stopped group is provisioned again (202 + `Azure-AsyncOperation`).
    pub(crate) fn start_group(&self, sub: &str, rg: &str, name: &str, api_version: &str) -> Answer {
        let cfg = self.cfg();
        let now = self.clock.now();
        let key = group_key(sub, rg, name);
        let mut st = self.st();
        let st = &mut *st;
        let Some(g) = st.groups.get_mut(&key) else {
            return not_found(rg, name);
        };
        if g.deleting_until.is_some() {
            return Answer::error(409, "Conflict", format!("The container group '{name}' is being deleted."));
        }
        if g.stopped {
            g.stopped = false;
            g.prov = "Pending";
            let slow = cfg.faults.slow_provisioning_ms.get(&g.location).copied().unwrap_or(0);
            g.creating_at = now + ms(cfg.provisioning_delay_ms) + ms(slow);
            g.running_at = g.creating_at + ms(cfg.image_pull_delay_ms);
            for c in &mut g.containers {
                c.previous = Some(c.current.clone());
                c.current = CState::creating();
                st.generation += 1;
                c.generation = st.generation;
            }
            push_event(&mut g.events, "Started", format!("Container group '{name}' was started"), now);
            g.state = group_state(g);
        }
        let location = g.location.clone();
        let op_id = uuid::Uuid::new_v4().to_string();
        st.ops.insert(op_id.clone(), Op { kind: OpKind::Create, group_key: key, started: now });
        self.async_headers(Answer::empty(202), sub, &location, &op_id, api_version)
    }

    /// `POST .../restart`: every container restarts in place (`restartCount + 1`).
    pub(crate) fn restart_group(self: &Arc<Self>, sub: &str, rg: &str, name: &str) -> Answer {
        let cfg = self.cfg();
        let now = self.clock.now();
        let key = group_key(sub, rg, name);
        let mut starts = Vec::new();
        let id = {
            let mut st = self.st();
            let st = &mut *st;
            let Some(g) = st.groups.get_mut(&key) else {
                return not_found(rg, name);
            };
            if g.stopped || g.deleting_until.is_some() || g.prov != "Succeeded" {
                return Answer::error(
                    409,
                    "ContainerGroupTransitioning",
                    format!("The container group '{name}' is not running and cannot be restarted."),
                );
            }
            for i in 0..g.containers.len() {
                let c = &mut g.containers[i];
                c.previous = Some(c.current.clone());
                c.restart_count += 1;
                c.restart_due = None;
                c.crash_due = None;
                st.generation += 1;
                c.generation = st.generation;
                Self::start_container(&cfg, &mut st.rng, g, &key, i, now, &mut starts);
            }
            g.state = group_state(g);
            g.id.clone()
        };
        self.kill_in_runtime(&id);
        self.run_starts(starts);
        Answer::empty(204)
    }

    /// Container `idx` of `g` runs from `now` (a `Started` event): it is handed to the runtime,
    /// unless the fault draw makes it crash before its runner registers.
    fn start_container(
        cfg: &ArmSimConfig,
        rng: &mut StdRng,
        g: &mut Group,
        key: &str,
        idx: usize,
        now: DateTime<Utc>,
        starts: &mut Vec<(StartedContainer, String, usize, u64)>,
    ) {
        let c = &mut g.containers[idx];
        c.current = CState::running(now);
        push_event(&mut c.events, "Started", "Started container".to_string(), now);
        let p = cfg.faults.crash_before_registration;
        if p > 0.0 && rng.r#gen::<f64>() < p {
            c.crash_due = Some(now + chrono::Duration::seconds(1));
            push_log(
                c,
                now,
                "Segmentation fault (core dumped): the container exits with code 1 (simulated crash)",
            );
            return;
        }
        starts.push((
            StartedContainer {
                group_id: g.id.clone(),
                group_name: g.name.clone(),
                container_name: c.name.clone(),
                image: c.image.clone(),
                command: c.command.clone(),
                env: c.env.clone(),
                tags: g.tags.clone(),
            },
            key.to_string(),
            idx,
            c.generation,
        ));
    }

    fn apply_exit(cfg: &ArmSimConfig, policy: &str, c: &mut Ctr, code: i32, now: DateTime<Utc>) {
        c.current = CState {
            state: "Terminated",
            start: c.current.start,
            finish: Some(now),
            exit: Some(code),
            detail: Some(if code == 0 { "Completed".into() } else { "Error".into() }),
        };
        push_event(&mut c.events, "Killing", format!("Container exited with code {code}"), now);
        let restart = match policy {
            "Always" => true,
            "OnFailure" => code != 0,
            _ => false,
        };
        if restart {
            c.restart_due = Some(now + ms(cfg.restart_delay_ms));
        }
    }

    /// The runtime reports that a container's process ended.
    pub(crate) fn container_exited(&self, key: &str, idx: usize, generation: u64, code: i32) {
        let cfg = self.cfg();
        let now = self.clock.now();
        let mut st = self.st();
        let Some(g) = st.groups.get_mut(key) else { return };
        if g.stopped || g.deleting_until.is_some() {
            return;
        }
        let policy = g.restart_policy.clone();
        let Some(c) = g.containers.get_mut(idx) else { return };
        if c.generation != generation || c.current.state != "Running" {
            return;
        }
        Self::apply_exit(&cfg, &policy, c, code, now);
        g.state = group_state(g);
    }

    pub(crate) fn exit_container_by_name(&self, name: &str, code: i32) -> bool {
        let target = {
            let st = self.st();
            st.groups.iter().find(|(_, g)| g.name == name).and_then(|(k, g)| {
                g.containers
                    .iter()
                    .position(|c| c.current.state == "Running")
                    .map(|i| (k.clone(), i, g.containers[i].generation))
            })
        };
        match target {
            Some((k, i, generation)) => {
                self.container_exited(&k, i, generation, code);
                true
            }
            None => false,
        }
    }
}

fn group_state(g: &Group) -> &'static str {
    if g.stopped {
        return "Stopped";
    }
    if g.prov != "Succeeded" {
        return "Pending";
    }
    if g.containers
        .iter()
        .any(|c| c.current.state == "Running" || c.restart_due.is_some() || c.crash_due.is_some())
    {
        return "Running";
    }
    if g.containers.iter().all(|c| c.current.exit == Some(0)) { "Succeeded" } else { "Failed" }
}

pub(crate) fn not_found(rg: &str, name: &str) -> Answer {
    Answer::error(
        404,
        "ResourceNotFound",
        format!(
            "The Resource '{RESOURCE_TYPE}/{name}' under resource group '{rg}' was not found. For more details please go to https://aka.ms/ARMResourceNotFoundFix"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records what reaches the runtime, in order.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    impl ContainerRuntime for Recorder {
        fn start(&self, c: StartedContainer, _exit: ExitNotifier) {
            self.0.lock().unwrap().push(format!("start {}", c.group_name));
        }
        fn kill(&self, group_id: &str) {
            let name = group_id.rsplit('/').next().unwrap_or_default();
            self.0.lock().unwrap().push(format!("kill {name}"));
        }
    }

    fn started_group(deleted_before_hand_over: bool) -> Vec<String> {
        let runtime = Arc::new(Recorder::default());
        let cfg =
            ArmSimConfig { provisioning_delay_ms: 0, image_pull_delay_ms: 0, ..ArmSimConfig::default() };
        let shared = Arc::new(Shared::new(cfg, SimClock::new(1.0), runtime.clone(), "http://sim".into()));
        let body = json!({"location": "westeurope", "properties": {"osType": "Linux", "restartPolicy": "Never",
            "containers": [{"name": "runner", "properties": {"image": "i",
                "resources": {"requests": {"cpu": 1.0, "memoryInGB": 2.0}}}}]}});
        shared.seed_group("sub", "rg", "runner-abc12", &body).unwrap();
        let (kills, starts) = shared.advance();
        assert_eq!((kills.len(), starts.len()), (0, 1), "the container starts in this tick");
        if deleted_before_hand_over {
            shared.delete("sub", "rg", "runner-abc12", "2023-05-01");
        }
        shared.run_starts(starts);
        runtime.0.lock().unwrap().clone()
    }

    /// A container whose start was decided in a tick, but whose group was deleted before the
    /// start reached the runtime, never runs: the simulated runner of a deleted group would
    /// otherwise register after the controller had finished its cleanup (a leaked registration
    /// that no real ACI produces). The tick's two halves are called apart here, which opens the
    /// window that a loaded machine opens between the state lock's release and the hand-over.
    #[test]
    fn a_start_decided_before_a_delete_never_reaches_the_runtime() {
        assert_eq!(started_group(false), vec!["start runner-abc12"]);
        assert_eq!(started_group(true), vec!["kill runner-abc12"]);
    }

    #[test]
    fn aci_name_rules() {
        for ok in ["a", "runner-abc12", "a1-b2-c3", &"a".repeat(63)] {
            assert!(is_aci_name(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "a--b", "A", "a_b", "a.b", &"a".repeat(64)] {
            assert!(!is_aci_name(bad), "{bad}");
        }
    }

    #[test]
    fn validation_strips_read_only_properties() {
        let body = json!({
            "id": "/x", "name": "n", "type": "t", "location": "West Europe",
            "properties": {"provisioningState": "Succeeded", "instanceView": {"state": "Running"}, "osType": "Linux",
                "containers": [{"name": "c", "properties": {"image": "i", "instanceView": {},
                    "resources": {"requests": {"cpu": 0.29, "memoryInGB": 0.3}}}}]}
        });
        let v = validate("grp", &body, &ArmSimConfig::default()).map_err(|a| a.body).unwrap();
        assert_eq!(v.location, "westeurope");
        assert!(v.spec.get("id").is_none() && v.spec.get("name").is_none());
        assert!(v.spec["properties"].get("provisioningState").is_none());
        assert!(v.spec["properties"].get("instanceView").is_none());
        assert!(v.spec["properties"]["containers"][0]["properties"].get("instanceView").is_none());
        assert_eq!(v.restart_policy, "Always", "ACI's default");
        let mut bad = body.clone();
        bad["properties"]["containers"][0]["properties"]["resources"]["requests"]["cpu"] = json!(0.005);
        assert_eq!(
            validate("grp", &bad, &ArmSimConfig::default()).err().and_then(|a| a.code).as_deref(),
            Some("InvalidContainerResourceRequests")
        );
    }
}
