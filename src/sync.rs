//! The one policy for a poisoned mutex: take the guard anyway.
//!
//! Every value behind a `std::sync::Mutex` in this crate is replaced or updated by single
//! assignments and whole-entry inserts, so a panic while the lock was held cannot leave it half
//! written; refusing the lock after such a panic would only turn one failed task into a stalled
//! controller (a reconcile that requeues forever, a metric that stops counting).
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Lock `m`, recovering the guard if a holder panicked.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
