//! The demo driver, the benchmarks and the fault soak (`aci-runner-devkit bench ...`).
//!
//! Everything here drives the controller from the outside: the controller runs as its own
//! process (`aci-runner-controller run`) against the simulator and a real API server, exactly
//! as in production but with endpoints and credentials pointing at the simulator.
pub mod demo;
pub mod observe;
pub mod perf;
pub mod procs;
pub mod soak;

/// `aci-runner-devkit bench ...`
#[derive(clap::Args, Debug, Clone)]
pub struct BenchCli {
    #[command(subcommand)]
    pub command: BenchCommand,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum BenchCommand {
    /// The workload, live view and summary of `scripts/demo` (the processes are started by the script).
    Demo(Box<demo::DemoArgs>),
    /// The performance figures P1..P6 (JSON result and markdown report).
    Run(Box<perf::BenchArgs>),
    /// Randomized fault schedules against the controller process; invariants after settling.
    Soak(Box<soak::SoakArgs>),
}

/// Seed a runner as if a controller had created it: its JIT registration in `scope` with
/// `labels`, then its container group (tagged for `owner`) in the pool's resource group, whose
/// container starts the simulated runner. Returns the registration's id.
pub fn seed_runner(
    sim: &crate::sim::Simulator,
    spec: &aci_runner_core::crd::RunnerPoolSpec,
    owner: &aci_runner_controller::azure::GroupOwner,
    scope: &crate::sim::github::ScopeKey,
    name: &str,
    labels: &[String],
) -> anyhow::Result<i64> {
    use aci_runner_controller::azure::{RunnerBootstrap, RunnerTemplateInput, container_group};
    let (id, encoded) = sim
        .github
        .seed_jit_runner(scope, name, labels, 1)
        .map_err(|e| anyhow::anyhow!("seeding runner {name}: {e}"))?;
    let input = RunnerTemplateInput {
        name: name.to_string(),
        location: spec.azure.location.clone(),
        priority: aci_runner_core::crd::Priority::Regular,
        registration: RunnerBootstrap::Jit { encoded_config: encoded.into() },
        secure_env: Vec::new(),
        registry_password: None,
        created: sim.clock.now(),
    };
    let body = serde_json::to_value(container_group(spec, owner, &input))?;
    sim.arm
        .seed_group(&spec.azure.subscription_id, &spec.azure.resource_group, name, &body)
        .map_err(|e| anyhow::anyhow!("seeding group {name}: {e}"))?;
    Ok(id)
}

/// Run a `bench` subcommand.
pub fn run_cli(cli: BenchCli) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    // Ctrl-C / SIGTERM drop the running command: the controller processes it started are killed
    // (their handles' Drop); the control plane stops with this process (its watchdog).
    rt.block_on(async move {
        tokio::select! {
            r = run_command(cli) => r,
            _ = aci_runner_controller::controller::run::shutdown_signal() => anyhow::bail!("interrupted"),
        }
    })
}

async fn run_command(cli: BenchCli) -> anyhow::Result<()> {
    {
        match cli.command {
            BenchCommand::Demo(args) => demo::run(*args).await,
            BenchCommand::Run(args) => {
                let command = std::env::args().collect::<Vec<_>>().join(" ");
                let args = *args;
                let report = perf::run(args.clone(), command).await?;
                print!("{}", perf::markdown(&report));
                println!("\nwritten: {}/bench.json, {}/bench.md", args.out.display(), args.out.display());
                Ok(())
            }
            BenchCommand::Soak(args) => {
                let args = *args;
                let report = soak::run(args.clone()).await?;
                print!("{}", soak::markdown(&report, &args));
                println!("\nwritten: {}/soak.json, {}/soak.md", args.out.display(), args.out.display());
                if report.passed < report.seeds {
                    anyhow::bail!(
                        "{} of {} seeds violated an invariant: {:?}",
                        report.seeds - report.passed,
                        report.seeds,
                        report.failed_seeds
                    );
                }
                Ok(())
            }
        }
    }
}
