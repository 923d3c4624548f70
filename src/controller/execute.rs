//! Execute: the planner's actions, in order, through the ports. Nothing here decides what to do;
//! it only carries the plan out and reports each failure, classified, to the next pass.
use std::collections::BTreeSet;

use tracing::warn;

use super::Context;
use super::failure_logs::{TAIL_LINES, publishable_tail};
use super::ports::{CreateGroup, JitRunner, PoolContext, RunnerSecret};
use aci_runner_core::crd::RunnerFailure;
use aci_runner_core::plan::{
    Action, ActionFailure, EdgeError, EdgeErrorKind, RemovalReason, RunnerRegistration,
};

/// What executing a pass's actions left to report.
#[derive(Debug, Default)]
pub struct Executed {
    /// The failed actions (reported to the next pass).
    pub failures: Vec<ActionFailure>,
    /// Runners removed as failed, crashed or timed out, each with its log tail as read just
    /// before its group's delete was sent.
    pub failed_runners: Vec<RunnerFailure>,
}

/// Execute the planner's actions in order.
pub async fn execute(ctx: &Context, pool: &PoolContext, actions: &[Action]) -> Executed {
    let mut failed_runners = Vec::new();
    let mut failures = Vec::new();
    let mut unregistered: BTreeSet<u64> = BTreeSet::new();
    // Set by the first create that hit quota, capacity or throttling: the rest of this pass's
    // creates would hit the same wall, so they are reported with that error instead of sent.
    let mut create_wall: Option<EdgeError> = None;
    for action in actions {
        if let (Action::CreateRunner { .. }, Some(error)) = (action, &create_wall) {
            ctx.metrics.action("create_runner", "Create", "skipped");
            failures.push(ActionFailure {
                action: action.clone(),
                error: error.clone(),
                registered_runner: None,
            });
            continue;
        }
        let result: Result<Option<u64>, (EdgeError, Option<u64>)> = match action {
            Action::CreateRunner { name, location, priority, registration } => {
                create_runner(ctx, pool, name, location, *priority, registration).await
            }
            Action::UnregisterRunner { id, .. } => match ctx.registrations.unregister(pool, *id).await {
                Ok(()) => {
                    unregistered.insert(*id);
                    Ok(None)
                }
                Err(e) if e.kind == EdgeErrorKind::NotFound => {
                    unregistered.insert(*id);
                    Ok(None)
                }
                Err(e) => Err((e, None)),
            },
            Action::DeleteGroup { name, only_if_unregistered, only_if_unlisted, reason } => {
                if let Some(id) = only_if_unregistered
                    && !unregistered.contains(id)
                {
                    // The registration could not be removed (it may have just taken a job):
                    // never delete the group under a possibly busy runner.
                    continue;
                }
                match unlisted_now(ctx, pool, name, *only_if_unlisted).await {
                    Ok(true) => {
                        if is_failure(*reason) {
                            failed_runners.push(failed_runner(ctx, pool, name, *reason).await);
                        }
                        ctx.groups.delete_group(pool, name).await.map(|_| None).map_err(|e| (e, None))
                    }
                    // Registered since the pass's list was read: the next pass sees the
                    // registration and removes it first (or leaves a busy runner alone). Reported
                    // as a conflict, so that the planner decides about it again at once instead
                    // of waiting for a removal that was never sent.
                    Ok(false) => {
                        ctx.metrics.action(action_kind(action), reason.as_str(), "skipped");
                        failures.push(ActionFailure {
                            action: action.clone(),
                            error: EdgeError::new(
                                EdgeErrorKind::Conflict,
                                "not deleted: its runner registered after the pass's runner list",
                            ),
                            registered_runner: None,
                        });
                        continue;
                    }
                    // Unknown is not "unregistered": the delete waits for a list that answers.
                    Err(e) => Err((e, None)),
                }
            }
            Action::ReleaseGroup { name } => {
                ctx.groups.release_group(pool, name).await.map(|_| None).map_err(|e| (e, None))
            }
        };
        let kind = action_kind(action);
        let reason = match action {
            Action::CreateRunner { .. } => "Create",
            Action::UnregisterRunner { reason, .. } | Action::DeleteGroup { reason, .. } => reason.as_str(),
            Action::ReleaseGroup { .. } => "Release",
        };
        match result {
            Ok(_) => ctx.metrics.action(kind, reason, "ok"),
            Err((error, registered_runner)) => {
                ctx.metrics.action(kind, reason, "error");
                warn!(pool = %pool.meta.name, action = kind, name = action.name(), error = %error.message, "action failed");
                let quota_or_capacity =
                    matches!(error.kind, EdgeErrorKind::QuotaExceeded | EdgeErrorKind::CapacityUnavailable);
                let throttled = matches!(error.kind, EdgeErrorKind::Throttled { .. });
                if matches!(action, Action::CreateRunner { .. }) && (quota_or_capacity || throttled) {
                    create_wall = Some(error.clone());
                }
                failures.push(ActionFailure { action: action.clone(), error, registered_runner });
            }
        }
    }
    Executed { failures, failed_runners }
}

/// Removals whose container log is worth keeping: the group failed, its container crashed, or
/// its runner never came online. A finished (exit 0) runner's log is not read.
fn is_failure(reason: RemovalReason) -> bool {
    matches!(reason, RemovalReason::Failed | RemovalReason::Crashed | RemovalReason::RegistrationTimeout)
}

/// The failed runner `name` with the publishable tail of its container log. A log that cannot
/// be read (no container ever ran, the edge failed) leaves the tail out; the delete goes on.
async fn failed_runner(
    ctx: &Context,
    pool: &PoolContext,
    name: &str,
    reason: RemovalReason,
) -> RunnerFailure {
    let log_tail = match ctx.groups.container_logs(pool, name, TAIL_LINES).await {
        Ok(log) => publishable_tail(&log),
        Err(e) => {
            tracing::debug!(pool = %pool.meta.name, group = name, error = %e.message, "reading the failed runner's log failed; deleting it anyway");
            None
        }
    };
    RunnerFailure {
        runner: name.to_string(),
        reason: reason.as_str().to_string(),
        time: (ctx.clock)().to_rfc3339(),
        log_tail,
    }
}

/// For a delete guarded by `only_if_unlisted`: does a runner list read now show no
/// registration named `name`? Unguarded deletes need no list.
async fn unlisted_now(
    ctx: &Context,
    pool: &PoolContext,
    name: &str,
    guarded: bool,
) -> Result<bool, EdgeError> {
    if !guarded {
        return Ok(true);
    }
    let registered = ctx.registrations.is_registered_now(pool, name).await?;
    if registered {
        tracing::debug!(pool = %pool.meta.name, group = name, "delete skipped: its runner registered after the pass's list");
    }
    Ok(!registered)
}

fn action_kind(a: &Action) -> &'static str {
    match a {
        Action::CreateRunner { .. } => "create_runner",
        Action::UnregisterRunner { .. } => "unregister_runner",
        Action::DeleteGroup { .. } => "delete_group",
        Action::ReleaseGroup { .. } => "release_group",
    }
}

async fn create_runner(
    ctx: &Context,
    pool: &PoolContext,
    name: &str,
    location: &str,
    priority: aci_runner_core::crd::Priority,
    registration: &RunnerRegistration,
) -> Result<Option<u64>, (EdgeError, Option<u64>)> {
    let (secret, runner_id) = match registration {
        RunnerRegistration::Jit { labels, runner_group } => {
            let reg = ctx
                .registrations
                .register_jit(pool, JitRunner { name, labels, runner_group: runner_group.as_deref() })
                .await
                .map_err(|e| (e, None))?;
            (RunnerSecret::Jit { encoded: reg.encoded }, Some(reg.runner_id))
        }
        RunnerRegistration::Token { labels, runner_group, ephemeral } => {
            let (url, token) = ctx.registrations.registration_token(pool).await.map_err(|e| (e, None))?;
            (
                RunnerSecret::Token {
                    url,
                    token,
                    labels: labels.clone(),
                    runner_group: runner_group.clone(),
                    ephemeral: *ephemeral,
                },
                None,
            )
        }
    };
    let req = CreateGroup {
        name: name.to_string(),
        location: location.to_string(),
        priority,
        secret,
        created: (ctx.clock)(),
        install_id: ctx.install.to_string(),
    };
    ctx.groups.create_group(pool, req).await.map(|_| runner_id).map_err(|e| (e, runner_id))
}
