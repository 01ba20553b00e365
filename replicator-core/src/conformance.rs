//! The contract every [`CheckpointStore`] must keep, as a test suite.
//!
//! Behind the `conformance` feature: a store's author turns it on for the
//! store's tests only,
//!
//! ```toml
//! [dev-dependencies]
//! replicator-core = { version = "0.1", features = ["conformance"] }
//! ```
//!
//! and runs [`check_store`] from a test of the store: it panics with a message
//! saying which rule was broken. It needs a Tokio runtime (it spawns tasks to
//! store concurrently), so call it from `#[tokio::test]`:
//!
//! ```
//! use std::collections::HashMap;
//!
//! use replicator_core::conformance::check_store;
//! use replicator_core::memory::MemoryCheckpointStore;
//!
//! # #[tokio::main]
//! # async fn main() {
//! // In a test of your own: `#[tokio::test(flavor = "multi_thread")]`.
//! // One store per instance name; the same name again gives a store over the
//! // same data, as after a restart of the process. A file store would map the
//! // name to a file in a temporary directory, a database store to a document id.
//! let mut stores: HashMap<String, MemoryCheckpointStore> = HashMap::new();
//! check_store(move |instance: String| {
//!     let store = stores.entry(instance).or_default().clone();
//!     async move { store }
//! })
//! .await;
//! # }
//! ```
//!
//! What it checks, each with instance names of its own (so every check starts
//! from an empty store):
//! - an empty store loads `None`, and deleting from it succeeds;
//! - what was stored loads back with every field: source and target positions
//!   (commit and prepare), the seed flag, and the time to the millisecond
//!   (stores may truncate it to milliseconds, as MongoDB dates do);
//! - a new store handle for the same instance (a restart) loads it too;
//! - a store replaces the previous checkpoint, through a run of increasing
//!   positions, up to the largest position `$all` has (`i64::MAX`);
//! - a seed loads as a seed (inclusive start) and a later store clears the flag;
//! - delete removes it (load gives `None`), twice in a row too, and storing
//!   afterwards works again;
//! - two instances never see or remove each other's checkpoint, even when they
//!   store concurrently;
//! - concurrent stores to one instance leave one of the stored checkpoints,
//!   never a mix of two nor an error.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::{Checkpoint, CheckpointStore, Position, StartFrom};

/// How far apart a stored and a loaded `taken_at` may be: stores may keep
/// milliseconds only.
const TIME_TOLERANCE: Duration = Duration::from_millis(1);

/// How many tasks store at once in the concurrency checks.
const CONCURRENT_WRITERS: u64 = 16;

/// Runs every check of the contract against stores built by `make`.
///
/// `make(instance)` returns a store for the instance named `instance`. The
/// suite uses a new name for each check and expects that store to be empty;
/// calling `make` again with a name it has used must give a store over the
/// same data, as a restarted process would get. Names are short ASCII words
/// (`"empty"`, `"round-trip"`, …): prefix them inside `make` if the backing
/// storage is shared between test runs.
///
/// # Panics
/// On the first broken rule, with a message naming it, or when a store
/// operation returns an error.
pub async fn check_store<S, F, Fut>(mut make: F)
where
    S: CheckpointStore + 'static,
    F: FnMut(String) -> Fut,
    Fut: Future<Output = S>,
{
    let mut make = |name: &str| make(name.to_owned());
    empty_store(make("empty").await).await;
    round_trip(make("round-trip").await, make("round-trip").await).await;
    overwrite_and_monotonic(make("overwrite").await).await;
    seed_flag(make("seed").await).await;
    delete(make("delete").await).await;
    instances_apart(make("instance-a").await, make("instance-b").await).await;
    concurrent_stores(make("concurrent").await).await;
    concurrent_instances(
        make("concurrent-a").await,
        make("concurrent-b").await,
        make("concurrent-c").await,
    )
    .await;
}

/// A checkpoint whose time is not on a millisecond boundary, so that a store
/// that loses more than sub-millisecond precision is caught.
fn checkpoint(source: Position, target: Option<Position>, seed: bool) -> Checkpoint {
    Checkpoint {
        source,
        target,
        taken_at: SystemTime::UNIX_EPOCH + Duration::new(1_767_225_600, 123_456_789),
        seed,
    }
}

fn pos(commit: u64, prepare: u64) -> Position {
    Position { commit, prepare }
}

async fn load<S: CheckpointStore + ?Sized>(store: &S, when: &str) -> Option<Checkpoint> {
    match store.load().await {
        Ok(loaded) => loaded,
        Err(error) => panic!("conformance: load() {when} failed: {error}"),
    }
}

async fn store<S: CheckpointStore + ?Sized>(store: &S, checkpoint: &Checkpoint, when: &str) {
    if let Err(error) = store.store(checkpoint).await {
        panic!("conformance: store({checkpoint:?}) {when} failed: {error}");
    }
}

async fn delete_ok<S: CheckpointStore + ?Sized>(store: &S, when: &str) {
    if let Err(error) = store.delete().await {
        panic!("conformance: delete() {when} failed: {error}");
    }
}

/// Whether `loaded` is `stored`, allowing the time to lose sub-millisecond
/// precision.
fn same(stored: &Checkpoint, loaded: &Checkpoint) -> bool {
    let close_in_time = match stored.taken_at.duration_since(loaded.taken_at) {
        Ok(ahead) => ahead < TIME_TOLERANCE,
        Err(behind) => behind.duration() < TIME_TOLERANCE,
    };
    stored.source == loaded.source
        && stored.target == loaded.target
        && stored.seed == loaded.seed
        && close_in_time
}

fn assert_loads(loaded: Option<Checkpoint>, stored: &Checkpoint, when: &str) {
    match loaded {
        Some(loaded) if same(stored, &loaded) => {}
        Some(loaded) => panic!(
            "conformance: {when}, load() returned {loaded:?} instead of the stored \
             {stored:?} (every field must round-trip; the time to the millisecond)"
        ),
        None => panic!("conformance: {when}, load() returned None instead of {stored:?}"),
    }
}

fn assert_empty(loaded: Option<Checkpoint>, when: &str) {
    if let Some(loaded) = loaded {
        panic!("conformance: {when}, load() returned {loaded:?} instead of None");
    }
}

async fn empty_store<S: CheckpointStore>(store: S) {
    assert_empty(
        load(&store, "on a new store").await,
        "on a new store (make() must give an empty store for a new instance name)",
    );
    delete_ok(&store, "on an empty store").await;
    assert_empty(
        load(&store, "after deleting from an empty store").await,
        "after deleting from an empty store",
    );
}

async fn round_trip<S: CheckpointStore>(first: S, reopened: S) {
    let processed = checkpoint(pos(1_000, 990), Some(pos(77, 70)), false);
    store(&first, &processed, "on an empty store").await;
    assert_loads(
        load(&first, "after a store").await,
        &processed,
        "after a store",
    );
    assert_loads(
        load(&reopened, "from a second handle on the same instance").await,
        &processed,
        "from a second store built for the same instance (a restart)",
    );

    let no_target = checkpoint(pos(2_000, 2_000), None, false);
    store(&first, &no_target, "without a target position").await;
    assert_loads(
        load(&reopened, "after storing without a target").await,
        &no_target,
        "after storing a checkpoint without a target position",
    );
}

async fn overwrite_and_monotonic<S: CheckpointStore>(store_: S) {
    let mut previous: Option<Checkpoint> = None;
    let mut commit = 0u64;
    for step in 0..20u64 {
        // Positions grow by uneven steps with prepare at or below commit, as in
        // a transaction log.
        commit += 1 + step * step * 4_099;
        let current = checkpoint(
            pos(commit, commit - step),
            Some(pos(step * 10, step * 10)),
            false,
        );
        store(&store_, &current, "in a run of increasing positions").await;
        let loaded = load(&store_, "in a run of increasing positions").await;
        if let (Some(previous), Some(loaded)) = (&previous, &loaded) {
            if same(previous, loaded) {
                panic!(
                    "conformance: a store did not replace the previous checkpoint: load() \
                     still returns {loaded:?} after storing {current:?}"
                );
            }
        }
        assert_loads(loaded, &current, "after overwriting the checkpoint");
        previous = Some(current);
    }
    let largest = pos(i64::MAX as u64, i64::MAX as u64 - 1);
    let last = checkpoint(largest, Some(largest), false);
    store(&store_, &last, "with the largest $all position").await;
    assert_loads(
        load(&store_, "after storing the largest $all position").await,
        &last,
        "after storing the largest $all position (i64::MAX)",
    );
}

async fn seed_flag<S: CheckpointStore>(store_: S) {
    let seed = Checkpoint {
        taken_at: SystemTime::UNIX_EPOCH + Duration::from_millis(1_767_225_600_123),
        ..Checkpoint::seeded(pos(4_096, 4_096))
    };
    store(&store_, &seed, "with a seed").await;
    let loaded = load(&store_, "after storing a seed").await;
    assert_loads(loaded.clone(), &seed, "after storing a seed");
    let start = loaded.map(|loaded| loaded.start_from());
    if start != Some(StartFrom::At(pos(4_096, 4_096))) {
        panic!(
            "conformance: a stored seed must resume at its position, inclusive; it resumes \
             from {start:?}"
        );
    }
    let processed = checkpoint(pos(4_096, 4_096), Some(pos(1, 1)), false);
    store(&store_, &processed, "over a seed").await;
    let loaded = load(&store_, "after storing over a seed").await;
    assert_loads(loaded.clone(), &processed, "after storing over a seed");
    let start = loaded.map(|loaded| loaded.start_from());
    if start != Some(StartFrom::After(pos(4_096, 4_096))) {
        panic!(
            "conformance: a processed checkpoint stored over a seed must resume after its \
             position; it resumes from {start:?}"
        );
    }
}

async fn delete<S: CheckpointStore>(store_: S) {
    let stored = checkpoint(pos(500, 500), None, false);
    store(&store_, &stored, "before a delete").await;
    delete_ok(&store_, "of a stored checkpoint").await;
    assert_empty(load(&store_, "after delete").await, "after delete()");
    delete_ok(&store_, "a second time in a row").await;
    assert_empty(
        load(&store_, "after a second delete").await,
        "after a second delete()",
    );
    let again = checkpoint(pos(600, 600), Some(pos(3, 3)), true);
    store(&store_, &again, "after a delete").await;
    assert_loads(
        load(&store_, "after storing again after a delete").await,
        &again,
        "after storing again after a delete",
    );
}

async fn instances_apart<S: CheckpointStore>(a: S, b: S) {
    let for_a = checkpoint(pos(10, 10), None, false);
    store(&a, &for_a, "for instance a").await;
    assert_empty(
        load(&b, "of instance b").await,
        "instance b after only instance a stored (instances must not share a checkpoint)",
    );
    let for_b = checkpoint(pos(20, 19), Some(pos(5, 5)), true);
    store(&b, &for_b, "for instance b").await;
    assert_loads(
        load(&a, "of instance a").await,
        &for_a,
        "instance a after instance b stored its own",
    );
    assert_loads(
        load(&b, "of instance b").await,
        &for_b,
        "instance b after storing its own",
    );
    delete_ok(&a, "of instance a").await;
    assert_empty(
        load(&a, "of instance a after its delete").await,
        "instance a after its delete",
    );
    assert_loads(
        load(&b, "of instance b after instance a's delete").await,
        &for_b,
        "instance b after instance a deleted its checkpoint",
    );
}

async fn concurrent_stores<S: CheckpointStore + 'static>(store_: S) {
    let store_ = Arc::new(store_);
    let candidates: Vec<Checkpoint> = (1..=CONCURRENT_WRITERS)
        .map(|i| checkpoint(pos(i * 1_000, i * 1_000 - i), Some(pos(i, i)), i % 2 == 0))
        .collect();
    let tasks: Vec<_> = candidates
        .iter()
        .cloned()
        .map(|candidate| {
            let store_ = Arc::clone(&store_);
            tokio::spawn(async move {
                store(&*store_, &candidate, "from one of several concurrent tasks").await;
            })
        })
        .collect();
    for task in tasks {
        if let Err(error) = task.await {
            std::panic::resume_unwind(error.into_panic());
        }
    }
    let loaded = load(&*store_, "after concurrent stores").await;
    match &loaded {
        Some(loaded) if candidates.iter().any(|c| same(c, loaded)) => {}
        other => panic!(
            "conformance: after {CONCURRENT_WRITERS} concurrent stores, load() returned \
             {other:?}, which is none of the stored checkpoints (a torn or lost write)"
        ),
    }
}

async fn concurrent_instances<S: CheckpointStore + 'static>(a: S, b: S, c: S) {
    let stores: Vec<Arc<S>> = vec![Arc::new(a), Arc::new(b), Arc::new(c)];
    let tasks: Vec<_> = stores
        .iter()
        .enumerate()
        .map(|(n, instance)| {
            let instance = Arc::clone(instance);
            tokio::spawn(async move {
                let n = n as u64;
                for step in 1..=10u64 {
                    let current = checkpoint(pos(n * 1_000_000 + step, step), None, false);
                    store(&*instance, &current, "while other instances store too").await;
                }
            })
        })
        .collect();
    for task in tasks {
        if let Err(error) = task.await {
            std::panic::resume_unwind(error.into_panic());
        }
    }
    for (n, instance) in stores.iter().enumerate() {
        let n = n as u64;
        let last = checkpoint(pos(n * 1_000_000 + 10, 10), None, false);
        assert_loads(
            load(&**instance, "after instances stored concurrently").await,
            &last,
            &format!("instance {n} after several instances stored concurrently"),
        );
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use async_trait::async_trait;

    use crate::memory::MemoryCheckpointStore;
    use crate::CheckpointError;

    use super::*;

    /// Memory stores by instance name; the same name gives the same data.
    fn memory_stores() -> impl FnMut(String) -> std::future::Ready<MemoryCheckpointStore> {
        let mut stores: HashMap<String, MemoryCheckpointStore> = HashMap::new();
        move |name| std::future::ready(stores.entry(name).or_default().clone())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_memory_store_keeps_the_contract() {
        check_store(memory_stores()).await;
    }

    /// A store breaking one rule on purpose.
    struct Broken {
        inner: MemoryCheckpointStore,
        flaw: Flaw,
    }

    #[derive(Clone, Copy)]
    enum Flaw {
        ForgetsTheSeed,
        IgnoresDelete,
        KeepsSeconds,
        KeepsTheFirst,
    }

    #[async_trait]
    impl CheckpointStore for Broken {
        async fn load(&self) -> Result<Option<Checkpoint>, CheckpointError> {
            let loaded = self.inner.load().await?;
            Ok(loaded.map(|mut checkpoint| {
                match self.flaw {
                    Flaw::ForgetsTheSeed => checkpoint.seed = false,
                    Flaw::KeepsSeconds => {
                        let secs = checkpoint
                            .taken_at
                            .duration_since(SystemTime::UNIX_EPOCH)
                            .unwrap()
                            .as_secs();
                        checkpoint.taken_at = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
                    }
                    Flaw::IgnoresDelete | Flaw::KeepsTheFirst => {}
                }
                checkpoint
            }))
        }
        async fn store(&self, checkpoint: &Checkpoint) -> Result<(), CheckpointError> {
            if matches!(self.flaw, Flaw::KeepsTheFirst) && self.inner.current().is_some() {
                return Ok(());
            }
            self.inner.store(checkpoint).await
        }
        async fn delete(&self) -> Result<(), CheckpointError> {
            match self.flaw {
                Flaw::IgnoresDelete => Ok(()),
                _ => self.inner.delete().await,
            }
        }
    }

    async fn check_broken(flaw: Flaw) {
        let mut stores = memory_stores();
        check_store(move |name| {
            let inner = stores(name).into_inner();
            async move { Broken { inner, flaw } }
        })
        .await;
    }

    #[tokio::test]
    #[should_panic(expected = "after storing a seed, load() returned")]
    async fn catches_a_lost_seed_flag() {
        check_broken(Flaw::ForgetsTheSeed).await;
    }

    #[tokio::test]
    #[should_panic(expected = "after delete()")]
    async fn catches_a_delete_that_keeps_the_checkpoint() {
        check_broken(Flaw::IgnoresDelete).await;
    }

    #[tokio::test]
    #[should_panic(expected = "the time to the millisecond")]
    async fn catches_a_coarse_time() {
        check_broken(Flaw::KeepsSeconds).await;
    }

    #[tokio::test]
    #[should_panic(expected = "instead of the stored")]
    async fn catches_a_store_that_does_not_replace() {
        check_broken(Flaw::KeepsTheFirst).await;
    }

    #[tokio::test]
    #[should_panic(expected = "instances must not share a checkpoint")]
    async fn catches_instances_sharing_one_checkpoint() {
        let shared = MemoryCheckpointStore::new();
        check_store(move |_name| std::future::ready(shared.clone())).await;
    }
}
