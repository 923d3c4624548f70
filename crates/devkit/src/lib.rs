//! Development tools of aci-runner-controller; none of this ships in the production binary or
//! image.
//!
//! - [`sim`]: the simulated Azure (ARM/ACI, Entra ID) and GitHub (App, REST runners API, jobs,
//!   webhooks), checked against the official API descriptions and driven over HTTP by the real
//!   client crates.
//! - [`testing`]: the end-to-end harness (local control plane, simulator, controller in-process).
//! - [`bench`]: the demo driver, the benchmarks and the fault soak, which run the production
//!   binary (`aci-runner-controller run`) as its own process.
pub mod bench;
pub mod sim;
pub mod testing;
