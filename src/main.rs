//! `commitd`: the command line. `up` runs a whole cluster on this machine;
//! one subcommand per component runs it alone; the rest only read.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use commitd::cli;

#[derive(Parser)]
#[command(
    name = "commitd",
    version,
    about = "A GitOps-native container orchestrator: git push is the deploy."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run an all-in-one cluster on this machine (etcd, containerd, reconciler, scheduler, node agent).
    Up(Box<cli::up::UpArgs>),
    /// Run the reconciler alone against an existing etcd.
    Reconciler(Box<cli::components::ReconcilerArgs>),
    /// Run the scheduler alone against an existing etcd.
    Scheduler(cli::components::SchedulerArgs),
    /// Run a node agent for this machine against an existing etcd and containerd.
    Nodeagent(cli::components::NodeAgentArgs),
    /// Show objects, like `kubectl get`.
    Get(cli::get::GetArgs),
    /// Show one object in detail, like `kubectl describe` (pods, services).
    Describe(cli::describe::DescribeArgs),
    /// Print a container's log, like `kubectl logs` (read from the node agent of the pod's node).
    Logs(cli::logs::LogsArgs),
    /// Show the applied commit, the last rejected one, nodes and workloads.
    Status(cli::ClusterArgs),
    /// Show every commit seen, newest first.
    History(cli::history::HistoryArgs),
    /// Follow a Deployment's rollout, or list its revisions with their commits.
    Rollout(cli::rollout::RolloutArgs),
    /// Preview what merging a revision would change (exit 0: none, 1: changes, 2: errors).
    Plan(cli::plan::PlanArgs),
    /// Validate a directory of manifests without a cluster (exit 1 on errors).
    Validate(ValidateArgs),
    /// Encrypt Secret values to age recipients before committing them (ENC[age,…]).
    Secret(cli::secret::SecretArgs),
    /// Measure how fast a commit becomes running pods (prints figures).
    Bench(cli::bench::BenchArgs),
}

#[derive(Args)]
struct ValidateArgs {
    /// Directory (or file) of manifests.
    #[arg(default_value = ".")]
    path: PathBuf,
}

/// The stack of each async worker thread.
const WORKER_STACK_BYTES: usize = 8 * 1024 * 1024;

fn main() -> ExitCode {
    cli::init_tracing();
    let cli = Cli::parse();
    // Roomy worker stacks: deeply nested controller and agent futures with
    // Kubernetes objects decoded inside them need more than the 2 MiB
    // default in unoptimised builds.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(WORKER_STACK_BYTES)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Up(a) => cli::up::run(*a).await,
            Command::Reconciler(a) => cli::components::reconciler(*a).await,
            Command::Scheduler(a) => cli::components::scheduler(a).await,
            Command::Nodeagent(a) => cli::components::nodeagent(a).await,
            Command::Get(a) => cli::get::run(a).await,
            Command::Describe(a) => cli::describe::run(a).await,
            Command::Logs(a) => cli::logs::run(a).await,
            Command::Status(a) => cli::status::run(a).await,
            Command::History(a) => cli::history::run(a).await,
            Command::Rollout(a) => cli::rollout::run(a).await,
            Command::Plan(a) => cli::plan::run(a).await,
            Command::Validate(a) => cli::validate::run(&a.path),
            Command::Secret(a) => cli::secret::run(a),
            Command::Bench(a) => cli::bench::run(a).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
