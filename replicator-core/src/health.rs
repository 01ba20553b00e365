//! Health of the parts of a replication: the source, the target, the
//! checkpoint store and the transforms (when any are configured).
//!
//! Each part has a [`HealthReporter`]. Whoever sees an attempt fail calls
//! [`HealthReporter::failure`]; whoever sees one succeed calls
//! [`HealthReporter::success`]. The reporter keeps since when the part has been
//! failing and the last error, and does the logging of a failure that lasts
//! for everyone: the first failure at WARN, then one summary line a minute
//! while it lasts, and one INFO line on recovery saying how long it lasted. So
//! an hour-long outage logs about sixty lines, not one per retry.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use serde::Serialize;
use tracing::{info, warn};

/// How often a lasting failure is summarised in the log.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(60);

/// One of the parts whose health is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Component {
    /// The source cluster, through the [`crate::Reader`].
    Source,
    /// The target cluster, through the [`crate::Sink`].
    Target,
    /// The [`crate::CheckpointStore`].
    Checkpoint,
    /// The configured [`crate::Transform`]s (an HTTP transform's service, a
    /// script): healthy for ever when there are none.
    Transform,
}

impl Component {
    /// Every component, in the order they are reported.
    pub const ALL: [Component; 4] = [
        Component::Source,
        Component::Target,
        Component::Checkpoint,
        Component::Transform,
    ];

    /// The lower-case name used in logs, metrics labels and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Component::Source => "source",
            Component::Target => "target",
            Component::Checkpoint => "checkpoint",
            Component::Transform => "transform",
        }
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A snapshot of one component's health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentHealth {
    /// Whether its last attempt succeeded (or none failed yet).
    pub healthy: bool,
    /// Since when it has been healthy, or failing.
    pub since: SystemTime,
    /// How long it has been in its current state, at the snapshot.
    pub for_how_long: Duration,
    /// The last error, kept after recovery until the next failure.
    pub last_error: Option<String>,
    /// Failed attempts in the current failure (0 while healthy).
    pub attempts: u64,
    /// Failed attempts since the start.
    pub failures_total: u64,
}

impl ComponentHealth {
    /// Failing for at least `threshold`: what makes a readiness check fail.
    pub fn failing_longer_than(&self, threshold: Duration) -> bool {
        !self.healthy && self.for_how_long >= threshold
    }
}

#[derive(Debug)]
struct State {
    healthy: bool,
    since: SystemTime,
    since_instant: Instant,
    last_error: Option<String>,
    attempts: u64,
    failures_total: u64,
    last_log: Instant,
    attempts_at_last_log: u64,
}

/// Reports the health of one component; cheap to clone, shared by everyone
/// who talks to that component.
#[derive(Debug, Clone)]
pub struct HealthReporter {
    component: Component,
    /// What the log lines call it: `Source`, `Source head probe`, ….
    label: &'static str,
    state: Arc<Mutex<State>>,
}

impl HealthReporter {
    /// A reporter for `component`, healthy from now on.
    pub fn new(component: Component) -> Self {
        Self::labelled(component, title(component))
    }

    /// A reporter for one aspect of `component` (several can report on one
    /// component, see [`merge`]); `label` names it in the log lines.
    pub fn labelled(component: Component, label: &'static str) -> Self {
        let now = Instant::now();
        HealthReporter {
            component,
            label,
            state: Arc::new(Mutex::new(State {
                healthy: true,
                since: SystemTime::now(),
                since_instant: now,
                last_error: None,
                attempts: 0,
                failures_total: 0,
                last_log: now,
                attempts_at_last_log: 0,
            })),
        }
    }

    /// The component reported on.
    pub fn component(&self) -> Component {
        self.component
    }

    /// An attempt failed with `error` (a transient one, being retried). The
    /// first failure logs a warning; while the failure lasts, one summary a
    /// minute.
    pub fn failure(&self, error: &dyn fmt::Display) {
        let message = error.to_string();
        let mut s = self.lock();
        let now = Instant::now();
        s.failures_total += 1;
        s.attempts += 1;
        if s.healthy {
            s.healthy = false;
            s.since = SystemTime::now();
            s.since_instant = now;
            s.last_log = now;
            s.attempts_at_last_log = s.attempts;
            warn!(component = %self.component, error = %message, "{} failing; retrying", self.label);
        } else if now.duration_since(s.last_log) >= SUMMARY_EVERY {
            let attempts_since = s.attempts - s.attempts_at_last_log;
            s.last_log = now;
            s.attempts_at_last_log = s.attempts;
            warn!(
                component = %self.component,
                failing_for = %short(now.duration_since(s.since_instant)),
                attempts = s.attempts,
                attempts_in_last_minute = attempts_since,
                last_error = %message,
                "{} still failing; retrying",
                self.label
            );
        }
        s.last_error = Some(message);
    }

    /// An attempt failed with an error that will not be retried (the caller
    /// stops): marks the component failing and logs at ERROR, without the
    /// "retrying" of [`HealthReporter::failure`].
    pub fn fatal(&self, error: &dyn fmt::Display) {
        let message = error.to_string();
        let mut s = self.lock();
        s.failures_total += 1;
        s.attempts += 1;
        if s.healthy {
            s.healthy = false;
            s.since = SystemTime::now();
            s.since_instant = Instant::now();
        }
        tracing::error!(component = %self.component, error = %message, "{} failed; not retrying", self.label);
        s.last_error = Some(message);
    }

    /// An attempt succeeded. After a failure, logs at INFO how long it
    /// lasted and its last error (what was wrong at the end, which need not
    /// be what the first failure logged).
    pub fn success(&self) {
        let mut s = self.lock();
        if s.healthy {
            return;
        }
        let lasted = s.since_instant.elapsed();
        info!(
            component = %self.component,
            lasted = %short(lasted),
            attempts = s.attempts,
            last_error = %s.last_error.as_deref().unwrap_or_default(),
            "{} recovered",
            self.label
        );
        s.healthy = true;
        s.since = SystemTime::now();
        s.since_instant = Instant::now();
        s.attempts = 0;
    }

    /// The component's health now.
    pub fn snapshot(&self) -> ComponentHealth {
        let s = self.lock();
        ComponentHealth {
            healthy: s.healthy,
            since: s.since,
            for_how_long: s.since_instant.elapsed(),
            last_error: s.last_error.clone(),
            attempts: s.attempts,
            failures_total: s.failures_total,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the state half-written
        // in a way that matters (plain fields): keep reporting.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The reporters of a replication's components.
#[derive(Debug, Clone)]
pub struct Health {
    /// The source (reader, head probe).
    pub source: HealthReporter,
    /// The target (sink writes).
    pub target: HealthReporter,
    /// The checkpoint store.
    pub checkpoint: HealthReporter,
    /// The transforms.
    pub transform: HealthReporter,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            source: HealthReporter::new(Component::Source),
            target: HealthReporter::new(Component::Target),
            checkpoint: HealthReporter::new(Component::Checkpoint),
            transform: HealthReporter::new(Component::Transform),
        }
    }
}

impl Health {
    /// The reporter of `component`.
    pub fn of(&self, component: Component) -> &HealthReporter {
        match component {
            Component::Source => &self.source,
            Component::Target => &self.target,
            Component::Checkpoint => &self.checkpoint,
            Component::Transform => &self.transform,
        }
    }

    /// Snapshots of all of them.
    pub fn snapshot(&self) -> ComponentsHealth {
        ComponentsHealth {
            source: self.source.snapshot(),
            target: self.target.snapshot(),
            checkpoint: self.checkpoint.snapshot(),
            transform: self.transform.snapshot(),
        }
    }
}

/// Snapshots of the components' health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentsHealth {
    /// The source.
    pub source: ComponentHealth,
    /// The target.
    pub target: ComponentHealth,
    /// The checkpoint store.
    pub checkpoint: ComponentHealth,
    /// The transforms.
    pub transform: ComponentHealth,
}

impl Default for ComponentsHealth {
    fn default() -> Self {
        Health::default().snapshot()
    }
}

impl ComponentsHealth {
    /// The snapshot of `component`.
    pub fn of(&self, component: Component) -> &ComponentHealth {
        match component {
            Component::Source => &self.source,
            Component::Target => &self.target,
            Component::Checkpoint => &self.checkpoint,
            Component::Transform => &self.transform,
        }
    }

    /// The snapshot of `component`, to replace.
    pub fn of_mut(&mut self, component: Component) -> &mut ComponentHealth {
        match component {
            Component::Source => &mut self.source,
            Component::Target => &mut self.target,
            Component::Checkpoint => &mut self.checkpoint,
            Component::Transform => &mut self.transform,
        }
    }

    /// Components failing for at least `threshold`, in [`Component::ALL`] order.
    pub fn failing_longer_than(&self, threshold: Duration) -> Vec<Component> {
        Component::ALL
            .into_iter()
            .filter(|c| self.of(*c).failing_longer_than(threshold))
            .collect()
    }

    /// Components failing right now, however briefly.
    pub fn failing(&self) -> Vec<Component> {
        Component::ALL
            .into_iter()
            .filter(|c| !self.of(*c).healthy)
            .collect()
    }
}

/// One health out of several reporters of the same component: failing when
/// any of them fails (since the earliest failure, with the error of the
/// latest), healthy otherwise (since the latest recovery).
pub fn merge(parts: &[ComponentHealth]) -> ComponentHealth {
    let failing: Vec<&ComponentHealth> = parts.iter().filter(|p| !p.healthy).collect();
    let mut merged = if failing.is_empty() {
        parts
            .iter()
            .min_by_key(|p| p.for_how_long)
            .cloned()
            .expect("at least one part")
    } else {
        let oldest = failing
            .iter()
            .max_by_key(|p| p.for_how_long)
            .expect("non-empty");
        let newest = failing
            .iter()
            .min_by_key(|p| p.for_how_long)
            .expect("non-empty");
        ComponentHealth {
            last_error: newest.last_error.clone(),
            attempts: failing.iter().map(|p| p.attempts).sum(),
            ..(*oldest).clone()
        }
    };
    merged.failures_total = parts.iter().map(|p| p.failures_total).sum();
    merged
}

fn title(component: Component) -> &'static str {
    match component {
        Component::Source => "Source",
        Component::Target => "Target",
        Component::Checkpoint => "Checkpoint store",
        Component::Transform => "Transform",
    }
}

/// A short human duration for log lines: `850ms`, `12.3s`, `4m05s`, `3h07m`.
pub fn short(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", d.as_secs_f64())
    } else if ms < 3_600_000 {
        let s = d.as_secs();
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        let s = d.as_secs();
        format!("{}h{:02}m", s / 3600, s / 60 % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_lasts_until_a_success_and_keeps_the_last_error() {
        let r = HealthReporter::new(Component::Target);
        assert!(r.snapshot().healthy);
        r.failure(&"connection refused");
        r.failure(&"connection reset");
        let s = r.snapshot();
        assert!(!s.healthy);
        assert_eq!(s.attempts, 2);
        assert_eq!(s.last_error.as_deref(), Some("connection reset"));
        assert!(!s.failing_longer_than(Duration::from_secs(10)));
        assert!(s.failing_longer_than(Duration::ZERO));
        r.success();
        let s = r.snapshot();
        assert!(s.healthy);
        assert_eq!((s.attempts, s.failures_total), (0, 2));
        assert_eq!(s.last_error.as_deref(), Some("connection reset"));
    }

    #[test]
    fn a_fatal_error_marks_the_component_failing() {
        let r = HealthReporter::labelled(Component::Checkpoint, "Checkpoint store");
        r.fatal(&"cannot write /data/checkpoint");
        let s = r.snapshot();
        assert!(!s.healthy);
        assert_eq!(
            s.last_error.as_deref(),
            Some("cannot write /data/checkpoint")
        );
    }

    #[test]
    fn clones_share_one_state() {
        let health = Health::default();
        let reader_side = health.source.clone();
        reader_side.failure(&"down");
        assert_eq!(health.snapshot().failing(), vec![Component::Source]);
    }

    #[test]
    fn short_durations_read_well() {
        assert_eq!(short(Duration::from_millis(120)), "120ms");
        assert_eq!(short(Duration::from_millis(5200)), "5.2s");
        assert_eq!(short(Duration::from_secs(184)), "3m04s");
        assert_eq!(short(Duration::from_secs(3720)), "1h02m");
    }
}
