//! `esdb-testkit`: serves the in-process EventStoreDB-protocol server out of process,
//! for scripts, other languages' clients and benchmarks. Prints the connection string
//! on stdout, then serves until killed.

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use replicator_testkit::{EsdbServer, ServerOptions};

/// An EventStoreDB-protocol gRPC server keeping its data in memory.
#[derive(Debug, Parser)]
#[command(name = "esdb-testkit", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0 picks a free one).
    #[arg(long, default_value_t = 2113)]
    port: u16,
    /// Delay added before each write is answered, to simulate a remote cluster.
    #[arg(long, default_value_t = 0)]
    append_latency_ms: u64,
    /// Delay added before each read or subscription starts answering.
    #[arg(long, default_value_t = 0)]
    read_latency_ms: u64,
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(error) => {
            eprintln!("esdb-testkit: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    runtime.block_on(async {
        let options = ServerOptions {
            port: Some(args.port),
            host: Some(args.host.clone()),
            append_latency: Duration::from_millis(args.append_latency_ms),
            read_latency: Duration::from_millis(args.read_latency_ms),
            ..ServerOptions::default()
        };
        let server = EsdbServer::start_with(options)
            .await
            .with_context(|| format!("listening on {}:{}", args.host, args.port))?;
        let mut stdout = std::io::stdout();
        writeln!(stdout, "{}", server.connection_string()).context("writing to stdout")?;
        stdout.flush().context("writing to stdout")?;
        tokio::signal::ctrl_c()
            .await
            .context("waiting for Ctrl-C")?;
        server.stop().await;
        Ok(ExitCode::SUCCESS)
    })
}
