//! The HTTP client of every ARM and Entra ID exchange: reqwest with a connect timeout and a total
//! per-request deadline, and answer bodies capped while they stream in.
//!
//! A wrapper around azure_core's `HttpClient` rather than a policy: the pipeline, the credential
//! flows (client secret, managed identity, azure_identity's federated flow) and the answer policy
//! all send through one `HttpClient`, so one wrapper bounds every body the edge reads.
use std::sync::Arc;
use std::time::Duration;

use azure_core::error::{Error as CoreError, ErrorKind};
use azure_core::{HttpClient, Request, Response};
use futures::StreamExt;

/// Largest answer body read from ARM or Entra ID: a list page of 100 container groups with their
/// instance views is well under a megabyte.
pub const MAX_BODY_BYTES: usize = 32 << 20;
/// Connect timeout of every exchange.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Total deadline of one exchange (connect, send, read the whole answer) unless configured.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The body of an answer passed [`MAX_BODY_BYTES`] (in the error chain of an azure_core error;
/// `error::from_core` turns it into `AzureError::ResponseTooLarge`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the answer exceeds {limit} bytes")]
pub struct BodyTooLarge {
    pub limit: usize,
}

/// An azure_core HTTP client whose answer bodies end with a [`BodyTooLarge`] error once they
/// pass `limit` bytes: the reader stops there and drops the rest unread.
#[derive(Debug)]
pub struct CappedHttpClient {
    inner: Arc<dyn HttpClient>,
    limit: usize,
}

/// reqwest with [`CONNECT_TIMEOUT`] and `timeout` for the whole exchange, TLS trust `tls`, bodies
/// capped at [`MAX_BODY_BYTES`]. reqwest's proxy from the environment stays on (`HTTPS_PROXY`,
/// `NO_PROXY`, see [`crate::egress`]). Falls back to azure_core's default reqwest client (no timeouts, bodies
/// still capped) only if reqwest cannot be built with these settings; callers also bound each
/// exchange with their own deadline.
pub fn client(timeout: Duration, tls: &crate::egress::Tls) -> Arc<dyn HttpClient> {
    // No idle connections kept, as azure_core's own reqwest client does (hyper issue 2312).
    let mut builder = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .connect_timeout(CONNECT_TIMEOUT.min(timeout))
        .timeout(timeout);
    if let Some(config) = tls.client_config() {
        builder = builder.use_preconfigured_tls(config);
    }
    let inner: Arc<dyn HttpClient> = match builder.build() {
        Ok(c) => Arc::new(c),
        Err(e) => {
            tracing::error!(error = %e, "cannot build the Azure HTTP client with timeouts; using the default");
            azure_core::new_http_client()
        }
    };
    Arc::new(CappedHttpClient { inner, limit: MAX_BODY_BYTES })
}

impl CappedHttpClient {
    pub fn new(inner: Arc<dyn HttpClient>, limit: usize) -> Self {
        Self { inner, limit }
    }
}

#[async_trait::async_trait]
impl HttpClient for CappedHttpClient {
    async fn execute_request(&self, request: &Request) -> azure_core::Result<Response> {
        let rsp = self.inner.execute_request(request).await?;
        let (status, headers, body) = rsp.deconstruct();
        let limit = self.limit;
        let mut read = 0usize;
        let capped = body.map(move |chunk| {
            let chunk = chunk?;
            read = read.saturating_add(chunk.len());
            if read > limit {
                return Err(CoreError::new(ErrorKind::Io, BodyTooLarge { limit }));
            }
            Ok(chunk)
        });
        Ok(Response::new(status, headers, Box::pin(capped)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use azure_core::{Method, StatusCode, Url};
    use bytes::Bytes;

    /// Answers every request with 200 and an endless body of 64 KiB chunks.
    #[derive(Debug)]
    struct Endless;

    #[async_trait::async_trait]
    impl HttpClient for Endless {
        async fn execute_request(&self, _: &Request) -> azure_core::Result<Response> {
            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
            let body = futures::stream::repeat_with(move || Ok(chunk.clone()));
            Ok(Response::new(StatusCode::Ok, Default::default(), Box::pin(body)))
        }
    }

    #[tokio::test]
    async fn an_endless_body_ends_at_the_cap_with_a_classified_error() {
        let http = CappedHttpClient::new(Arc::new(Endless), 1 << 20);
        let req = Request::new(Url::parse("http://127.0.0.1:1/x").unwrap(), Method::Get);
        let e = http.execute_request(&req).await.unwrap().into_body().collect().await.unwrap_err();
        let classified = crate::azure::error::from_core(&e, "westeurope");
        assert!(matches!(&classified, crate::azure::AzureError::ResponseTooLarge { .. }), "{classified:?}");
        assert!(!classified.is_retryable());
        assert!(classified.to_string().contains("1048576"), "{classified}");
    }
}
