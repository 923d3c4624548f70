//! aci-runner-controller: GitHub Actions self-hosted runners on Azure Container Instances,
//! declared as `RunnerPool` custom resources.
//!
//! This crate holds the edges and the wiring around the pure core ([`aci_runner_core`]: the API
//! types and the planner): the Azure and GitHub clients ([`azure`], [`github`]) and the controller
//! ([`controller`]: watch, credentials → observe → plan → execute → report).
pub mod azure;
pub mod controller;
pub mod egress;
pub mod github;
pub mod sync;
