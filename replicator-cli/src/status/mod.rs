//! The HTTP status server of `replicator run`: `/ping`, `/health/live`,
//! `/health/ready` (and `/health`), `/metrics`, `/api/status` and a status
//! page at `/`.
//!
//! It reads one progress channel and one set of health reporters that outlive
//! the pipeline's restarts (`restartOnFailure`), so it answers the same way
//! before the first pipeline, between restarts and while one runs. Each
//! request takes one `Snapshot`; the verdicts (live, ready) are decided here
//! once and rendered by the `json`, `metrics` and `page` modules.

mod command;
mod json;
mod metrics;
mod page;
mod server;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use replicator_core::secret::Scrubber;
use replicator_core::{Component, ComponentHealth, PipelineState, Position, Progress};
use tokio::sync::watch;

use crate::config::{Config, SeederConfig, StoreConfig, TransformConfig};

pub use command::{show, DEFAULT_URL};
pub(crate) use server::StatusServer;

/// What the status server reads, shared with `replicator run`.
#[derive(Clone)]
pub(crate) struct Status {
    progress: watch::Receiver<Progress>,
    runs: Arc<Runs>,
    settings: Arc<Settings>,
}

impl Status {
    /// A status over `progress` (the one channel every pipeline of this
    /// process publishes on), configured by `config`.
    pub fn new(progress: watch::Receiver<Progress>, config: &Config) -> Self {
        let runs = Arc::new(Runs::default());
        // Follows every publish (not only the requests) so that the source's
        // quiet time is measured from the head's last move, not from the
        // first request after it.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let mut watched = progress.clone();
            let runs = Arc::clone(&runs);
            runtime.spawn(async move {
                while watched.changed().await.is_ok() {
                    let p = watched.borrow_and_update();
                    runs.observe_head(p.source_head, p.source_head_at);
                }
            });
        }
        Status {
            progress,
            runs,
            settings: Arc::new(Settings::new(config)),
        }
    }

    /// The pipeline failed and will be started again (`restartOnFailure`):
    /// until [`Status::started`], liveness holds (a restart is the cure, not
    /// a reason to kill the process) while readiness reports the failure.
    pub fn restarting(&self) {
        self.runs.restarts.fetch_add(1, Ordering::Relaxed);
        self.runs.restarting.store(true, Ordering::Relaxed);
    }

    /// A pipeline is (again) about to run.
    pub fn started(&self) {
        self.runs.restarting.store(false, Ordering::Relaxed);
    }

    /// Everything one response is made of, now.
    pub(crate) fn snapshot(&self) -> Snapshot {
        let progress = self.progress.borrow().clone();
        let now = SystemTime::now();
        let s = &self.settings;
        let components = Component::ALL.map(|c| {
            let h = progress.components.of(c);
            ComponentView {
                component: c,
                healthy: h.healthy,
                since: h.since,
                failing_for: failing_for(h, now),
                error: h.last_error.as_deref().map(|e| s.scrub(e)),
                attempts: h.attempts,
                failures_total: h.failures_total,
            }
        });
        let restarting = self.runs.restarting.load(Ordering::Relaxed);
        let source_quiet = self
            .runs
            .observe_head(progress.source_head, progress.source_head_at)
            .map(|moved| now.duration_since(moved).unwrap_or_default());
        let heartbeat_age = progress.since_heartbeat();
        let state_error = match &progress.state {
            PipelineState::Retrying { error, .. } | PipelineState::Failed(error) => {
                Some(s.scrub(error))
            }
            _ => None,
        };

        let mut not_ready = Vec::new();
        if let PipelineState::Failed(_) = progress.state {
            not_ready.push(format!(
                "replication failed{}: {}",
                if restarting { " (restarting)" } else { "" },
                state_error.as_deref().unwrap_or("")
            ));
        }
        for c in &components {
            if !c.healthy && c.failing_for >= s.unhealthy_after {
                not_ready.push(format!(
                    "{} failing for {}: {}",
                    c.component,
                    crate::time::short(c.failing_for),
                    c.error.as_deref().unwrap_or("(no error recorded)")
                ));
            }
        }

        let mut not_live = Vec::new();
        if !restarting {
            if let PipelineState::Failed(_) = progress.state {
                not_live.push(format!(
                    "replication failed: {}",
                    state_error.as_deref().unwrap_or("")
                ));
            }
            let turning = matches!(
                progress.state,
                PipelineState::Starting
                    | PipelineState::Running
                    | PipelineState::Retrying { .. }
                    | PipelineState::Draining
            );
            if turning && heartbeat_age > s.live_bound {
                not_live.push(format!(
                    "stuck: the pipeline has not turned for {} (bound {})",
                    crate::time::short(heartbeat_age),
                    crate::time::short(s.live_bound)
                ));
            }
        }

        Snapshot {
            now,
            progress,
            components,
            state_error,
            heartbeat_age,
            not_ready,
            not_live,
            restarting,
            restarts: self.runs.restarts.load(Ordering::Relaxed),
            source_quiet,
            settings: Arc::clone(&self.settings),
        }
    }
}

/// How long `h` has been failing at `now` (zero when healthy). From its
/// `since` rather than the published `for_how_long`, which is as old as the
/// last publish (and a pipeline between restarts publishes nothing).
fn failing_for(h: &ComponentHealth, now: SystemTime) -> Duration {
    if h.healthy {
        Duration::ZERO
    } else {
        now.duration_since(h.since).unwrap_or(h.for_how_long)
    }
}

/// Restarts of the pipeline (`restartOnFailure`).
#[derive(Debug, Default)]
struct Runs {
    restarts: AtomicU64,
    restarting: AtomicBool,
    /// The source head last seen and since when it has not moved.
    head: Mutex<Option<(Position, SystemTime)>>,
}

impl Runs {
    /// Notes the probed source head; returns since when it has been where it
    /// is (as far as this process has seen: from the first probe on).
    fn observe_head(&self, head: Option<Position>, at: Option<SystemTime>) -> Option<SystemTime> {
        let head = head?;
        let mut last = self.head.lock().unwrap_or_else(|e| e.into_inner());
        match *last {
            Some((seen, since)) if seen == head => Some(since),
            _ => {
                let since = at.unwrap_or_else(SystemTime::now);
                *last = Some((head, since));
                Some(since)
            }
        }
    }
}

/// One component's health as reported.
#[derive(Debug, Clone)]
pub(crate) struct ComponentView {
    pub component: Component,
    pub healthy: bool,
    pub since: SystemTime,
    pub failing_for: Duration,
    /// The last error, passwords hidden.
    pub error: Option<String>,
    pub attempts: u64,
    pub failures_total: u64,
}

/// One consistent view for one response.
pub(crate) struct Snapshot {
    pub now: SystemTime,
    pub progress: Progress,
    /// In [`Component::ALL`] order.
    pub components: [ComponentView; 4],
    /// The error of a retrying or failed state, passwords hidden.
    pub state_error: Option<String>,
    pub heartbeat_age: Duration,
    /// Why readiness fails; empty when ready.
    pub not_ready: Vec<String>,
    /// Why liveness fails; empty when live.
    pub not_live: Vec<String>,
    pub restarting: bool,
    pub restarts: u64,
    /// How long the source head has not moved (writers stopped?); `None`
    /// before the first probe.
    pub source_quiet: Option<Duration>,
    pub settings: Arc<Settings>,
}

impl Snapshot {
    pub fn ready(&self) -> bool {
        self.not_ready.is_empty()
    }

    pub fn live(&self) -> bool {
        self.not_live.is_empty()
    }
}

/// The configuration as the status server reports and applies it.
#[derive(Debug)]
pub(crate) struct Settings {
    pub unhealthy_after: Duration,
    /// Liveness fails when the pipeline has not turned for this long.
    pub live_bound: Duration,
    pub started_at: SystemTime,
    /// The configuration summary, passwords hidden.
    pub summary: ConfigSummary,
    /// Hides the passwords of the configured connection strings and URL
    /// in error messages.
    scrubber: Scrubber,
}

/// What `/api/status` shows of the configuration (passwords hidden).
#[derive(Debug, serde::Serialize)]
pub(crate) struct ConfigSummary {
    pub source: String,
    pub target: String,
    /// `source` (the target's `$all` in the source's order) or `stream`.
    pub order: String,
    /// Writers: 1 with source order, `partitionCount` with stream order.
    pub partitions: usize,
    pub buffer_size: usize,
    pub checkpoint_store: String,
    pub checkpoint_after: u64,
    pub seeder: Option<String>,
    pub run_continuously: bool,
    pub restart_on_failure: bool,
    pub restart_delay_seconds: u64,
    pub call_timeout_seconds: u64,
    pub unhealthy_after_seconds: u64,
    pub http_listen: Option<String>,
    /// The filters in order, `streamName include "^orders"; …`, or none.
    pub filters: Option<String>,
    pub scavenge: bool,
    /// `default`, `default with $original… metadata`, `js FILE (N at once)`, ….
    pub transform: String,
    pub partitioner: Option<String>,
}

/// Liveness allows this long without a turn of the pipeline, at least.
const MIN_LIVE_BOUND: Duration = Duration::from_secs(60);

impl Settings {
    fn new(config: &Config) -> Self {
        let transform_url = match &config.transform {
            TransformConfig::Http { url, .. } => Some(url),
            _ => None,
        };
        let store_url = match &config.checkpoint.store {
            StoreConfig::Mongo {
                connection_string, ..
            }
            | StoreConfig::Stream {
                connection_string, ..
            } => Some(connection_string),
            StoreConfig::File { .. } => None,
        };
        let mut scrubber = Scrubber::of(
            [
                &config.reader.connection_string,
                &config.sink.connection_string,
            ]
            .into_iter()
            .chain(store_url)
            .chain(transform_url),
        );
        // Never printed by the replicator itself; hidden anyway, should a
        // driver's message ever quote one.
        for token in [&config.reader.token, &config.sink.token] {
            if let Some(crate::config::TokenConfig::Inline(token)) = token {
                scrubber.add(token.clone());
            }
        }
        Settings {
            unhealthy_after: config.http.unhealthy_after,
            live_bound: MIN_LIVE_BOUND.max(config.call_timeout * 3),
            started_at: SystemTime::now(),
            summary: ConfigSummary {
                source: config.reader.connection_string.to_string(),
                target: config.sink.connection_string.to_string(),
                order: config.sink.order.to_string(),
                partitions: config.sink.writers(),
                buffer_size: config.sink.buffer_size.get(),
                checkpoint_store: config.checkpoint.store.to_string(),
                checkpoint_after: config.checkpoint.checkpoint_after,
                seeder: config.checkpoint.seeder.as_ref().map(|s| match s {
                    SeederConfig::Chaser { path } => format!("chaser {}", path.display()),
                }),
                run_continuously: config.run_continuously,
                restart_on_failure: config.restart_on_failure,
                restart_delay_seconds: config.restart_delay.as_secs(),
                call_timeout_seconds: config.call_timeout.as_secs(),
                unhealthy_after_seconds: config.http.unhealthy_after.as_secs(),
                http_listen: config.http.listen.clone(),
                filters: (!config.filters.is_empty()).then(|| {
                    config
                        .filters
                        .iter()
                        .map(|f| {
                            let mut text = f.kind.to_string();
                            if let Some(p) = &f.include {
                                text.push_str(&format!(" include {p:?}"));
                            }
                            if let Some(p) = &f.exclude {
                                text.push_str(&format!(" exclude {p:?}"));
                            }
                            text
                        })
                        .collect::<Vec<_>>()
                        .join("; ")
                }),
                scavenge: config.scavenge,
                transform: match &config.transform {
                    TransformConfig::Default {
                        original_metadata: false,
                    } => "default".to_owned(),
                    TransformConfig::Default {
                        original_metadata: true,
                    } => "default with $original… metadata".to_owned(),
                    TransformConfig::Js { path, in_flight } => {
                        format!("js {} ({in_flight} at once)", path.display())
                    }
                    TransformConfig::Http { url, in_flight } => {
                        format!("http {url} ({in_flight} at once)")
                    }
                },
                partitioner: config
                    .sink
                    .partitioner
                    .as_ref()
                    .map(|p| p.display().to_string()),
            },
            scrubber,
        }
    }

    /// `text` (an error message) with every password hidden: the
    /// configured ones wherever they appear, and those of any word that
    /// looks like a connection string (see [`Scrubber`]).
    pub fn scrub(&self, text: &str) -> String {
        self.scrubber.scrub(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    pub(crate) fn config(extra: &str) -> Config {
        let yaml = format!(
            "replicator:\n  reader:\n    connectionString: esdb://admin:s3cr3t-pw@source:2113?tls=false\n  sink:\n    connectionString: esdb://writer:t4rget/pw@target:2113\n{extra}"
        );
        Config::from_yaml(&yaml, Path::new("test.yaml"), std::iter::empty()).unwrap()
    }

    pub(crate) fn status(extra: &str) -> (watch::Sender<Progress>, Status) {
        let (tx, rx) = watch::channel(Progress::default());
        (tx, Status::new(rx, &config(extra)))
    }

    #[test]
    fn the_source_is_quiet_since_its_head_last_moved() {
        let (tx, status) = status("");
        assert_eq!(status.snapshot().source_quiet, None, "no head probed yet");
        let ago = |secs| SystemTime::now() - Duration::from_secs(secs);
        tx.send_modify(|p| {
            p.source_head = Some(Position::at(100));
            p.source_head_at = Some(ago(30));
        });
        let quiet = status.snapshot().source_quiet.unwrap();
        assert!(quiet >= Duration::from_secs(30), "{quiet:?}");
        // A later probe of the same head: still quiet since the first one.
        tx.send_modify(|p| p.source_head_at = Some(ago(1)));
        assert!(status.snapshot().source_quiet.unwrap() >= Duration::from_secs(30));
        // The head moved: quiet since that probe.
        tx.send_modify(|p| {
            p.source_head = Some(Position::at(200));
            p.source_head_at = Some(ago(5));
        });
        let quiet = status.snapshot().source_quiet.unwrap();
        assert!(
            quiet >= Duration::from_secs(5) && quiet < Duration::from_secs(30),
            "{quiet:?}"
        );
    }

    #[test]
    fn passwords_are_found_and_hidden_in_any_message() {
        let (_, status) =
            status("  checkpoint:\n    type: mongo\n    path: mongodb://u:m0ngo-pass@db:27017\n");
        let s = &status.settings;
        let message = "cannot reach mongodb://u:m0ngo-pass@db:27017 (nor esdb://other:pass1@x:1) \
                       after t4rget/pw and s3cr3t-pw";
        let scrubbed = s.scrub(message);
        for secret in ["m0ngo-pass", "pass1", "t4rget/pw", "s3cr3t-pw"] {
            assert!(!scrubbed.contains(secret), "{scrubbed}");
        }
        assert!(scrubbed.contains("mongodb://u:***@db:27017"), "{scrubbed}");
        assert!(!s.summary.source.contains("s3cr3t"), "{:?}", s.summary);
        assert!(!s.summary.target.contains("t4rget"), "{:?}", s.summary);
        assert!(
            !s.summary.checkpoint_store.contains("m0ngo"),
            "{:?}",
            s.summary
        );
    }

    #[test]
    fn a_component_failing_past_the_threshold_makes_it_unready_but_live() {
        // A threshold of an hour, and failures a second and two hours old:
        // far enough on either side that no pause of the test before its
        // snapshot (taken at the real time) can move one across it.
        let (tx, status) = status("  http:\n    unhealthyAfterSeconds: 3600\n");
        tx.send_modify(|p| p.state = PipelineState::Running);
        assert!(status.snapshot().ready());
        tx.send_modify(|p| {
            p.components.target.healthy = false;
            p.components.target.since = SystemTime::now() - Duration::from_secs(1);
            p.components.target.last_error =
                Some("refused by esdb://writer:t4rget/pw@target".into());
        });
        assert!(status.snapshot().ready(), "failing, but not for long");
        tx.send_modify(|p| {
            p.components.target.since = SystemTime::now() - Duration::from_secs(2 * 3600);
        });
        let snap = status.snapshot();
        assert!(!snap.ready());
        assert!(snap.live());
        assert_eq!(snap.not_ready.len(), 1);
        assert!(
            snap.not_ready[0].starts_with("target failing for 2h"),
            "{:?}",
            snap.not_ready
        );
        assert!(
            !snap.not_ready[0].contains("t4rget"),
            "{:?}",
            snap.not_ready
        );
    }

    #[test]
    fn a_failed_pipeline_is_dead_unless_it_restarts_and_a_stuck_one_is_dead() {
        let (tx, status) = status("");
        tx.send_modify(|p| p.state = PipelineState::Failed("access denied".into()));
        let snap = status.snapshot();
        assert!(!snap.live() && !snap.ready());
        status.restarting();
        let snap = status.snapshot();
        assert!(snap.live() && !snap.ready());
        assert_eq!(snap.restarts, 1);
        status.started();
        tx.send_modify(|p| {
            p.state = PipelineState::Running;
            p.heartbeat = tokio::time::Instant::now() - Duration::from_secs(61);
        });
        let snap = status.snapshot();
        assert!(!snap.live(), "61 s without a turn is over the 60 s bound");
        assert!(
            snap.not_live[0].contains("not turned"),
            "{:?}",
            snap.not_live
        );
        assert!(snap.ready(), "readiness follows the components");
    }

    #[test]
    fn the_live_bound_grows_with_the_call_timeout() {
        let (_, status) = status("  callTimeoutInSeconds: 30\n");
        assert_eq!(status.settings.live_bound, Duration::from_secs(90));
    }
}
