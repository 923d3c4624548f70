//! Label matching between queued jobs and a pool, and registration labels.
use std::collections::BTreeSet;

use chrono::{DateTime, Utc};

use crate::crd::{OsType, RunnerPoolSpec};

use super::types::QueuedJob;

/// Default labels GitHub gives every self-hosted runner of the pool (ACI is x64 only).
pub fn default_labels(spec: &RunnerPoolSpec) -> [&'static str; 3] {
    let os = match spec.runner.os_type {
        OsType::Linux => "linux",
        OsType::Windows => "windows",
    };
    ["self-hosted", os, "x64"]
}

/// Lowercased set of labels the pool's runners carry: defaults plus `spec.github.labels`.
pub fn pool_label_set(spec: &RunnerPoolSpec) -> BTreeSet<String> {
    default_labels(spec)
        .iter()
        .map(|l| l.to_string())
        .chain(spec.github.labels.iter().map(|l| l.to_ascii_lowercase()))
        .collect()
}

/// Labels for a JIT config: defaults first, then the custom labels, without duplicates.
pub fn jit_labels(spec: &RunnerPoolSpec) -> Vec<String> {
    let mut seen = BTreeSet::new();
    default_labels(spec)
        .iter()
        .map(|l| l.to_string())
        .chain(spec.github.labels.iter().cloned())
        .filter(|l| seen.insert(l.to_ascii_lowercase()))
        .collect()
}

/// Can a runner of this pool take a job with these `runs-on` labels? Every job label must be a
/// pool label (case-insensitive); a job without labels matches nothing.
pub fn job_matches(pool_labels: &BTreeSet<String>, job_labels: &[String]) -> bool {
    !job_labels.is_empty() && job_labels.iter().all(|l| pool_labels.contains(&l.to_ascii_lowercase()))
}

/// Jobs queued within the TTL whose labels the pool satisfies.
pub fn matching_queued(
    spec: &RunnerPoolSpec,
    jobs: &[QueuedJob],
    now: DateTime<Utc>,
    ttl: std::time::Duration,
) -> usize {
    let labels = pool_label_set(spec);
    let ttl = chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
    let mut ids = BTreeSet::new();
    jobs.iter()
        .filter(|j| now.signed_duration_since(j.queued_at) <= ttl)
        .filter(|j| job_matches(&labels, &j.labels))
        .filter(|j| ids.insert(j.id))
        .count()
}

/// Does a registration carry all of the pool's custom labels (case-insensitive)?
pub fn runner_has_pool_labels(spec: &RunnerPoolSpec, runner_labels: &[String]) -> bool {
    let have: BTreeSet<String> = runner_labels.iter().map(|l| l.to_ascii_lowercase()).collect();
    spec.github.labels.iter().all(|l| have.contains(&l.to_ascii_lowercase()))
}
