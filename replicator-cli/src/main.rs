//! `replicator`: copies every event from one EventStoreDB/KurrentDB cluster to
//! another, configured by the C# Replicator's `appsettings.yaml`.
//!
//! This binary only parses its arguments and calls the command they name in
//! the `replicator_cli` library: configuration, wiring and commands live
//! there, the replication itself in the library crates below it.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
#[cfg(feature = "demo")]
use replicator_cli::demo;
use replicator_cli::{
    app, checkpoint_cmd, config, map_position_cmd, projections_cmd, report, status,
    subscriptions_cmd, verify_cmd,
};

/// Replicates an EventStoreDB / KurrentDB cluster's `$all` into another cluster.
#[derive(Debug, Parser)]
#[command(name = "replicator", version)]
struct Cli {
    /// Log format on stderr. The level comes from RUST_LOG (default: info).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The configuration file option shared by the commands.
#[derive(Debug, Args)]
struct ConfigArg {
    /// The C# Replicator's YAML configuration (root key `replicator`).
    /// REPLICATOR_* environment variables override its keys.
    #[arg(long, short = 'c', value_name = "FILE", default_value = config::DEFAULT_CONFIG_PATH)]
    config: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Replicate as configured until caught up (runContinuously: false) or
    /// stopped (SIGINT/SIGTERM drains in-flight writes and stores a final
    /// checkpoint).
    Run(ConfigArg),
    /// Replicate a generated workload between two in-process servers and
    /// prove the target equal to the source: the whole job, nothing to install.
    // Only with the `demo` feature (the default): the production binary and
    // the container image carry no test server, and answer `demo` with an
    // error saying so.
    #[cfg(feature = "demo")]
    Demo(demo::Args),
    /// Not in this build (no `demo` feature).
    #[cfg(not(feature = "demo"))]
    #[command(hide = true, disable_help_flag = true)]
    Demo {
        /// Whatever follows `demo`: refused as a whole.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        args: Vec<String>,
    },
    /// Compare the target with the source, stream by stream, up to the stored
    /// checkpoint (or --until): exit code 0 identical, 1 differences, 2 could
    /// not verify.
    Verify(verify_cmd::Args),
    /// Map consumers' source $all positions (or, with --stream, stream
    /// revisions) to where they resume on the target, losing nothing.
    MapPosition(map_position_cmd::Args),
    /// Re-create the source's persistent subscription groups on the target,
    /// each starting where its consumers stopped: a dry run printing the plan
    /// unless --apply.
    Subscriptions(subscriptions_cmd::Args),
    /// Re-create the source's user projections on the target, stopped: a
    /// dry run printing the plan unless --apply; --force updates those that
    /// differ. Exit code 0 done, 1 something differs or failed, 2 could not
    /// read.
    Projections(projections_cmd::Args),
    /// Inspect or change the stored checkpoint.
    #[command(subcommand)]
    Checkpoint(CheckpointCommand),
    /// Print the status of a running `replicator run` (its /api/status):
    /// progress, positions, checkpoint and component health. Exit code 2
    /// when it answers but is not ready.
    Status {
        /// The instance's status server (replicator.http.listen).
        #[arg(long, value_name = "URL", default_value = status::DEFAULT_URL)]
        url: String,
        /// Print the JSON as it came.
        #[arg(long)]
        json: bool,
        /// Exit 0 when the instance is live (as /health/live) rather than
        /// ready: for a container HEALTHCHECK, which should not fail while a
        /// peer is down and the replicator waits for it.
        #[arg(long)]
        live: bool,
    },
}

#[derive(Debug, Subcommand)]
enum CheckpointCommand {
    /// Print the stored checkpoint: source and target positions, when it was
    /// taken, whether it is a seed, and where it is stored.
    Show(ConfigArg),
    /// Delete the stored checkpoint, so the next run starts from the beginning
    /// of $all (or from the configured seed).
    Delete(ConfigArg),
    /// Seed the store from a backup's chaser.chk: the next run starts AT that
    /// position. Refuses (exit code 1) when a checkpoint is already stored,
    /// unless --force replaces it.
    Seed {
        /// The backup's chaser.chk (8 bytes, a little-endian log position).
        #[arg(long, value_name = "FILE")]
        chaser: PathBuf,
        /// Replace a stored checkpoint with the seed.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    report::init_logging(matches!(cli.log_format, LogFormat::Json));
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error}");
            for cause in error.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Run(args) => {
                let config = app::load_config(&args.config)?;
                app::replicate(&config, app::shutdown_on_signals()?).await?;
                Ok(ExitCode::SUCCESS)
            }
            #[cfg(feature = "demo")]
            Command::Demo(args) => demo::run(args, app::shutdown_on_signals()?).await,
            #[cfg(not(feature = "demo"))]
            Command::Demo { args: _ } => anyhow::bail!(
                "this replicator is built without the `demo` feature (the production build \
                 carries no test server); run the demo from the source tree: \
                 cargo run --release -p replicator-cli -- demo"
            ),
            Command::Verify(args) => Ok(verify_cmd::run(args).await),
            Command::MapPosition(args) => Ok(map_position_cmd::run(args).await),
            Command::Subscriptions(args) => Ok(subscriptions_cmd::run(args).await),
            Command::Projections(args) => Ok(projections_cmd::run(args).await),
            Command::Status { url, json, live } => status::show(&url, json, live).await,
            Command::Checkpoint(CheckpointCommand::Show(args)) => {
                let config = app::load_config(&args.config)?;
                checkpoint_cmd::show(&config).await
            }
            Command::Checkpoint(CheckpointCommand::Delete(args)) => {
                let config = app::load_config(&args.config)?;
                checkpoint_cmd::delete(&config).await
            }
            Command::Checkpoint(CheckpointCommand::Seed {
                chaser,
                force,
                config,
            }) => {
                let config = app::load_config(&config.config)?;
                checkpoint_cmd::seed(&config, &chaser, force).await
            }
        }
    })
}
