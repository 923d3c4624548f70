//! Test support shared by the integration tests, the demo and the benchmarks: the upstream API
//! descriptions in `../shared/specs/` and the local Kubernetes control plane.
pub mod control_plane;
pub mod harness;
pub mod specs;
