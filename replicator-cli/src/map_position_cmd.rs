//! `replicator map-position`: where each consumer of the source resumes on the
//! target (the rules are in `replicator_esdb::position_map`): exactly with
//! `sink.order: source`, from an anchor and a window with `sink.order: stream`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use replicator_core::{CheckpointStore as _, Position};
use replicator_esdb::position_map::{self, MapMode, MapOptions, Mapping, Resume, RevisionMapping};
use replicator_esdb::WriteOrder;
use serde_json::json;

use crate::app;

/// `replicator map-position` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The C# Replicator's YAML configuration (root key `replicator`).
    #[arg(long, short = 'c', value_name = "FILE", default_value = crate::config::DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// Source `$all` positions a consumer last processed: `COMMIT`,
    /// `COMMIT/PREPARE` or `C:COMMIT/P:PREPARE` (with --stream: revisions).
    #[arg(value_name = "POSITION")]
    positions: Vec<String>,
    /// Read the positions from this file, one per line (blank lines and lines
    /// starting with `#` are left out).
    #[arg(long, value_name = "FILE")]
    file: Option<PathBuf>,
    /// Map revisions of this stream (a stream subscription's checkpoint)
    /// instead of `$all` positions.
    #[arg(long, value_name = "STREAM")]
    stream: Option<String>,
    /// The order the target was written in, when it is not the configured
    /// `sink.order` (an earlier run with another order wrote it, in part):
    /// `source` maps exactly, `stream` from an anchor and a window.
    #[arg(long, value_enum, value_name = "ORDER")]
    order: Option<Order>,
    /// Replicated records passed over (not in their target stream) and
    /// searched for on the target; with stream order also the source events
    /// after a position, and target records before its anchor, examined for
    /// reordering (streams written concurrently): keep it above the records
    /// the replicator holds in flight (sink.bufferSize plus the partitions'
    /// batches).
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    window: usize,
    /// Print one JSON object per line.
    #[arg(long)]
    json: bool,
}

/// `--order`: the values of `sink.order`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Order {
    /// The target's `$all` in the source's order.
    Source,
    /// Only each stream's order.
    Stream,
}

impl From<Order> for WriteOrder {
    fn from(order: Order) -> Self {
        match order {
            Order::Source => WriteOrder::Source,
            Order::Stream => WriteOrder::Stream,
        }
    }
}

/// Runs `map-position`; exit code 0 when every position mapped, 1 when some
/// are past what has been replicated, 2 when it could not map.
pub async fn run(args: Args) -> ExitCode {
    match map_all(&args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(error) => {
            eprintln!("error: cannot map: {error}");
            for cause in error.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::from(2)
        }
    }
}

fn inputs(args: &Args) -> anyhow::Result<Vec<String>> {
    let mut inputs = args.positions.clone();
    if let Some(file) = &args.file {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read --file {}", file.display()))?;
        inputs.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_owned),
        );
    }
    if inputs.is_empty() {
        bail!("no position given: pass positions as arguments or --file FILE");
    }
    Ok(inputs)
}

async fn map_all(args: &Args) -> anyhow::Result<bool> {
    let config = app::load_config(&args.config)?;
    let inputs = inputs(args)?;
    let (source, target) = app::clients(&config)?;
    let order = args.order.map_or(config.sink.order, WriteOrder::from);
    let options = map_options(&config, order, args.window).await?;
    if let Some(stream) = &args.stream {
        for input in &inputs {
            let revision: u64 = input.trim().parse().with_context(|| {
                format!("`{input}` is not a revision of stream {stream:?} (a non-negative integer)")
            })?;
            let mapping =
                position_map::map_revision(&source, &target, stream, revision, &options).await?;
            println!("{}", show_revision(&mapping, args.json));
        }
        return Ok(true);
    }
    let positions = inputs
        .iter()
        .map(|input| input.parse::<Position>())
        .collect::<Result<Vec<_>, _>>()?;
    if !args.json {
        match MapMode::of(order) {
            MapMode::Exact => println!(
                "Exact (order: source): the target's $all holds the source's records in the \
                 source's order, so each position maps to the same record on the target; a \
                 consumer resuming after it sees nothing twice and misses nothing."
            ),
            MapMode::Anchor => println!(
                "Anchor and window (order: stream): streams are written concurrently \
                 (partitionCount {}, and the streams of a batch), so each stream keeps its order \
                 but streams interleave differently on the target: a consumer resumes before \
                 the earliest target record of an event it has not processed, and may see \
                 again events of other streams it had processed.",
                config.sink.partition_count()
            ),
        }
    }
    let mut all_mapped = true;
    for position in positions {
        let mapping = position_map::map_position(&source, &target, position, &options).await?;
        all_mapped &= mapping.resume != Resume::NotReplicatedYet;
        println!("{}", show(&mapping, args.json));
    }
    Ok(all_mapped)
}

/// How positions are mapped for `config`'s target written in `order`: with
/// `window`, the call timeout, and the stored checkpoint as the end of what
/// is replicated (`subscriptions` maps with the same).
///
/// # Errors
/// When the checkpoint store cannot be opened or read.
pub(crate) async fn map_options(
    config: &crate::config::Config,
    order: WriteOrder,
    window: usize,
) -> anyhow::Result<MapOptions> {
    let stored = app::open_store(&config.checkpoint)
        .await?
        .load()
        .await
        .with_context(|| format!("cannot read the checkpoint ({})", config.checkpoint.store))?;
    Ok(MapOptions {
        order,
        window: window.max(1),
        replicated_until: stored.as_ref().map(|c| c.source),
        request_timeout: config.call_timeout,
    })
}

fn position_json(p: Option<Position>) -> serde_json::Value {
    p.map_or(
        serde_json::Value::Null,
        |p| json!({"commit": p.commit, "prepare": p.prepare}),
    )
}

/// One mapping: a JSON line, or a line for people.
fn show(m: &Mapping, as_json: bool) -> String {
    if as_json {
        return json!({
            "source": position_json(Some(m.source)),
            "target": position_json(m.target),
            "resume": m.resume,
            "mode": m.mode,
            "stream": m.anchor.as_ref().map(|a| a.stream.clone()),
            "revision": m.anchor.as_ref().map(|a| a.revision),
            "target_revision": m.anchor.as_ref().map(|a| a.target_revision),
            "event_id": m.anchor.as_ref().map(|a| a.event_id.to_string()),
            "note": m.note,
        })
        .to_string();
    }
    let target = match (m.resume, m.target) {
        (Resume::After, Some(t)) => format!("resume after target {t}"),
        (Resume::NotReplicatedYet, _) => "not replicated yet".to_owned(),
        _ => "resume from the start of the target's $all".to_owned(),
    };
    let what = match m.mode {
        MapMode::Exact => "last replicated record",
        MapMode::Anchor => "anchor: last replicated event",
    };
    let anchor = m.anchor.as_ref().map_or(String::new(), |a| {
        format!(
            " [{what} {} of {:?}, revision {} (target revision {}), at {} → {}]",
            a.event_id,
            a.stream,
            a.revision,
            a.target_revision,
            a.source_position,
            a.target_position
        )
    });
    format!("{} → {target}{anchor}: {}", m.source, m.note)
}

fn show_revision(m: &RevisionMapping, as_json: bool) -> String {
    if as_json {
        return json!({
            "source": serde_json::Value::Null,
            "target": serde_json::Value::Null,
            "stream": m.stream,
            "revision": m.revision,
            "target_revision": m.target_revision,
            "event_id": m.event_id.map(|id| id.to_string()),
            "note": m.note,
        })
        .to_string();
    }
    format!(
        "{:?} revision {} → {}: {}",
        m.stream,
        m.revision,
        m.target_revision.map_or_else(
            || "from the start of the target stream".to_owned(),
            |r| format!("resume after target revision {r}")
        ),
        m.note
    )
}
