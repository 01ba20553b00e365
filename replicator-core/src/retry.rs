//! The one retry policy of the workspace: exponential backoff with jitter,
//! capped. The reader, the sink, the checkpoint stores and the pipeline all
//! wait through [`Backoff`], so an outage is retried the same way everywhere.

use std::time::Duration;

/// Exponential backoff with "equal jitter": each wait is between half and all
/// of the current step, and the step doubles up to a cap. Jitter keeps many
/// replicators (or many partitions) that failed together from retrying in
/// lockstep.
///
/// ```
/// use std::time::Duration;
/// use replicator_core::retry::Backoff;
///
/// let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));
/// let first = backoff.next_delay();
/// assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
/// for _ in 0..20 {
///     assert!(backoff.next_delay() <= Duration::from_secs(30));
/// }
/// backoff.reset();
/// assert_eq!(backoff.attempts(), 0);
/// ```
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempts: u32,
}

/// The first wait of [`Backoff::default`].
pub const DEFAULT_INITIAL: Duration = Duration::from_millis(100);
/// The longest wait of [`Backoff::default`].
pub const DEFAULT_MAX: Duration = Duration::from_secs(30);

impl Default for Backoff {
    /// 100 ms doubling up to 30 s.
    fn default() -> Self {
        Backoff::new(DEFAULT_INITIAL, DEFAULT_MAX)
    }
}

impl Backoff {
    /// A backoff whose first step is `initial`, doubling up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial: initial.max(Duration::from_millis(1)),
            max: max.max(initial),
            attempts: 0,
        }
    }

    /// The step before jitter for the current attempt: `initial · 2^attempts`,
    /// capped.
    pub fn step(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempts.min(31)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The wait before the next attempt (between half and all of the current
    /// step); counts the attempt.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.step();
        self.attempts = self.attempts.saturating_add(1);
        let half = step / 2;
        let jitter = (step - half).mul_f64(fastrand::f64());
        half + jitter
    }

    /// Waits [`Backoff::next_delay`].
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }

    /// Failed attempts since the last [`Backoff::reset`].
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Back to the first step, after a success.
    pub fn reset(&mut self) {
        self.attempts = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_double_up_to_the_cap_and_delays_stay_within_the_step() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut steps = Vec::new();
        for _ in 0..10 {
            let step = b.step();
            let delay = b.next_delay();
            assert!(
                delay >= step / 2 && delay <= step,
                "{delay:?} outside {step:?}"
            );
            steps.push(step.as_millis());
        }
        assert_eq!(
            steps,
            [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000, 5000]
        );
        assert_eq!(b.attempts(), 10);
    }

    #[test]
    fn huge_attempt_counts_do_not_overflow() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        for _ in 0..1000 {
            assert!(b.next_delay() <= Duration::from_secs(30));
        }
    }

    #[test]
    fn delays_are_jittered() {
        let mut b = Backoff::new(Duration::from_secs(10), Duration::from_secs(10));
        let delays: std::collections::HashSet<_> = (0..20).map(|_| b.next_delay()).collect();
        assert!(delays.len() > 1, "20 delays, all equal: no jitter");
    }
}
