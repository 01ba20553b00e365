//! Re-creating the source's user projections on the target, **stopped**:
//! what `replicator projections` plans and applies.
//!
//! - **Reading**: definitions (query, mode, emit, track-emitted-streams,
//!   whether it runs) come from the streams the server keeps them in
//!   (`$projections-$all`, `$projections-{name}`; see [`read`]), so a v5
//!   source read over TCP works too; each side's statistics (status,
//!   position, last checkpoint) from the gRPC `Statistics` call when the
//!   side is reached over gRPC. Both need an admin.
//! - **Planning**: every projection whose name does not start with `$` is a
//!   user projection; the others (`$by_category`, `$streams`, …) are left
//!   alone, each cluster has its own. Only continuous projections are
//!   re-created: a transient one lives only while its client keeps it, a
//!   one-time one has run to completion. A continuous one missing on the
//!   target is to be created; one there with the same query, emit and
//!   track-emitted-streams settings is unchanged; one there that differs is
//!   reported and left alone unless forced.
//! - **Applying**: each missing projection is created over the target's HTTP
//!   API with `enabled=false`, so it never starts (gRPC Create always
//!   starts one; create-then-disable would let it run, and emit, meanwhile).
//!   A forced difference is updated with gRPC Update (query and emit), which
//!   keeps its run state; track-emitted-streams cannot be changed by an
//!   update, so such a difference stays reported.
//!
//! Why stopped: a projection that emits (`emit()`, `linkTo()`) writes
//! ordinary events, which the replicator copies from the source like any
//! other. Running it on the target before the cutover would write them a
//! second time. Start it on the target after the cutover.

mod manage;
mod proto;
pub mod read;

use std::collections::HashMap;
use std::time::Duration;

use eventstore::ClientSettings;

use crate::cluster::{ClusterRead, ReadError, SOURCE, TARGET};
use crate::wire::token::BearerToken;

/// `ProjectionMode`, as the server stores it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Runs until stopped, with checkpoints: the one kind re-created.
    Continuous,
    /// Lives while its client keeps it.
    Transient,
    /// Runs once over the events there were.
    OneTime,
    /// A value this tool does not know (as stored).
    Other(String),
}

impl Mode {
    fn from_number(n: i64) -> Mode {
        match n {
            0 => Mode::Transient,
            1 => Mode::OneTime,
            4 => Mode::Continuous,
            other => Mode::Other(other.to_string()),
        }
    }

    fn from_name(name: &str) -> Mode {
        match name {
            "Continuous" => Mode::Continuous,
            "Transient" => Mode::Transient,
            "OneTime" => Mode::OneTime,
            other => Mode::Other(other.to_owned()),
        }
    }

    /// The name the server reports (`Continuous`, `Transient`, `OneTime`).
    pub fn name(&self) -> &str {
        match self {
            Mode::Continuous => "Continuous",
            Mode::Transient => "Transient",
            Mode::OneTime => "OneTime",
            Mode::Other(other) => other,
        }
    }
}

/// A projection's stored definition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Definition {
    /// Its name.
    pub name: String,
    /// Its mode.
    pub mode: Mode,
    /// `JS` for a user projection.
    pub handler_type: String,
    /// The query's source text.
    pub query: String,
    /// Whether it runs (`Enabled`).
    pub enabled: bool,
    /// Whether it may emit events.
    pub emit_enabled: bool,
    /// Whether it records the streams it emits to.
    pub track_emitted_streams: bool,
}

impl Definition {
    /// Whether this is a system (internal) projection: its name starts with `$`.
    pub fn is_system(&self) -> bool {
        self.name.starts_with('$')
    }
}

/// What a cluster's `Statistics` call says of one projection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Statistics {
    /// `Running`, `Stopped`, `Faulted`, … as the server words it.
    pub status: String,
    /// Where it has read to (the server's checkpoint tag text).
    pub position: String,
    /// Its last checkpoint (same form; empty for none).
    pub last_checkpoint: String,
    /// Its epoch (-1 when never started).
    pub epoch: i64,
    /// Its version (-1 when never started).
    pub version: i64,
    /// Its mode as the server words it (`Continuous`, …).
    pub mode: String,
}

/// What the plan does with one source projection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Missing on the target: create it stopped.
    Create,
    /// The target has it with the same query and settings.
    Unchanged,
    /// The target has it with other settings: left alone (no `--force`, or
    /// a difference an update cannot change: `fixable` false).
    Differs {
        /// What differs, one phrase each.
        differences: Vec<String>,
        /// Whether `--force` would update it.
        fixable: bool,
    },
    /// The target has it with another query or emit setting: update it
    /// (`--force`).
    Update {
        /// What differs, one phrase each.
        differences: Vec<String>,
    },
    /// Not re-created (transient, one-time, not JS): why.
    Skip {
        /// Why not.
        reason: String,
    },
    /// A system projection: each cluster has its own.
    LeaveAlone,
}

impl Action {
    /// Its name in reports (`create`, `unchanged`, `differs`, `update`,
    /// `skip`, `left alone`).
    pub fn name(&self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Unchanged => "unchanged",
            Action::Differs { .. } => "differs",
            Action::Update { .. } => "update",
            Action::Skip { .. } => "skip",
            Action::LeaveAlone => "left alone",
        }
    }
}

/// What applying an entry did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Created on the target, stopped.
    Created,
    /// Updated on the target.
    Updated,
    /// The target refused, or did not answer: why.
    Failed(String),
}

/// One source projection in the plan.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Its definition on the source.
    pub definition: Definition,
    /// Its statistics on the source (`None` for a v5 TCP source, which has
    /// no gRPC, or one the list left out).
    pub source: Option<Statistics>,
    /// The projection of that name on the target, if any.
    pub target: Option<Definition>,
    /// Its statistics on the target.
    pub target_statistics: Option<Statistics>,
    /// What to do.
    pub action: Action,
    /// What applying did (`None` until applied, and for entries with
    /// nothing to do).
    pub outcome: Option<Outcome>,
}

/// Every source projection and what to do with it.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// In the source's registration order.
    pub entries: Vec<Entry>,
}

impl Plan {
    /// Whether something needs the operator: a difference left alone, or a
    /// create or update that failed.
    pub fn needs_attention(&self) -> bool {
        self.entries.iter().any(|e| {
            matches!(e.action, Action::Differs { .. })
                || matches!(e.outcome, Some(Outcome::Failed(_)))
        })
    }

    /// How many entries have `action`'s kind.
    pub fn count(&self, action: &str) -> usize {
        self.entries
            .iter()
            .filter(|e| e.action.name() == action)
            .count()
    }
}

/// A cluster as the plan reads it.
pub struct Side<'a> {
    /// Its streams (gRPC or v5 TCP).
    pub reader: &'a dyn ClusterRead,
    /// Its gRPC settings, for statistics and changes; `None` for a v5 TCP
    /// source (then no statistics).
    pub settings: Option<&'a ClientSettings>,
    /// The bearer token its gRPC and HTTP calls carry, if configured.
    pub token: Option<&'a BearerToken>,
}

/// How to plan and apply.
#[derive(Clone, Debug)]
pub struct ProjectionsOptions {
    /// Update target projections whose query or emit setting differs.
    pub force: bool,
    /// Deadline of each request.
    pub request_timeout: Duration,
}

impl Default for ProjectionsOptions {
    fn default() -> Self {
        ProjectionsOptions {
            force: false,
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// Why the projections could not be planned.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionsError {
    /// A definition stream could not be read.
    #[error("cannot read {stream} on the {side}{}", hint(.source))]
    Read {
        /// `source` or `target`.
        side: &'static str,
        /// The stream.
        stream: String,
        /// The read's error.
        #[source]
        source: ReadError,
    },
    /// A stored definition does not parse.
    #[error("the definition of projection {name:?} on the {side} does not parse: {reason}")]
    BadDefinition {
        /// `source` or `target`.
        side: &'static str,
        /// The projection.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The node does not serve the Projections service.
    #[error(
        "the projection subsystem is not running on the {side}: start its nodes with \
         --run-projections=System (or All) to manage projections"
    )]
    SubsystemNotRunning {
        /// `source` or `target`.
        side: &'static str,
    },
    /// The credentials may not do it.
    #[error(
        "access denied on the {side}: cannot {what}; projections need an admin user in the \
         {side}'s connection string"
    )]
    AccessDenied {
        /// `source` or `target`.
        side: &'static str,
        /// The operation.
        what: &'static str,
    },
    /// The statistics call failed otherwise.
    #[error("cannot list the projections' statistics on the {side}: {}", crate::connection::describe(.source))]
    Statistics {
        /// `source` or `target`.
        side: &'static str,
        /// The client's error.
        #[source]
        source: eventstore::Error,
    },
    /// The target's HTTP API cannot be reached with these settings.
    #[error("cannot reach the target's HTTP API: {}", crate::connection::describe(.0))]
    Http(#[source] eventstore::Error),
}

fn hint(error: &ReadError) -> &'static str {
    match error {
        ReadError::AccessDenied => {
            ": access denied (wrong credentials, or a user who is not an admin: projection \
             definitions are system streams)"
        }
        _ => "",
    }
}

/// What differs between the source's definition and the target's.
fn differences(source: &Definition, target: &Definition) -> (Vec<String>, bool) {
    let mut found = Vec::new();
    let mut fixable = true;
    if target.mode != Mode::Continuous {
        found.push(format!("the target's is {}", target.mode.name()));
        fixable = false;
    }
    if source.query != target.query {
        found.push("query".to_owned());
    }
    if source.emit_enabled != target.emit_enabled {
        found.push(format!(
            "emit (source {}, target {})",
            source.emit_enabled, target.emit_enabled
        ));
    }
    if source.track_emitted_streams != target.track_emitted_streams {
        found.push(format!(
            "track-emitted-streams (source {}, target {}; an update cannot change it: delete \
             the target's projection and run again)",
            source.track_emitted_streams, target.track_emitted_streams
        ));
        fixable = false;
    }
    (found, fixable)
}

/// The action for one source projection given the target's.
fn action(source: &Definition, target: Option<&Definition>, force: bool) -> Action {
    if source.is_system() {
        return Action::LeaveAlone;
    }
    if source.mode != Mode::Continuous {
        return Action::Skip {
            reason: match source.mode {
                Mode::Transient => "transient: it lives only while its client keeps it".into(),
                Mode::OneTime => "one-time: it ran once, over the events there were".into(),
                _ => format!("mode {} is not re-created", source.mode.name()),
            },
        };
    }
    if source.handler_type.is_empty() {
        return Action::Skip {
            reason: format!(
                "listed by the source, but {} holds no definition to copy",
                read::definition_stream(&source.name)
            ),
        };
    }
    if !source.handler_type.eq_ignore_ascii_case("js") {
        return Action::Skip {
            reason: format!("handler {} is not a JavaScript query", source.handler_type),
        };
    }
    let Some(target) = target else {
        return Action::Create;
    };
    let (differences, fixable) = differences(source, target);
    if differences.is_empty() {
        Action::Unchanged
    } else if force && fixable {
        Action::Update { differences }
    } else {
        Action::Differs {
            differences,
            fixable,
        }
    }
}

/// Reads both sides and plans: nothing is changed.
///
/// # Errors
/// A side that cannot be read (named), a definition that does not parse, or
/// a side whose projection subsystem is not running.
pub async fn plan(
    source: Side<'_>,
    target: Side<'_>,
    options: &ProjectionsOptions,
) -> Result<Plan, ProjectionsError> {
    let limit = options.request_timeout;
    let definitions = read::definitions(source.reader, SOURCE, limit).await?;
    let source_statistics = match source.settings {
        Some(settings) => manage::statistics(settings, source.token, SOURCE, limit).await?,
        None => HashMap::new(),
    };
    let on_target: HashMap<String, Definition> = read::definitions(target.reader, TARGET, limit)
        .await?
        .into_iter()
        .map(|d| (d.name.clone(), d))
        .collect();
    let target_statistics = match target.settings {
        Some(settings) => manage::statistics(settings, target.token, TARGET, limit).await?,
        None => HashMap::new(),
    };
    let mut definitions = definitions;
    // The server lists projections it has no stored definition for (a
    // node's system projections before they are first written, as the
    // testkit keeps them): listed too, never copied.
    let mut listed: Vec<_> = source_statistics
        .iter()
        .filter(|(name, _)| !definitions.iter().any(|d| &d.name == *name))
        .collect();
    listed.sort_by(|a, b| a.0.cmp(b.0));
    for (name, statistics) in listed {
        definitions.push(Definition {
            name: name.clone(),
            mode: Mode::from_name(&statistics.mode),
            handler_type: String::new(),
            query: String::new(),
            enabled: statistics.status.starts_with("Running"),
            emit_enabled: false,
            track_emitted_streams: false,
        });
    }
    let entries = definitions
        .into_iter()
        .map(|definition| {
            let target = on_target.get(&definition.name).cloned();
            Entry {
                action: action(&definition, target.as_ref(), options.force),
                source: source_statistics.get(&definition.name).cloned(),
                target_statistics: target_statistics.get(&definition.name).cloned(),
                target,
                definition,
                outcome: None,
            }
        })
        .collect();
    Ok(Plan { entries })
}

/// Applies `plan` to the target: creates each missing projection stopped,
/// updates each forced difference. Each entry's outcome is recorded; one
/// that fails does not stop the others.
///
/// # Errors
/// When the target's HTTP API cannot be set up (TLS files, no node).
pub async fn apply(
    plan: &mut Plan,
    target: &ClientSettings,
    token: Option<&BearerToken>,
    options: &ProjectionsOptions,
) -> Result<(), ProjectionsError> {
    let limit = options.request_timeout;
    let creates = plan.entries.iter().any(|e| e.action == Action::Create);
    let http = if creates {
        Some(
            manage::HttpApi::connect(target, token, limit)
                .await
                .map_err(ProjectionsError::Http)?,
        )
    } else {
        None
    };
    for entry in &mut plan.entries {
        let result = match (&entry.action, &http) {
            (Action::Create, Some(http)) => http
                .create_stopped(&entry.definition)
                .await
                .map(|()| Outcome::Created),
            (Action::Update { .. }, _) => manage::update(target, token, &entry.definition, limit)
                .await
                .map(|()| Outcome::Updated),
            _ => continue,
        };
        entry.outcome = Some(result.unwrap_or_else(Outcome::Failed));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn definition(name: &str, query: &str, emit: bool, track: bool) -> Definition {
        Definition {
            name: name.into(),
            mode: Mode::Continuous,
            handler_type: "JS".into(),
            query: query.into(),
            enabled: true,
            emit_enabled: emit,
            track_emitted_streams: track,
        }
    }

    #[test]
    fn each_case_gets_its_action() {
        let source = definition("p", "q", true, false);
        assert_eq!(action(&source, None, false), Action::Create);
        // Run state does not count: the target's copy is meant to be stopped.
        let mut stopped = source.clone();
        stopped.enabled = false;
        assert_eq!(action(&source, Some(&stopped), false), Action::Unchanged);
        let other = definition("p", "other", true, false);
        assert!(matches!(
            action(&source, Some(&other), false),
            Action::Differs { fixable: true, .. }
        ));
        assert!(matches!(
            action(&source, Some(&other), true),
            Action::Update { .. }
        ));
        // Tracking cannot be changed by an update: forced or not, reported.
        let tracked = definition("p", "q", true, true);
        assert!(matches!(
            action(&source, Some(&tracked), true),
            Action::Differs { fixable: false, .. }
        ));
        let system = definition("$by_category", "", false, false);
        assert_eq!(action(&system, None, false), Action::LeaveAlone);
        let mut one_time = source.clone();
        one_time.mode = Mode::OneTime;
        assert!(matches!(
            action(&one_time, None, false),
            Action::Skip { .. }
        ));
    }
}
