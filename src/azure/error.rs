//! Why Azure said no: ARM answers classified by HTTP status and error code.
use std::time::Duration;

/// Retry-After used when a 429 carries none.
pub const DEFAULT_THROTTLE_WAIT: Duration = Duration::from_secs(10);
/// Longest wait a server's `Retry-After` can impose; a larger one waits this long.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Every failure of the Azure edge.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AzureError {
    /// 429 (ARM throttling or ACI's create-rate limit), or a local rate-limit bucket that is empty.
    #[error("throttled (code {code:?}); retry after {retry_after:?}")]
    Throttled {
        retry_after: Duration,
        code: Option<String>,
        /// True when the client-side bucket refused before any request was sent.
        local: bool,
    },
    /// 5xx, timeouts, connection failures: the same request may succeed later.
    #[error("transient Azure failure (status {status:?}, code {code:?}): {message}")]
    Transient { status: Option<u16>, code: Option<String>, message: String, retry_after: Option<Duration> },
    /// `ContainerGroupQuotaReached` (container groups or cores) and other quota codes.
    #[error("Azure quota exceeded ({code}): {message}")]
    QuotaExceeded { code: String, message: String },
    /// `ServiceUnavailable` / `InsufficientCapacity` answered for a region.
    #[error("no capacity in {location} ({code}): {message}")]
    CapacityUnavailable { location: String, code: String, message: String },
    /// `InaccessibleImage`, `RegistryErrorResponse`: the image cannot be pulled.
    #[error("invalid or inaccessible image ({code}): {message}")]
    InvalidImage { code: String, message: String },
    /// 401/403. `permission` names the missing action when ARM says it.
    #[error("not authorized (status {status}, code {code:?}, missing permission {permission:?}): {message}")]
    Auth { status: u16, code: Option<String>, permission: Option<String>, message: String },
    /// Token acquisition failed (Entra ID, managed identity, federated token file).
    #[error("credential error: {message}")]
    Credential { message: String, retryable: bool },
    /// 409 other than quota/capacity.
    #[error("conflict ({code:?}): {message}")]
    Conflict { code: Option<String>, message: String },
    /// 404.
    #[error("not found ({code:?}): {message}")]
    NotFound { code: Option<String>, message: String },
    /// Other 4xx: ARM rejected the request; its message is kept.
    #[error("invalid container group spec (status {status}, code {code:?}): {message}")]
    InvalidSpec { status: u16, code: Option<String>, message: String },
    /// The answer could not be understood (e.g. unparsable body on success).
    #[error("unexpected Azure answer: {0}")]
    Unexpected(String),
    /// The answer was larger than the edge reads (a body above the cap, a list with more pages
    /// than the edge follows): not retried as is.
    #[error("Azure answer too large: {0}")]
    ResponseTooLarge(String),
}

impl AzureError {
    /// The same request may succeed if simply sent again later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, AzureError::Throttled { .. } | AzureError::Transient { .. })
            || matches!(self, AzureError::Credential { retryable: true, .. })
    }

    /// How long to wait before trying again, when Azure (or the local bucket) said so.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            AzureError::Throttled { retry_after, .. } => Some(*retry_after),
            AzureError::Transient { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Short, stable label for metrics and conditions.
    pub fn class(&self) -> &'static str {
        match self {
            AzureError::Throttled { .. } => "throttled",
            AzureError::Transient { .. } => "transient",
            AzureError::QuotaExceeded { .. } => "quota_exceeded",
            AzureError::CapacityUnavailable { .. } => "capacity_unavailable",
            AzureError::InvalidImage { .. } => "invalid_image",
            AzureError::Auth { .. } => "auth",
            AzureError::Credential { .. } => "credential",
            AzureError::Conflict { .. } => "conflict",
            AzureError::NotFound { .. } => "not_found",
            AzureError::InvalidSpec { .. } => "invalid_spec",
            AzureError::Unexpected(_) => "unexpected",
            AzureError::ResponseTooLarge(_) => "response_too_large",
        }
    }
}

/// A non-success ARM answer, as read from the wire.
#[derive(Debug, Clone, PartialEq)]
pub struct ArmFailure {
    pub status: u16,
    pub code: Option<String>,
    pub message: String,
    pub retry_after: Option<Duration>,
    pub correlation_id: Option<String>,
}

impl std::fmt::Display for ArmFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ARM answered {} ({:?}): {}", self.status, self.code, self.message)
    }
}

impl std::error::Error for ArmFailure {}

impl ArmFailure {
    /// Parse ARM's error body (`{"error": {"code", "message"}}`), falling back to the
    /// `x-ms-error-code` header, and the `Retry-After` header (seconds or HTTP date).
    pub fn from_parts(
        status: u16,
        header: impl Fn(&str) -> Option<String>,
        body: &[u8],
        now: chrono::DateTime<chrono::Utc>,
    ) -> Self {
        let v: serde_json::Value = serde_json::from_slice(body).unwrap_or(serde_json::Value::Null);
        let err = v.get("error").unwrap_or(&v);
        let pick = |k: &str, alt: &str| {
            err.get(k).or_else(|| err.get(alt)).and_then(|x| x.as_str()).map(str::to_string)
        };
        let code = pick("code", "Code").or_else(|| header("x-ms-error-code"));
        let message = pick("message", "Message")
            .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(500).collect());
        let retry_after = header("retry-after").and_then(|r| parse_retry_after(&r, now));
        Self { status, code, message, retry_after, correlation_id: header("x-ms-correlation-request-id") }
    }
}

/// `Retry-After`: delta-seconds or an HTTP date, at most [`MAX_RETRY_AFTER`].
pub fn parse_retry_after(v: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER));
    }
    if let Ok(secs) = v.parse::<f64>()
        && secs.is_finite()
        && secs >= 0.0
    {
        // Compared before the conversion: `from_secs_f64` panics above `Duration::MAX`.
        return Some(Duration::from_secs_f64(secs.min(MAX_RETRY_AFTER.as_secs_f64())));
    }
    let t = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    Some(
        t.with_timezone(&chrono::Utc)
            .signed_duration_since(now)
            .to_std()
            .unwrap_or(Duration::ZERO)
            .min(MAX_RETRY_AFTER),
    )
}

fn code_is(code: Option<&str>, names: &[&str]) -> bool {
    code.is_some_and(|c| names.iter().any(|n| c.eq_ignore_ascii_case(n)))
}

/// The permission ARM names in an `AuthorizationFailed` message ("perform action 'X'").
fn missing_permission(message: &str) -> Option<String> {
    let i = message.find("perform action '")? + "perform action '".len();
    let rest = &message[i..];
    let j = rest.find('\'')?;
    Some(rest[..j].to_string())
}

/// Classify an ARM failure. `location` is the region the request targeted (for capacity errors).
pub fn classify(f: &ArmFailure, location: &str) -> AzureError {
    let code = f.code.as_deref();
    let message = f.message.clone();
    let owned = || code.unwrap_or_default().to_string();
    if f.status == 429 {
        return AzureError::Throttled {
            retry_after: f.retry_after.unwrap_or(DEFAULT_THROTTLE_WAIT),
            code: f.code.clone(),
            local: false,
        };
    }
    if code_is(code, &["ContainerGroupQuotaReached", "QuotaExceeded", "OperationNotAllowed"])
        && (f.status == 409 || f.status == 400 || f.status == 403)
    {
        return AzureError::QuotaExceeded { code: owned(), message };
    }
    if code_is(code, &["InsufficientCapacity", "SkuNotAvailable"])
        || (code_is(code, &["ServiceUnavailable"]) && f.status < 500)
    {
        return AzureError::CapacityUnavailable { location: location.to_string(), code: owned(), message };
    }
    if code_is(code, &["InaccessibleImage", "RegistryErrorResponse", "ImageNotFound"]) {
        return AzureError::InvalidImage { code: owned(), message };
    }
    match f.status {
        401 | 403 => AzureError::Auth {
            status: f.status,
            code: f.code.clone(),
            permission: missing_permission(&f.message),
            message,
        },
        408 | 500..=599 => AzureError::Transient {
            status: Some(f.status),
            code: f.code.clone(),
            message,
            retry_after: f.retry_after,
        },
        404 => AzureError::NotFound { code: f.code.clone(), message },
        409 => AzureError::Conflict { code: f.code.clone(), message },
        _ => AzureError::InvalidSpec { status: f.status, code: f.code.clone(), message },
    }
}

/// Map an azure_core error (from the pipeline or a credential) to [`AzureError`].
pub fn from_core(e: &azure_core::Error, location: &str) -> AzureError {
    // Our per-retry policy puts the parsed ARM answer into the error chain.
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(f) = err.downcast_ref::<ArmFailure>() {
            return classify(f, location);
        }
        if let Some(t) = err.downcast_ref::<super::http::BodyTooLarge>() {
            return AzureError::ResponseTooLarge(t.to_string());
        }
        cur = err.source();
    }
    if let Some(h) = e.as_http_error() {
        let f = ArmFailure {
            status: h.status() as u16,
            code: h.error_code().map(str::to_string),
            message: h.error_message().unwrap_or_default().to_string(),
            retry_after: None,
            correlation_id: None,
        };
        return classify(&f, location);
    }
    match e.kind() {
        azure_core::error::ErrorKind::Io => {
            AzureError::Transient { status: None, code: None, message: e.to_string(), retry_after: None }
        }
        azure_core::error::ErrorKind::Credential => {
            AzureError::Credential { message: e.to_string(), retryable: credential_retryable(e) }
        }
        _ => AzureError::Unexpected(e.to_string()),
    }
}

fn credential_retryable(e: &azure_core::Error) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(c) = err.downcast_ref::<azure_core::Error>() {
            match c.kind() {
                azure_core::error::ErrorKind::Io => return true,
                azure_core::error::ErrorKind::HttpResponse { status, .. } => {
                    let s = *status as u16;
                    return s == 429 || s >= 500;
                }
                _ => {}
            }
        }
        cur = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Absurd `Retry-After` values wait at most [`MAX_RETRY_AFTER`] and never panic
    /// (`Duration::from_secs_f64(1e300)` would).
    #[test]
    fn absurd_retry_after_values_are_clamped() {
        let now = chrono::Utc::now();
        for v in ["99999999999999999", "18446744073709551615", "1e300", "1.7976931348623157e308", "3600.5"] {
            assert_eq!(parse_retry_after(v, now), Some(MAX_RETRY_AFTER), "{v}");
        }
        assert_eq!(parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", now), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("Mon, 01 Jan 1900 00:00:00 GMT", now), Some(Duration::ZERO));
        for v in ["-1", "NaN", "inf", "-inf", ""] {
            assert_eq!(parse_retry_after(v, now), None, "{v}");
        }
        assert_eq!(parse_retry_after("12", now), Some(Duration::from_secs(12)));
        let f = ArmFailure::from_parts(
            429,
            |k| (k == "retry-after").then(|| "99999999999999999".into()),
            b"",
            now,
        );
        assert_eq!(classify(&f, "x").retry_after(), Some(MAX_RETRY_AFTER));
    }
}
