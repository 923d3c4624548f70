//! The simulated GitHub's state: App auth, tokens, rate limits, runners, jobs, runner processes.
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

use chrono::{DateTime, Duration, Utc};
use rand::distributions::Alphanumeric;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Digest;

use super::payloads::{self, Urls};
use super::{AppCredentials, GhOpFaults, GithubFaults, GithubSimConfig, GithubSimError, WebhookTarget, jit};
use crate::sim::clock::SimClock;
use crate::sim::runtime::{ContainerEnv, ExitNotifier, StartedContainer};

const MAX_CALL_RECORDS: usize = 200_000;
const DOCS: &str = "https://docs.github.com/rest";

/// Where runners are registered.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ScopeKey {
    Enterprise(String),
    Org(String),
    /// `owner/name`
    Repo(String),
}

impl ScopeKey {
    fn covers_repo(&self, repo: &str) -> bool {
        match self {
            ScopeKey::Enterprise(_) => true,
            ScopeKey::Org(o) => repo.split_once('/').is_some_and(|(owner, _)| owner.eq_ignore_ascii_case(o)),
            ScopeKey::Repo(r) => r.eq_ignore_ascii_case(repo),
        }
    }
}

/// A runner registration.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RunnerRecord {
    pub id: i64,
    pub name: String,
    pub scope: ScopeKey,
    pub os: String,
    pub group_id: i64,
    pub group_name: String,
    /// Custom labels (default labels come from `os`).
    pub labels: Vec<String>,
    pub ephemeral: bool,
    pub jit: bool,
    pub online: bool,
    pub busy: bool,
    pub version: Option<String>,
    pub created_at: DateTime<Utc>,
    pub offline_since: Option<DateTime<Utc>>,
    /// Container group (ARM id) the runner process runs in.
    pub container: Option<String>,
    pub job_id: Option<i64>,
    /// Has the runner ever connected (JIT configs are single-use).
    pub connected_once: bool,
    pub jobs_done: u64,
    #[serde(skip)]
    pub(crate) secret: String,
}

impl RunnerRecord {
    pub fn read_only_labels(&self) -> Vec<String> {
        let os = if self.os == "windows" { "Windows" } else { "Linux" };
        vec!["self-hosted".into(), os.into(), "X64".into()]
    }
    fn all_labels_lower(&self) -> Vec<String> {
        self.read_only_labels().iter().chain(self.labels.iter()).map(|l| l.to_ascii_lowercase()).collect()
    }
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    InProgress,
    Completed,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::InProgress => "in_progress",
            JobStatus::Completed => "completed",
        }
    }
}

/// A workflow job.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct JobRecord {
    pub id: i64,
    pub run_id: i64,
    pub run_number: i64,
    /// `owner/name`
    pub repo: String,
    pub name: String,
    pub workflow_name: String,
    pub head_sha: String,
    pub labels: Vec<String>,
    pub duration_ms: u64,
    pub status: JobStatus,
    pub conclusion: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub runner_id: Option<i64>,
    pub runner_name: Option<String>,
    pub runner_group_id: Option<i64>,
    pub runner_group_name: Option<String>,
    /// When the simulated runner dies under this job (the `runnerDeathMidJob` fault); a failed
    /// job that completed at or after it was killed by the simulator, not by the controller.
    #[serde(skip)]
    pub die_at: Option<DateTime<Utc>>,
}

/// Control request: enqueue `count` jobs of one workflow run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct EnqueueJobs {
    /// `owner/name`
    pub repo: String,
    /// `runs-on` labels.
    pub labels: Vec<String>,
    /// Simulated duration of each job in seconds.
    pub duration_secs: f64,
    pub count: u32,
    pub workflow_name: String,
    pub job_name: String,
}

impl Default for EnqueueJobs {
    fn default() -> Self {
        Self {
            repo: "octo-org/octo-repo".into(),
            labels: vec!["self-hosted".into()],
            duration_secs: 60.0,
            count: 1,
            workflow_name: "CI".into(),
            job_name: "build".into(),
        }
    }
}

/// One API call as answered.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CallRecord {
    pub op: String,
    pub method: String,
    pub path: String,
    pub status: u16,
    /// `installation:<id>`, `pat:<n>`, `app` or `anonymous`.
    pub principal: String,
    pub at: DateTime<Utc>,
}

/// Env-var names a runner container received (values never recorded).
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EnvRecord {
    pub group_id: String,
    pub group_name: String,
    pub container: String,
    pub names: Vec<(String, bool)>,
}

/// One webhook delivery attempt.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryRecord {
    pub delivery_id: String,
    pub action: String,
    pub job_id: i64,
    pub dropped: bool,
    /// HTTP status the receiver answered, if it answered.
    pub status: Option<u16>,
    pub error: Option<String>,
    pub at: DateTime<Utc>,
}

/// Rate-limit consumption of one principal.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitRecord {
    pub principal: String,
    pub limit: u64,
    pub used: u64,
    pub remaining: u64,
    pub reset: i64,
    /// Requests refused by the primary or secondary limit.
    pub refused: u64,
    /// 304 answers (free).
    pub not_modified: u64,
}

/// A complete answer before HTTP encoding.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    pub status: u16,
    pub body: Option<Value>,
    pub headers: Vec<(String, String)>,
}

impl Answer {
    pub fn ok(status: u16, body: Value) -> Self {
        Self { status, body: Some(body), headers: Vec::new() }
    }
    pub fn empty(status: u16) -> Self {
        Self { status, body: None, headers: Vec::new() }
    }
    pub fn error(status: u16, message: impl Into<String>) -> Self {
        Self::ok(
            status,
            json!({"message": message.into(), "documentation_url": DOCS, "status": status.to_string()}),
        )
    }
    pub fn header(mut self, k: &str, v: impl Into<String>) -> Self {
        self.headers.push((k.to_string(), v.into()));
        self
    }
}

/// Who is calling.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Principal {
    App,
    Installation(i64),
    Pat(usize),
}

impl Principal {
    pub fn key(&self) -> String {
        match self {
            Principal::App => "app".into(),
            Principal::Installation(i) => format!("installation:{i}"),
            Principal::Pat(n) => format!("pat:{n}"),
        }
    }
}

/// What an endpoint needs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Need {
    Runners,
    ActionsRead,
}

pub(crate) struct AppKeys {
    pub private_pem: String,
    decoding: jsonwebtoken::DecodingKey,
}

impl AppKeys {
    pub async fn load_or_generate(pem: Option<&str>) -> Result<Self, GithubSimError> {
        use rsa::pkcs1::{DecodeRsaPrivateKey, EncodeRsaPrivateKey};
        use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey, LineEnding};
        let key = match pem {
            Some(p) => rsa::RsaPrivateKey::from_pkcs1_pem(p)
                .or_else(|_| rsa::RsaPrivateKey::from_pkcs8_pem(p))
                .map_err(|e| GithubSimError::Key(e.to_string()))?,
            None => tokio::task::spawn_blocking(|| {
                let mut rng = rand::thread_rng();
                rsa::RsaPrivateKey::new(&mut rng, 2048)
            })
            .await
            .map_err(|e| GithubSimError::Key(e.to_string()))?
            .map_err(|e| GithubSimError::Key(e.to_string()))?,
        };
        let private_pem =
            key.to_pkcs1_pem(LineEnding::LF).map_err(|e| GithubSimError::Key(e.to_string()))?.to_string();
        let public_pem = key
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| GithubSimError::Key(e.to_string()))?;
        let decoding = jsonwebtoken::DecodingKey::from_rsa_pem(public_pem.as_bytes())
            .map_err(|e| GithubSimError::Key(e.to_string()))?;
        Ok(Self { private_pem, decoding })
    }
}

struct TokenInfo {
    installation: i64,
    expires_at: DateTime<Utc>,
}

struct RegToken {
    scope: ScopeKey,
    remove: bool,
    expires_at: DateTime<Utc>,
}

#[derive(Default)]
struct Limit {
    window_start: Option<DateTime<Utc>>,
    used: u64,
    minute_start: Option<DateTime<Utc>>,
    minute_count: u64,
    /// Content-creating requests (POST/DELETE) in the current minute.
    writes_in_minute: u64,
    /// Content-creating requests in the hour window that began with `writes_hour_start`.
    writes_hour_start: Option<DateTime<Utc>>,
    writes_in_hour: u64,
    refused: u64,
    not_modified: u64,
}

enum Phase {
    Booting { ready_at: DateTime<Utc>, crash: bool },
    Running { runner_id: i64 },
}

struct Proc {
    container: StartedContainer,
    exit: ExitNotifier,
    phase: Phase,
}

/// How many handed-out secrets [`Shared::issued_secrets`] remembers.
const ISSUED_SECRETS: usize = 1000;

impl State {
    fn issue_secret(&mut self, secret: &str) {
        if self.issued_secrets.len() >= ISSUED_SECRETS {
            self.issued_secrets.pop_front();
        }
        self.issued_secrets.push_back(secret.to_string());
    }
}

/// A pending webhook send.
pub(crate) struct Delivery {
    pub id: String,
    pub action: String,
    pub job_id: i64,
    pub body: String,
}

struct State {
    /// The last [`ISSUED_SECRETS`] JIT configs and registration tokens handed out, for tests
    /// that check none of them leaks.
    issued_secrets: VecDeque<String>,
    cfg: GithubSimConfig,
    rng: StdRng,
    webhook_secret: String,
    tokens: HashMap<String, TokenInfo>,
    reg_tokens: HashMap<String, RegToken>,
    runners: BTreeMap<i64, RunnerRecord>,
    next_runner_id: i64,
    jobs: BTreeMap<i64, JobRecord>,
    next_job_id: i64,
    /// Ids of jobs not completed yet (the ticker never scans finished jobs).
    open_jobs: std::collections::BTreeSet<i64>,
    next_run_id: i64,
    run_numbers: HashMap<String, i64>,
    procs: HashMap<String, Proc>,
    env_records: Vec<EnvRecord>,
    calls: Vec<CallRecord>,
    call_counts: BTreeMap<String, BTreeMap<u16, u64>>,
    not_modified: BTreeMap<String, u64>,
    limits: BTreeMap<String, Limit>,
    deliveries: Vec<DeliveryRecord>,
    minted: BTreeMap<i64, u64>,
    extra_groups: BTreeMap<ScopeKey, Vec<(i64, String)>>,
}

/// The simulator's state, shared by its HTTP handlers, its ticker and every handle. `pub` as
/// the parameter of [`GithubSimHandle`](super::GithubSimHandle); its module is private, so nothing outside the crate
/// names it, and its own items are crate-private.
pub struct Shared {
    pub(crate) clock: SimClock,
    pub(crate) url: String,
    pub(crate) urls: Urls,
    pub(crate) keys: AppKeys,
    st: Mutex<State>,
    webhook_tx: tokio::sync::mpsc::UnboundedSender<Delivery>,
}

impl State {
    /// Ids of the open jobs in `status`, lowest (oldest) first.
    fn open_jobs_in(&self, status: JobStatus) -> Vec<i64> {
        self.open_jobs
            .iter()
            .copied()
            .filter(|id| self.jobs.get(id).is_some_and(|j| j.status == status))
            .collect()
    }
}

fn random_token(rng: &mut StdRng, prefix: &str, len: usize) -> String {
    let s: String = rng.sample_iter(&Alphanumeric).take(len).map(char::from).collect();
    format!("{prefix}{s}")
}

impl Shared {
    pub(crate) fn new(
        cfg: GithubSimConfig,
        clock: SimClock,
        keys: AppKeys,
        url: String,
        webhook_tx: tokio::sync::mpsc::UnboundedSender<Delivery>,
    ) -> Self {
        let mut rng = StdRng::seed_from_u64(cfg.faults.seed);
        let webhook_secret = match &cfg.webhook {
            Some(w) => w.secret.clone(),
            None => random_token(&mut rng, "whsec_", 32),
        };
        let urls = Urls { api: url.clone(), html: url.clone() };
        Self {
            clock,
            url,
            urls,
            keys,
            st: Mutex::new(State {
                cfg,
                rng,
                webhook_secret,
                tokens: HashMap::new(),
                reg_tokens: HashMap::new(),
                issued_secrets: VecDeque::new(),
                runners: BTreeMap::new(),
                next_runner_id: 1,
                jobs: BTreeMap::new(),
                next_job_id: 1_000_001,
                open_jobs: std::collections::BTreeSet::new(),
                next_run_id: 50_001,
                run_numbers: HashMap::new(),
                procs: HashMap::new(),
                env_records: Vec::new(),
                calls: Vec::new(),
                call_counts: BTreeMap::new(),
                not_modified: BTreeMap::new(),
                limits: BTreeMap::new(),
                deliveries: Vec::new(),
                minted: BTreeMap::new(),
                extra_groups: BTreeMap::new(),
            }),
            webhook_tx,
        }
    }

    fn st(&self) -> MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn cfg(&self) -> GithubSimConfig {
        self.st().cfg.clone()
    }

    pub(crate) fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    pub(crate) fn app_credentials(&self) -> AppCredentials {
        let st = self.st();
        AppCredentials {
            api_url: self.url.clone(),
            app_id: st.cfg.app_id,
            client_id: st.cfg.client_id.clone(),
            installations: st.cfg.installations.clone(),
            private_key_pem: self.keys.private_pem.clone(),
            webhook_secret: st.webhook_secret.clone(),
            pats: st.cfg.pats.clone(),
            enterprise: st.cfg.enterprise.clone(),
        }
    }

    pub(crate) fn webhook_target(&self) -> Option<WebhookTarget> {
        let st = self.st();
        st.cfg.webhook.clone().map(|mut w| {
            w.secret = st.webhook_secret.clone();
            w
        })
    }

    pub(crate) fn set_webhook(&self, target: Option<WebhookTarget>) {
        let mut st = self.st();
        if let Some(t) = &target {
            st.webhook_secret = t.secret.clone();
        }
        st.cfg.webhook = target;
    }

    pub(crate) fn set_faults(&self, faults: GithubFaults) {
        let mut st = self.st();
        st.rng = StdRng::seed_from_u64(faults.seed);
        st.cfg.faults = faults;
    }

    pub(crate) fn set_rate_limit(&self, per_hour: u64, secondary_per_minute: u64) {
        let mut st = self.st();
        st.cfg.rate_limit = per_hour;
        st.cfg.secondary_limit_per_minute = secondary_per_minute;
    }

    // ------------------------------------------------------------------ recording

    pub(crate) fn record(&self, op: &str, method: &str, path: &str, status: u16, principal: &str) {
        let at = self.now();
        let mut st = self.st();
        *st.call_counts.entry(op.to_string()).or_default().entry(status).or_default() += 1;
        if status == 304 {
            *st.not_modified.entry(op.to_string()).or_default() += 1;
        }
        if st.calls.len() < MAX_CALL_RECORDS {
            st.calls.push(CallRecord {
                op: op.into(),
                method: method.into(),
                path: path.into(),
                status,
                principal: principal.into(),
                at,
            });
        }
    }

    pub(crate) fn calls(&self) -> Vec<CallRecord> {
        self.st().calls.clone()
    }
    pub(crate) fn call_counts(&self) -> BTreeMap<String, BTreeMap<u16, u64>> {
        self.st().call_counts.clone()
    }
    pub(crate) fn not_modified_counts(&self) -> BTreeMap<String, u64> {
        self.st().not_modified.clone()
    }
    pub(crate) fn tokens_minted(&self) -> BTreeMap<i64, u64> {
        self.st().minted.clone()
    }
    pub(crate) fn env_records(&self) -> Vec<EnvRecord> {
        self.st().env_records.clone()
    }
    pub(crate) fn deliveries(&self) -> Vec<DeliveryRecord> {
        self.st().deliveries.clone()
    }
    pub(crate) fn runners(&self) -> Vec<RunnerRecord> {
        self.st().runners.values().cloned().collect()
    }
    pub(crate) fn jobs(&self) -> Vec<JobRecord> {
        self.st().jobs.values().cloned().collect()
    }
    pub(crate) fn rate_limits(&self) -> Vec<RateLimitRecord> {
        let now = self.now();
        let st = self.st();
        st.limits
            .iter()
            .map(|(k, l)| {
                let (used, reset) = window(l, now);
                RateLimitRecord {
                    principal: k.clone(),
                    limit: st.cfg.rate_limit,
                    used,
                    remaining: st.cfg.rate_limit.saturating_sub(used),
                    reset,
                    refused: l.refused,
                    not_modified: l.not_modified,
                }
            })
            .collect()
    }

    pub(crate) fn record_delivery(&self, d: DeliveryRecord) {
        let mut st = self.st();
        if st.deliveries.len() < MAX_CALL_RECORDS {
            st.deliveries.push(d);
        }
    }

    // ------------------------------------------------------------------ auth

    /// Resolve the `Authorization` header.
    pub(crate) fn authenticate(&self, auth: Option<&str>) -> Result<Principal, Answer> {
        let Some(auth) = auth else {
            return Err(Answer::error(401, "Requires authentication"));
        };
        let tok = auth
            .strip_prefix("Bearer ")
            .or_else(|| auth.strip_prefix("bearer "))
            .or_else(|| auth.strip_prefix("token "))
            .unwrap_or(auth)
            .trim();
        if tok.starts_with("eyJ") && tok.matches('.').count() == 2 {
            return self.verify_jwt(tok).map(|_| Principal::App);
        }
        let now = self.now();
        let st = self.st();
        if let Some(t) = st.tokens.get(tok) {
            if t.expires_at <= now {
                return Err(Answer::error(401, "Bad credentials"));
            }
            return Ok(Principal::Installation(t.installation));
        }
        if let Some(n) = st.cfg.pats.iter().position(|p| p == tok) {
            return Ok(Principal::Pat(n));
        }
        Err(Answer::error(401, "Bad credentials"))
    }

    fn verify_jwt(&self, tok: &str) -> Result<(), Answer> {
        let (app_id, client_id, leeway, skew) = {
            let st = self.st();
            (st.cfg.app_id, st.cfg.client_id.clone(), st.cfg.jwt_leeway_secs, st.cfg.faults.clock_skew_secs)
        };
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        v.validate_exp = false;
        v.validate_nbf = false;
        v.required_spec_claims.clear();
        let data = jsonwebtoken::decode::<Value>(tok, &self.keys.decoding, &v)
            .map_err(|_| Answer::error(401, "A JSON web token could not be decoded"))?;
        let c = data.claims;
        // JWTs are checked against the server's wall clock (plus an injected skew), like GitHub.
        let now = Utc::now().timestamp() + skew;
        let iss_ok = match c.get("iss") {
            Some(Value::Number(n)) => n.as_i64() == Some(app_id),
            Some(Value::String(s)) => s == &client_id || s.parse::<i64>().ok() == Some(app_id),
            _ => false,
        };
        if !iss_ok {
            return Err(Answer::error(401, "'Issuer' claim ('iss') must be the App ID or client ID"));
        }
        let (Some(iat), Some(exp)) =
            (c.get("iat").and_then(Value::as_i64), c.get("exp").and_then(Value::as_i64))
        else {
            return Err(Answer::error(401, "'Issued at' and 'Expiration time' claims must be integers"));
        };
        if iat > now + leeway {
            return Err(Answer::error(
                401,
                "'Issued at' claim ('iat') must be an Integer representing the time that the assertion was issued",
            ));
        }
        if exp <= now - leeway {
            return Err(Answer::error(
                401,
                "'Expiration time' claim ('exp') must be a numeric value representing the future time at which the assertion expires",
            ));
        }
        if exp - iat > 600 || exp > now + 600 + leeway {
            return Err(Answer::error(401, "'Expiration time' claim ('exp') is too far in the future"));
        }
        Ok(())
    }

    /// Mint an installation access token (App JWT already verified).
    pub(crate) fn mint_installation_token(&self, installation_id: i64) -> Answer {
        let now = self.now();
        let mut st = self.st();
        let Some(inst) = st.cfg.installations.iter().find(|i| i.id == installation_id).cloned() else {
            return Answer::error(404, "Not Found");
        };
        let token = random_token(&mut st.rng, "ghs_", 36);
        let expires_at = now + Duration::seconds(st.cfg.installation_token_lifetime_secs as i64);
        st.tokens.insert(token.clone(), TokenInfo { installation: installation_id, expires_at });
        *st.minted.entry(installation_id).or_default() += 1;
        Answer::ok(
            201,
            json!({
                "token": token,
                "expires_at": payloads::ts(expires_at),
                "permissions": inst.permissions,
                "repository_selection": if inst.repositories.is_some() { "selected" } else { "all" },
            }),
        )
    }

    /// Check that `p` may act on `scope`.
    pub(crate) fn authorize(&self, p: &Principal, scope: &ScopeKey, need: Need) -> Result<(), Answer> {
        let st = self.st();
        let repo_known = |r: &str| st.cfg.repositories.iter().any(|x| x.eq_ignore_ascii_case(r));
        let org_known = |o: &str| {
            st.cfg
                .repositories
                .iter()
                .any(|x| x.split_once('/').is_some_and(|(ow, _)| ow.eq_ignore_ascii_case(o)))
                || st.cfg.installations.iter().any(|i| i.account.eq_ignore_ascii_case(o))
        };
        match scope {
            ScopeKey::Repo(r) if !repo_known(r) => return Err(Answer::error(404, "Not Found")),
            ScopeKey::Org(o) if !org_known(o) => return Err(Answer::error(404, "Not Found")),
            ScopeKey::Enterprise(e) if !e.eq_ignore_ascii_case(&st.cfg.enterprise) => {
                return Err(Answer::error(404, "Not Found"));
            }
            _ => {}
        }
        let inst_id = match p {
            Principal::Pat(_) => return Ok(()),
            Principal::App => {
                return Err(Answer::error(401, "A JSON web token cannot be used to access this endpoint"));
            }
            Principal::Installation(i) => *i,
        };
        let Some(inst) = st.cfg.installations.iter().find(|i| i.id == inst_id) else {
            return Err(Answer::error(401, "Bad credentials"));
        };
        let denied = |perm: &str, level: &str| {
            Answer::error(403, "Resource not accessible by integration")
                .header("x-accepted-github-permissions", format!("{perm}={level}"))
        };
        let has = |perm: &str, write: bool| {
            inst.permissions
                .get(perm)
                .is_some_and(|l| if write { l == "write" || l == "admin" } else { true })
        };
        match scope {
            ScopeKey::Enterprise(_) => Err(Answer::error(403, "Resource not accessible by integration")),
            ScopeKey::Org(o) => {
                if !inst.account.eq_ignore_ascii_case(o) || inst.account_type != "Organization" {
                    return Err(Answer::error(403, "Resource not accessible by integration"));
                }
                if !has("organization_self_hosted_runners", true) {
                    return Err(denied("organization_self_hosted_runners", "write"));
                }
                Ok(())
            }
            ScopeKey::Repo(r) => {
                let owner = r.split_once('/').map(|(o, _)| o).unwrap_or("");
                let selected = match &inst.repositories {
                    None => true,
                    Some(list) => list.iter().any(|x| x.eq_ignore_ascii_case(r)),
                };
                if !inst.account.eq_ignore_ascii_case(owner) || !selected {
                    return Err(Answer::error(404, "Not Found"));
                }
                match need {
                    Need::Runners if !has("administration", true) => Err(denied("administration", "write")),
                    Need::ActionsRead if !has("actions", false) => Err(denied("actions", "read")),
                    _ => Ok(()),
                }
            }
        }
    }

    // ------------------------------------------------------------------ faults & limits

    /// A hostile answer for `op`, drawn with its `hostile` probability.
    pub(crate) fn draw_hostile(&self, op: &str) -> Option<super::HostileAnswer> {
        let mut st = self.st();
        let p = st.cfg.faults.ops.get(op).map(|f| f.hostile).unwrap_or(0.0);
        if p <= 0.0 || st.rng.r#gen::<f64>() >= p {
            return None;
        }
        use super::HostileAnswer::*;
        Some([InvalidJson, Oversized, AbsurdHeaders][st.rng.gen_range(0..3)])
    }

    pub(crate) fn draw_fault(&self, op: &str) -> Option<Answer> {
        let mut st = self.st();
        let f: GhOpFaults = st.cfg.faults.ops.get(op).copied()?;
        let r: f64 = st.rng.r#gen();
        let mut acc = f.server_error;
        if r < acc {
            let status = [500u16, 502, 503][st.rng.gen_range(0..3)];
            return Some(Answer::error(status, "Server Error"));
        }
        acc += f.rate_limited;
        if r < acc {
            return Some(
                Answer::error(403, "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.")
                    .header("retry-after", "60"),
            );
        }
        acc += f.conflict;
        if r < acc {
            return Some(Answer::error(409, "Conflict"));
        }
        acc += f.unprocessable;
        if r < acc {
            return Some(Answer::error(422, "Validation Failed"));
        }
        None
    }

    /// Count the request against the principal's limits. `Err` = refused (403/429 answer).
    /// Returns the rate-limit headers to attach.
    pub(crate) fn consume(&self, p: &Principal, write: bool) -> Result<Vec<(String, String)>, Answer> {
        let now = self.now();
        let mut st = self.st();
        let limit = st.cfg.rate_limit;
        let secondary = st.cfg.secondary_limit_per_minute;
        let secondary_writes = st.cfg.secondary_writes_per_minute;
        let secondary_writes_hour = st.cfg.secondary_writes_per_hour;
        let status = st.cfg.rate_limit_status;
        let key = p.key();
        let l = st.limits.entry(key).or_default();
        roll(l, now);
        let reset = l.window_start.map(|w| (w + Duration::hours(1)).timestamp()).unwrap_or(0);
        if l.used >= limit {
            l.refused += 1;
            let wait = (reset - now.timestamp()).max(1);
            let mut a = Answer::error(
                status,
                format!("API rate limit exceeded for {}.", p.key().replace(':', " ID ")),
            );
            a.headers = rate_headers(limit, 0, l.used, reset);
            a.headers.push(("retry-after".into(), wait.to_string()));
            return Err(a);
        }
        if write && l.writes_hour_start.is_none_or(|w| w + Duration::hours(1) <= now) {
            l.writes_hour_start = Some(now);
            l.writes_in_hour = 0;
        }
        let hourly_full = write && l.writes_in_hour >= secondary_writes_hour;
        if l.minute_count >= secondary || (write && l.writes_in_minute >= secondary_writes) || hourly_full {
            l.refused += 1;
            let retry = if hourly_full {
                l.writes_hour_start
                    .map(|h| (h + Duration::hours(1) - now).num_seconds().max(1))
                    .unwrap_or(3600)
            } else {
                l.minute_start.map(|m| (m + Duration::minutes(1) - now).num_seconds().max(1)).unwrap_or(60)
            };
            return Err(Answer::error(
                403,
                "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.",
            )
            .header("retry-after", retry.to_string()));
        }
        l.used += 1;
        l.minute_count += 1;
        if write {
            l.writes_in_minute += 1;
            l.writes_in_hour += 1;
        }
        Ok(rate_headers(limit, limit - l.used, l.used, reset))
    }

    /// A 304 answer: give the request back (GitHub does not count it) and report current headers.
    pub(crate) fn refund(&self, p: &Principal) -> Vec<(String, String)> {
        let mut st = self.st();
        let limit = st.cfg.rate_limit;
        let l = st.limits.entry(p.key()).or_default();
        l.used = l.used.saturating_sub(1);
        l.minute_count = l.minute_count.saturating_sub(1);
        l.not_modified += 1;
        let reset = l.window_start.map(|w| (w + Duration::hours(1)).timestamp()).unwrap_or(0);
        rate_headers(limit, limit.saturating_sub(l.used), l.used, reset)
    }

    pub(crate) fn rate_limit_body(&self, p: &Principal) -> Value {
        let now = self.now();
        let st = self.st();
        let limit = st.cfg.rate_limit;
        let (used, reset) =
            st.limits.get(&p.key()).map(|l| window(l, now)).unwrap_or((0, now.timestamp() + 3600));
        let core =
            json!({"limit": limit, "used": used, "remaining": limit.saturating_sub(used), "reset": reset});
        let search = json!({"limit": 30, "used": 0, "remaining": 30, "reset": now.timestamp() + 60});
        json!({"resources": {"core": core, "search": search}, "rate": core})
    }

    // ------------------------------------------------------------------ runners API

    fn groups_of(&self, st: &State, scope: &ScopeKey) -> Vec<(i64, String)> {
        let mut v = vec![(1, "Default".to_string())];
        if !matches!(scope, ScopeKey::Repo(_)) {
            for (i, g) in st.cfg.runner_groups.iter().enumerate() {
                v.push((i as i64 + 2, g.clone()));
            }
            if let Some(extra) = st.extra_groups.get(scope) {
                v.extend(extra.iter().cloned());
            }
        }
        v
    }

    pub(crate) fn runner_groups(&self, scope: &ScopeKey) -> Vec<Value> {
        let st = self.st();
        let base = self.scope_url(scope);
        self.groups_of(&st, scope)
            .into_iter()
            .map(|(id, name)| {
                json!({
                    "id": id, "name": name, "visibility": "all", "default": id == 1,
                    "runners_url": format!("{base}/actions/runner-groups/{id}/runners"),
                    "inherited": false, "allows_public_repositories": false,
                    "restricted_to_workflows": false, "selected_workflows": [],
                    "workflow_restrictions_read_only": false,
                })
            })
            .collect()
    }

    pub(crate) fn create_runner_group(&self, scope: &ScopeKey, name: &str) -> Answer {
        let mut st = self.st();
        if self.groups_of(&st, scope).iter().any(|(_, n)| n.eq_ignore_ascii_case(name)) {
            return Answer::error(409, "A runner group with this name already exists");
        }
        let id = 100 + st.extra_groups.values().map(Vec::len).sum::<usize>() as i64;
        st.extra_groups.entry(scope.clone()).or_default().push((id, name.to_string()));
        drop(st);
        let body = self.runner_groups(scope).into_iter().find(|g| g["id"] == json!(id)).unwrap_or(json!({}));
        Answer::ok(201, body)
    }

    pub(crate) fn scope_url(&self, scope: &ScopeKey) -> String {
        match scope {
            ScopeKey::Enterprise(e) => format!("{}/enterprises/{e}", self.url),
            ScopeKey::Org(o) => format!("{}/orgs/{o}", self.url),
            ScopeKey::Repo(r) => format!("{}/repos/{r}", self.url),
        }
    }

    /// Runners of a scope, sorted by id, optionally filtered by exact name.
    pub(crate) fn list_runners(&self, scope: &ScopeKey, name: Option<&str>) -> Vec<Value> {
        let st = self.st();
        st.runners
            .values()
            .filter(|r| &r.scope == scope && name.is_none_or(|n| r.name == n))
            .map(payloads::runner)
            .collect()
    }

    pub(crate) fn get_runner(&self, scope: &ScopeKey, id: i64) -> Answer {
        let st = self.st();
        match st.runners.get(&id).filter(|r| &r.scope == scope) {
            Some(r) => Answer::ok(200, payloads::runner(r)),
            None => Answer::error(404, "Not Found"),
        }
    }

    pub(crate) fn delete_runner(&self, scope: &ScopeKey, id: i64) -> Answer {
        let now = self.now();
        let mut st = self.st();
        let Some(r) = st.runners.get(&id).filter(|r| &r.scope == scope) else {
            return Answer::error(404, "Not Found");
        };
        if r.busy {
            return Answer::ok(
                422,
                json!({"message": format!("Bad request - Runner \"{}\" is still running a job\"", r.name), "documentation_url": DOCS}),
            );
        }
        let container = r.container.clone();
        st.runners.remove(&id);
        // The runner process loses its registration: it stops and its container exits.
        let mut exits = Vec::new();
        if let Some(c) = container
            && let Some(p) = st.procs.remove(&c)
        {
            exits.push((p.exit, 0));
        }
        let _ = now;
        drop(st);
        for (e, code) in exits {
            e.exited(code);
        }
        Answer::empty(204)
    }

    fn validate_labels(labels: &[String]) -> Result<(), Answer> {
        let bad = |m: &str| {
            Err(Answer::ok(
                422,
                json!({"message": format!("Validation Failed: {m}"), "documentation_url": DOCS}),
            ))
        };
        if labels.is_empty() || labels.len() > 100 {
            return bad("labels must contain between 1 and 100 items");
        }
        for l in labels {
            if l.trim().is_empty() || l.len() > 256 || l.contains(',') || l.chars().any(char::is_whitespace) {
                return bad(&format!("invalid label {l:?}"));
            }
        }
        Ok(())
    }

    pub(crate) fn generate_jitconfig(&self, scope: &ScopeKey, body: &Value) -> Answer {
        let bad = |m: &str| Answer::ok(422, json!({"message": m, "documentation_url": DOCS}));
        let Some(name) = body.get("name").and_then(Value::as_str) else {
            return bad("Invalid request: name is required");
        };
        let Some(group_id) = body.get("runner_group_id").and_then(Value::as_i64) else {
            return bad("Invalid request: runner_group_id is required");
        };
        let Some(labels) = body.get("labels").and_then(Value::as_array) else {
            return bad("Invalid request: labels is required");
        };
        let labels: Option<Vec<String>> = labels.iter().map(|l| l.as_str().map(str::to_string)).collect();
        let Some(labels) = labels else { return bad("Invalid request: labels must be strings") };
        if name.is_empty() || name.len() > 64 {
            return bad("Invalid request: name must be 1 to 64 characters");
        }
        if let Err(a) = Self::validate_labels(&labels) {
            return a;
        }
        let work_folder = body.get("work_folder").and_then(Value::as_str).unwrap_or("_work").to_string();
        let now = self.now();
        let mut st = self.st();
        let Some((gid, gname)) = self.groups_of(&st, scope).into_iter().find(|(id, _)| *id == group_id)
        else {
            return Answer::error(404, "Not Found");
        };
        if st.runners.values().any(|r| &r.scope == scope && r.name == name) {
            return Answer::error(
                409,
                format!("Already exists - A runner with the name {name} already exists."),
            );
        }
        let id = st.next_runner_id;
        st.next_runner_id += 1;
        let secret = random_token(&mut st.rng, "", 40);
        let rec = RunnerRecord {
            id,
            name: name.to_string(),
            scope: scope.clone(),
            os: "linux".into(),
            group_id: gid,
            group_name: gname,
            labels: labels.clone(),
            ephemeral: true,
            jit: true,
            online: false,
            busy: false,
            version: None,
            created_at: now,
            offline_since: Some(now),
            container: None,
            job_id: None,
            connected_once: false,
            jobs_done: 0,
            secret: secret.clone(),
        };
        let runner_json = payloads::runner(&rec);
        st.runners.insert(id, rec);
        let html = match scope {
            ScopeKey::Enterprise(e) => format!("{}/enterprises/{e}", self.urls.html),
            ScopeKey::Org(o) => format!("{}/{o}", self.urls.html),
            ScopeKey::Repo(r) => format!("{}/{r}", self.urls.html),
        };
        let encoded = jit::encode(&jit::JitPayload {
            runner_id: id,
            runner_name: name.to_string(),
            pool_id: gid,
            server_url: format!("{}/_services/pipelines", self.url),
            github_url: html,
            work_folder,
            client_id: uuid::Uuid::new_v4().to_string(),
            secret,
        });
        st.issue_secret(&encoded);
        Answer::ok(201, json!({"runner": runner_json, "encoded_jit_config": encoded}))
    }

    pub(crate) fn runner_token(&self, scope: &ScopeKey, remove: bool) -> Answer {
        let now = self.now();
        let mut st = self.st();
        let token = random_token(&mut st.rng, "A", 28).to_ascii_uppercase();
        let expires_at = now + Duration::seconds(st.cfg.registration_token_lifetime_secs as i64);
        st.reg_tokens.insert(token.clone(), RegToken { scope: scope.clone(), remove, expires_at });
        st.issue_secret(&token);
        Answer::ok(201, json!({"token": token, "expires_at": payloads::ts(expires_at)}))
    }

    // ------------------------------------------------------------------ runs & jobs

    fn owner_kind(st: &State, owner: &str) -> &'static str {
        if st
            .cfg
            .installations
            .iter()
            .any(|i| i.account.eq_ignore_ascii_case(owner) && i.account_type == "User")
        {
            "User"
        } else {
            "Organization"
        }
    }

    fn installation_for(st: &State, repo: &str) -> Option<i64> {
        let owner = repo.split_once('/')?.0;
        st.cfg.installations.iter().find(|i| i.account.eq_ignore_ascii_case(owner)).map(|i| i.id)
    }

    pub(crate) fn list_runs(&self, repo: &str, status: Option<&str>) -> Vec<Value> {
        let st = self.st();
        let owner = repo.split_once('/').map(|(o, _)| o).unwrap_or("");
        let kind = Self::owner_kind(&st, owner);
        let mut runs: BTreeMap<i64, Vec<&JobRecord>> = BTreeMap::new();
        for j in st.jobs.values().filter(|j| j.repo.eq_ignore_ascii_case(repo)) {
            runs.entry(j.run_id).or_default().push(j);
        }
        runs.values()
            .rev()
            .filter_map(|jobs| payloads::workflow_run(&self.urls, kind, jobs))
            .filter(|r| {
                status.is_none_or(|s| r["status"].as_str() == Some(s) || r["conclusion"].as_str() == Some(s))
            })
            .collect()
    }

    pub(crate) fn list_run_jobs(&self, repo: &str, run_id: i64) -> Option<Vec<Value>> {
        let st = self.st();
        let jobs: Vec<Value> = st
            .jobs
            .values()
            .filter(|j| j.run_id == run_id && j.repo.eq_ignore_ascii_case(repo))
            .map(|j| payloads::job(&self.urls, j))
            .collect();
        if jobs.is_empty() { None } else { Some(jobs) }
    }

    pub(crate) fn enqueue(&self, req: EnqueueJobs) -> Result<Vec<JobRecord>, String> {
        if req.repo.split_once('/').is_none_or(|(o, r)| o.is_empty() || r.is_empty()) {
            return Err(format!("repo must be owner/name, got {:?}", req.repo));
        }
        if req.labels.is_empty() {
            return Err("labels must not be empty".into());
        }
        if !(req.duration_secs.is_finite() && req.duration_secs >= 0.0) {
            return Err("durationSecs must be a non-negative number".into());
        }
        let now = self.now();
        let mut st = self.st();
        if !st.cfg.repositories.iter().any(|r| r.eq_ignore_ascii_case(&req.repo)) {
            return Err(format!("unknown repository {}", req.repo));
        }
        let run_id = st.next_run_id;
        st.next_run_id += 1;
        let run_number = {
            let n = st.run_numbers.entry(req.repo.to_ascii_lowercase()).or_insert(0);
            *n += 1;
            *n
        };
        let head_sha = hex::encode(sha2::Sha256::digest(format!("{}{run_id}", req.repo)))[..40].to_string();
        let mut out = Vec::new();
        for i in 0..req.count.max(1) {
            let id = st.next_job_id;
            st.next_job_id += 1;
            let name =
                if req.count > 1 { format!("{} ({})", req.job_name, i + 1) } else { req.job_name.clone() };
            let j = JobRecord {
                id,
                run_id,
                run_number,
                repo: req.repo.clone(),
                name,
                workflow_name: req.workflow_name.clone(),
                head_sha: head_sha.clone(),
                labels: req.labels.clone(),
                duration_ms: (req.duration_secs * 1000.0) as u64,
                status: JobStatus::Queued,
                conclusion: None,
                created_at: now,
                started_at: None,
                completed_at: None,
                runner_id: None,
                runner_name: None,
                runner_group_id: None,
                runner_group_name: None,
                die_at: None,
            };
            st.jobs.insert(id, j.clone());
            st.open_jobs.insert(id);
            self.webhook(&mut st, "queued", &j);
            out.push(j);
        }
        Ok(out)
    }

    /// Queue a `workflow_job` delivery (or drop it per the fault drop rate).
    fn webhook(&self, st: &mut State, action: &str, j: &JobRecord) {
        if st.cfg.webhook.is_none() {
            return;
        }
        let id = uuid::Uuid::new_v4().to_string();
        let drop_rate = st.cfg.faults.webhook_drop_rate;
        if drop_rate > 0.0 && st.rng.r#gen::<f64>() < drop_rate {
            st.deliveries.push(DeliveryRecord {
                delivery_id: id,
                action: action.into(),
                job_id: j.id,
                dropped: true,
                status: None,
                error: None,
                at: self.clock.now(),
            });
            return;
        }
        let owner = j.repo.split_once('/').map(|(o, _)| o).unwrap_or("");
        let kind = Self::owner_kind(st, owner);
        let inst = Self::installation_for(st, &j.repo);
        let body = payloads::workflow_job_event(&self.urls, action, j, kind, inst).to_string();
        let _ = self.webhook_tx.send(Delivery { id, action: action.into(), job_id: j.id, body });
    }

    // ------------------------------------------------------------------ runner processes

    /// The first lines a runner container writes: its start script runs under `set -x`, so the
    /// command line with the JIT config or registration token is in the log (as in many real
    /// start scripts), which is what the controller's redaction must remove.
    fn start_lines(c: &StartedContainer) -> Vec<String> {
        let mut lines = vec![
            format!("Starting runner container {} (image {})", c.group_name, c.image),
            "+ cd /home/runner/actions-runner".to_string(),
        ];
        if let Some(jit) = Self::env(c, "ACTIONS_RUNNER_INPUT_JITCONFIG") {
            lines.push(format!("+ ./run.sh --jitconfig {jit}"));
        } else {
            let url = Self::env(c, "RUNNER_URL").unwrap_or("");
            let token = Self::env(c, "RUNNER_TOKEN").unwrap_or("");
            let name = Self::env(c, "RUNNER_NAME").unwrap_or(&c.group_name);
            lines.push(format!(
                "+ ./config.sh --unattended --url {url} --token {token} --name {name} --replace"
            ));
        }
        lines.push("√ Connected to GitHub".to_string());
        lines.push("Waiting for the runner's session to be accepted...".to_string());
        lines
    }

    /// The JIT configs and registration tokens handed out (the last [`ISSUED_SECRETS`]).
    pub(crate) fn issued_secrets(&self) -> Vec<String> {
        self.st().issued_secrets.iter().cloned().collect()
    }

    pub(crate) fn container_started(&self, c: StartedContainer, exit: ExitNotifier) {
        for line in Self::start_lines(&c) {
            exit.log(&line);
        }
        let now = self.now();
        let mut st = self.st();
        st.env_records.push(EnvRecord {
            group_id: c.group_id.clone(),
            group_name: c.group_name.clone(),
            container: c.container_name.clone(),
            names: c.env.iter().map(|e| (e.name.clone(), e.secure)).collect(),
        });
        let p = st.cfg.faults.crash_before_registration;
        let crash = p > 0.0 && st.rng.r#gen::<f64>() < p;
        let ready_at = now + Duration::milliseconds(st.cfg.runner_startup_ms as i64);
        // A restarted container replaces the old process of the same group: its runner is gone.
        let old = st.procs.insert(
            c.group_id.clone(),
            Proc { container: c, exit, phase: Phase::Booting { ready_at, crash } },
        );
        if let Some(Proc { phase: Phase::Running { runner_id }, .. }) = old {
            self.runner_lost(&mut st, runner_id, now);
        }
    }

    pub(crate) fn container_killed(&self, group_id: &str) {
        let now = self.now();
        let mut st = self.st();
        let Some(p) = st.procs.remove(group_id) else { return };
        if let Phase::Running { runner_id } = p.phase {
            self.runner_lost(&mut st, runner_id, now);
        }
    }

    /// The runner's process is gone: it shows offline; a job it ran fails.
    fn runner_lost(&self, st: &mut State, runner_id: i64, now: DateTime<Utc>) {
        let Some(r) = st.runners.get_mut(&runner_id) else { return };
        r.online = false;
        r.busy = false;
        r.container = None;
        r.offline_since = Some(now);
        if let Some(job_id) = r.job_id.take()
            && let Some(j) = st.jobs.get_mut(&job_id)
            && j.status == JobStatus::InProgress
        {
            j.status = JobStatus::Completed;
            j.conclusion = Some("failure".into());
            j.completed_at = Some(now);
            let j = j.clone();
            st.open_jobs.remove(&job_id);
            self.webhook(st, "completed", &j);
        }
    }

    fn env<'a>(c: &'a StartedContainer, name: &str) -> Option<&'a str> {
        c.env.iter().find(|e: &&ContainerEnv| e.name == name).map(|e| e.value.as_str())
    }

    /// Configure/connect the runner in a booted container. Err = the process exits with 1.
    fn register(
        &self,
        st: &mut State,
        group_id: &str,
        c: &StartedContainer,
        now: DateTime<Utc>,
    ) -> Result<i64, String> {
        let os = if c.image.to_ascii_lowercase().contains("windows") { "windows" } else { "linux" };
        if let Some(enc) = Self::env(c, "ACTIONS_RUNNER_INPUT_JITCONFIG") {
            let cfg = jit::decode(enc).map_err(|e| e.to_string())?;
            let version = st.cfg.runner_version.clone();
            let r = st.runners.get_mut(&cfg.runner_id).ok_or("runner registration not found")?;
            if r.secret != cfg.secret || !r.jit {
                return Err("invalid runner credentials".into());
            }
            if r.connected_once {
                return Err("JIT configuration already used".into());
            }
            r.connected_once = true;
            r.online = true;
            r.offline_since = None;
            r.container = Some(group_id.to_string());
            r.version = Some(version);
            r.os = os.into();
            return Ok(r.id);
        }
        let url = Self::env(c, "RUNNER_URL").ok_or("no ACTIONS_RUNNER_INPUT_JITCONFIG and no RUNNER_URL")?;
        let token = Self::env(c, "RUNNER_TOKEN").ok_or("RUNNER_TOKEN missing")?;
        let reg = st.reg_tokens.get(token).ok_or("invalid registration token")?;
        if reg.remove || reg.expires_at <= now {
            return Err("registration token expired or not a registration token".into());
        }
        let scope = reg.scope.clone();
        let path = url
            .trim_end_matches('/')
            .strip_prefix(&self.urls.html)
            .or_else(|| url.trim_end_matches('/').strip_prefix("https://github.com"))
            .ok_or("RUNNER_URL is not this GitHub")?
            .trim_start_matches('/')
            .to_string();
        let url_scope = match path.split('/').collect::<Vec<_>>().as_slice() {
            ["enterprises", e] => ScopeKey::Enterprise(e.to_string()),
            [o] => ScopeKey::Org(o.to_string()),
            [o, r] => ScopeKey::Repo(format!("{o}/{r}")),
            _ => return Err("RUNNER_URL has no org or repository".into()),
        };
        let same = |a: &ScopeKey, b: &ScopeKey| format!("{a:?}").eq_ignore_ascii_case(&format!("{b:?}"));
        if !same(&url_scope, &scope) {
            return Err("registration token does not belong to RUNNER_URL".into());
        }
        let name = Self::env(c, "RUNNER_NAME").unwrap_or(&c.group_name).to_string();
        let labels: Vec<String> = Self::env(c, "RUNNER_LABELS")
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        let group = Self::env(c, "RUNNER_GROUP").unwrap_or("").trim();
        let groups = self.groups_of(st, &scope);
        let wanted = if group.is_empty() { "Default" } else { group };
        let (gid, gname) = groups
            .iter()
            .find(|(_, n)| n.eq_ignore_ascii_case(wanted))
            .cloned()
            .ok_or("runner group not found")?;
        let ephemeral = Self::env(c, "RUNNER_EPHEMERAL").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        if let Some(old) = st.runners.values().find(|r| r.scope == scope && r.name == name) {
            if old.online {
                return Err(format!("a runner named {name} already exists"));
            }
            // `config.sh --replace`
            let id = old.id;
            st.runners.remove(&id);
        }
        let id = st.next_runner_id;
        st.next_runner_id += 1;
        let version = st.cfg.runner_version.clone();
        st.runners.insert(
            id,
            RunnerRecord {
                id,
                name,
                scope,
                os: os.into(),
                group_id: gid,
                group_name: gname,
                labels,
                ephemeral,
                jit: false,
                online: true,
                busy: false,
                version: Some(version),
                created_at: now,
                offline_since: None,
                container: Some(group_id.to_string()),
                job_id: None,
                connected_once: true,
                jobs_done: 0,
                secret: String::new(),
            },
        );
        Ok(id)
    }

    /// Advance processes, jobs and garbage collection to the current simulated time.
    pub(crate) fn tick(&self) {
        let now = self.now();
        let mut exits: Vec<(ExitNotifier, i32)> = Vec::new();
        // Lines the processes write, emitted with the exits once the state is unlocked.
        let mut logs: Vec<(ExitNotifier, String)> = Vec::new();
        let mut guard = self.st();
        let st = &mut *guard;

        // 1. Boot runner processes.
        let ready: Vec<String> = st
            .procs
            .iter()
            .filter(|(_, p)| matches!(p.phase, Phase::Booting { ready_at, .. } if ready_at <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for gid in ready {
            let Some(p) = st.procs.get(&gid) else { continue };
            let crash = matches!(p.phase, Phase::Booting { crash: true, .. });
            let c = p.container.clone();
            let res = if crash {
                Err("crashed before registration".to_string())
            } else {
                self.register(st, &gid, &c, now)
            };
            match res {
                Ok(runner_id) => {
                    if let Some(p) = st.procs.get_mut(&gid) {
                        p.phase = Phase::Running { runner_id };
                        logs.push((p.exit.clone(), format!("{}: Listening for Jobs", now.to_rfc3339())));
                    }
                    tracing::debug!(group = %c.group_name, runner_id, "simulated runner online");
                }
                Err(why) => {
                    tracing::debug!(group = %c.group_name, %why, "simulated runner exits 1");
                    if let Some(p) = st.procs.remove(&gid) {
                        logs.push((p.exit.clone(), format!("An error occurred: {why}")));
                        logs.push((p.exit.clone(), "Runner listener exited with error code 1".into()));
                        exits.push((p.exit, 1));
                    }
                }
            }
        }

        // 2. Finish (or kill) running jobs.
        let running = st.open_jobs_in(JobStatus::InProgress);
        for id in running {
            let Some(j) = st.jobs.get(&id) else { continue };
            let runner_id = j.runner_id.unwrap_or(0);
            let started = j.started_at.unwrap_or(now);
            if let Some(die) = j.die_at
                && die <= now
            {
                let container = st.runners.get(&runner_id).and_then(|r| r.container.clone());
                self.runner_lost(st, runner_id, now);
                if let Some(c) = container
                    && let Some(p) = st.procs.remove(&c)
                {
                    exits.push((p.exit, 1));
                }
                continue;
            }
            if started + Duration::milliseconds(j.duration_ms as i64) > now {
                continue;
            }
            st.open_jobs.remove(&id);
            let Some(j) = st.jobs.get_mut(&id) else { continue };
            j.status = JobStatus::Completed;
            j.conclusion = Some("success".into());
            j.completed_at = Some(now);
            let j = j.clone();
            self.webhook(st, "completed", &j);
            let Some(r) = st.runners.get_mut(&runner_id) else { continue };
            r.busy = false;
            r.job_id = None;
            r.jobs_done += 1;
            if r.ephemeral {
                // GitHub removes an ephemeral runner after its job; the process exits 0.
                let container = r.container.clone();
                st.runners.remove(&runner_id);
                if let Some(c) = container
                    && let Some(p) = st.procs.remove(&c)
                {
                    exits.push((p.exit, 0));
                }
            }
        }

        // 3. Assign queued jobs to idle online runners (oldest job first, lowest runner id first).
        let mut idle: Vec<i64> = st.runners.values().filter(|r| r.online && !r.busy).map(|r| r.id).collect();
        let queued = st.open_jobs_in(JobStatus::Queued);
        for id in queued {
            if idle.is_empty() {
                break;
            }
            let Some(j) = st.jobs.get(&id) else { continue };
            let want: Vec<String> = j.labels.iter().map(|l| l.to_ascii_lowercase()).collect();
            let repo = j.repo.clone();
            let duration = j.duration_ms;
            let pick = idle
                .iter()
                .position(|rid| {
                    st.runners.get(rid).is_some_and(|r| {
                        r.scope.covers_repo(&repo) && {
                            let have = r.all_labels_lower();
                            want.iter().all(|w| have.contains(w))
                        }
                    })
                })
                .map(|i| idle.remove(i))
                .and_then(|rid| st.runners.get(&rid))
                .map(|r| (r.id, r.name.clone(), r.group_id, r.group_name.clone()));
            let Some((rid, rname, gid, gname)) = pick else { continue };
            let p = st.cfg.faults.runner_death_mid_job;
            let die_at = (p > 0.0 && st.rng.r#gen::<f64>() < p).then(|| {
                let frac: f64 = st.rng.gen_range(0.1..0.9);
                now + Duration::milliseconds((duration as f64 * frac) as i64)
            });
            if let Some(r) = st.runners.get_mut(&rid) {
                r.busy = true;
                r.job_id = Some(id);
            }
            let Some(j) = st.jobs.get_mut(&id) else { continue };
            j.status = JobStatus::InProgress;
            j.started_at = Some(now);
            j.runner_id = Some(rid);
            j.runner_name = Some(rname);
            j.runner_group_id = Some(gid);
            j.runner_group_name = Some(gname);
            j.die_at = die_at;
            let j = j.clone();
            self.webhook(st, "in_progress", &j);
        }

        // 4. Garbage-collect long-offline runners, expired tokens.
        let eph = Duration::seconds(st.cfg.offline_ephemeral_ttl_secs as i64);
        let per = Duration::seconds(st.cfg.offline_persistent_ttl_secs as i64);
        st.runners.retain(|_, r| match (r.online, r.offline_since) {
            (false, Some(since)) => since + if r.ephemeral { eph } else { per } > now,
            _ => true,
        });
        st.tokens.retain(|_, t| t.expires_at + Duration::hours(1) > now);
        st.reg_tokens.retain(|_, t| t.expires_at > now);
        drop(guard);
        for (e, line) in logs {
            e.log(&line);
        }
        for (e, code) in exits {
            e.exited(code);
        }
    }
}

fn roll(l: &mut Limit, now: DateTime<Utc>) {
    match l.window_start {
        Some(w) if w + Duration::hours(1) > now => {}
        _ => {
            l.window_start = Some(now);
            l.used = 0;
        }
    }
    match l.minute_start {
        Some(m) if m + Duration::minutes(1) > now => {}
        _ => {
            l.minute_start = Some(now);
            l.minute_count = 0;
            l.writes_in_minute = 0;
        }
    }
}

fn window(l: &Limit, now: DateTime<Utc>) -> (u64, i64) {
    match l.window_start {
        Some(w) if w + Duration::hours(1) > now => (l.used, (w + Duration::hours(1)).timestamp()),
        _ => (0, (now + Duration::hours(1)).timestamp()),
    }
}

fn rate_headers(limit: u64, remaining: u64, used: u64, reset: i64) -> Vec<(String, String)> {
    vec![
        ("x-ratelimit-limit".into(), limit.to_string()),
        ("x-ratelimit-remaining".into(), remaining.to_string()),
        ("x-ratelimit-used".into(), used.to_string()),
        ("x-ratelimit-reset".into(), reset.to_string()),
        ("x-ratelimit-resource".into(), "core".into()),
    ]
}
