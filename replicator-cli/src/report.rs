//! How `replicator run` tells a person how it is doing: on a terminal a live
//! progress line (percent, events/s, ETA, state, the failing component) with
//! the logs scrolling above it; otherwise a progress log line every
//! `reportMetricsFrequencyInSeconds`, at WARN while anything is unhealthy.

use std::io::{self, IsTerminal as _, Write};
use std::sync::OnceLock;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use replicator_core::{Component, PipelineState, Position, Progress};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

use crate::time;

/// The live progress line, when stderr is a terminal and one is shown.
static BAR: OnceLock<ProgressBar> = OnceLock::new();

/// Whether `replicator run` draws a live line (set once at start-up).
static TERMINAL: OnceLock<bool> = OnceLock::new();

/// The log filter when RUST_LOG is not set. The `eventstore` client logs an
/// ERROR line for every failed connection attempt, which our reader and sink
/// already report (with what they do about it) as warnings.
const DEFAULT_LOG_FILTER: &str = "info,eventstore=off";

/// Sets up the process's logging on stderr: the level from RUST_LOG (default
/// `info`), text or (`json`) one JSON object per line, scrolling above the
/// live progress line of `replicator run` when one is drawn.
pub fn init_logging(json: bool) {
    init(json);
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(LogWriter)
        .with_ansi(io::stderr().is_terminal());
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Decides once whether to draw a live line: stderr is a terminal and the
/// logs are text.
fn init(json_logs: bool) {
    let _ = TERMINAL.set(!json_logs && io::stderr().is_terminal());
}

/// Reports progress until `ended` fires, then once more: a live line on a
/// terminal (see [`init`]), else a log line every `every`.
pub(crate) async fn report_progress(
    mut progress: watch::Receiver<Progress>,
    every: Duration,
    ended: CancellationToken,
) {
    let terminal = TERMINAL.get().copied().unwrap_or(false);
    let bar = terminal.then(|| {
        BAR.get_or_init(|| {
            let bar = ProgressBar::with_draw_target(Some(100), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{bar:30.cyan/blue} {msg}")
                    .expect("a valid template")
                    .progress_chars("█▉▊▋▌▍▎▏ "),
            );
            bar
        })
        .clone()
    });
    // The live line redraws often; the log line only every `every`.
    let tick = if bar.is_some() {
        Duration::from_millis(250)
    } else {
        every
    };
    let mut ticker = tokio::time::interval(tick);
    ticker.tick().await;
    loop {
        let ended = tokio::select! {
            _ = ticker.tick() => false,
            () = ended.cancelled() => true,
        };
        let p = progress.borrow_and_update().clone();
        match &bar {
            Some(bar) => {
                bar.set_position(p.percent.unwrap_or(0.0).floor() as u64);
                bar.set_message(terminal_line(&p));
                if ended {
                    bar.finish_and_clear();
                    log_progress(&p);
                }
            }
            None => log_progress(&p),
        }
        if ended {
            return;
        }
    }
}

/// The live line after the bar: `42.1% · 12,345 ev/s · ETA 3m12s · running`,
/// then the unhealthy components with their last error.
fn terminal_line(p: &Progress) -> String {
    let mut line = format!(
        "{} · {} ev/s · ETA {} · {}{}",
        p.percent.map_or("?%".to_owned(), |x| format!("{x:.1}%")),
        thousands(p.events_per_second.round() as u64),
        p.eta.map_or("?".to_owned(), time::short),
        p.state.name(),
        if p.caught_up { " (caught up)" } else { "" },
    );
    line.push_str(&format!(" · written {}", thousands(p.written)));
    for component in p.components.failing() {
        let health = p.components.of(component);
        line.push_str(&format!(
            " · {component} failing for {}: {}",
            time::short(health.for_how_long),
            health.last_error.as_deref().unwrap_or("?")
        ));
    }
    line
}

/// One progress log line: INFO while healthy, WARN otherwise.
pub(crate) fn log_progress(p: &Progress) {
    let show = |pos: Option<Position>| pos.map_or("-".to_owned(), |p| p.to_string());
    let state = match &p.state {
        PipelineState::Retrying { attempts, error } => {
            format!("retrying a write ({attempts} attempts): {error}")
        }
        PipelineState::Failed(error) => format!("failed: {error}"),
        other => other.name().to_owned(),
    };
    let unhealthy = unhealthy_summary(p);
    let lag = p.lag.map_or("-".to_owned(), time::short);
    let eta = p.eta.map_or("-".to_owned(), time::short);
    let percent = p.percent.map_or("-".to_owned(), |x| format!("{x:.1}"));
    let gap_bytes = p.gap_bytes.map_or("-".to_owned(), |g| g.to_string());
    // tracing needs the level at compile time: one field list, two levels.
    macro_rules! progress_line {
        ($level:ident) => {
            $level!(
                state,
                unhealthy,
                events_per_sec = format!("{:.0}", p.events_per_second),
                percent,
                eta,
                lag,
                gap_bytes,
                read = p.read,
                written = p.written,
                skipped = p.skipped,
                filtered = p.skipped_by_reason.filtered,
                scavenged = p.skipped_by_reason.scavenged,
                dropped = p.skipped_by_reason.dropped,
                last_read = %show(p.last_read),
                processed = %show(p.processed),
                source_head = %show(p.source_head),
                target = %show(p.target),
                in_flight = p.in_flight,
                checkpoints = p.checkpoints_stored,
                unstored = p.unstored,
                sink_retries = p.sink_retries,
                "Progress"
            )
        };
    }
    if p.is_healthy() {
        progress_line!(info);
    } else {
        progress_line!(warn);
    }
}

/// `target failing for 12s: …; checkpoint failing for 3s: …`, or `-`.
fn unhealthy_summary(p: &Progress) -> String {
    let failing: Vec<String> = Component::ALL
        .into_iter()
        .filter(|c| !p.components.of(*c).healthy)
        .map(|c| {
            let h = p.components.of(c);
            format!(
                "{c} failing for {}: {}",
                time::short(h.for_how_long),
                h.last_error.as_deref().unwrap_or("?")
            )
        })
        .collect();
    if failing.is_empty() {
        "-".to_owned()
    } else {
        failing.join("; ")
    }
}

/// `1234567` → `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The log writer: stderr, with the live line (if any) lifted out of the way
/// while a log line is written, so logs scroll above it.
#[derive(Clone, Copy, Default)]
pub(crate) struct LogWriter;

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter(Vec::new())
    }
}

/// Buffers one log event and writes it at once when dropped.
pub(crate) struct LineWriter(Vec<u8>);

impl Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        let write = || {
            let _ = io::stderr().lock().write_all(&self.0);
        };
        match BAR.get() {
            Some(bar) if !bar.is_finished() => bar.suspend(write),
            _ => write(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use replicator_core::HealthReporter;

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn the_live_line_names_the_failing_component_and_its_error() {
        let target = HealthReporter::new(Component::Target);
        target.failure(&"connection refused");
        let mut p = Progress {
            percent: Some(42.25),
            events_per_second: 12_345.4,
            eta: Some(Duration::from_secs(192)),
            state: PipelineState::Running,
            ..Progress::default()
        };
        p.components.target = target.snapshot();
        let line = terminal_line(&p);
        assert!(
            line.starts_with("42.2% · 12,345 ev/s · ETA 3m12s · running"),
            "{line}"
        );
        assert!(line.contains("target failing for"), "{line}");
        assert!(line.contains("connection refused"), "{line}");
        assert!(!p.is_healthy());
        assert!(unhealthy_summary(&p).starts_with("target failing for"));
    }
}
