//! The JSON bodies: `/api/status` and the health checks. The field list is
//! documented in the README ("Status server"); change both together.

use std::time::{Duration, SystemTime};

use replicator_core::Position;
use serde::Serialize;

use super::{ComponentView, ConfigSummary, Snapshot};
use crate::time::rfc3339;

/// A position in a `$all`.
#[derive(Debug, Serialize)]
pub(crate) struct Pos {
    commit: u64,
    prepare: u64,
}

fn pos(p: Option<Position>) -> Option<Pos> {
    p.map(|p| Pos {
        commit: p.commit,
        prepare: p.prepare,
    })
}

fn secs(d: Option<Duration>) -> Option<f64> {
    d.map(|d| d.as_secs_f64())
}

fn time(t: Option<SystemTime>) -> Option<String> {
    t.map(rfc3339)
}

/// `GET /api/status`.
#[derive(Debug, Serialize)]
pub(crate) struct ApiStatus<'a> {
    version: &'static str,
    state: &'static str,
    state_error: Option<&'a str>,
    live: bool,
    ready: bool,
    problems: Vec<&'a str>,
    started_at: String,
    restarts: u64,
    restarting: bool,
    source_head: Option<Pos>,
    source_head_at: Option<String>,
    source_quiet_seconds: Option<f64>,
    read: Option<Pos>,
    processed: Option<Pos>,
    target: Option<Pos>,
    gap_bytes: Option<u64>,
    gap_events: Option<u64>,
    percent: Option<f64>,
    events_per_second: f64,
    eta_seconds: Option<f64>,
    lag_seconds: Option<f64>,
    caught_up: bool,
    in_flight: usize,
    sink_retries: u64,
    events: Events,
    checkpoint: CheckpointStatus<'a>,
    components: Components<'a>,
    config: &'a ConfigSummary,
}

#[derive(Debug, Serialize)]
struct Events {
    read: u64,
    written: u64,
    skipped: u64,
    skipped_by_reason: std::collections::BTreeMap<&'static str, u64>,
    bytes_written: u64,
}

#[derive(Debug, Serialize)]
struct CheckpointStatus<'a> {
    position: Option<Pos>,
    target: Option<Pos>,
    taken_at: Option<String>,
    age_seconds: Option<f64>,
    seed: bool,
    unstored: u64,
    stored_in_this_run: u64,
    store: &'a str,
}

/// The components, by name (`transform` is healthy for ever when no
/// filter or transform is configured).
#[derive(Debug, Serialize)]
pub(crate) struct Components<'a> {
    source: ComponentJson<'a>,
    target: ComponentJson<'a>,
    checkpoint: ComponentJson<'a>,
    transform: ComponentJson<'a>,
}

#[derive(Debug, Serialize)]
struct ComponentJson<'a> {
    healthy: bool,
    since: String,
    failing_seconds: f64,
    error: Option<&'a str>,
    attempts: u64,
    failures_total: u64,
}

impl<'a> From<&'a ComponentView> for ComponentJson<'a> {
    fn from(c: &'a ComponentView) -> Self {
        ComponentJson {
            healthy: c.healthy,
            since: rfc3339(c.since),
            failing_seconds: c.failing_for.as_secs_f64(),
            error: c.error.as_deref(),
            attempts: c.attempts,
            failures_total: c.failures_total,
        }
    }
}

fn components(s: &Snapshot) -> Components<'_> {
    let [source, target, checkpoint, transform] = &s.components;
    Components {
        source: source.into(),
        target: target.into(),
        checkpoint: checkpoint.into(),
        transform: transform.into(),
    }
}

impl<'a> ApiStatus<'a> {
    pub(crate) fn new(s: &'a Snapshot) -> Self {
        let p = &s.progress;
        let stored = p.stored.as_ref();
        ApiStatus {
            version: env!("CARGO_PKG_VERSION"),
            state: p.state.name(),
            state_error: s.state_error.as_deref(),
            live: s.live(),
            ready: s.ready(),
            problems: s
                .not_live
                .iter()
                .chain(&s.not_ready)
                .map(String::as_str)
                .collect(),
            started_at: rfc3339(s.settings.started_at),
            restarts: s.restarts,
            restarting: s.restarting,
            source_head: pos(p.source_head),
            source_head_at: time(p.source_head_at),
            source_quiet_seconds: secs(s.source_quiet),
            read: pos(p.last_read),
            processed: pos(p.processed),
            target: pos(p.target),
            gap_bytes: p.gap_bytes,
            gap_events: p.gap_events,
            percent: p.percent,
            events_per_second: p.events_per_second,
            eta_seconds: secs(p.eta),
            lag_seconds: secs(p.lag),
            caught_up: p.caught_up,
            in_flight: p.in_flight,
            sink_retries: p.sink_retries,
            events: Events {
                read: p.read,
                written: p.written,
                skipped: p.skipped,
                skipped_by_reason: p.skipped_by_reason.by_reason().into_iter().collect(),
                bytes_written: p.bytes_written,
            },
            checkpoint: CheckpointStatus {
                position: pos(stored.map(|c| c.source)),
                target: pos(stored.and_then(|c| c.target)),
                taken_at: time(stored.map(|c| c.taken_at)),
                age_seconds: stored.map(|c| {
                    s.now
                        .duration_since(c.taken_at)
                        .unwrap_or_default()
                        .as_secs_f64()
                }),
                seed: stored.is_some_and(|c| c.seed),
                unstored: p.unstored,
                stored_in_this_run: p.checkpoints_stored,
                store: &s.settings.summary.checkpoint_store,
            },
            components: components(s),
            config: &s.settings.summary,
        }
    }
}

/// The body of `/health`, `/health/ready` and `/health/live`.
#[derive(Debug, Serialize)]
pub(crate) struct HealthBody<'a> {
    /// `ok`, or `unhealthy`.
    status: &'static str,
    state: &'static str,
    problems: &'a [String],
    heartbeat_age_seconds: f64,
    components: Components<'a>,
}

impl<'a> HealthBody<'a> {
    /// For readiness (`live: false`) or liveness (`live: true`).
    pub(crate) fn new(s: &'a Snapshot, live: bool) -> Self {
        let problems = if live { &s.not_live } else { &s.not_ready };
        HealthBody {
            status: if problems.is_empty() {
                "ok"
            } else {
                "unhealthy"
            },
            state: s.progress.state.name(),
            problems,
            heartbeat_age_seconds: s.heartbeat_age.as_secs_f64(),
            components: components(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::status;
    use super::*;
    use replicator_core::{Checkpoint, PipelineState};
    use serde_json::Value;

    #[test]
    fn api_status_has_every_documented_field() {
        let (tx, status) = status("");
        tx.send_modify(|p| {
            p.state = PipelineState::Running;
            p.written = 7;
            p.processed = Some(Position::at(100));
            p.stored = Some(Checkpoint::processed(
                Position::at(90),
                Some(Position::at(5)),
            ));
            p.percent = Some(50.0);
            p.eta = Some(Duration::from_millis(1500));
        });
        let snap = status.snapshot();
        let v: Value = serde_json::to_value(ApiStatus::new(&snap)).unwrap();
        for key in [
            "version",
            "state",
            "state_error",
            "live",
            "ready",
            "problems",
            "started_at",
            "restarts",
            "restarting",
            "source_head",
            "source_head_at",
            "source_quiet_seconds",
            "read",
            "processed",
            "target",
            "gap_bytes",
            "gap_events",
            "percent",
            "events_per_second",
            "eta_seconds",
            "lag_seconds",
            "caught_up",
            "in_flight",
            "sink_retries",
            "events",
            "checkpoint",
            "components",
            "config",
        ] {
            assert!(v.get(key).is_some(), "missing {key}: {v:#}");
        }
        assert_eq!(v["state"], "running");
        assert_eq!(v["events"]["written"], 7);
        assert_eq!(v["events"]["skipped_by_reason"]["system_stream"], 0);
        assert_eq!(v["processed"]["commit"], 100);
        assert_eq!(v["read"], Value::Null);
        assert_eq!(v["eta_seconds"], 1.5);
        assert_eq!(v["checkpoint"]["position"]["commit"], 90);
        assert_eq!(v["checkpoint"]["target"]["commit"], 5);
        assert_eq!(v["checkpoint"]["store"], "file ./checkpoint");
        for c in ["source", "target", "checkpoint", "transform"] {
            let c = &v["components"][c];
            assert_eq!(c["healthy"], true, "{c}");
            assert!(c["since"].as_str().unwrap().ends_with('Z'), "{c}");
            assert_eq!(c["error"], Value::Null, "{c}");
        }
        assert_eq!(v["config"]["partitions"], 1);
        assert_eq!(v["config"]["order"], "source");
        assert_eq!(v["config"]["transform"], "default");
        assert_eq!(v["config"]["filters"], Value::Null);
        assert_eq!(v["config"]["scavenge"], false);
        let text = v.to_string();
        assert!(
            !text.contains("s3cr3t") && !text.contains("t4rget"),
            "{text}"
        );
    }
}
