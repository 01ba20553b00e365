//! `GET /metrics`: the Prometheus text exposition format 0.0.4, and every
//! metric name, defined here and nowhere else.
//!
//! The values are snapshots of [`replicator_core::Progress`] and the health
//! reporters, not live instruments, so the text is written directly (a
//! registry of instruments would only copy the same numbers around). Counters
//! of records are per pipeline run: they restart from zero when
//! `restartOnFailure` starts a new run, which Prometheus' `rate()` treats as
//! a counter reset.

use std::fmt::Write as _;

use replicator_core::pipeline::Histogram;

use super::Snapshot;

/// The content type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

// The C# Replicator's gauges, kept for its Grafana dashboards.
/// Commit position of the last record read from the source.
pub const READ_POSITION: &str = "read_position";
/// Commit position up to which every source record is processed.
pub const PROCESSED_POSITION: &str = "processed_position";
/// Target commit position of the last write (the C# writer's append result).
pub const SINK_POSITION: &str = "sink_position";
/// Commit position of the source's last record (its `$all` head).
pub const LAST_KNOWN_POSITION: &str = "last_known_position";
/// Records read and not yet processed.
pub const PREPARE_SIZE: &str = "prepare_size";
/// Records read and not yet processed (one buffer here: the same number).
pub const SINK_SIZE: &str = "sink_size";

/// 1 while `/health/live` answers 200.
pub const UP: &str = "replicator_up";
/// 1 while `/health/ready` answers 200.
pub const READY: &str = "replicator_ready";
/// 1 for the pipeline's current state, by `state` label.
pub const STATE: &str = "replicator_state";
/// Pipeline restarts (`restartOnFailure`).
pub const RESTARTS: &str = "replicator_restarts_total";
/// Records read from the source.
pub const RECORDS_READ: &str = "replicator_records_read_total";
/// Events written to the target.
pub const RECORDS_WRITTEN: &str = "replicator_records_written_total";
/// Records skipped, by `reason`.
pub const RECORDS_SKIPPED: &str = "replicator_records_skipped_total";
/// Payload bytes written.
pub const BYTES_WRITTEN: &str = "replicator_bytes_written_total";
/// Events per append batch.
pub const APPEND_BATCH_SIZE: &str = "replicator_append_batch_size";
/// Duration of successful append batches.
pub const APPEND_LATENCY: &str = "replicator_append_latency_seconds";
/// Transient write errors retried.
pub const SINK_RETRIES: &str = "replicator_sink_retries_total";
/// Failed attempts by `component` (each one retried).
pub const COMPONENT_FAILURES: &str = "replicator_component_failures_total";
/// 1 when the `component` works, 0 while it fails.
pub const COMPONENT_HEALTHY: &str = "replicator_component_healthy";
/// How long the `component` has been failing (0 while healthy).
pub const COMPONENT_FAILING_SECONDS: &str = "replicator_component_failing_seconds";
/// Age of the stored checkpoint.
pub const CHECKPOINT_AGE: &str = "replicator_checkpoint_age_seconds";
/// Checkpoints stored.
pub const CHECKPOINTS_STORED: &str = "replicator_checkpoints_stored_total";
/// Records processed since the stored checkpoint: what a crash would replay.
pub const UNSTORED_RECORDS: &str = "replicator_checkpoint_unstored_records";
/// Records read and not yet processed.
pub const IN_FLIGHT: &str = "replicator_in_flight_records";
/// Log bytes between the processed position and the source head.
pub const GAP_BYTES: &str = "replicator_gap_bytes";
/// Records between the processed position and the source head (estimated).
pub const GAP_EVENTS: &str = "replicator_gap_events";
/// How much of the source log is processed, 0–100.
pub const PERCENT: &str = "replicator_progress_percent";
/// How long ago the source head was last fully replicated.
pub const LAG: &str = "replicator_lag_seconds";
/// Time to close the gap at the recent rate.
pub const ETA: &str = "replicator_eta_seconds";
/// Records processed per second over the recent window.
pub const EVENTS_PER_SECOND: &str = "replicator_events_per_second";
/// 1 when everything up to the source head is processed.
pub const CAUGHT_UP: &str = "replicator_caught_up";

/// Every state the [`STATE`] gauge names.
const STATES: [&str; 6] = [
    "starting", "running", "retrying", "draining", "stopped", "failed",
];

/// Renders the whole exposition for `s`.
pub(crate) fn render(s: &Snapshot) -> String {
    let p = &s.progress;
    let mut out = Text::default();
    let position = |pos: Option<replicator_core::Position>| pos.map(|p| p.commit as f64);

    out.gauge(
        READ_POSITION,
        "Commit position of the last record read from the source",
        position(p.last_read),
    );
    out.gauge(
        PROCESSED_POSITION,
        "Source commit position up to which every record is processed",
        position(p.processed),
    );
    out.gauge(
        SINK_POSITION,
        "Target commit position of the last write",
        position(p.target),
    );
    out.gauge(
        LAST_KNOWN_POSITION,
        "Commit position of the source's last record, as last probed",
        position(p.source_head),
    );
    out.gauge(
        PREPARE_SIZE,
        "Records read and not yet processed",
        Some(p.in_flight as f64),
    );
    out.gauge(
        SINK_SIZE,
        "Records read and not yet processed",
        Some(p.in_flight as f64),
    );

    out.gauge(
        UP,
        "1 while the pipeline is live (GET /health/live answers 200)",
        Some(flag(s.live())),
    );
    out.gauge(
        READY,
        "1 while replication works (GET /health/ready answers 200)",
        Some(flag(s.ready())),
    );
    out.family(STATE, "gauge", "1 for the pipeline's current state");
    let state = p.state.name();
    for name in STATES {
        out.sample(STATE, &[("state", name)], flag(name == state));
    }
    out.counter(
        RESTARTS,
        "Pipeline restarts after a failure (restartOnFailure)",
        s.restarts,
    );

    out.counter(
        RECORDS_READ,
        "Records read from the source in this run",
        p.read,
    );
    out.counter(
        RECORDS_WRITTEN,
        "Events written to the target in this run",
        p.written,
    );
    out.family(
        RECORDS_SKIPPED,
        "counter",
        "Records skipped (not written) in this run, by reason",
    );
    for (reason, n) in p.skipped_by_reason.by_reason() {
        out.sample(RECORDS_SKIPPED, &[("reason", reason)], n as f64);
    }
    out.counter(
        BYTES_WRITTEN,
        "Payload bytes (data and metadata) written in this run",
        p.bytes_written,
    );
    out.histogram(APPEND_BATCH_SIZE, "Events per append batch", &p.batch_size);
    out.histogram(
        APPEND_LATENCY,
        "Duration of successful append batches, in seconds",
        &p.append_latency,
    );
    out.counter(
        SINK_RETRIES,
        "Transient write errors retried in this run",
        p.sink_retries,
    );

    out.family(
        COMPONENT_FAILURES,
        "counter",
        "Failed attempts by component, each one retried",
    );
    for c in &s.components {
        out.sample(
            COMPONENT_FAILURES,
            &[("component", c.component.name())],
            c.failures_total as f64,
        );
    }
    out.family(
        COMPONENT_HEALTHY,
        "gauge",
        "1 when the component works, 0 while it fails",
    );
    for c in &s.components {
        out.sample(
            COMPONENT_HEALTHY,
            &[("component", c.component.name())],
            flag(c.healthy),
        );
    }
    out.family(
        COMPONENT_FAILING_SECONDS,
        "gauge",
        "How long the component has been failing (0 while healthy)",
    );
    for c in &s.components {
        out.sample(
            COMPONENT_FAILING_SECONDS,
            &[("component", c.component.name())],
            c.failing_for.as_secs_f64(),
        );
    }

    out.gauge(
        CHECKPOINT_AGE,
        "Age of the checkpoint stored last in this run, in seconds",
        p.stored.as_ref().map(|c| {
            s.now
                .duration_since(c.taken_at)
                .unwrap_or_default()
                .as_secs_f64()
        }),
    );
    out.counter(
        CHECKPOINTS_STORED,
        "Checkpoints stored in this run",
        p.checkpoints_stored,
    );
    out.gauge(
        UNSTORED_RECORDS,
        "Records processed since the stored checkpoint (what a crash would replay)",
        Some(p.unstored as f64),
    );
    out.gauge(
        IN_FLIGHT,
        "Records read and not yet processed",
        Some(p.in_flight as f64),
    );
    out.gauge(
        GAP_BYTES,
        "Log bytes between the processed position and the source head",
        p.gap_bytes.map(|g| g as f64),
    );
    out.gauge(
        GAP_EVENTS,
        "Records between the processed position and the source head, estimated from the bytes per record so far",
        p.gap_events.map(|g| g as f64),
    );
    out.gauge(
        PERCENT,
        "How much of the source log is processed, 0-100",
        p.percent,
    );
    out.gauge(
        LAG,
        "How long ago the source head was last fully replicated, in seconds",
        p.lag.map(|d| d.as_secs_f64()),
    );
    out.gauge(
        ETA,
        "Time to close the gap at the recent rate, in seconds",
        p.eta.map(|d| d.as_secs_f64()),
    );
    out.gauge(
        EVENTS_PER_SECOND,
        "Records processed per second over the recent window",
        Some(p.events_per_second),
    );
    out.gauge(
        CAUGHT_UP,
        "1 when everything up to the source head is processed",
        Some(flag(p.caught_up)),
    );
    out.0
}

fn flag(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

/// The text being written.
#[derive(Default)]
struct Text(String);

impl Text {
    /// `# HELP` and `# TYPE` lines.
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let help = help.replace('\\', r"\\").replace('\n', r"\n");
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (key, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let value = value
                    .replace('\\', r"\\")
                    .replace('"', "\\\"")
                    .replace('\n', r"\n");
                let _ = write!(self.0, "{key}=\"{value}\"");
            }
            self.0.push('}');
        }
        self.0.push(' ');
        self.0.push_str(&number(value));
        self.0.push('\n');
    }

    /// A gauge; no sample while the value is unknown.
    fn gauge(&mut self, name: &str, help: &str, value: Option<f64>) {
        self.family(name, "gauge", help);
        if let Some(v) = value {
            self.sample(name, &[], v);
        }
    }

    fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, "counter", help);
        self.sample(name, &[], value as f64);
    }

    fn histogram(&mut self, name: &str, help: &str, h: &Histogram) {
        self.family(name, "histogram", help);
        let bucket = format!("{name}_bucket");
        for (bound, count) in h.cumulative() {
            self.sample(&bucket, &[("le", &number(bound))], count as f64);
        }
        self.sample(&format!("{name}_sum"), &[], h.sum);
        self.sample(&format!("{name}_count"), &[], h.count as f64);
    }
}

/// A sample value as the format spells it: `+Inf`, `-Inf`, `NaN`, or a
/// decimal number (whole numbers without a fraction).
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        // Display never uses an exponent and prints whole numbers without
        // a fraction: exact for counters below 2^53.
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::status;
    use super::*;
    use replicator_core::{PipelineState, Position};

    #[test]
    fn renders_counters_gauges_labels_and_histograms() {
        let (tx, status) = status("");
        tx.send_modify(|p| {
            p.state = PipelineState::Running;
            p.read = 12;
            p.written = 10;
            p.skipped = 2;
            p.skipped_by_reason.system_stream = 2;
            p.last_read = Some(Position::at(1234));
            p.batch_size.observe(3.0);
            p.append_latency.observe(0.004);
            p.components.target.healthy = false;
            p.components.target.failures_total = 4;
        });
        let text = render(&status.snapshot());
        for line in [
            "read_position 1234\n",
            "replicator_records_written_total 10\n",
            "replicator_records_skipped_total{reason=\"system_stream\"} 2\n",
            "replicator_state{state=\"running\"} 1\n",
            "replicator_state{state=\"failed\"} 0\n",
            "replicator_component_healthy{component=\"target\"} 0\n",
            "replicator_component_failures_total{component=\"target\"} 4\n",
            "replicator_append_batch_size_bucket{le=\"2\"} 0\n",
            "replicator_append_batch_size_bucket{le=\"5\"} 1\n",
            "replicator_append_batch_size_bucket{le=\"+Inf\"} 1\n",
            "replicator_append_latency_seconds_bucket{le=\"0.005\"} 1\n",
            "replicator_append_latency_seconds_count 1\n",
            "# TYPE replicator_records_read_total counter\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
        // Unknown values have no sample.
        assert!(!text.contains("\nsink_position "), "{text}");
    }

    #[test]
    fn numbers_and_label_values_are_spelled_as_the_format_wants() {
        assert_eq!(number(1.0), "1");
        assert_eq!(number(0.0025), "0.0025");
        assert_eq!(number(f64::INFINITY), "+Inf");
        assert_eq!(number(f64::NAN), "NaN");
        assert_eq!(number(9_007_199_254_740_992.0), "9007199254740992");
        let mut t = Text::default();
        t.sample("m", &[("a", "x\"y\\z\nw")], 1.0);
        assert_eq!(t.0, "m{a=\"x\\\"y\\\\z\\nw\"} 1\n");
    }
}
