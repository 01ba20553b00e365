//! `replicator run` killed with SIGKILL mid-copy, again and again, then left
//! to finish: no event may be lost or duplicated, wherever in the copy the
//! kill lands (mid-append, between an append and its checkpoint, while
//! replaying after a restart, right after a write the target took, or with
//! writes sent that the target takes only later or never).
//!
//! The test decides where each run is when it dies, whatever the machine's
//! speed: the in-process target's write gate
//! ([`replicator_testkit::FaultHandle::hold_writes_after`]) lets a run make
//! a number of writes and holds every further one, and the run is killed as
//! soon as that many went through (the last one often not yet acknowledged
//! to it). The numbers come from a seeded generator and grow from run to
//! run, so the kills move on through the copy even when a run replays from
//! far back (`checkpointAfter: 1000`), and each stays below the writes the
//! copy certainly still needs ([`streams_left`]): a run cannot finish before
//! its kill, on a fast machine or a slow one. The writes the dead run left
//! at the gate are then, also drawn, dropped with their connections (sent,
//! never written) or kept there, to be written among the next run's first
//! writes. A failure names the seed and the kill history.
//!
//! The target must be in-process (its gate is); the source may be a real
//! cluster (`ESDB_SOURCE_URL`).
//!
//! With `checkpoint.type: stream` the checkpoint is itself a write to the
//! target, through the same gate: a kill may land before, during or after a
//! checkpoint append too, and the run keeps no file.

use std::time::Duration;

use replicator_checkpoint::FileCheckpointStore;
use replicator_core::{Checkpoint, CheckpointStore as _, Position};
use replicator_esdb::verify::{verify, VerifyOptions};
use replicator_esdb::StreamCheckpointStore;
use replicator_testkit::support::{client, last_position};
use replicator_testkit::workload::{self, Rng, WorkloadSpec};

use crate::{gate_spent_or_ended, reads, spawn_run, Clusters, Workdir};

/// Runs killed per test; the run after them is left to finish.
const KILLS: u64 = 6;
/// User streams of the workload: the more, the longer the copy certainly
/// needs more writes (see [`streams_left`]).
const STREAMS: usize = 600;
/// Each run may make this many more target writes (appends, deletes,
/// tombstones) than the run before it, drawn per run; fewer when
/// [`streams_left`] requires.
const MORE_WRITES: (u64, u64) = (20, 120);
/// How long one run may take to make its writes or to finish: only a stall
/// misses it.
const RUN_DEADLINE: Duration = Duration::from_secs(300);

/// Where the runs keep their checkpoint.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Store {
    /// `./checkpoint` in the working directory.
    File,
    /// `$replicator-checkpoint-default` in the target.
    Stream,
}

async fn stored(c: &Clusters, w: &Workdir, store: Store) -> Option<Checkpoint> {
    match store {
        Store::File => FileCheckpointStore::new(w.path("checkpoint")).load().await,
        Store::Stream => {
            StreamCheckpointStore::new(c.target.connection_string(), "default")
                .unwrap()
                .load()
                .await
        }
    }
    .expect("the checkpoint must stay readable after any kill")
}

fn show(p: Option<Position>) -> String {
    p.map_or("none".to_owned(), |p| p.to_string())
}

/// A new client of the target: the test drops the target's connections
/// (the dead runs'), and with them those of any client it holds.
fn target_client(c: &Clusters) -> eventstore::Client {
    client(&c.target.connection_string())
}

/// The user streams in which the target still lacks something of the
/// source's. A write (one append, delete or tombstone) goes to one stream,
/// so a run cannot leave none in fewer writes than that. (A duplicate on the
/// target would count too; the final comparison fails the test for it
/// anyway. An order difference is no stream to write.)
async fn streams_left(c: &Clusters) -> u64 {
    let report = verify(
        &reads(&c.source_client),
        &reads(&target_client(c)),
        &VerifyOptions::default(),
    )
    .await
    .unwrap();
    // Counted exactly however many are listed; the order is reported apart.
    report.streams_differing
}

/// Replicates `events` generated events with `checkpoint_after`, killing
/// [`KILLS`] runs mid-copy at points drawn from `seed`, then checks the
/// target and the checkpoint.
async fn replicate_through_kills(events: usize, checkpoint_after: u64, seed: u64, store: Store) {
    let c = Clusters::start().await;
    let spec = WorkloadSpec {
        streams: Some(STREAMS),
        ..WorkloadSpec::new(seed, events)
    };
    workload::generate(&c.source_client, &spec).await.unwrap();
    let end = c.source_end_position().await;
    let kind = match store {
        Store::File => "file",
        Store::Stream => "stream",
    };
    let w = c.workdir(&format!(
        "  runContinuously: false\n  restartOnFailure: false\n  checkpoint:\n    type: {kind}\n    checkpointAfter: {checkpoint_after}\n"
    ));

    let faults = c.target.faults();
    // Closed from the start: between runs, nothing passes.
    faults.hold_writes_after(0);
    let mut rng = Rng(seed);
    let mut history = vec![format!("seed {seed}; the source ends at {end}")];
    let mut writes = 0;
    for attempt in 0..KILLS {
        let log = w.path(&format!("run-{attempt}.log"));
        // The kills to come, this one included, share what is left, so the
        // last one still finds the copy unfinished (a kept write of a dead
        // run, passing with the next run's writes, is one of them).
        let left = streams_left(&c).await;
        let share = left.saturating_sub(1) / (KILLS - attempt);
        assert!(
            share >= 1,
            "run {attempt}: {left} streams left to copy, too few to kill a run mid-copy: \
             {history:#?}"
        );
        writes = (writes + rng.between(MORE_WRITES.0, MORE_WRITES.1)).min(share);
        let drop = rng.between(0, 1) == 1;
        faults.hold_writes_after(writes as usize);

        let mut child = spawn_run(&w, Some(&log));
        let ended = tokio::time::timeout(RUN_DEADLINE, gate_spent_or_ended(&faults, &mut child))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "run {attempt} neither made {writes} writes nor ended in {RUN_DEADLINE:?}: \
                     {history:#?}"
                )
            });
        if let Some(status) = ended {
            panic!(
                "run {attempt} ended ({status}) within {writes} writes, with {left} streams \
                 left to copy: some were left incomplete\nits log:\n{}\nhistory: {history:#?}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        child.kill().await.unwrap();
        let held = faults.held_writes();
        if drop {
            faults.drop_connections();
        }
        history.push(format!(
            "run {attempt}: SIGKILL after {writes} writes; then {held} at the gate, {}: target at \
             {}, checkpoint {}",
            if drop { "dropped" } else { "kept" },
            show(last_position(&target_client(&c)).await),
            show(stored(&c, &w, store).await.map(|c| c.source))
        ));
    }

    faults.release_writes();
    let log = w.path("run-last.log");
    let status = tokio::time::timeout(RUN_DEADLINE, spawn_run(&w, Some(&log)).wait())
        .await
        .unwrap_or_else(|_| {
            panic!("the last run did not catch up in {RUN_DEADLINE:?}: {history:#?}")
        })
        .unwrap();
    assert!(
        status.success(),
        "the last run exited with {status}\nits log:\n{}\nhistory: {history:#?}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );

    // Per stream, the target must hold the source's events, in order, each
    // once: a duplicate or a gap shows as a difference.
    let target = target_client(&c);
    let report = verify(
        &reads(&c.source_client),
        &reads(&target),
        &VerifyOptions::default(),
    )
    .await
    .unwrap();
    assert!(report.is_identical(), "{history:#?}\n{report}");
    assert!(report.source_events > events as u64 / 2, "{report}");
    let last = stored(&c, &w, store)
        .await
        .expect("no checkpoint after a completed run");
    assert_eq!(
        last.source, end,
        "the checkpoint must end at the source's last record: {history:#?}"
    );
    assert!(last.target.is_some(), "{last:?}");
    if store == Store::Stream {
        assert!(
            !w.path("checkpoint").exists(),
            "a run with the checkpoint in the target writes no checkpoint file"
        );
    }
    eprintln!(
        "checkpointAfter {checkpoint_after}: {history:#?}\ntarget ends at {}\n{report}",
        show(last_position(&target).await)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_copy_loses_and_duplicates_nothing_checkpointing_every_event() {
    replicate_through_kills(6_000, 1, 0x5EED_0001, Store::File).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_copy_loses_and_duplicates_nothing_checkpointing_every_1000() {
    replicate_through_kills(6_000, 1_000, 0x5EED_1000, Store::File).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_copy_with_the_checkpoint_in_the_target_loses_and_duplicates_nothing() {
    replicate_through_kills(6_000, 1, 0x5EED_5713, Store::Stream).await;
}
