//! What the pipeline publishes about itself: [`Progress`], its state, rates,
//! the gap to the source head, the ETA, the lag and per-component health.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::health::{Component, ComponentsHealth};
use crate::model::{Checkpoint, Position, SkipReason};

/// What the pipeline is doing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum PipelineState {
    /// Checking the parts, loading the checkpoint and opening the reader.
    #[default]
    Starting,
    /// Replicating (catching up or caught up: see [`Progress::caught_up`]).
    Running,
    /// A write keeps failing with transient errors and is being retried; nothing
    /// past it is checkpointed until it succeeds.
    Retrying {
        /// Consecutive failed attempts of the oldest retrying write.
        attempts: u32,
        /// The last error.
        error: String,
    },
    /// Finishing in-flight writes before stopping.
    Draining,
    /// Stopped after a clean drain.
    Stopped,
    /// Stopped on an error.
    Failed(String),
}

impl PipelineState {
    /// A one-word name: `starting`, `running`, `retrying`, `draining`,
    /// `stopped`, `failed`.
    pub fn name(&self) -> &'static str {
        match self {
            PipelineState::Starting => "starting",
            PipelineState::Running => "running",
            PipelineState::Retrying { .. } => "retrying",
            PipelineState::Draining => "draining",
            PipelineState::Stopped => "stopped",
            PipelineState::Failed(_) => "failed",
        }
    }
}

/// Records skipped, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SkipCounts {
    /// Records of `$`-prefixed system streams.
    pub system_stream: u64,
    /// Records with a `$`-prefixed event type.
    pub system_event: u64,
    /// Link events.
    pub link: u64,
    /// Records a configured filter rejected.
    pub filtered: u64,
    /// Records the scavenge filter left out.
    pub scavenged: u64,
    /// Records a transform dropped.
    pub dropped: u64,
}

impl SkipCounts {
    /// Counts one skipped record.
    pub fn add(&mut self, reason: SkipReason) {
        match reason {
            SkipReason::SystemStream => self.system_stream += 1,
            SkipReason::SystemEvent => self.system_event += 1,
            SkipReason::Link => self.link += 1,
            SkipReason::Filtered => self.filtered += 1,
            SkipReason::Scavenged => self.scavenged += 1,
            SkipReason::Dropped => self.dropped += 1,
        }
    }

    /// `(reason label, count)` pairs, for metrics and JSON.
    pub fn by_reason(&self) -> [(&'static str, u64); 6] {
        [
            ("system_stream", self.system_stream),
            ("system_event", self.system_event),
            ("link", self.link),
            ("filtered", self.filtered),
            ("scavenged", self.scavenged),
            ("dropped", self.dropped),
        ]
    }
}

/// A histogram with fixed buckets, as Prometheus exposes them.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    /// Upper bounds of the buckets (inclusive), increasing; an implicit
    /// `+Inf` bucket follows.
    pub bounds: &'static [f64],
    /// Observations per bucket (not cumulative): `bounds.len() + 1` entries,
    /// the last one for values above every bound.
    pub counts: Vec<u64>,
    /// Sum of the observed values.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
}

/// Bucket bounds of [`Progress::batch_size`] (events per append batch).
pub const BATCH_SIZE_BUCKETS: &[f64] =
    &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0];
/// Bucket bounds of [`Progress::append_latency`] (seconds).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

impl Histogram {
    /// An empty histogram with these bucket bounds.
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    /// Records one value.
    pub fn observe(&mut self, value: f64) {
        let bucket = self
            .bounds
            .iter()
            .position(|b| value <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[bucket] += 1;
        self.sum += value;
        self.count += 1;
    }

    /// `(upper bound, cumulative count)` per bucket, `+Inf` last, as the
    /// Prometheus text format wants them.
    pub fn cumulative(&self) -> Vec<(f64, u64)> {
        let mut total = 0;
        self.bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(&self.counts)
            .map(|(bound, n)| {
                total += n;
                (bound, total)
            })
            .collect()
    }
}

/// A snapshot of the pipeline's progress, published at most every
/// [`crate::PipelineConfig::publish_interval`] (and on every change of state).
#[derive(Debug, Clone)]
pub struct Progress {
    /// What the pipeline is doing.
    pub state: PipelineState,
    /// Records read from the source in this run.
    pub read: u64,
    /// Events acknowledged by the sink in this run.
    pub written: u64,
    /// Records skipped (they advance the checkpoint without a write).
    pub skipped: u64,
    /// [`Progress::skipped`] by reason.
    pub skipped_by_reason: SkipCounts,
    /// Payload bytes (data plus metadata) of the events acknowledged.
    pub bytes_written: u64,
    /// Position of the last record read.
    pub last_read: Option<Position>,
    /// The checkpoint frontier: every record up to here is processed.
    pub processed: Option<Position>,
    /// Highest target position acknowledged by the sink.
    pub target: Option<Position>,
    /// When the last processed record was created on the source.
    pub processed_created: Option<SystemTime>,
    /// The source's `$all` head (its last record) when last probed; `None`
    /// until probed, or when the source is empty or has no probe.
    pub source_head: Option<Position>,
    /// When the head was last probed successfully (`None`: never, or the
    /// reader offers no probe).
    pub source_head_at: Option<SystemTime>,
    /// Log bytes between the processed frontier and the source head.
    pub gap_bytes: Option<u64>,
    /// Records between the processed frontier and the source head, estimated
    /// from the log bytes per record processed so far in this run (`None`
    /// until a hundred records give an estimate).
    pub gap_events: Option<u64>,
    /// How much of the source log is processed, 0–100.
    pub percent: Option<f64>,
    /// Records processed (written or skipped) per second over the last
    /// [`RATE_WINDOW`].
    pub events_per_second: f64,
    /// Time to close [`Progress::gap_bytes`] at the recent rate; zero when
    /// caught up, `None` when nothing moves.
    pub eta: Option<Duration>,
    /// How long ago the source head was last fully replicated: zero when
    /// caught up, whatever the age of the events. Before the first catch-up,
    /// the age of the last processed record.
    pub lag: Option<Duration>,
    /// Everything up to the last probed source head is processed.
    pub caught_up: bool,
    /// The last stored checkpoint.
    pub stored: Option<Checkpoint>,
    /// Checkpoints stored in this run.
    pub checkpoints_stored: u64,
    /// Records processed since the stored checkpoint: what a crash now would
    /// replay.
    pub unstored: u64,
    /// Records read but not yet processed.
    pub in_flight: usize,
    /// Transient sink errors retried in this run.
    pub sink_retries: u64,
    /// Events per append batch.
    pub batch_size: Histogram,
    /// Duration of successful append batches, in seconds.
    pub append_latency: Histogram,
    /// Health of the source, the target and the checkpoint store.
    pub components: ComponentsHealth,
    /// When the pipeline's dispatcher last turned: a liveness check fails
    /// when this gets old while the pipeline runs.
    pub heartbeat: Instant,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            state: PipelineState::default(),
            read: 0,
            written: 0,
            skipped: 0,
            skipped_by_reason: SkipCounts::default(),
            bytes_written: 0,
            last_read: None,
            processed: None,
            target: None,
            processed_created: None,
            source_head: None,
            source_head_at: None,
            gap_bytes: None,
            gap_events: None,
            percent: None,
            events_per_second: 0.0,
            eta: None,
            lag: None,
            caught_up: false,
            stored: None,
            checkpoints_stored: 0,
            unstored: 0,
            in_flight: 0,
            sink_retries: 0,
            batch_size: Histogram::new(BATCH_SIZE_BUCKETS),
            append_latency: Histogram::new(LATENCY_BUCKETS),
            components: ComponentsHealth::default(),
            heartbeat: Instant::now(),
        }
    }
}

impl Progress {
    /// How far the processed frontier trails the source head in time; see
    /// [`Progress::lag`] (the field).
    pub fn lag(&self) -> Option<Duration> {
        self.lag
    }

    /// `false` after a failure, or while any component is failing, however
    /// briefly: what a log line's level should follow. For a readiness check
    /// use [`Progress::unhealthy_components`] with a threshold.
    pub fn is_healthy(&self) -> bool {
        !matches!(
            self.state,
            PipelineState::Failed(_) | PipelineState::Retrying { .. }
        ) && self.components.failing().is_empty()
    }

    /// Components failing for at least `threshold`.
    pub fn unhealthy_components(&self, threshold: Duration) -> Vec<Component> {
        self.components.failing_longer_than(threshold)
    }

    /// Records processed (written or skipped) in this run.
    pub fn processed_count(&self) -> u64 {
        self.written + self.skipped
    }

    /// Age of the stored checkpoint (since it was taken).
    pub fn checkpoint_age(&self) -> Option<Duration> {
        self.stored
            .as_ref()
            .and_then(|c| SystemTime::now().duration_since(c.taken_at).ok())
    }

    /// How long ago the dispatcher last turned.
    pub fn since_heartbeat(&self) -> Duration {
        self.heartbeat.elapsed()
    }
}

/// The window [`Progress::events_per_second`] and the ETA are measured over.
pub const RATE_WINDOW: Duration = Duration::from_secs(20);

/// Samples of (time, processed count, processed commit position) for moving
/// rates.
#[derive(Debug, Default)]
struct RateWindow {
    samples: VecDeque<(Instant, u64, u64)>,
}

impl RateWindow {
    /// Adds a sample and returns (events/s, log bytes/s) over the window.
    fn sample(&mut self, now: Instant, count: u64, commit: u64) -> (f64, f64) {
        self.samples.push_back((now, count, commit));
        while self
            .samples
            .front()
            .is_some_and(|(t, ..)| now.duration_since(*t) > RATE_WINDOW)
        {
            self.samples.pop_front();
        }
        let (t0, c0, p0) = *self.samples.front().expect("just pushed");
        let secs = now.duration_since(t0).as_secs_f64();
        if secs < 0.5 {
            return (0.0, 0.0);
        }
        (
            count.saturating_sub(c0) as f64 / secs,
            commit.saturating_sub(p0) as f64 / secs,
        )
    }
}

/// Head samples not yet passed by the processed frontier, for the lag.
#[derive(Debug, Default)]
struct HeadTracker {
    /// (when probed, head) in probe order, not yet processed.
    pending: VecDeque<(Instant, Position)>,
    /// When the newest head that is fully processed was probed.
    replicated_at: Option<Instant>,
    probed: bool,
}

impl HeadTracker {
    const MAX_SAMPLES: usize = 4096;

    fn head(&mut self, at: Instant, head: Option<Position>) {
        self.probed = true;
        if let Some(head) = head {
            if self.pending.back().is_none_or(|(_, h)| head > *h) {
                self.pending.push_back((at, head));
            }
            if self.pending.len() > Self::MAX_SAMPLES {
                self.pending.pop_front();
            }
        } else if self.pending.is_empty() {
            // An empty source is replicated by definition.
            self.replicated_at = Some(at);
        }
    }

    fn processed(&mut self, processed: Option<Position>) {
        while let Some((at, head)) = self.pending.front() {
            if processed.is_some_and(|p| p >= *head) {
                self.replicated_at = Some(*at);
                self.pending.pop_front();
            } else {
                break;
            }
        }
    }

    /// Everything up to the newest probed head is processed.
    fn caught_up(&self) -> bool {
        self.probed && self.pending.is_empty()
    }

    /// See [`Progress::lag`].
    fn lag(&self, now: Instant, processed_created: Option<SystemTime>) -> Option<Duration> {
        if self.caught_up() {
            return Some(Duration::ZERO);
        }
        match self.replicated_at {
            Some(at) => Some(now.duration_since(at)),
            None => processed_created.and_then(|c| SystemTime::now().duration_since(c).ok()),
        }
    }
}

/// How far the copy is from the source's head, from log positions: what
/// [`Progress`] shows as gap, events left, percent and ETA.
#[derive(Debug, Clone, PartialEq)]
struct Estimate {
    /// Log bytes between the frontier and the head.
    gap_bytes: u64,
    /// Records left, from the log bytes per record of this run so far;
    /// `None` until 100 records were processed (too few to say).
    gap_events: Option<u64>,
    /// Share of the head's log processed, 100 when caught up.
    percent: f64,
    /// Time left at the recent byte rate; `None` while nothing moves.
    eta: Option<Duration>,
}

impl Estimate {
    /// `head` and `done` are commit positions of the source head and of the
    /// frontier, `start` the one this run started from, `processed` the
    /// records processed in this run, `bytes_rate` log bytes per second.
    fn new(
        head: u64,
        done: u64,
        start: u64,
        processed: u64,
        caught_up: bool,
        bytes_rate: f64,
    ) -> Self {
        let gap_bytes = head.saturating_sub(done);
        // Records have gaps and sizes of their own: an estimate.
        let gap_events = (processed >= 100 && done > start).then(|| {
            let per_record = (done - start) as f64 / processed as f64;
            (gap_bytes as f64 / per_record).round() as u64
        });
        let percent = if caught_up || head == 0 {
            100.0
        } else {
            (done as f64 / head as f64 * 100.0).min(100.0)
        };
        let eta = if caught_up || gap_bytes == 0 {
            Some(Duration::ZERO)
        } else if bytes_rate > 0.0 {
            Some(Duration::from_secs_f64(gap_bytes as f64 / bytes_rate))
        } else {
            None
        };
        Estimate {
            gap_bytes,
            gap_events,
            percent,
            eta,
        }
    }
}

/// The moving parts behind [`Progress`]'s rate, lag and distance to the
/// source head: fed the head samples, and the frontier on every publish.
#[derive(Debug, Default)]
pub(super) struct Meters {
    rates: RateWindow,
    heads: HeadTracker,
}

impl Meters {
    /// A head probed at `at` (`None`: the source is empty).
    pub(super) fn head(&mut self, at: Instant, head: Option<Position>) {
        self.heads.head(at, head);
    }

    /// Sets `progress`'s rate, catch-up, lag, gap, percent and ETA at `now`
    /// from its frontier ([`Progress::processed`]) and source head, the
    /// records `processed` in this run and the commit position it started
    /// from (`start`).
    pub(super) fn measure(
        &mut self,
        progress: &mut Progress,
        now: Instant,
        processed: u64,
        start: u64,
    ) {
        let done = progress.processed.map_or(0, |p| p.commit);
        self.heads.processed(progress.processed);
        let (rate, bytes_rate) = self.rates.sample(now, processed, done);
        progress.events_per_second = rate;
        progress.caught_up = self.heads.caught_up();
        progress.lag = self.heads.lag(now, progress.processed_created);
        match (progress.source_head, progress.source_head_at) {
            (Some(head), _) => {
                let estimate = Estimate::new(
                    head.commit,
                    done,
                    start,
                    processed,
                    progress.caught_up,
                    bytes_rate,
                );
                progress.gap_bytes = Some(estimate.gap_bytes);
                progress.gap_events = estimate.gap_events;
                progress.percent = Some(estimate.percent);
                progress.eta = estimate.eta;
            }
            (None, Some(_)) => {
                // The source is empty.
                progress.gap_bytes = Some(0);
                progress.gap_events = Some(0);
                progress.percent = Some(100.0);
                progress.eta = Some(Duration::ZERO);
            }
            (None, None) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_left_are_estimated_from_the_log_bytes_per_record_once_100_are_done() {
        // 100 records took log bytes 1,000..2,000: 10 bytes each; 500 bytes left.
        let e = Estimate::new(2_500, 2_000, 1_000, 100, false, 0.0);
        assert_eq!(e.gap_bytes, 500);
        assert_eq!(e.gap_events, Some(50));
        assert_eq!(
            Estimate::new(2_500, 2_000, 1_000, 99, false, 0.0).gap_events,
            None
        );
        assert_eq!(
            Estimate::new(2_500, 1_000, 1_000, 100, false, 0.0).gap_events,
            None
        );
    }

    #[test]
    fn percent_is_the_share_of_the_heads_log_unless_caught_up() {
        assert_eq!(Estimate::new(1_000, 250, 0, 10, false, 0.0).percent, 25.0);
        assert_eq!(Estimate::new(1_000, 250, 0, 10, true, 0.0).percent, 100.0);
        assert_eq!(Estimate::new(0, 0, 0, 0, false, 0.0).percent, 100.0);
        assert_eq!(
            Estimate::new(1_000, 5_000, 0, 10, false, 0.0).percent,
            100.0
        );
    }

    #[test]
    fn eta_is_zero_when_caught_up_or_nothing_is_left_and_unknown_while_nothing_moves() {
        let secs = |e: Estimate| e.eta.map(|d| d.as_secs_f64());
        assert_eq!(
            secs(Estimate::new(1_000, 200, 0, 10, false, 100.0)),
            Some(8.0)
        );
        assert_eq!(secs(Estimate::new(1_000, 200, 0, 10, false, 0.0)), None);
        assert_eq!(secs(Estimate::new(1_000, 200, 0, 10, true, 0.0)), Some(0.0));
        assert_eq!(
            secs(Estimate::new(1_000, 1_000, 0, 10, false, 0.0)),
            Some(0.0)
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative_with_inf_last() {
        let mut h = Histogram::new(&[1.0, 10.0]);
        for v in [0.5, 1.0, 5.0, 50.0] {
            h.observe(v);
        }
        assert_eq!(
            h.cumulative(),
            vec![(1.0, 2), (10.0, 3), (f64::INFINITY, 4)]
        );
        assert_eq!((h.count, h.sum), (4, 56.5));
    }

    #[test]
    fn lag_is_zero_when_caught_up_and_counts_from_the_last_replicated_head() {
        let t0 = Instant::now();
        let mut h = HeadTracker::default();
        let old = SystemTime::now() - Duration::from_secs(3600);
        assert_eq!(
            h.lag(t0, Some(old)).map(|d| d.as_secs() / 60),
            Some(60),
            "before any probe: age of the event"
        );
        h.head(t0, Some(Position::at(100)));
        h.processed(Some(Position::at(100)));
        assert!(h.caught_up());
        assert_eq!(
            h.lag(t0 + Duration::from_secs(50), Some(old)),
            Some(Duration::ZERO),
            "caught up: old events do not count"
        );
        h.head(t0 + Duration::from_secs(10), Some(Position::at(200)));
        h.processed(Some(Position::at(150)));
        assert!(!h.caught_up());
        assert_eq!(
            h.lag(t0 + Duration::from_secs(30), Some(old)),
            Some(Duration::from_secs(30)),
            "the head of t0 was the last one fully replicated"
        );
        h.processed(Some(Position::at(200)));
        assert_eq!(
            h.lag(t0 + Duration::from_secs(31), Some(old)),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn an_empty_source_is_caught_up() {
        let mut h = HeadTracker::default();
        h.head(Instant::now(), None);
        assert!(h.caught_up());
    }

    #[test]
    fn rates_cover_the_window() {
        let t0 = Instant::now();
        let mut w = RateWindow::default();
        assert_eq!(w.sample(t0, 0, 0), (0.0, 0.0));
        let (events, bytes) = w.sample(t0 + Duration::from_secs(2), 1000, 4000);
        assert_eq!((events, bytes), (500.0, 2000.0));
        // Samples older than the window drop out.
        let (events, _) = w.sample(t0 + Duration::from_secs(40), 1000, 4000);
        assert_eq!(events, 0.0);
    }

    #[test]
    fn measuring_an_empty_source_shows_nothing_left_and_a_head_ahead_shows_the_gap() {
        let now = Instant::now();
        let mut meters = Meters::default();
        let mut p = Progress {
            source_head_at: Some(SystemTime::now()),
            ..Progress::default()
        };
        meters.head(now, None);
        meters.measure(&mut p, now, 0, 0);
        assert!(p.caught_up);
        assert_eq!((p.gap_bytes, p.gap_events), (Some(0), Some(0)));
        assert_eq!((p.percent, p.eta), (Some(100.0), Some(Duration::ZERO)));

        let mut meters = Meters::default();
        let mut p = Progress {
            processed: Some(Position::at(1_000)),
            source_head: Some(Position::at(4_000)),
            ..Progress::default()
        };
        meters.head(now, p.source_head);
        meters.measure(&mut p, now, 10, 0);
        assert!(!p.caught_up);
        assert_eq!(p.gap_bytes, Some(3_000));
        assert_eq!(p.percent, Some(25.0));
        assert_eq!(p.eta, None, "nothing moved yet");
    }
}
