//! Credentials for ARM: workload identity (the federated token file is re-read on every token
//! acquisition, because the kubelet rotates it), client secret, managed identity. Tokens are
//! cached until shortly before expiry and shared by every pool that uses the same identity
//! ([`CredentialRegistry`]).
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use azure_core::auth::{AccessToken, Secret, TokenCredential};
use azure_core::error::{Error as CoreError, ErrorKind};
use azure_core::{HttpClient, Method, Request, Url};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

/// Authority host, ARM endpoint and token scope of one Azure cloud.
#[derive(Clone, Debug, PartialEq)]
pub struct CloudConfig {
    pub authority_host: Url,
    pub arm_endpoint: Url,
    pub arm_scope: String,
    /// TLS trust of every ARM and Entra ID exchange (built-in roots unless `--ca-bundle`).
    pub tls: crate::egress::Tls,
}

fn url(s: &str) -> Url {
    // Only called with the literal constants below.
    Url::parse(s).expect("constant URL is valid")
}

impl CloudConfig {
    pub fn public() -> Self {
        Self {
            authority_host: url("https://login.microsoftonline.com/"),
            arm_endpoint: url("https://management.azure.com/"),
            arm_scope: "https://management.azure.com/.default".into(),
            tls: Default::default(),
        }
    }
    pub fn us_government() -> Self {
        Self {
            authority_host: url("https://login.microsoftonline.us/"),
            arm_endpoint: url("https://management.usgovcloudapi.net/"),
            arm_scope: "https://management.usgovcloudapi.net/.default".into(),
            tls: Default::default(),
        }
    }
    pub fn china() -> Self {
        Self {
            authority_host: url("https://login.chinacloudapi.cn/"),
            arm_endpoint: url("https://management.chinacloudapi.cn/"),
            arm_scope: "https://management.chinacloudapi.cn/.default".into(),
            tls: Default::default(),
        }
    }
    /// Everything pointed at one base URL (the simulator serves ARM and Entra on one listener).
    pub fn custom(authority_host: &str, arm_endpoint: &str, arm_scope: &str) -> Result<Self, String> {
        Ok(Self {
            authority_host: Url::parse(authority_host)
                .map_err(|e| format!("authority host {authority_host:?}: {e}"))?,
            arm_endpoint: Url::parse(arm_endpoint)
                .map_err(|e| format!("ARM endpoint {arm_endpoint:?}: {e}"))?,
            arm_scope: arm_scope.to_string(),
            tls: Default::default(),
        })
    }
    /// `AZURE_CLOUD` (`public` | `usgovernment` | `china`), then `AZURE_AUTHORITY_HOST`,
    /// `AZURE_RESOURCE_MANAGER_ENDPOINT`, `AZURE_RESOURCE_MANAGER_SCOPE` override single values.
    pub fn from_env() -> Result<Self, String> {
        let mut c = match std::env::var("AZURE_CLOUD").unwrap_or_default().to_ascii_lowercase().as_str() {
            "" | "public" | "azurecloud" | "azurepubliccloud" => Self::public(),
            "usgovernment" | "azureusgovernment" | "azureusgovernmentcloud" => Self::us_government(),
            "china" | "azurechinacloud" => Self::china(),
            other => return Err(format!("unknown AZURE_CLOUD {other:?}")),
        };
        if let Ok(h) = std::env::var("AZURE_AUTHORITY_HOST") {
            c.authority_host = Url::parse(&h).map_err(|e| format!("AZURE_AUTHORITY_HOST: {e}"))?;
        }
        if let Ok(h) = std::env::var("AZURE_RESOURCE_MANAGER_ENDPOINT") {
            c.arm_endpoint = Url::parse(&h).map_err(|e| format!("AZURE_RESOURCE_MANAGER_ENDPOINT: {e}"))?;
            if std::env::var("AZURE_RESOURCE_MANAGER_SCOPE").is_err() {
                c.arm_scope = format!("{}/.default", h.trim_end_matches('/'));
            }
        }
        if let Ok(s) = std::env::var("AZURE_RESOURCE_MANAGER_SCOPE") {
            c.arm_scope = s;
        }
        Ok(c)
    }
}

/// Which identity to authenticate as (the client secret prints redacted).
#[derive(Clone, Debug)]
pub enum CredentialSpec {
    /// Federated token file (Azure Workload Identity: `AZURE_FEDERATED_TOKEN_FILE`).
    WorkloadIdentity { tenant_id: String, client_id: String, token_file: PathBuf },
    /// App registration secret (environment or a per-pool Secret).
    ClientSecret { tenant_id: String, client_id: String, client_secret: SecretString },
    /// IMDS-style managed identity endpoint; `client_id` selects a user-assigned identity.
    ManagedIdentity { client_id: Option<String>, endpoint: Url },
}

/// Longest token lifetime the controller believes (Entra ID issues at most 24 h): a larger
/// `expires_in` or a later `expires_on` counts as this.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Now plus a server-given lifetime in seconds, at most [`MAX_TOKEN_LIFETIME`].
fn expires_after(secs: u64) -> OffsetDateTime {
    OffsetDateTime::now_utc() + Duration::from_secs(secs).min(MAX_TOKEN_LIFETIME)
}

/// A server-given expiry, between now and [`MAX_TOKEN_LIFETIME`] from now.
fn clamp_expiry(t: OffsetDateTime) -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    t.clamp(now, now + MAX_TOKEN_LIFETIME)
}

/// The Azure VM / AKS node IMDS endpoint.
pub const IMDS_ENDPOINT: &str = "http://169.254.169.254/metadata/identity/oauth2/token";

impl CredentialSpec {
    /// From the controller's environment: workload identity when `AZURE_FEDERATED_TOKEN_FILE`
    /// is set, else a client secret when `AZURE_CLIENT_SECRET` is set, else a managed identity
    /// endpoint named by `IDENTITY_ENDPOINT` (`AZURE_CLIENT_ID` selects a user-assigned identity).
    /// The node's IMDS is used only when `allow_imds` says so: on a shared node it is the node's
    /// identity, which no tenant's pool should borrow by accident.
    pub fn from_env(allow_imds: bool) -> Result<Self, String> {
        Self::from_vars(|k| std::env::var(k).ok(), allow_imds)
    }

    /// [`from_env`](Self::from_env) over any variable lookup (an empty value counts as unset).
    fn from_vars(lookup: impl Fn(&str) -> Option<String>, allow_imds: bool) -> Result<Self, String> {
        let var = |k: &str| lookup(k).filter(|v| !v.is_empty());
        // The tenant and client ids an app registration needs; `with` ends the error message.
        let app_ids = |with: &str| -> Result<(String, String), String> {
            let required = |k: &str| var(k).ok_or_else(|| format!("{k} is required {with}"));
            Ok((required("AZURE_TENANT_ID")?, required("AZURE_CLIENT_ID")?))
        };
        if let Some(file) = var("AZURE_FEDERATED_TOKEN_FILE") {
            let (tenant_id, client_id) = app_ids("for workload identity")?;
            return Ok(Self::WorkloadIdentity { tenant_id, client_id, token_file: PathBuf::from(file) });
        }
        if let Some(secret) = var("AZURE_CLIENT_SECRET") {
            let (tenant_id, client_id) = app_ids("with AZURE_CLIENT_SECRET")?;
            return Ok(Self::ClientSecret {
                tenant_id,
                client_id,
                client_secret: SecretString::from(secret),
            });
        }
        let endpoint = match var("IDENTITY_ENDPOINT") {
            Some(e) => e,
            None if allow_imds => IMDS_ENDPOINT.to_string(),
            None => {
                return Err(
                    "neither AZURE_FEDERATED_TOKEN_FILE, AZURE_CLIENT_SECRET nor IDENTITY_ENDPOINT is \
                            set, and the node's managed identity (IMDS) is used only with --allow-imds"
                        .to_string(),
                );
            }
        };
        Ok(Self::ManagedIdentity {
            client_id: var("AZURE_CLIENT_ID"),
            endpoint: Url::parse(&endpoint).map_err(|e| format!("IDENTITY_ENDPOINT: {e}"))?,
        })
    }

    /// Identity key: pools with the same key share one credential and its token cache.
    fn key(&self, cloud: &CloudConfig) -> String {
        match self {
            Self::WorkloadIdentity { tenant_id, client_id, token_file } => {
                format!("wi|{}|{tenant_id}|{client_id}|{}", cloud.authority_host, token_file.display())
            }
            Self::ClientSecret { tenant_id, client_id, client_secret } => {
                let h = hex::encode(Sha256::digest(client_secret.expose_secret().as_bytes()));
                format!("cs|{}|{tenant_id}|{client_id}|{h}", cloud.authority_host)
            }
            Self::ManagedIdentity { client_id, endpoint } => {
                format!("mi|{endpoint}|{}", client_id.as_deref().unwrap_or("system"))
            }
        }
    }
}

enum Source {
    WorkloadIdentity { tenant_id: String, client_id: String, token_file: PathBuf },
    ClientSecret { tenant_id: String, client_id: String, client_secret: SecretString },
    ManagedIdentity { client_id: Option<String>, endpoint: Url },
}

/// A credential with a token cache (per scope set) and single-flight refresh.
pub struct CachedCredential {
    source: Source,
    authority_host: Url,
    http: Arc<dyn HttpClient>,
    refresh_margin: Duration,
    cache: tokio::sync::Mutex<HashMap<Vec<String>, (AccessToken, OffsetDateTime)>>,
    acquisitions: std::sync::atomic::AtomicU64,
    label: String,
}

impl std::fmt::Debug for CachedCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedCredential").field("identity", &self.label).finish()
    }
}

fn cred_err(msg: impl Into<String>) -> CoreError {
    CoreError::message(ErrorKind::Credential, msg.into())
}

impl CachedCredential {
    pub fn new(spec: &CredentialSpec, cloud: &CloudConfig, refresh_margin: Duration) -> Self {
        let http = super::http::client(super::http::REQUEST_TIMEOUT, &cloud.tls);
        let (source, label) = match spec.clone() {
            CredentialSpec::WorkloadIdentity { tenant_id, client_id, token_file } => {
                let label = format!("workload-identity:{client_id}");
                (Source::WorkloadIdentity { tenant_id, client_id, token_file }, label)
            }
            CredentialSpec::ClientSecret { tenant_id, client_id, client_secret } => {
                let label = format!("client-secret:{client_id}");
                (Source::ClientSecret { tenant_id, client_id, client_secret }, label)
            }
            CredentialSpec::ManagedIdentity { client_id, endpoint } => {
                let label = format!("managed-identity:{}", client_id.as_deref().unwrap_or("system"));
                (Source::ManagedIdentity { client_id, endpoint }, label)
            }
        };
        Self {
            source,
            authority_host: cloud.authority_host.clone(),
            http,
            refresh_margin,
            cache: tokio::sync::Mutex::new(HashMap::new()),
            acquisitions: std::sync::atomic::AtomicU64::new(0),
            label,
        }
    }

    /// Tokens fetched from the identity provider so far (cache misses).
    pub fn acquisitions(&self) -> u64 {
        self.acquisitions.load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn fetch(&self, scopes: &[&str]) -> azure_core::Result<AccessToken> {
        self.acquisitions.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match &self.source {
            Source::WorkloadIdentity { tenant_id, client_id, token_file } => {
                // Re-read on every acquisition: the projected token rotates.
                let assertion = tokio::fs::read_to_string(token_file).await.map_err(|e| {
                    cred_err(format!("cannot read federated token file {}: {e}", token_file.display()))
                })?;
                let assertion = assertion.trim();
                if assertion.is_empty() {
                    return Err(cred_err(format!("federated token file {} is empty", token_file.display())));
                }
                let r = azure_identity::federated_credentials_flow::perform(
                    self.http.clone(),
                    client_id,
                    assertion,
                    scopes,
                    tenant_id,
                    &self.authority_host,
                )
                .await
                .map_err(|e| {
                    CoreError::full(ErrorKind::Credential, e, "workload identity token request failed")
                })?;
                Ok(AccessToken::new(r.access_token().clone(), expires_after(r.expires_in)))
            }
            Source::ClientSecret { tenant_id, client_id, client_secret } => {
                self.client_secret(tenant_id, client_id, client_secret.expose_secret(), scopes).await
            }
            Source::ManagedIdentity { client_id, endpoint } => {
                self.managed_identity(client_id.as_deref(), endpoint, scopes).await
            }
        }
    }

    /// OAuth 2.0 client credentials grant against Entra ID.
    ///
    /// Hand-written (a form POST and a JSON answer) instead of azure_identity 0.21's
    /// `ClientSecretCredential`: that one loses the HTTP status inside the oauth2 crate's error,
    /// so a throttled or failing token endpoint (429, 5xx) looks like a wrong secret and a blip
    /// would stall pools with `AuthFailed`. Here the status stays in the error chain
    /// (`ErrorKind::HttpResponse`), which `error::credential_retryable` classifies, so a blip is
    /// retried and only a refused secret is an authentication failure.
    async fn client_secret(
        &self,
        tenant_id: &str,
        client_id: &str,
        client_secret: &str,
        scopes: &[&str],
    ) -> azure_core::Result<AccessToken> {
        let mut url = self.authority_host.clone();
        url.path_segments_mut()
            .map_err(|_| cred_err(format!("invalid authority host {}", self.authority_host)))?
            .pop_if_empty()
            .extend([tenant_id, "oauth2", "v2.0", "token"]);
        let form = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "client_credentials")
            .append_pair("client_id", client_id)
            .append_pair("client_secret", client_secret)
            .append_pair("scope", &scopes.join(" "))
            .finish();
        let mut req = Request::new(url, Method::Post);
        req.insert_header("content-type", "application/x-www-form-urlencoded");
        req.set_body(form);
        let (token, v) =
            self.token_answer(&req, "Entra ID token endpoint", "token answer", entra_error).await?;
        let expires_in = v
            .get("expires_in")
            .and_then(|x| x.as_u64().or_else(|| x.as_str().and_then(|s| s.parse().ok())))
            .unwrap_or(300);
        Ok(AccessToken::new(Secret::new(token.to_string()), expires_after(expires_in)))
    }

    async fn managed_identity(
        &self,
        client_id: Option<&str>,
        endpoint: &Url,
        scopes: &[&str],
    ) -> azure_core::Result<AccessToken> {
        let scope = scopes.first().copied().unwrap_or_default();
        let resource = scope.strip_suffix("/.default").unwrap_or(scope);
        let mut u = endpoint.clone();
        u.query_pairs_mut().append_pair("api-version", "2019-08-01").append_pair("resource", resource);
        if let Some(id) = client_id {
            u.query_pairs_mut().append_pair("client_id", id);
        }
        let mut req = Request::new(u, Method::Get);
        req.insert_header("metadata", "true");
        if let Ok(h) = std::env::var("IDENTITY_HEADER") {
            req.insert_header("x-identity-header", h);
        }
        let (token, v) =
            self.token_answer(&req, "managed identity endpoint", "managed identity answer", |_| None).await?;
        let num =
            |k: &str| v.get(k).and_then(|x| x.as_i64().or_else(|| x.as_str().and_then(|s| s.parse().ok())));
        let expires = match num("expires_in") {
            Some(secs) => expires_after(u64::try_from(secs).unwrap_or(0)),
            None => num("expires_on")
                .and_then(|t| OffsetDateTime::from_unix_timestamp(t).ok())
                .map_or_else(|| expires_after(300), clamp_expiry),
        };
        Ok(AccessToken::new(Secret::new(token), expires))
    }

    /// Send a token request to `endpoint` and read its JSON `answer`: the access token and the
    /// whole answer (for its expiry). A refusal keeps its HTTP status in the error chain (see
    /// [`Self::client_secret`]), with what `detail` reads from the body.
    async fn token_answer(
        &self,
        req: &Request,
        endpoint: &str,
        answer: &str,
        detail: fn(&[u8]) -> Option<String>,
    ) -> azure_core::Result<(String, serde_json::Value)> {
        let rsp = self
            .http
            .execute_request(req)
            .await
            .map_err(|e| CoreError::full(ErrorKind::Credential, e, format!("{endpoint} unreachable")))?;
        let status = rsp.status();
        let (_, headers, body) = rsp.deconstruct();
        let body = body.collect().await?;
        if !status.is_success() {
            let detail = detail(&body).map(|d| format!(" {d}")).unwrap_or_default();
            return Err(CoreError::full(
                ErrorKind::Credential,
                CoreError::from(ErrorKind::http_response_from_parts(status, &headers, &body)),
                format!("{endpoint} answered {}{detail}", status as u16),
            ));
        }
        let v: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| cred_err(format!("{answer} is not JSON: {e}")))?;
        let token = v
            .get("access_token")
            .and_then(|t| t.as_str())
            .ok_or_else(|| cred_err(format!("{answer} has no access_token")))?
            .to_string();
        Ok((token, v))
    }
}

/// `code: description` of Entra's error answer (`error`, `error_description`, AADSTS code),
/// which never echoes the secret.
fn entra_error(body: &[u8]) -> Option<String> {
    let v = serde_json::from_slice::<serde_json::Value>(body).ok()?;
    let e = v.get("error")?;
    let code = e.as_str().or_else(|| e.get("code").and_then(|c| c.as_str()))?;
    let desc = v
        .get("error_description")
        .or_else(|| e.get("message"))
        .and_then(|d| d.as_str())
        .map(|d| d.lines().next().unwrap_or_default())
        .unwrap_or_default();
    Some(format!("{code}: {desc}"))
}

#[async_trait::async_trait]
impl TokenCredential for CachedCredential {
    async fn get_token(&self, scopes: &[&str]) -> azure_core::Result<AccessToken> {
        let key: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
        let mut cache = self.cache.lock().await;
        let now = OffsetDateTime::now_utc();
        if let Some((tok, refresh_at)) = cache.get(&key)
            && now < *refresh_at
        {
            return Ok(tok.clone());
        }
        let mut tok = self.fetch(scopes).await?;
        tok.expires_on = clamp_expiry(tok.expires_on);
        let lifetime: Duration = (tok.expires_on - now).try_into().unwrap_or(Duration::ZERO);
        let margin = self.refresh_margin.min(lifetime / 10);
        let refresh_at = tok.expires_on - margin;
        tracing::debug!(identity = %self.label, lifetime_secs = lifetime.as_secs(), "acquired ARM token");
        cache.insert(key, (tok.clone(), refresh_at));
        Ok(tok)
    }

    async fn clear_cache(&self) -> azure_core::Result<()> {
        self.cache.lock().await.clear();
        Ok(())
    }
}

/// Shares one [`CachedCredential`] per identity across pools.
pub struct CredentialRegistry {
    cloud: CloudConfig,
    refresh_margin: Duration,
    map: Mutex<HashMap<String, Arc<CachedCredential>>>,
}

impl CredentialRegistry {
    /// `refresh_margin`: tokens are refreshed this long before expiry (at most a tenth of
    /// their lifetime). 5 minutes is a good default.
    pub fn new(cloud: CloudConfig, refresh_margin: Duration) -> Self {
        Self { cloud, refresh_margin, map: Mutex::new(HashMap::new()) }
    }

    pub fn cloud(&self) -> &CloudConfig {
        &self.cloud
    }

    /// The shared credential for this identity (created on first use).
    pub fn get(&self, spec: &CredentialSpec) -> Arc<CachedCredential> {
        let key = spec.key(&self.cloud);
        let mut map = crate::sync::lock(&self.map);
        map.entry(key)
            .or_insert_with(|| Arc::new(CachedCredential::new(spec, &self.cloud, self.refresh_margin)))
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nodes_imds_is_used_only_when_allowed() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
        };
        let err = CredentialSpec::from_vars(env(&[("AZURE_CLIENT_ID", "mi")]), false).unwrap_err();
        assert!(err.contains("--allow-imds"), "{err}");
        let Ok(CredentialSpec::ManagedIdentity { client_id, endpoint }) =
            CredentialSpec::from_vars(env(&[("AZURE_CLIENT_ID", "mi")]), true)
        else {
            panic!("IMDS when allowed")
        };
        assert_eq!((client_id.as_deref(), endpoint.as_str()), (Some("mi"), IMDS_ENDPOINT));
        // An endpoint named explicitly is a choice, not a fallback.
        let named =
            CredentialSpec::from_vars(env(&[("IDENTITY_ENDPOINT", "http://127.0.0.1:9/token")]), false);
        assert!(matches!(named, Ok(CredentialSpec::ManagedIdentity { .. })), "{named:?}");
        // Workload identity and client secrets are unaffected by the flag.
        let wi = CredentialSpec::from_vars(
            env(&[("AZURE_FEDERATED_TOKEN_FILE", "/t"), ("AZURE_TENANT_ID", "t"), ("AZURE_CLIENT_ID", "c")]),
            false,
        );
        assert!(matches!(wi, Ok(CredentialSpec::WorkloadIdentity { .. })), "{wi:?}");
        let empty = CredentialSpec::from_vars(env(&[("AZURE_CLIENT_SECRET", "")]), false);
        assert!(empty.is_err(), "an empty secret is no secret: {empty:?}");
    }

    #[test]
    fn the_client_secret_never_prints() {
        let spec = CredentialSpec::ClientSecret {
            tenant_id: "t".into(),
            client_id: "c".into(),
            client_secret: "sp-topsecret".into(),
        };
        let printed = format!("{spec:?}");
        assert!(!printed.contains("topsecret") && printed.contains("[REDACTED]"), "{printed}");
    }

    /// Absurd lifetimes from a token endpoint are clamped instead of overflowing the clock.
    #[test]
    fn absurd_token_lifetimes_are_clamped() {
        let now = OffsetDateTime::now_utc();
        let longest = now + MAX_TOKEN_LIFETIME + Duration::from_secs(60);
        for t in [
            expires_after(u64::MAX),
            clamp_expiry(OffsetDateTime::new_utc(time::Date::MAX, time::Time::MIDNIGHT)),
        ] {
            assert!(t > now && t <= longest, "{t}");
        }
        let past = clamp_expiry(OffsetDateTime::new_utc(time::Date::MIN, time::Time::MIDNIGHT));
        assert!(past >= now && past <= now + Duration::from_secs(60), "{past}");
        let sane = expires_after(3600);
        assert!(sane > now + Duration::from_secs(3500) && sane < longest);
    }
}
