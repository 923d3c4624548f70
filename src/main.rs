use aci_runner_controller::controller::run::parse_cli;
use clap::Subcommand;

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the RunnerPool CustomResourceDefinition as YAML.
    Crd,
    /// Run the controller: reconcile RunnerPools into ACI container groups and GitHub runners.
    Run(Box<aci_runner_controller::controller::run::RunArgs>),
}

fn main() -> anyhow::Result<()> {
    match parse_cli::<Command>(aci_runner_controller::bin_info!()) {
        Command::Crd => {
            print!("{}", aci_runner_core::crd::crd_yaml()?);
            Ok(())
        }
        Command::Run(args) => run(*args),
    }
}

fn run(args: aci_runner_controller::controller::run::RunArgs) -> anyhow::Result<()> {
    use aci_runner_controller::azure::CredentialSpec;
    use aci_runner_controller::controller::run::{build_edges, run_with, shutdown_signal};
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let identity = match CredentialSpec::from_env(args.allow_imds) {
            Ok(spec) => Some(spec),
            Err(e) => {
                tracing::warn!(error = %e, "no controller Azure identity; pools need azure.credentialsSecretRef");
                None
            }
        };
        let client = kube::Client::try_from(aci_runner_controller::egress::kube_config().await?)?;
        let edges = build_edges(&args, identity, std::sync::Arc::new(chrono::Utc::now))?;
        run_with(args, client, edges, shutdown_signal()).await
    })
}
