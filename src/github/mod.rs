//! The GitHub edge: App and PAT authentication, the self-hosted runners API (org, repo and
//! enterprise scope), API economy (shared ETag-cached runner lists, rate-limit budget), and the
//! `workflow_job` webhook receiver.
//!
//! Entry point: [`GithubHub`] (one per controller, shared by every pool). It hands out
//! [`GithubClient`]s per (base URL, credentials); clients of the same installation share one
//! installation-token cache, and pools using the same credentials on the same scope share one
//! runner list per interval.
//!
//! ```no_run
//! # async fn demo(pem: String) -> Result<(), aci_runner_controller::github::GithubError> {
//! use aci_runner_controller::github::{Credentials, GithubHub, HubConfig, Scope};
//! use secrecy::SecretString;
//! let hub = GithubHub::new(HubConfig::default());
//! let creds = Credentials::App {
//!     app_id: None,
//!     client_id: Some("Iv23li…".into()),
//!     installation_id: 12345,
//!     private_key_pem: SecretString::from(pem),
//! };
//! let gh = hub.client("https://api.github.com", creds)?;
//! let scope = Scope::Org("my-org".into());
//! let runners = gh.list_runners(&scope).await?; // Arc<Vec<Runner>>, shared and ETag-cached
//! let group = gh.runner_group_id(&scope, "aci").await?; // cached
//! let jit = gh.generate_jit_config(&scope, "pool-abcde", &["aci".into()], group, None).await?;
//! // ... create the container group with ACTIONS_RUNNER_INPUT_JITCONFIG = jit.encoded ...
//! gh.delete_runner(&scope, jit.runner_id).await?; // Err(Busy) while it runs a job
//! # let _ = runners; Ok(()) }
//! ```
mod auth;
mod client;
pub mod metrics;
mod pace;
pub mod webhook;

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

pub use auth::mint_app_jwt;
pub use client::{GithubClient, GithubHub, HubConfig, JitConfig, RateStatus, RegistrationToken};
pub use metrics::GithubMetrics;
pub use pace::PaceConfig;
pub use webhook::{DemandSignal, WEBHOOK_PATH};

/// The public GitHub API.
pub const DEFAULT_API_URL: &str = "https://api.github.com";

/// Where runners are registered.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Scope {
    /// Enterprise slug (PAT only: GitHub Apps cannot manage enterprise runners).
    Enterprise(String),
    /// Organization login.
    Org(String),
    Repo {
        owner: String,
        repo: String,
    },
}

impl Scope {
    /// Parse `owner/repo` into a repo scope.
    pub fn repo(full: &str) -> Option<Self> {
        let (owner, repo) = full.split_once('/')?;
        (!owner.is_empty() && !repo.is_empty() && !repo.contains('/'))
            .then(|| Scope::Repo { owner: owner.into(), repo: repo.into() })
    }

    /// REST path prefix (`/orgs/x`, `/repos/o/r`, `/enterprises/e`).
    pub fn api_path(&self) -> String {
        match self {
            Scope::Enterprise(e) => format!("/enterprises/{}", enc(e)),
            Scope::Org(o) => format!("/orgs/{}", enc(o)),
            Scope::Repo { owner, repo } => format!("/repos/{}/{}", enc(owner), enc(repo)),
        }
    }

    /// The path `config.sh --url` takes below the web URL.
    pub fn html_path(&self) -> String {
        match self {
            Scope::Enterprise(e) => format!("/enterprises/{e}"),
            Scope::Org(o) => format!("/{o}"),
            Scope::Repo { owner, repo } => format!("/{owner}/{repo}"),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Enterprise(e) => write!(f, "enterprise {e}"),
            Scope::Org(o) => write!(f, "org {o}"),
            Scope::Repo { owner, repo } => write!(f, "repo {owner}/{repo}"),
        }
    }
}

/// Percent-encode one path segment.
pub(crate) fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// How the controller authenticates for a pool (secrets print redacted).
#[derive(Clone, Debug)]
pub enum Credentials {
    /// A GitHub App installation. `app_id` or `client_id` is the JWT issuer (client id preferred).
    App {
        app_id: Option<String>,
        client_id: Option<String>,
        installation_id: u64,
        private_key_pem: SecretString,
    },
    /// A personal access token (needed for enterprise scope).
    Pat { token: SecretString },
}

/// Runner status as GitHub reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunnerStatus {
    Online,
    Offline,
    Other(String),
}

/// A runner registration (lenient: unknown fields ignored, label ids/types optional).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Runner {
    pub id: u64,
    pub name: String,
    pub os: String,
    pub status: RunnerStatus,
    pub busy: bool,
    pub ephemeral: Option<bool>,
    /// Every label name (read-only and custom).
    pub labels: Vec<String>,
    pub runner_group_id: Option<i64>,
}

impl Runner {
    pub fn online(&self) -> bool {
        self.status == RunnerStatus::Online
    }
}

/// What went wrong talking to GitHub. Messages never contain secrets.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum GithubError {
    /// Primary or secondary rate limit: nothing is sent before `reset`.
    #[error("GitHub rate limit exceeded until {reset}")]
    RateLimited { reset: DateTime<Utc> },
    #[error("transient GitHub error: {0}")]
    Transient(String),
    /// Bad key, wrong installation, missing permission (`permission` names it when GitHub does).
    #[error("GitHub authentication/authorization failed: {message}{}", permission.as_ref().map(|p| format!(" (needs permission {p})")).unwrap_or_default())]
    Auth { message: String, permission: Option<String> },
    #[error("not found: {0}")]
    NotFound(String),
    #[error("conflict: {0}")]
    Conflict(String),
    /// The runner is running a job (delete answered 422).
    #[error("runner is busy: {0}")]
    Busy(String),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The answer was larger than the edge reads (a body above the per-response cap, a list
    /// above its page or size bound): not retried as is, classified like an invalid request.
    #[error("GitHub answer too large: {0}")]
    ResponseTooLarge(String),
}

impl GithubError {
    /// Worth retrying later without changing anything.
    pub fn is_retryable(&self) -> bool {
        matches!(self, GithubError::RateLimited { .. } | GithubError::Transient(_))
    }
}

/// Whether the controller may talk to the GitHub API at `api_url`: https always; http only for a
/// loopback host (127.0.0.0/8, ::1, `localhost`) or when `allow_insecure_http` is set (the
/// `--allow-insecure-github-http` development flag). The error says why (callers name the field).
pub fn check_api_url(api_url: &str, allow_insecure_http: bool) -> Result<(), String> {
    let url = url::Url::parse(api_url).map_err(|e| format!("{api_url:?} is not a URL: {e}"))?;
    let loopback = match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    match url.scheme() {
        "https" => Ok(()),
        "http" if loopback || allow_insecure_http => Ok(()),
        "http" => Err(format!(
            "{api_url:?} must be https (http only for a loopback host or with --allow-insecure-github-http)"
        )),
        other => Err(format!("{api_url:?} must be https, not {other}")),
    }
}

/// A clock (tests use the simulator's scaled clock; production uses `Utc::now`).
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// The web URL that goes with an API base URL (`config.sh --url` needs it).
pub fn html_base(api_base: &str) -> String {
    let b = api_base.trim_end_matches('/');
    if b == DEFAULT_API_URL {
        return "https://github.com".into();
    }
    b.strip_suffix("/api/v3").unwrap_or(b).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_and_urls() {
        assert_eq!(Scope::repo("o/r"), Some(Scope::Repo { owner: "o".into(), repo: "r".into() }));
        assert_eq!(Scope::repo("o"), None);
        assert_eq!(Scope::Org("my org".into()).api_path(), "/orgs/my%20org");
        assert_eq!(html_base("https://api.github.com/"), "https://github.com");
        assert_eq!(html_base("https://ghe.example.com/api/v3"), "https://ghe.example.com");
        let c = Credentials::Pat { token: SecretString::from("ghp_topsecret") };
        let printed = format!("{c:?}");
        assert!(!printed.contains("topsecret") && printed.contains("[REDACTED]"), "{printed}");
    }

    #[test]
    fn api_url_is_https_except_on_loopback_or_with_the_development_flag() {
        for ok in [
            "https://api.github.com",
            "https://ghe.example.com/api/v3",
            "http://127.0.0.1:8080",
            "http://127.3.2.1/api/v3",
            "http://[::1]:9000",
            "http://localhost:3000",
            "http://LOCALHOST",
        ] {
            assert_eq!(check_api_url(ok, false), Ok(()), "{ok}");
        }
        for bad in ["http://ghe.example.com/api/v3", "http://10.0.0.1", "http://127.0.0.1.example.com"] {
            let e = check_api_url(bad, false).unwrap_err();
            assert!(e.contains(bad) && e.contains("must be https"), "{bad}: {e}");
            assert_eq!(check_api_url(bad, true), Ok(()), "{bad} with the flag");
        }
        assert!(check_api_url("ftp://ghe.example.com", true).unwrap_err().contains("must be https"));
        assert!(check_api_url("not a url", true).is_err());
    }
}
