//! The source head poller: asks where the source's `$all` ends every
//! `head_interval`, with a deadline, so the pipeline knows the gap, the ETA
//! and the lag, and notices a reader that stopped delivering.

use std::sync::Arc;

use tokio::sync::watch;
use tokio::time::{interval, timeout, Instant, MissedTickBehavior};

use super::PipelineConfig;
use crate::health::{short, HealthReporter};
use crate::model::Position;
use crate::traits::HeadProbe;

/// A probed head: when, and where `$all` ended (`None`: empty).
pub(super) type HeadSample = Option<(Instant, Option<Position>)>;

pub(super) async fn poll_head(
    probe: Arc<dyn HeadProbe>,
    config: PipelineConfig,
    health: HealthReporter,
    heads: watch::Sender<HeadSample>,
) {
    let mut ticker = interval(config.head_interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if heads.is_closed() {
            return;
        }
        match timeout(config.call_timeout, probe.head()).await {
            Ok(Ok(head)) => {
                health.success();
                heads.send_replace(Some((Instant::now(), head)));
            }
            Ok(Err(error)) => health.failure(&error),
            Err(_) => health.failure(&format!(
                "the source did not answer a request for its $all head within {}",
                short(config.call_timeout)
            )),
        }
    }
}
