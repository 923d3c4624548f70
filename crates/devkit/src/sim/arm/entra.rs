//! Simulated Entra ID: the v2.0 token endpoint (client credentials with a secret or a federated
//! client assertion), a managed-identity endpoint, and verification of the access tokens ARM
//! receives. Access tokens are HS256 JWTs signed with a per-simulator random key.
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use super::ArmSimConfig;
use crate::sim::clock::SimClock;

/// The audience Entra expects in federated client assertions.
pub const FEDERATED_AUDIENCE: &str = "api://AzureADTokenExchange";

/// Claims of a federated client assertion (e.g. a Kubernetes service-account token).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FederatedAssertionClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    pub jti: String,
}

/// Claims of the access tokens the simulator issues.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct AccessClaims {
    pub aud: String,
    pub iss: String,
    pub sub: String,
    pub tid: String,
    pub appid: String,
    pub oid: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
}

/// An OAuth error as Entra answers it.
#[derive(Debug)]
pub(crate) struct OAuthError {
    pub status: u16,
    pub error: &'static str,
    pub description: String,
}

impl OAuthError {
    fn new(status: u16, error: &'static str, description: impl Into<String>) -> Self {
        Self { status, error, description: description.into() }
    }
}

/// A token just issued.
pub(crate) struct Issued {
    pub token: String,
    /// Lifetime in *real* seconds (simulated lifetime / time scale), as clients measure it.
    pub expires_in_real: u64,
    pub expires_on: i64,
    pub resource: String,
}

pub(crate) struct Entra {
    token_key: Vec<u8>,
    federation_key: Vec<u8>,
    accepted: Mutex<Vec<String>>,
    issued: AtomicU64,
}

pub(crate) fn normalize_audience(a: &str) -> String {
    a.trim_end_matches('/').to_ascii_lowercase()
}

impl Entra {
    pub fn new() -> Self {
        let mut rng = rand::thread_rng();
        let mut token_key = vec![0u8; 32];
        rng.fill_bytes(&mut token_key);
        let mut federation_key = vec![0u8; 32];
        rng.fill_bytes(&mut federation_key);
        Self { token_key, federation_key, accepted: Mutex::new(Vec::new()), issued: AtomicU64::new(0) }
    }

    pub fn federation_key(&self) -> Vec<u8> {
        self.federation_key.clone()
    }

    pub fn accepted_assertions(&self) -> Vec<String> {
        self.accepted.lock().map(|v| v.clone()).unwrap_or_default()
    }

    pub fn tokens_issued(&self) -> u64 {
        self.issued.load(Ordering::Relaxed)
    }

    pub fn sign_assertion(&self, claims: &FederatedAssertionClaims) -> String {
        // Encoding an in-memory struct with an HMAC key cannot fail.
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(&self.federation_key),
        )
        .unwrap_or_default()
    }

    /// `POST /{tenant}/oauth2/v2.0/token` with a form body.
    pub fn token(
        &self,
        cfg: &ArmSimConfig,
        clock: &SimClock,
        tenant: &str,
        form: &[(String, String)],
    ) -> Result<Issued, OAuthError> {
        let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        if tenant != cfg.tenant_id {
            return Err(OAuthError::new(
                400,
                "invalid_request",
                format!("AADSTS90002: Tenant '{tenant}' not found."),
            ));
        }
        match get("grant_type") {
            Some("client_credentials") => {}
            Some(other) => {
                return Err(OAuthError::new(
                    400,
                    "unsupported_grant_type",
                    format!("AADSTS70003: The app requested an unsupported grant type '{other}'."),
                ));
            }
            None => {
                return Err(OAuthError::new(
                    400,
                    "invalid_request",
                    "AADSTS900144: The request body must contain the following parameter: 'grant_type'.",
                ));
            }
        }
        let Some(client_id) = get("client_id") else {
            return Err(OAuthError::new(
                400,
                "invalid_request",
                "AADSTS900144: The request body must contain the following parameter: 'client_id'.",
            ));
        };
        let scope = get("scope").unwrap_or_default();
        let resource = scope_resource(scope).ok_or_else(|| {
            OAuthError::new(
                400,
                "invalid_scope",
                format!("AADSTS1002012: The provided value for scope {scope} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier."),
            )
        })?;
        if let Some(secret) = get("client_secret") {
            if client_id != cfg.client_id {
                return Err(OAuthError::new(
                    400,
                    "unauthorized_client",
                    format!(
                        "AADSTS700016: Application with identifier '{client_id}' was not found in the directory."
                    ),
                ));
            }
            let ok: bool =
                subtle::ConstantTimeEq::ct_eq(secret.as_bytes(), cfg.client_secret.as_bytes()).into();
            if !ok {
                return Err(OAuthError::new(
                    401,
                    "invalid_client",
                    format!(
                        "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{client_id}'."
                    ),
                ));
            }
        } else if let Some(assertion) = get("client_assertion") {
            if get("client_assertion_type") != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
            {
                return Err(OAuthError::new(
                    400,
                    "invalid_request",
                    "AADSTS50027: Invalid client_assertion_type.",
                ));
            }
            self.verify_assertion(cfg, clock, client_id, assertion)?;
        } else {
            return Err(OAuthError::new(
                401,
                "invalid_client",
                "AADSTS7000218: The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
            ));
        }
        Ok(self.issue(cfg, clock, client_id, &resource))
    }

    fn verify_assertion(
        &self,
        cfg: &ArmSimConfig,
        clock: &SimClock,
        client_id: &str,
        assertion: &str,
    ) -> Result<(), OAuthError> {
        let mut v = Validation::new(Algorithm::HS256);
        v.validate_exp = false;
        v.validate_aud = false;
        v.required_spec_claims.clear();
        let data = jsonwebtoken::decode::<FederatedAssertionClaims>(
            assertion,
            &DecodingKey::from_secret(&self.federation_key),
            &v,
        )
        .map_err(|e| {
            OAuthError::new(
                401,
                "invalid_client",
                format!("AADSTS50013: Assertion failed signature validation. [Reason - {e}]"),
            )
        })?;
        let c = data.claims;
        let now = clock.now().timestamp();
        if c.exp + 300 < now {
            return Err(OAuthError::new(
                400,
                "invalid_client",
                "AADSTS700024: Client assertion is not within its valid time range.",
            ));
        }
        let matched = cfg.federated_credentials.iter().any(|fc| {
            fc.client_id == client_id && fc.issuer == c.iss && fc.subject == c.sub && fc.audience == c.aud
        });
        if !matched {
            return Err(OAuthError::new(
                400,
                "invalid_request",
                format!(
                    "AADSTS70021: No matching federated identity record found for presented assertion. Assertion Issuer: '{}'. Assertion Subject: '{}'. Assertion Audience: '{}'.",
                    c.iss, c.sub, c.aud
                ),
            ));
        }
        if let Ok(mut a) = self.accepted.lock() {
            a.push(c.jti);
        }
        Ok(())
    }

    /// Managed-identity endpoint: `client_id` selects a user-assigned identity.
    pub fn managed_identity(
        &self,
        cfg: &ArmSimConfig,
        clock: &SimClock,
        resource: &str,
        client_id: Option<&str>,
    ) -> Result<Issued, OAuthError> {
        let id = match client_id {
            Some(id) if cfg.managed_identities.iter().any(|m| m == id) => id.to_string(),
            Some(id) => {
                return Err(OAuthError::new(
                    400,
                    "invalid_request",
                    format!(
                        "Identity not found: no user-assigned identity with client id '{id}' is assigned"
                    ),
                ));
            }
            None => "system-assigned".to_string(),
        };
        if resource.is_empty() {
            return Err(OAuthError::new(
                400,
                "invalid_request",
                "Required query variable 'resource' is missing",
            ));
        }
        Ok(self.issue(cfg, clock, &id, resource))
    }

    fn issue(&self, cfg: &ArmSimConfig, clock: &SimClock, client_id: &str, resource: &str) -> Issued {
        let now = clock.now().timestamp();
        let lifetime = cfg.token_lifetime_secs.max(1) as i64;
        let claims = AccessClaims {
            aud: resource.to_string(),
            iss: format!("https://sts.windows.net/{}/", cfg.tenant_id),
            sub: client_id.to_string(),
            tid: cfg.tenant_id.clone(),
            appid: client_id.to_string(),
            oid: client_id.to_string(),
            iat: now,
            nbf: now - 300,
            exp: now + lifetime,
        };
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(&self.token_key),
        )
        .unwrap_or_default();
        self.issued.fetch_add(1, Ordering::Relaxed);
        let real = (lifetime as f64 / clock.scale()).ceil().max(1.0) as u64;
        Issued { token, expires_in_real: real, expires_on: now + lifetime, resource: resource.to_string() }
    }

    /// Verify an ARM bearer token: signature, simulated expiry and audience.
    pub fn verify_access(
        &self,
        token: &str,
        clock: &SimClock,
        audiences: &[String],
    ) -> Result<AccessClaims, (&'static str, String)> {
        let mut v = Validation::new(Algorithm::HS256);
        v.validate_exp = false;
        v.validate_aud = false;
        v.required_spec_claims.clear();
        let data =
            jsonwebtoken::decode::<AccessClaims>(token, &DecodingKey::from_secret(&self.token_key), &v)
                .map_err(|e| ("InvalidAuthenticationToken", format!("The access token is invalid: {e}.")))?;
        let c = data.claims;
        if c.exp <= clock.now().timestamp() {
            return Err((
                "ExpiredAuthenticationToken",
                "The access token expiry UTC time is earlier than current UTC time.".to_string(),
            ));
        }
        let aud = normalize_audience(&c.aud);
        if !audiences.iter().any(|a| normalize_audience(a) == aud) {
            return Err((
                "InvalidAuthenticationTokenAudience",
                format!("The access token has been obtained for wrong audience or resource '{}'.", c.aud),
            ));
        }
        Ok(c)
    }
}

/// `https://management.azure.com/.default` → `https://management.azure.com/`.
fn scope_resource(scope: &str) -> Option<String> {
    let s = scope.split_whitespace().next()?;
    let r = s.strip_suffix(".default")?;
    if r.is_empty() { None } else { Some(r.to_string()) }
}
