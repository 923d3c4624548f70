//! aci-runner-controller: GitHub Actions self-hosted runners on Azure Container Instances,
//! declared as `RunnerPool` custom resources.
pub mod azure;
pub mod bench;
pub mod controller;
pub mod crd;
pub mod github;
pub mod plan;
pub mod sim;
pub mod testing;
