//! `aci-runner-devkit`: the simulator, the demo driver, the benchmarks and the fault soak.
use aci_runner_controller::controller::run::parse_cli;
use clap::Subcommand;

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the simulated Azure (ARM/ACI, Entra ID) and GitHub (App, runners, jobs, webhooks).
    Sim(Box<aci_runner_devkit::sim::SimArgs>),
    /// The demo driver, benchmarks and fault soak (the controller as its own process).
    Bench(Box<aci_runner_devkit::bench::BenchCli>),
}

fn main() -> anyhow::Result<()> {
    match parse_cli::<Command>(aci_runner_controller::bin_info!()) {
        Command::Sim(args) => aci_runner_devkit::sim::run_cli(*args),
        Command::Bench(cli) => aci_runner_devkit::bench::run_cli(*cli),
    }
}
