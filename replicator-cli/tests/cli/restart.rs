//! `replicator run` killed with SIGKILL at random moments and restarted until a
//! run catches up by itself: no event may be lost or duplicated, whatever the
//! moment of the kill (mid-append, between an append and its checkpoint, while
//! the checkpoint file is written, while replaying after a restart).
//!
//! The moments are random points of each run's progress rather than of the
//! clock: a run is killed once it has grown the target's `$all` by a randomly
//! drawn amount, plus a random few milliseconds. Growth only comes from new
//! writes, so every kill lands after the run got past its replay and while it
//! was writing. A clock-based schedule either misses the replication on a fast
//! machine (it is done before the second kill) or never lets it progress on a
//! slow one. The test follows the target's growth with a subscription, which
//! the server pushes to at once; polling with reads would be too coarse (each
//! request costs ~44 ms with the `eventstore` client here). The draws come
//! from a seeded generator, so a failure names the seed and the kill history.

use std::process::Stdio;
use std::time::{Duration, Instant};

use replicator_checkpoint::FileCheckpointStore;
use replicator_core::{Checkpoint, CheckpointStore as _, Position};
use replicator_testkit::workload::{self, Rng};
use tokio::sync::watch;

use crate::{command, end_position, Clusters, Workdir};

/// Runs killed per test; the run after them is left to finish.
const KILLS: u64 = 6;
/// A run that catches up before its kill point ends the test early, provided
/// at least this many runs were killed before it (a fast machine can copy the
/// rest of the source between two draws).
const MIN_KILLS: u64 = 3;
/// A run is killed once it has grown the target's `$all` (in log bytes) by a
/// share of the source's size drawn from these per-mille bounds. Their sum
/// over [`KILLS`] runs stays well below the whole (skipped records are not
/// written, so the target ends up a little smaller), so every kill finds
/// work left to do.
const GROWTH_PER_MILLE: (u64, u64) = (15, 90);
/// Extra random wait after the share is passed, so the kill falls at any
/// phase of the in-flight appends, not right after the one that passed it.
const JITTER_MS: (u64, u64) = (0, 10);
/// A reader-to-sink buffer of 100 records instead of 1000, so the target
/// grows in small steps and kills can land between them.
const SMALL_BATCHES: (&str, &str) = ("", "    bufferSize: 100\n");
/// Each append to the in-process target takes this long, like a target a
/// network hop away: a run then spends long enough writing for a kill to
/// land where it was drawn (with an instant target the replicator copies the
/// workload faster than the test can react to the target's growth).
const TARGET_APPEND_LATENCY: Duration = Duration::from_millis(10);
/// How long one run may take to reach its kill point or to finish (a hang fails).
const RUN_DEADLINE: Duration = Duration::from_secs(120);

/// The commit position of the last record the target's `$all` has, kept up
/// to date by a subscription (ends with the test's runtime).
fn follow_end(client: eventstore::Client) -> watch::Receiver<u64> {
    let (tx, rx) = watch::channel(0);
    tokio::spawn(async move {
        let options = eventstore::SubscribeToAllOptions::default()
            .position(eventstore::StreamPosition::Start);
        let mut subscription = client.subscribe_to_all(&options).await;
        while let Ok(event) = subscription.next().await {
            tx.send_replace(event.get_original_event().position.commit);
        }
    });
    rx
}

async fn stored(w: &Workdir) -> Option<Checkpoint> {
    FileCheckpointStore::new(w.path("checkpoint"))
        .load()
        .await
        .expect("the checkpoint file must stay readable after any kill")
}

fn show(p: Option<Position>) -> String {
    p.map_or("none".to_owned(), |p| p.to_string())
}

/// Replicates `events` generated events with `checkpoint_after`, killing
/// [`KILLS`] runs at random moments drawn from `seed`, then checks the target
/// and the checkpoint.
async fn replicate_through_kills(events: usize, checkpoint_after: u64, seed: u64) {
    let c = Clusters::start_with(TARGET_APPEND_LATENCY).await;
    workload::generate(&c.source_client, &workload::WorkloadSpec::new(seed, events))
        .await
        .unwrap();
    let end = c.source_end_position().await;
    let w = c.workdir_with(
        SMALL_BATCHES.0,
        SMALL_BATCHES.1,
        &format!(
            "  runContinuously: false\n  restartOnFailure: false\n  checkpoint:\n    checkpointAfter: {checkpoint_after}\n"
        ),
    );

    let mut target_end = follow_end(c.target_client.clone());
    let mut rng = Rng(seed);
    let mut history = vec![format!("seed {seed}; the source ends at {end}")];
    for attempt in 0..=KILLS {
        let log = w.path(&format!("run-{attempt}.log"));
        let mut cmd = command(w.dir.path());
        cmd.arg("run")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        let mut child = tokio::process::Command::from(cmd)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let started = Instant::now();
        let failed = |status: std::process::ExitStatus, history: &[String]| {
            format!(
                "run {attempt} exited with {status}\nits log:\n{}\nhistory: {history:#?}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        };

        if attempt == KILLS {
            let status = tokio::time::timeout(RUN_DEADLINE, child.wait())
                .await
                .unwrap_or_else(|_| {
                    panic!("the last run did not catch up in {RUN_DEADLINE:?}: {history:#?}")
                })
                .unwrap();
            assert!(status.success(), "{}", failed(status, &history));
            break;
        }

        let share = rng.between(GROWTH_PER_MILLE.0, GROWTH_PER_MILLE.1);
        let kill_at = *target_end.borrow() + end.commit / 1000 * share;
        let jitter = Duration::from_millis(rng.between(JITTER_MS.0, JITTER_MS.1));
        let reached = tokio::time::timeout(RUN_DEADLINE, async {
            tokio::select! {
                status = child.wait() => Err(status.unwrap()),
                seen = target_end.wait_for(|&p| p >= kill_at) => {
                    seen.expect("the subscription to the target ended");
                    Ok(())
                }
            }
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "run {attempt} did not grow the target by {share}‰ of the source in \
                 {RUN_DEADLINE:?}: {history:#?}"
            )
        });
        tokio::time::sleep(jitter).await;
        let ended = match reached {
            Err(status) => Some(status),
            Ok(()) => child.try_wait().unwrap(),
        };
        if let Some(status) = ended {
            assert!(
                attempt >= MIN_KILLS,
                "run {attempt} ended by itself before its kill point ({share}‰ of the source),                  after only {attempt} kills ({})",
                failed(status, &history)
            );
            assert!(status.success(), "{}", failed(status, &history));
            history.push(format!("run {attempt}: caught up before its kill point"));
            break;
        }
        child.kill().await.unwrap();
        let elapsed = started.elapsed();
        // The next run's growth counts from what this one left, once the
        // subscription has delivered all of it.
        let left = end_position(&c.target_client).await.map_or(0, |p| p.commit);
        target_end
            .wait_for(|&p| p >= left)
            .await
            .expect("the subscription to the target ended");
        history.push(format!(
            "run {attempt}: SIGKILL after {elapsed:?} at +{share}‰ + {jitter:?}: target at {left}, \
             checkpoint {}",
            show(stored(&w).await.map(|c| c.source))
        ));
    }

    // Per stream, the target must hold the source's events, in order, each
    // once: a duplicate or a gap shows as a difference.
    let report = c.compare().await;
    assert!(report.is_identical(), "{history:#?}\n{report}");
    assert!(report.source_events > events / 2, "{report}");
    let last = stored(&w)
        .await
        .expect("no checkpoint after a completed run");
    assert_eq!(
        last.source, end,
        "the checkpoint must end at the source's last record: {history:#?}"
    );
    assert!(last.target.is_some(), "{last:?}");
    eprintln!(
        "checkpointAfter {checkpoint_after}: {history:#?}\ntarget ends at {}\n{report}",
        show(end_position(&c.target_client).await)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_and_duplicates_nothing_checkpointing_every_event() {
    replicate_through_kills(6_000, 1, 0x5EED_0001).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_and_duplicates_nothing_checkpointing_every_1000() {
    replicate_through_kills(6_000, 1_000, 0x5EED_1000).await;
}
