use clap::{Parser, Subcommand};

/// GitHub Actions self-hosted runners on Azure Container Instances, declared as RunnerPools.
#[derive(Parser, Debug)]
#[command(name = "aci-runner-controller", version, about)]
struct Cli {
    /// Log format: `text` or `json`.
    #[arg(long, global = true, env = "LOG_FORMAT", default_value = "text")]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the RunnerPool CustomResourceDefinition as YAML.
    Crd,
    /// Run the controller: reconcile RunnerPools into ACI container groups and GitHub runners.
    Run(Box<aci_runner_controller::controller::run::RunArgs>),
    /// Run the simulated Azure (ARM/ACI, Entra ID) and GitHub (App, runners, jobs, webhooks).
    Sim(Box<aci_runner_controller::sim::SimArgs>),
    /// The demo driver, benchmarks and fault soak (controller as its own process).
    Bench(Box<aci_runner_controller::bench::BenchCli>),
}

fn init_tracing(format: &str) {
    use tracing_subscriber::{EnvFilter, fmt, prelude::*};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    if format == "json" {
        registry.with(fmt::layer().json().with_writer(std::io::stderr)).init();
    } else {
        registry.with(fmt::layer().with_writer(std::io::stderr)).init();
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(&cli.log_format);
    match cli.command {
        Command::Crd => {
            print!("{}", aci_runner_controller::crd::crd_yaml()?);
            Ok(())
        }
        Command::Sim(args) => aci_runner_controller::sim::run_cli(*args),
        Command::Run(args) => run(*args),
        Command::Bench(cli) => aci_runner_controller::bench::run_cli(*cli),
    }
}

fn run(args: aci_runner_controller::controller::run::RunArgs) -> anyhow::Result<()> {
    use aci_runner_controller::azure::CredentialSpec;
    use aci_runner_controller::controller::run::{build_edges, run_with, shutdown_signal};
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let identity = match CredentialSpec::from_env() {
            Ok(spec) => Some(spec),
            Err(e) => {
                tracing::warn!(error = %e, "no controller Azure identity; pools need azure.credentialsSecretRef");
                None
            }
        };
        let client = kube::Client::try_default().await?;
        let edges = build_edges(&args, identity, std::sync::Arc::new(chrono::Utc::now))?;
        run_with(args, client, edges, shutdown_signal()).await
    })
}
