//! Simulated Azure (ARM/ACI container groups, Entra ID token endpoint) and GitHub (App auth,
//! runners API, jobs, webhooks) with simulated runners inside the container groups.
//!
//! Used by tests, the demo and the benchmarks; never by the controller's production path.
pub mod arm;
pub mod clock;
pub mod github;
pub mod runtime;
