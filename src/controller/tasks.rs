//! Panics contained: a reconcile pass or a background task that panics is counted
//! (`aci_runner_controller_task_failures_total{task}`), logged, and the rest of the controller
//! goes on. Without this, kube-runtime re-raises a reconciler's panic and the process exits, and
//! a panicked `tokio::spawn` task ends without a trace.
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::FutureExt;
use tracing::error;

use super::metrics::Metrics;

/// Run `fut`; a panic becomes `Err(message)`.
///
/// `AssertUnwindSafe`: what a contained future shares is behind mutexes that `crate::sync::lock`
/// takes even when poisoned (every value there is written whole), and the per-pool planner
/// memory a panicked pass held is rebuilt from Azure and GitHub on the next pass.
pub async fn contain<F: Future>(fut: F) -> Result<F::Output, String> {
    AssertUnwindSafe(fut).catch_unwind().await.map_err(|p| panic_message(p.as_ref()))
}

/// A panic's message (at most 500 characters), when it has one.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let msg = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into());
    msg.chars().take(500).collect()
}

/// Spawn a background task that should run until shutdown: a panic in it is counted under
/// `task` and logged as an error (it is not restarted; tasks that must go on after a panic,
/// like the orphan GC, contain each of their passes with [`contain`]).
pub fn spawn(task: &'static str, metrics: Arc<Metrics>, fut: impl Future<Output = ()> + Send + 'static) {
    tokio::spawn(async move {
        if let Err(message) = contain(fut).await {
            metrics.task_failure(task);
            error!(task, panic = %message, "background task panicked and stopped");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_becomes_an_error_with_its_message() {
        assert_eq!(contain(async { 7 }).await, Ok(7));
        let r = contain(async {
            let v: Vec<u8> = Vec::new();
            v[3]
        })
        .await;
        assert!(r.as_ref().is_err_and(|m| m.contains("index out of bounds")), "{r:?}");
        let r = contain(async { std::panic::panic_any(5u8) }).await;
        assert_eq!(r, Err("a panic without a message".to_string()));
        let long = "x".repeat(2000);
        let r: Result<(), String> = contain(async move { panic!("{long}") }).await;
        assert_eq!(r.unwrap_err().len(), 500);
    }

    #[tokio::test]
    async fn a_panicked_task_is_counted() {
        let metrics = Arc::new(Metrics::new());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        spawn("demo", metrics.clone(), async move {
            let _tx = tx;
            panic!("boom");
        });
        let _ = rx.await; // the sender is dropped once the task unwound
        let text = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            loop {
                let text = metrics.encode();
                if text.contains(r#"aci_runner_controller_task_failures_total{task="demo"} 1"#) {
                    return text;
                }
                tokio::task::yield_now().await;
            }
        })
        .await;
        assert!(text.is_ok());
    }
}
