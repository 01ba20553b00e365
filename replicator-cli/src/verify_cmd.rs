//! `replicator verify`: compares the target with the source through the
//! clients (the engine is `replicator_esdb::verify`), up to the stored
//! checkpoint by default, and the order of `$all` when `sink.order` promises
//! it (`source`, the default). Exit code 0 identical, 1 differences (an order
//! difference too), 2 could not verify.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use replicator_core::{CheckpointStore as _, Position};
use replicator_esdb::verify::{self, Until, VerifyOptions, VerifyProgress, VerifyReport};
use replicator_esdb::WriteOrder;

use crate::app;
use crate::config::Config;

/// Exit code when the target differs.
const DIFFERENT: u8 = 1;
/// Exit code when the comparison could not be made.
const COULD_NOT_VERIFY: u8 = 2;

/// `replicator verify` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The C# Replicator's YAML configuration (root key `replicator`).
    #[arg(long, short = 'c', value_name = "FILE", default_value = crate::config::DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// Require the source up to this `$all` position (`COMMIT`,
    /// `COMMIT/PREPARE` or `C:COMMIT/P:PREPARE`), or `end` for everything the
    /// source holds. Default: the stored checkpoint, so a pair that is still
    /// replicating is verified up to what has been replicated.
    #[arg(long, value_name = "POSITION")]
    until: Option<String>,
    /// Streams compared at once. Comparing many small streams waits on
    /// request round trips, not CPU: more streams at once go faster, each
    /// holding at most a page per side (memory grows with it).
    #[arg(long, default_value_t = 32, value_name = "N")]
    concurrency: usize,
    /// Connections opened to each cluster (the streams are spread over them).
    #[arg(long, default_value_t = 4, value_name = "N")]
    connections: usize,
    /// Differences listed per stream (the counts stay exact).
    #[arg(long, default_value_t = 10, value_name = "N")]
    max_per_stream: usize,
    /// Differing streams listed (the counts stay exact).
    #[arg(long, default_value_t = 1_000, value_name = "N")]
    max_streams: usize,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

/// What `verify` found, and why the order was not checked when it was not.
struct Verified {
    report: VerifyReport,
    order_not_checked: Option<&'static str>,
}

/// Runs `verify`; every error is reported here with exit code 2.
pub async fn run(args: Args) -> ExitCode {
    match verify_as_configured(&args).await {
        Ok(Verified {
            report,
            order_not_checked,
        }) => {
            if args.json {
                let mut json = to_json(&report);
                if let Some(object) = json.as_object_mut() {
                    object.insert("order_not_checked".into(), order_not_checked.into());
                }
                println!("{json}");
            } else {
                println!("{report}");
                if let Some(reason) = order_not_checked {
                    println!("order not checked: {reason}");
                }
                println!("{}", rate(&report));
            }
            if report.is_identical() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(DIFFERENT)
            }
        }
        Err(error) => {
            eprintln!("error: cannot verify: {error}");
            for cause in error.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::from(COULD_NOT_VERIFY)
        }
    }
}

fn rate(report: &VerifyReport) -> String {
    format!(
        "compared in {:.1} s ({:.0} source events/s, {:.1} MB/s){}",
        report.seconds,
        report.source_events as f64 / report.seconds.max(f64::EPSILON),
        report.source_bytes as f64 / 1e6 / report.seconds.max(f64::EPSILON),
        peak_rss_kib().map_or(String::new(), |kib| format!(
            ", peak memory {:.0} MiB",
            kib as f64 / 1024.0
        ))
    )
}

/// This process's peak resident set size in KiB (`VmHWM`), on Linux.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The report as JSON, with `identical` and the rate on top.
pub fn to_json(report: &VerifyReport) -> serde_json::Value {
    let mut value = serde_json::to_value(report).expect("a report serialises");
    if let Some(object) = value.as_object_mut() {
        object.insert("identical".into(), report.is_identical().into());
        object.insert(
            "events_per_second".into(),
            (report.source_events as f64 / report.seconds.max(f64::EPSILON)).into(),
        );
        object.insert("peak_rss_kib".into(), peak_rss_kib().into());
    }
    value
}

async fn verify_as_configured(args: &Args) -> anyhow::Result<Verified> {
    let config = app::load_config(&args.config)?;
    let unapplied = unapplied_settings(&config);
    if !unapplied.is_empty() {
        eprintln!(
            "warning: {} configured, but verify does not apply them yet: it compares what an \
             unfiltered, untransformed replication produces, so the events they leave out or \
             change show as differences",
            unapplied.join(", ")
        );
    }
    let until = match args.until.as_deref() {
        Some("end") => Until::End,
        Some(text) => Until::Including(text.parse::<Position>().context("--until")?),
        None => stored_until(&config).await?,
    };
    let mut sources = Vec::new();
    let mut targets = Vec::new();
    for _ in 0..args.connections.max(1) {
        let (source, target) = app::clients(&config)?;
        sources.push(source);
        targets.push(target);
    }
    let progress = Arc::new(VerifyProgress::default());
    let options = VerifyOptions {
        until,
        concurrency: args.concurrency.max(1),
        max_per_stream: args.max_per_stream,
        max_streams: args.max_streams,
        request_timeout: config.call_timeout,
        progress: Some(progress.clone()),
        // Only source order promises the target's `$all` in the source's order.
        check_order: config.sink.order == WriteOrder::Source,
        ..VerifyOptions::default()
    };
    let order_not_checked = match config.sink.order {
        WriteOrder::Source => None,
        WriteOrder::Stream => Some("sink.order is stream"),
    };
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{bar:30.cyan/blue} {msg}")
                .expect("a valid template")
                .progress_chars("█▉▊▋▌▍▎▏ "),
        );
        bar
    });
    let drawing = bar.clone().map(|bar| {
        let progress = progress.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_millis(200));
            loop {
                ticker.tick().await;
                draw(&bar, &progress);
            }
        })
    });
    let result = verify::verify_pooled(&sources, &targets, &options).await;
    if let Some(drawing) = drawing {
        drawing.abort();
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok(Verified {
        report: result?,
        order_not_checked,
    })
}

fn draw(bar: &ProgressBar, progress: &VerifyProgress) {
    let load = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
    if progress.listed.load(Ordering::Relaxed) {
        bar.set_length(load(&progress.source_events_found).max(1));
        bar.set_position(load(&progress.events_compared));
        bar.set_message(format!(
            "comparing: {}/{} streams, {} events",
            load(&progress.streams_compared),
            load(&progress.streams_found),
            load(&progress.events_compared)
        ));
    } else {
        bar.set_message(format!(
            "listing streams: {} source records read, {} streams",
            load(&progress.records_listed),
            load(&progress.streams_found)
        ));
    }
}

/// The configured settings that change what the target holds and that the
/// comparison does not apply (its `expect` hook is where they will plug in).
fn unapplied_settings(config: &Config) -> Vec<&'static str> {
    let mut keys = Vec::new();
    if !config.filters.is_empty() {
        keys.push("replicator.filters");
    }
    if config.scavenge {
        keys.push("replicator.scavenge");
    }
    if !matches!(
        config.transform,
        crate::config::TransformConfig::Default {
            original_metadata: false
        }
    ) {
        keys.push("replicator.transform");
    }
    keys
}

/// The stored checkpoint as the bound: inclusive, or before a seed.
async fn stored_until(config: &Config) -> anyhow::Result<Until> {
    let store = app::open_store(&config.checkpoint).await?;
    let stored = store
        .load()
        .await
        .with_context(|| format!("cannot read the checkpoint ({})", config.checkpoint.store))?;
    match stored {
        Some(checkpoint) if checkpoint.seed => Ok(Until::Before(checkpoint.source)),
        Some(checkpoint) => Ok(Until::Including(checkpoint.source)),
        None => anyhow::bail!(
            "no checkpoint is stored ({}), so nothing is known to be replicated: pass \
             --until end to require everything the source holds, or --until POSITION",
            config.checkpoint.store
        ),
    }
}
