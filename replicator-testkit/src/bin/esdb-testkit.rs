//! `esdb-testkit`: serves the in-process EventStoreDB-protocol server out of process,
//! for scripts, other languages' clients and benchmarks. Prints the connection string
//! on stdout (without credentials; with `tlsCaFile=` when serving TLS), and with
//! `--tcp-port` the legacy TCP endpoint (`tcp://HOST:PORT`) on a second line, then
//! serves until killed.

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use replicator_testkit::security::{TestCertificates, User};
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
    /// Also serve the legacy EventStoreDB v5 TCP protocol on this port (0 picks a
    /// free one; v5's default is 1113), over the same data; TLS with --tls-ca-out.
    #[arg(long)]
    tcp_port: Option<u16>,
    /// Delay added before each write is answered, to simulate a remote cluster.
    #[arg(long, default_value_t = 0)]
    append_latency_ms: u64,
    /// Delay added before each read or subscription starts answering.
    #[arg(long, default_value_t = 0)]
    read_latency_ms: u64,
    /// Largest append accepted, in bytes (the real server's default: 1 MiB).
    #[arg(long)]
    max_append_size: Option<usize>,
    /// Serve TLS with a certificate made at start-up, signed by a new private CA
    /// whose certificate is written to this file (for `tlsCaFile=`).
    #[arg(long, value_name = "FILE")]
    tls_ca_out: Option<std::path::PathBuf>,
    /// Require basic authentication with this user (`NAME:PASSWORD`, or
    /// `NAME:PASSWORD:admin` for a member of `$admins`); repeat for more users.
    #[arg(long = "user", value_name = "NAME:PASSWORD[:admin]")]
    users: Vec<String>,
}

fn parse_user(spec: &str) -> anyhow::Result<User> {
    let mut parts = spec.splitn(3, ':');
    let (Some(name), Some(password)) = (parts.next(), parts.next()) else {
        anyhow::bail!("--user {spec:?}: expected NAME:PASSWORD or NAME:PASSWORD:admin");
    };
    let admin = match parts.next() {
        None => false,
        Some("admin") => true,
        Some(other) => anyhow::bail!("--user: unknown role {other:?} (only `admin`)"),
    };
    Ok(User {
        name: name.to_owned(),
        password: password.to_owned(),
        admin,
    })
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
    let users = args
        .users
        .iter()
        .map(|u| parse_user(u))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let tls = match &args.tls_ca_out {
        Some(path) => {
            let certificates = TestCertificates::generate(&[&args.host])?;
            std::fs::write(path, &certificates.ca_pem)
                .with_context(|| format!("writing the CA certificate to {}", path.display()))?;
            Some(certificates)
        }
        None => None,
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    runtime.block_on(async {
        let options = ServerOptions {
            port: Some(args.port),
            host: Some(args.host.clone()),
            append_latency: Duration::from_millis(args.append_latency_ms),
            read_latency: Duration::from_millis(args.read_latency_ms),
            max_append_size: args.max_append_size,
            tls,
            users: (!users.is_empty()).then_some(users),
            tcp_port: args.tcp_port,
            ..ServerOptions::default()
        };
        let server = EsdbServer::start_with(options)
            .await
            .with_context(|| format!("listening on {}:{}", args.host, args.port))?;
        let mut stdout = std::io::stdout();
        let url = server.connection_string_with(None, args.tls_ca_out.as_deref());
        writeln!(stdout, "{url}").context("writing to stdout")?;
        if let Some(address) = server.tcp_address() {
            writeln!(stdout, "tcp://{address}").context("writing to stdout")?;
        }
        stdout.flush().context("writing to stdout")?;
        tokio::signal::ctrl_c()
            .await
            .context("waiting for Ctrl-C")?;
        server.stop().await;
        Ok(ExitCode::SUCCESS)
    })
}
