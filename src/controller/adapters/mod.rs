//! The adapters that implement the controller's ports ([`super::ports`]) with the edges: the
//! Azure client behind [`super::ports::ContainerGroups`], the GitHub client behind
//! [`super::ports::RunnerRegistrations`]. Each turns the edge's errors into the planner's
//! [`aci_runner_core::plan::EdgeError`] and the edge's types into the planner's.
pub mod azure;
pub mod github;
