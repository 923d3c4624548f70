//! `workflow_job` webhook deliveries of the App: signed with `X-Hub-Signature-256` (HMAC-SHA256 of
//! the raw body, hex), with the App's `X-GitHub-Hook-Installation-Target-Type`/`-ID`, sent once
//! (GitHub does not redeliver failed deliveries on its own).
use std::sync::Weak;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::state::{Delivery, DeliveryRecord, Shared};

/// `sha256=<hex>` for `body` under `secret`, as GitHub computes it.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for Hmac<Sha256>.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

pub(crate) async fn sender(shared: Weak<Shared>, mut rx: tokio::sync::mpsc::UnboundedReceiver<Delivery>) {
    let client = match reqwest::Client::builder().timeout(std::time::Duration::from_secs(10)).build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the webhook HTTP client");
            return;
        }
    };
    while let Some(d) = rx.recv().await {
        let Some(s) = shared.upgrade() else { break };
        let Some(target) = s.webhook_target() else { continue };
        let sig = sign(target.secret.as_bytes(), d.body.as_bytes());
        // A GitHub App's webhook: the hook belongs to the App (`integration`, its App id).
        let app_id = s.app_credentials().app_id.to_string();
        let res = client
            .post(&target.url)
            .header("content-type", "application/json")
            .header("user-agent", "GitHub-Hookshot/sim")
            .header("x-github-event", "workflow_job")
            .header("x-github-delivery", &d.id)
            .header("x-github-hook-id", "1")
            .header("x-github-hook-installation-target-type", "integration")
            .header("x-github-hook-installation-target-id", app_id)
            .header("x-hub-signature-256", sig)
            .body(d.body)
            .send()
            .await;
        let (status, error) = match res {
            Ok(r) => (Some(r.status().as_u16()), None),
            Err(e) => (None, Some(e.to_string())),
        };
        s.record_delivery(DeliveryRecord {
            delivery_id: d.id,
            action: d.action,
            job_id: d.job_id,
            dropped: false,
            status,
            error,
            at: s.clock.now(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn github_docs_vector() {
        assert_eq!(
            sign(b"It's a Secret to Everybody", b"Hello, World!"),
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
    }
}
