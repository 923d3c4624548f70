//! `aci-runner-devkit`: the simulator, the demo driver, the benchmarks and the fault soak.
use clap::{Parser, Subcommand};

/// Development tools of aci-runner-controller (never shipped).
#[derive(Parser, Debug)]
#[command(name = "aci-runner-devkit", version, about)]
struct Cli {
    #[command(flatten)]
    log: aci_runner_controller::controller::run::LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the simulated Azure (ARM/ACI, Entra ID) and GitHub (App, runners, jobs, webhooks).
    Sim(Box<aci_runner_devkit::sim::SimArgs>),
    /// The demo driver, benchmarks and fault soak (the controller as its own process).
    Bench(Box<aci_runner_devkit::bench::BenchCli>),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    cli.log.init();
    match cli.command {
        Command::Sim(args) => aci_runner_devkit::sim::run_cli(*args),
        Command::Bench(cli) => aci_runner_devkit::bench::run_cli(*cli),
    }
}
