//! `replicator subscriptions`: the source's persistent subscription groups
//! re-created on the target, each starting where its consumers stopped
//! (the rules are in `replicator_esdb::subscriptions`). A dry run by default,
//! printing the plan; `--apply` does it.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use replicator_esdb::subscriptions::{
    plan, read_filters, Group, GroupPlan, PlanOptions, Step, SubscriptionAdmin, TargetStart,
};
use serde_json::json;

use crate::config::ReaderProtocol;
use crate::{app, map_position_cmd};

/// `replicator subscriptions` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The C# Replicator's YAML configuration (root key `replicator`).
    #[arg(long, short = 'c', value_name = "FILE", default_value = crate::config::DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// Create the missing groups on the target (without it, only print the
    /// plan).
    #[arg(long)]
    apply: bool,
    /// With --apply: delete and create again target groups whose settings or
    /// filter differ from the source's (their consumers' progress on the
    /// target is lost).
    #[arg(long)]
    force: bool,
    /// Records passed over and searched for when mapping a checkpoint (see
    /// `map-position --window`).
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    window: usize,
    /// Print one JSON object per group.
    #[arg(long)]
    json: bool,
}

/// Runs `subscriptions`: exit code 0 when every group is (or, in a dry run,
/// would be) on the target as on the source, 1 when some differ or are not
/// replicated yet, 2 on an error.
pub async fn run(args: Args) -> ExitCode {
    match subscriptions(&args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(error) => {
            eprintln!("error: {error}");
            for cause in error.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::from(2)
        }
    }
}

async fn subscriptions(args: &Args) -> anyhow::Result<bool> {
    if args.force && !args.apply {
        bail!("--force replaces target groups, so it needs --apply");
    }
    let config = app::load_config(&args.config)?;
    if config.reader.protocol == ReaderProtocol::Tcp {
        bail!(
            "replicator.reader.protocol is tcp: the groups of a v5 source are not read (this \
             command reads them over gRPC, from a v20+ source)"
        );
    }
    let (source, target) = app::clients(&config)?;
    let timeout = config.call_timeout;
    let source_token = app::bearer_token(config.reader.token.as_ref(), "reader")?;
    let target_token = app::bearer_token(config.sink.token.as_ref(), "sink")?;
    let source_admin = SubscriptionAdmin::connect(
        &config.reader.connection_string,
        source_token,
        "source",
        timeout,
    )
    .await?;
    let target_admin = SubscriptionAdmin::connect(
        &config.sink.connection_string,
        target_token,
        "target",
        timeout,
    )
    .await?;
    let source_groups = with_filters(&source, source_admin.groups().await?, timeout).await?;
    let target_groups = with_filters(&target, target_admin.groups().await?, timeout).await?;
    let options = PlanOptions {
        map: map_position_cmd::map_options(&config, config.sink.order, args.window).await?,
        force: args.force,
    };
    let plans = plan(&source, &target, source_groups, &target_groups, &options).await?;
    if !args.json {
        println!("{}", heading(&plans, args.apply));
    }
    let mut all_done = true;
    let mut failed = 0usize;
    for group_plan in &plans {
        all_done &= !matches!(
            group_plan.step,
            Step::Differs { .. } | Step::NotReplicatedYet
        );
        let outcome = if args.apply {
            Some(apply(&target_admin, group_plan).await)
        } else {
            None
        };
        if let Some(Err(_)) = &outcome {
            failed += 1;
        }
        println!("{}", show(group_plan, outcome.as_ref(), args.json));
    }
    if failed > 0 {
        bail!(
            "{failed} of {} groups could not be created on the target",
            plans.len()
        );
    }
    Ok(all_done)
}

async fn with_filters<C: replicator_esdb::cluster::ClusterRead>(
    cluster: &C,
    mut groups: Vec<Group>,
    timeout: std::time::Duration,
) -> anyhow::Result<Vec<Group>> {
    if groups
        .iter()
        .any(|g| g.source == replicator_esdb::subscriptions::GroupSource::All)
    {
        let filters = read_filters(cluster, timeout).await?;
        for group in &mut groups {
            group.filter = filters.of(group)?;
        }
    }
    Ok(groups)
}

/// Creates (or with `Replace`, deletes and creates) the group on the target.
async fn apply(target: &SubscriptionAdmin, group_plan: &GroupPlan) -> anyhow::Result<&'static str> {
    let Some(TargetStart::Ready { start, .. }) = &group_plan.start else {
        return Ok("left alone");
    };
    let group = &group_plan.group;
    match group_plan.step {
        Step::Create => {
            target.create(group, *start).await?;
            Ok("created")
        }
        Step::Replace { .. } => {
            target.delete(&group.source, &group.name).await?;
            target.create(group, *start).await?;
            Ok("replaced")
        }
        _ => Ok("left alone"),
    }
}

fn heading(plans: &[GroupPlan], apply: bool) -> String {
    let mode = if apply {
        "applied"
    } else {
        "dry run: nothing changed on the target; --apply creates the missing groups"
    };
    format!(
        "{} persistent subscription groups on the source ({mode}):",
        plans.len()
    )
}

fn step_name(step: &Step) -> &'static str {
    match step {
        Step::Create => "create",
        Step::Unchanged => "unchanged",
        Step::Differs { .. } => "differs",
        Step::Replace { .. } => "replace",
        Step::NotReplicatedYet => "not_replicated_yet",
    }
}

/// One group: a JSON line, or a line for people.
fn show(p: &GroupPlan, outcome: Option<&anyhow::Result<&'static str>>, as_json: bool) -> String {
    let g = &p.group;
    let (start, note) = match &p.start {
        Some(TargetStart::Ready { start, note }) => (Some(start.to_string()), note.clone()),
        Some(TargetStart::NotReplicatedYet { note }) => (None, note.clone()),
        None => (None, String::new()),
    };
    let differences = match &p.step {
        Step::Differs { differences } | Step::Replace { differences } => differences.clone(),
        _ => Vec::new(),
    };
    let result = outcome.map(|o| match o {
        Ok(done) => (*done).to_owned(),
        Err(error) => format!("failed: {error:#}"),
    });
    if as_json {
        return json!({
            "group": g.name,
            "source": g.source.to_string(),
            "step": step_name(&p.step),
            "checkpoint": g.checkpoint.map(|c| c.to_string()),
            "start": start,
            "note": note,
            "filter": g.filter.as_ref().map(ToString::to_string),
            "settings": g.settings,
            "differences": differences,
            "result": result,
        })
        .to_string();
    }
    let mut line = format!("  {:<40} {:<18}", g.id(), step_name(&p.step));
    if let Some(start) = start {
        line.push_str(&format!(" start {start}"));
    }
    if let Some(checkpoint) = g.checkpoint {
        line.push_str(&format!(" (source checkpoint {checkpoint})"));
    }
    if !note.is_empty() {
        line.push_str(&format!(": {note}"));
    }
    if !differences.is_empty() {
        line.push_str(&format!(": {}", differences.join(", ")));
        if matches!(p.step, Step::Differs { .. }) {
            line.push_str(" (left alone; --apply --force replaces it)");
        }
    }
    if let Some(result) = result {
        line.push_str(&format!(" → {result}"));
    }
    line
}
