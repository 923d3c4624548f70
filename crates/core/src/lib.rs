//! The pure core of aci-runner-controller: the `RunnerPool` API types ([`crd`]) and the planner
//! ([`plan`]), which turns a desired pool and an observed world into actions, status and Events.
//!
//! Nothing here performs I/O or reads a clock: every input, `now` included, is passed in. The
//! crate's dependencies (no async runtime, HTTP stack or kube client) keep it that way.
pub mod crd;
pub mod plan;
pub mod policy;
