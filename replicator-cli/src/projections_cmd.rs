//! `replicator projections`: the source's user projections re-created on the
//! target, stopped (the rules are in `replicator_esdb::projections`). A dry
//! run by default, printing the plan; `--apply` to create; `--force` to
//! update the target's projections that differ.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use replicator_esdb::cluster::{self, SourceClient};
use replicator_esdb::projections::{
    self, Action, Entry, Outcome, Plan, ProjectionsOptions, Side, Statistics,
};
use serde_json::json;

use crate::app;
use crate::config::ReaderProtocol;

/// `replicator projections` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The C# Replicator's YAML configuration (root key `replicator`): the
    /// source and target connection strings (an admin on each side).
    #[arg(long, short = 'c', value_name = "FILE", default_value = crate::config::DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// Create the missing projections on the target (stopped); without it,
    /// only print the plan.
    #[arg(long)]
    apply: bool,
    /// Update target projections whose query or emit setting differs from
    /// the source's (with --apply; they keep their run state).
    #[arg(long)]
    force: bool,
    /// Print the plan (and outcomes) as one JSON document.
    #[arg(long)]
    json: bool,
}

/// Runs `projections`; exit code 0 when nothing needs attention, 1 when a
/// projection differs and was left alone or a change failed, 2 when the
/// projections could not be read.
pub async fn run(args: Args) -> ExitCode {
    match plan_and_apply(&args).await {
        Ok(plan) if plan.needs_attention() => ExitCode::from(1),
        Ok(_) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: cannot re-create projections: {error}");
            for cause in error.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::from(2)
        }
    }
}

async fn plan_and_apply(args: &Args) -> anyhow::Result<Plan> {
    let config = app::load_config(&args.config)?;
    let (source, target) = app::clients(&config)?;
    let source_settings = match (&config.reader.protocol, &source) {
        (ReaderProtocol::Grpc, SourceClient::Grpc(_)) => Some(
            cluster::settings(&config.reader.connection_string)
                .context("replicator.reader.connectionString")?,
        ),
        _ => None,
    };
    let target_settings = cluster::settings(&config.sink.connection_string)
        .context("replicator.sink.connectionString")?;
    let source_token = app::bearer_token(config.reader.token.as_ref(), "reader")?;
    let target_token = app::bearer_token(config.sink.token.as_ref(), "sink")?;
    let options = ProjectionsOptions {
        force: args.force,
        request_timeout: config.call_timeout,
    };
    let mut plan = projections::plan(
        Side {
            reader: &source,
            settings: source_settings.as_ref(),
            token: source_token.as_ref(),
        },
        Side {
            reader: &target,
            settings: Some(&target_settings),
            token: target_token.as_ref(),
        },
        &options,
    )
    .await?;
    if args.apply {
        projections::apply(&mut plan, &target_settings, target_token.as_ref(), &options).await?;
    }
    if args.json {
        println!("{}", to_json(&plan, args));
    } else {
        print!("{}", table(&plan, args, source_settings.is_some()));
    }
    Ok(plan)
}

fn statistics_json(s: Option<&Statistics>) -> serde_json::Value {
    s.map_or(serde_json::Value::Null, |s| {
        json!({
            "status": s.status,
            "position": s.position,
            "lastCheckpoint": s.last_checkpoint,
            "epoch": s.epoch,
            "version": s.version,
        })
    })
}

/// The plan as one JSON document: every projection with its definition,
/// both sides' statistics, the action and its outcome.
pub fn to_json(plan: &Plan, args: &Args) -> serde_json::Value {
    let projections: Vec<_> = plan
        .entries
        .iter()
        .map(|e| {
            let d = &e.definition;
            let (differences, reason) = match &e.action {
                Action::Differs { differences, .. } | Action::Update { differences } => {
                    (differences.clone(), None)
                }
                Action::Skip { reason } => (Vec::new(), Some(reason.clone())),
                _ => (Vec::new(), None),
            };
            let (outcome, error) = match &e.outcome {
                Some(Outcome::Created) => (Some("created"), None),
                Some(Outcome::Updated) => (Some("updated"), None),
                Some(Outcome::Failed(why)) => (Some("failed"), Some(why.clone())),
                None => (None, None),
            };
            json!({
                "name": d.name,
                "system": d.is_system(),
                "mode": d.mode.name(),
                "query": d.query,
                "emitEnabled": d.emit_enabled,
                "trackEmittedStreams": d.track_emitted_streams,
                "sourceEnabled": d.enabled,
                "source": statistics_json(e.source.as_ref()),
                "onTarget": e.target.is_some(),
                "target": statistics_json(e.target_statistics.as_ref()),
                "action": e.action.name(),
                "differences": differences,
                "reason": reason,
                "outcome": outcome,
                "error": error,
            })
        })
        .collect();
    json!({
        "apply": args.apply,
        "force": args.force,
        "projections": projections,
    })
}

fn yes_no(on: bool) -> &'static str {
    if on {
        "yes"
    } else {
        "no"
    }
}

/// The action column: what was (or would be) done.
fn action_text(e: &Entry, applied: bool) -> String {
    match (&e.action, &e.outcome) {
        (_, Some(Outcome::Created)) => "created (stopped)".to_owned(),
        (_, Some(Outcome::Updated)) => "updated".to_owned(),
        (_, Some(Outcome::Failed(why))) => format!("FAILED: {why}"),
        (Action::Create, None) if !applied => "create (stopped)".to_owned(),
        (Action::Update { differences }, None) => format!("update ({})", differences.join(", ")),
        (
            Action::Differs {
                differences,
                fixable,
            },
            _,
        ) => format!(
            "DIFFERS: {}; left alone{}",
            differences.join(", "),
            if *fixable {
                " (--force updates it)"
            } else {
                ""
            }
        ),
        (Action::Skip { reason }, _) => format!("skipped: {reason}"),
        (action, _) => action.name().to_owned(),
    }
}

/// The plan for people: one row per projection, then what happened or would.
fn table(plan: &Plan, args: &Args, statistics: bool) -> String {
    let mut rows = vec![[
        "PROJECTION".to_owned(),
        "MODE".to_owned(),
        "EMIT".to_owned(),
        "TRACK".to_owned(),
        "SOURCE STATUS".to_owned(),
        "SOURCE POSITION".to_owned(),
        "ACTION".to_owned(),
    ]];
    for e in &plan.entries {
        let d = &e.definition;
        let (status, position) = match &e.source {
            Some(s) => (s.status.clone(), s.position.clone()),
            None if statistics => ("-".to_owned(), "-".to_owned()),
            None => (
                if d.enabled { "enabled" } else { "disabled" }.to_owned(),
                "-".to_owned(),
            ),
        };
        rows.push([
            d.name.clone(),
            d.mode.name().to_owned(),
            yes_no(d.emit_enabled).to_owned(),
            yes_no(d.track_emitted_streams).to_owned(),
            status,
            if position.is_empty() {
                "-".to_owned()
            } else {
                position
            },
            action_text(e, args.apply),
        ]);
    }
    let widths: Vec<usize> = (0..6)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        for (i, width) in widths.iter().enumerate() {
            out.push_str(&format!("{:<width$}  ", row[i], width = *width));
        }
        out.push_str(&row[6]);
        out.push('\n');
    }
    if plan.entries.is_empty() {
        out.push_str("(the source has no projections)\n");
    }
    let count = |outcome: fn(&Outcome) -> bool| {
        plan.entries
            .iter()
            .filter(|e| e.outcome.as_ref().is_some_and(outcome))
            .count()
    };
    if args.apply {
        out.push_str(&format!(
            "\nApplied: {} created (stopped), {} updated, {} failed, {} unchanged, {} differ \
             (left alone), {} skipped, {} system left alone.\n",
            count(|o| *o == Outcome::Created),
            count(|o| *o == Outcome::Updated),
            count(|o| matches!(o, Outcome::Failed(_))),
            plan.count("unchanged"),
            plan.count("differs"),
            plan.count("skip"),
            plan.count("left alone"),
        ));
    } else {
        out.push_str(&format!(
            "\nDry run: nothing was changed. --apply would create {} projection(s) stopped on \
             the target{}; {} unchanged, {} differ, {} skipped, {} system left alone.\n",
            plan.count("create"),
            if args.force {
                " and update those that differ"
            } else {
                ""
            },
            plan.count("unchanged"),
            plan.count("differs"),
            plan.count("skip"),
            plan.count("left alone"),
        ));
    }
    out.push_str(
        "Projections are created stopped: start each on the target after the cutover. One \
         that emits would otherwise write again the events the replicator copies.\n",
    );
    out
}
