//! `weft-operator`: the Kubernetes operator of Weft.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "weft-operator", version, about = "Weft Kubernetes operator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check that the Weft CRDs are installed and Established in the cluster of the current
    /// kubeconfig (or the in-cluster service account); exit 1 with the reason when not.
    CheckCrds,
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::CheckCrds => {
            let client = kube::Client::try_default()
                .await
                .context("connecting to the Kubernetes API")?;
            weft_operator::preflight::check_crds(&client).await?;
            println!("weft.dev CRDs are installed and Established");
            Ok(())
        }
    }
}
