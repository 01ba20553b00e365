//! Where each group starts on the target ([`target_start`]) and what is done
//! with it ([`plan`]); see the [module docs](super).

use replicator_core::Position;

use super::{Group, GroupPosition, Start};
use crate::cluster::{next_within, AllFrom, ClusterRead, Direction, SOURCE, TARGET};
use crate::position_map::{map_position, map_revision, MapOptions, Resume};
use crate::verify::{settle, VerifyError};

/// Where a group starts on the target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetStart {
    /// Here (inclusive).
    Ready {
        /// The start to create the group with.
        start: Start,
        /// How it was found, for people.
        note: String,
    },
    /// The group's checkpoint is past what the replicator has written.
    NotReplicatedYet {
        /// For people.
        note: String,
    },
}

/// What is done with a source group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Not on the target: created.
    Create,
    /// On the target with the same settings and filter: left alone.
    Unchanged,
    /// On the target with other settings: left alone (no `force`).
    Differs {
        /// Each difference, `setting: target → source`.
        differences: Vec<String>,
    },
    /// On the target with other settings: deleted and created (`force`).
    Replace {
        /// Each difference, `setting: target → source`.
        differences: Vec<String>,
    },
    /// Not yet: its checkpoint is past what the replicator has written.
    NotReplicatedYet,
}

/// One source group's plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupPlan {
    /// The source group (with its filter).
    pub group: Group,
    /// Where it starts on the target (for `Create` and `Replace`).
    pub start: Option<TargetStart>,
    /// What is done.
    pub step: Step,
}

/// How [`plan`] decides.
#[derive(Clone, Debug, Default)]
pub struct PlanOptions {
    /// How positions and revisions are mapped.
    pub map: MapOptions,
    /// Replace target groups with other settings.
    pub force: bool,
}

/// The plan for every source group, given the target's groups (both with
/// their filters).
///
/// # Errors
/// When a read of either cluster fails.
pub async fn plan<S: ClusterRead, T: ClusterRead>(
    source: &S,
    target: &T,
    source_groups: Vec<Group>,
    target_groups: &[Group],
    options: &PlanOptions,
) -> Result<Vec<GroupPlan>, VerifyError> {
    let mut plans = Vec::with_capacity(source_groups.len());
    for group in source_groups {
        let existing = target_groups
            .iter()
            .find(|t| t.source == group.source && t.name == group.name);
        let step = match existing {
            None => Step::Create,
            Some(existing) => {
                let differences = differences(existing, &group);
                if differences.is_empty() {
                    Step::Unchanged
                } else if options.force {
                    Step::Replace { differences }
                } else {
                    Step::Differs { differences }
                }
            }
        };
        let start = match step {
            Step::Create | Step::Replace { .. } => {
                Some(target_start(source, target, &group, &options.map).await?)
            }
            _ => None,
        };
        let step = match (&start, step) {
            (Some(TargetStart::NotReplicatedYet { .. }), _) => Step::NotReplicatedYet,
            (_, step) => step,
        };
        plans.push(GroupPlan { group, start, step });
    }
    Ok(plans)
}

/// `setting: target → source` for each setting (and the filter) that
/// differs.
fn differences(target: &Group, source: &Group) -> Vec<String> {
    let (t, s) = (&target.settings, &source.settings);
    let mut out = Vec::new();
    let mut compare = |name: &str, t: String, s: String| {
        if t != s {
            out.push(format!("{name}: {t} → {s}"));
        }
    };
    compare(
        "resolveLinks",
        t.resolve_links.to_string(),
        s.resolve_links.to_string(),
    );
    compare(
        "extraStatistics",
        t.extra_statistics.to_string(),
        s.extra_statistics.to_string(),
    );
    compare(
        "maxRetryCount",
        t.max_retry_count.to_string(),
        s.max_retry_count.to_string(),
    );
    compare(
        "minCheckPointCount",
        t.min_checkpoint_count.to_string(),
        s.min_checkpoint_count.to_string(),
    );
    compare(
        "maxCheckPointCount",
        t.max_checkpoint_count.to_string(),
        s.max_checkpoint_count.to_string(),
    );
    compare(
        "maxSubscriberCount",
        t.max_subscriber_count.to_string(),
        s.max_subscriber_count.to_string(),
    );
    compare(
        "liveBufferSize",
        t.live_buffer_size.to_string(),
        s.live_buffer_size.to_string(),
    );
    compare(
        "readBatchSize",
        t.read_batch_size.to_string(),
        s.read_batch_size.to_string(),
    );
    compare(
        "historyBufferSize",
        t.history_buffer_size.to_string(),
        s.history_buffer_size.to_string(),
    );
    compare(
        "messageTimeoutMs",
        t.message_timeout_ms.to_string(),
        s.message_timeout_ms.to_string(),
    );
    compare(
        "checkPointAfterMs",
        t.checkpoint_after_ms.to_string(),
        s.checkpoint_after_ms.to_string(),
    );
    compare(
        "consumerStrategy",
        t.consumer_strategy.clone(),
        s.consumer_strategy.clone(),
    );
    let filter = |g: &Group| {
        g.filter
            .as_ref()
            .map_or("none".to_owned(), ToString::to_string)
    };
    compare("filter", filter(target), filter(source));
    out
}

/// Where `group` starts on the target: after the target event of its
/// checkpoint, or its configured start mapped; see the
/// [module docs](super).
///
/// # Errors
/// When a read of either cluster fails.
pub async fn target_start<S: ClusterRead, T: ClusterRead>(
    source: &S,
    target: &T,
    group: &Group,
    options: &MapOptions,
) -> Result<TargetStart, VerifyError> {
    let after = match (group.checkpoint, group.start) {
        (Some(checkpoint), _) => checkpoint,
        (None, Start::Beginning) => {
            return Ok(ready(
                Start::Beginning,
                "no checkpoint yet: from the start, as configured",
            ));
        }
        (None, Start::End) => {
            return Ok(ready(
                Start::End,
                "no checkpoint yet and configured from the end: from the target's end when it \
                 is created",
            ));
        }
        (None, Start::At(GroupPosition::Revision(0))) => {
            return Ok(ready(
                Start::Beginning,
                "no checkpoint yet: configured from revision 0",
            ));
        }
        (None, Start::At(GroupPosition::Revision(n))) => GroupPosition::Revision(n - 1),
        (None, Start::At(GroupPosition::Position(p))) => {
            match neighbour(source, SOURCE, p, Direction::Backwards, options).await? {
                Some(before) => GroupPosition::Position(before),
                None => {
                    return Ok(ready(
                        Start::Beginning,
                        "no checkpoint yet: configured from the first record",
                    ))
                }
            }
        }
    };
    match (&group.source, after) {
        (super::GroupSource::Stream(stream), GroupPosition::Revision(revision)) => {
            let mapping = map_revision(source, target, stream, revision, options).await?;
            Ok(match mapping.target_revision {
                Some(t) => ready(
                    Start::At(GroupPosition::Revision(t + 1)),
                    &format!("after source revision {revision}: {}", mapping.note),
                ),
                None => ready(Start::Beginning, &mapping.note),
            })
        }
        (_, GroupPosition::Position(position)) => {
            let mapping = map_position(source, target, position, options).await?;
            match (mapping.resume, mapping.target) {
                (Resume::NotReplicatedYet, _) => {
                    Ok(TargetStart::NotReplicatedYet { note: mapping.note })
                }
                (Resume::After, Some(t)) => Ok(
                    match neighbour(target, TARGET, t, Direction::Forwards, options).await? {
                        Some(next) => ready(
                            Start::At(GroupPosition::Position(next)),
                            &format!("the record after target {t} (source {position})"),
                        ),
                        None => ready(
                            Start::End,
                            &format!(
                                "source {position} is target {t}, the last record of the target's \
                             $all: from its end"
                            ),
                        ),
                    },
                ),
                _ => Ok(ready(Start::Beginning, &mapping.note)),
            }
        }
        // A stream group's report holds revisions only (see `admin.rs`).
        (super::GroupSource::All, GroupPosition::Revision(_)) => Ok(ready(
            Start::Beginning,
            "a revision for a $all group: from the start",
        )),
    }
}

fn ready(start: Start, note: &str) -> TargetStart {
    TargetStart::Ready {
        start,
        note: note.to_owned(),
    }
}

/// The position of the record next to `position` in `direction`: the one
/// before it (backwards) or after it (forwards).
async fn neighbour<C: ClusterRead>(
    cluster: &C,
    side: &'static str,
    position: Position,
    direction: Direction,
    options: &MapOptions,
) -> Result<Option<Position>, VerifyError> {
    let mut records = cluster.all_records(AllFrom::Position(position), direction, 2);
    loop {
        let next = next_within(options.request_timeout, &mut records).await;
        let next = settle(side, || "reading $all".to_owned(), next)?;
        match next {
            // A forward read starts at `position` itself.
            Some((p, _)) if p == position => continue,
            other => return Ok(other.map(|(p, _)| p)),
        }
    }
}
