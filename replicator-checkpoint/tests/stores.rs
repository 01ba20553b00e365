//! The file and MongoDB checkpoint stores, chaser seeding, and the conformance
//! suite run against both stores.
//!
//! The MongoDB tests need a server speaking the MongoDB wire protocol:
//! `eval "$(scripts/start-mongo)"` starts one and exports `MONGODB_URL` and
//! `SECANTUSD_BIN` (the restart and authentication tests start servers of their
//! own with it). Without them these tests fail; they never skip.

use std::path::Path;
use std::time::{Duration, SystemTime};

use mongodb::bson::{doc, Bson, Document};
use replicator_checkpoint::chaser::read_chaser;
use replicator_checkpoint::{seed_if_empty, FileCheckpointStore, MongoCheckpointStore};
use replicator_core::conformance::check_store;
use replicator_core::{Checkpoint, CheckpointStore, Position, StartFrom};

use replicator_testkit::support::mongo::{mongo_url, unique_name, SecantusServer};

/// Longest a test waits for something that only a broken store would never
/// do (not a measure of speed).
const PATIENCE: Duration = Duration::from_secs(120);

fn checkpoint(commit: u64, target: Option<u64>, seed: bool) -> Checkpoint {
    Checkpoint {
        source: Position {
            commit,
            prepare: commit.saturating_sub(3),
        },
        target: target.map(Position::at),
        taken_at: SystemTime::UNIX_EPOCH + Duration::from_millis(1_767_225_600_000),
        seed,
    }
}

fn file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

// ---------------------------------------------------------------- file store

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn file_store_keeps_the_checkpoint_contract() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    check_store(move |instance: String| {
        let path = root.join(instance);
        async move { FileCheckpointStore::new(path) }
    })
    .await;
}

#[tokio::test]
async fn file_store_replaces_atomically_and_leaves_no_temporary_files() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileCheckpointStore::new(dir.path().join("checkpoint"));
    for commit in 1..=50 {
        store
            .store(&checkpoint(commit * 100, Some(commit), false))
            .await
            .unwrap();
        assert_eq!(file_names(dir.path()), ["checkpoint"]);
    }
    let text = std::fs::read_to_string(dir.path().join("checkpoint")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["version"], 1, "{text}");
    assert_eq!(json["source"]["commit"], 5_000, "{text}");
    store.delete().await.unwrap();
    assert!(file_names(dir.path()).is_empty());
}

#[tokio::test]
async fn file_store_reads_the_csharp_replicators_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("checkpoint");
    // What the C# tool writes: "{eventNumber},{commitPosition}", no newline.
    std::fs::write(&path, "41,2093487").unwrap();
    let store = FileCheckpointStore::new(&path);
    let loaded = store.load().await.unwrap().unwrap();
    assert_eq!(loaded.target, None);
    // The last commit again, from its first record: the C# tool may have
    // stopped inside a v5 transaction (its records share the commit position).
    assert_eq!(
        loaded.start_from(),
        StartFrom::At(Position {
            commit: 2_093_487,
            prepare: 0
        })
    );
    let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
    assert_eq!(loaded.taken_at, modified);

    // The first store moves it to the versioned format.
    let next = checkpoint(2_100_000, Some(12), false);
    store.store(&next).await.unwrap();
    assert_eq!(store.load().await.unwrap(), Some(next));
    assert!(std::fs::read_to_string(&path)
        .unwrap()
        .contains("\"version\":1"));
}

#[tokio::test]
async fn a_corrupt_checkpoint_file_is_an_error_naming_it_never_a_fresh_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("checkpoint");
    let store = FileCheckpointStore::new(&path);
    for (contents, says) in [
        ("", "is empty"),
        ("not a checkpoint", "neither"),
        ("{\"version\":1,\"source\":", "not valid JSON"),
        ("{\"version\":99,\"whatever\":true}", "version 99"),
        (
            "{\"source\":{\"commit\":1,\"prepare\":1}}",
            "no format \"version\"",
        ),
    ] {
        std::fs::write(&path, contents).unwrap();
        let error = store.load().await.unwrap_err();
        assert!(!error.is_transient(), "{contents:?}: {error}");
        assert!(
            error.message().contains(&path.display().to_string()),
            "{contents:?}: {error}"
        );
        assert!(error.message().contains(says), "{contents:?}: {error}");
        // Nor does seeding paper over it.
        assert!(seed_if_empty(&store, Position::at(5)).await.is_err());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), contents);
    }
}

#[tokio::test]
async fn file_store_check_creates_a_missing_directory_and_leaves_the_checkpoint_alone() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("data").join("sub");
    let path = sub.join("checkpoint");
    let store = FileCheckpointStore::new(&path);
    store
        .check()
        .await
        .expect("check creates the missing directories");
    assert!(sub.is_dir());
    assert!(file_names(&sub).is_empty(), "the check left files behind");
    assert_eq!(store.load().await.unwrap(), None);

    let stored = checkpoint(4_200, Some(7), false);
    store.store(&stored).await.unwrap();
    let bytes = std::fs::read(&path).unwrap();
    store.check().await.unwrap();
    assert_eq!(
        std::fs::read(&path).unwrap(),
        bytes,
        "the check changed the checkpoint"
    );
    assert_eq!(file_names(&sub), ["checkpoint"]);
    assert_eq!(store.load().await.unwrap(), Some(stored));
}

#[tokio::test]
async fn file_store_creates_a_missing_directory_when_storing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir
        .path()
        .join("no-such-dir")
        .join("deeper")
        .join("checkpoint");
    let store = FileCheckpointStore::new(&path);
    let stored = checkpoint(1, None, false);
    store.store(&stored).await.unwrap();
    assert_eq!(store.load().await.unwrap(), Some(stored));
    assert_eq!(file_names(path.parent().unwrap()), ["checkpoint"]);
}

#[tokio::test]
async fn an_unusable_checkpoint_path_fails_the_check_naming_it_and_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    // A regular file where a directory should be: no permission bits involved,
    // so this fails for root too.
    let blocker = dir.path().join("blocker");
    std::fs::write(&blocker, "not a directory").unwrap();
    let path = blocker.join("sub").join("checkpoint");
    let store = FileCheckpointStore::new(&path);
    let error = store.check().await.unwrap_err();
    eprintln!("under a file -> {error}");
    assert!(!error.is_transient(), "{error}");
    assert!(
        error.message().contains(&path.display().to_string()),
        "{error}"
    );
    let os_reason = std::io::Error::from_raw_os_error(20).to_string(); // ENOTDIR
    assert!(error.message().contains(&os_reason), "{error}");
    // Storing fails the same way, naming the file.
    let error = store.store(&checkpoint(1, None, false)).await.unwrap_err();
    assert!(!error.is_transient(), "{error}");
    assert!(
        error.message().contains(&path.display().to_string()),
        "{error}"
    );
    assert_eq!(
        std::fs::read_to_string(&blocker).unwrap(),
        "not a directory"
    );

    // A directory where the file should be.
    let error = FileCheckpointStore::new(dir.path())
        .check()
        .await
        .unwrap_err();
    assert!(!error.is_transient(), "{error}");
    assert!(
        error.message().contains(&dir.path().display().to_string()),
        "{error}"
    );
    let error = FileCheckpointStore::new(dir.path())
        .load()
        .await
        .unwrap_err();
    assert!(
        error.message().contains(&dir.path().display().to_string()),
        "{error}"
    );
}

// ------------------------------------------------------- chaser and seeding

fn write_chaser(dir: &Path, value: i64) -> std::path::PathBuf {
    let path = dir.join("chaser.chk");
    std::fs::write(&path, value.to_le_bytes()).unwrap();
    path
}

#[tokio::test]
async fn a_chaser_seeds_an_empty_store_to_start_at_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let chaser = write_chaser(dir.path(), 1_048_576);
    let store = FileCheckpointStore::new(dir.path().join("checkpoint"));
    let position = read_chaser(&chaser).unwrap();
    assert!(seed_if_empty(&store, position).await.unwrap());
    let loaded = store.load().await.unwrap().unwrap();
    assert!(loaded.seed);
    assert_eq!(loaded.start_from(), StartFrom::At(Position::at(1_048_576)));
}

#[tokio::test]
async fn a_stored_checkpoint_always_wins_over_a_seed() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileCheckpointStore::new(dir.path().join("checkpoint"));
    let existing = checkpoint(5_000, Some(40), false);
    store.store(&existing).await.unwrap();
    assert!(!seed_if_empty(&store, Position::at(100)).await.unwrap());
    assert!(!seed_if_empty(&store, Position::at(9_000)).await.unwrap());
    assert_eq!(store.load().await.unwrap(), Some(existing));

    // An earlier seed wins over a later one as well.
    store.delete().await.unwrap();
    assert!(seed_if_empty(&store, Position::at(100)).await.unwrap());
    assert!(!seed_if_empty(&store, Position::at(200)).await.unwrap());
    assert_eq!(
        store.load().await.unwrap().unwrap().start_from(),
        StartFrom::At(Position::at(100))
    );
}

#[test]
fn a_bad_chaser_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.chk");
    let short = dir.path().join("short.chk");
    std::fs::write(&short, [1, 2, 3, 4]).unwrap();
    let negative = write_chaser(dir.path(), -5);
    for path in [missing, short, negative] {
        let error = read_chaser(&path).unwrap_err();
        assert!(!error.is_transient(), "{error}");
        assert!(
            error.message().contains(&path.display().to_string()),
            "{error}"
        );
    }
}

// ------------------------------------------------------------- MongoDB store

/// A store in a database of its own, so that runs and tests sharing a server
/// never meet.
async fn mongo_store(database: &str, instance: &str) -> MongoCheckpointStore {
    MongoCheckpointStore::connect(&mongo_url(), database, instance)
        .await
        .unwrap_or_else(|error| panic!("cannot connect to {}: {error}", mongo_url()))
}

async fn raw_collection(url: &str, database: &str) -> mongodb::Collection<Document> {
    mongodb::Client::with_uri_str(url)
        .await
        .unwrap()
        .database(database)
        .collection("checkpoint")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mongo_store_keeps_the_checkpoint_contract() {
    let database = unique_name("conformance");
    check_store(|instance: String| {
        let database = database.clone();
        async move { mongo_store(&database, &instance).await }
    })
    .await;
}

#[tokio::test]
async fn mongo_store_reads_the_document_the_csharp_replicator_wrote() {
    let database = unique_name("legacy");
    let raw = raw_collection(&mongo_url(), &database).await;
    // The C# driver writes longs; be sure smaller integer types are read too.
    raw.insert_many([
        doc! { "_id": "default", "LogPosition": { "EventNumber": 41_i64, "EventPosition": 5_000_000_123_i64 } },
        doc! { "_id": "small", "LogPosition": { "EventNumber": 0_i32, "EventPosition": 700_i32 } },
    ])
    .await
    .unwrap();

    let store = mongo_store(&database, "default").await;
    let loaded = store.load().await.unwrap().unwrap();
    assert_eq!(
        loaded.start_from(),
        StartFrom::At(Position {
            commit: 5_000_000_123,
            prepare: 0
        })
    );
    assert_eq!(loaded.target, None);
    let small = mongo_store(&database, "small").await.load().await.unwrap();
    assert_eq!(small.unwrap().source.commit, 700);

    // The next store replaces it with the versioned document.
    let next = checkpoint(5_000_001_000, Some(9), false);
    store.store(&next).await.unwrap();
    assert_eq!(store.load().await.unwrap(), Some(next));
    let document = raw
        .find_one(doc! { "_id": "default" })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(document.get("version"), Some(&Bson::Int64(1)), "{document}");
    assert!(!document.contains_key("LogPosition"), "{document}");
}

#[tokio::test]
async fn mongo_keeps_one_document_per_instance_side_by_side() {
    let database = unique_name("side-by-side");
    let first = mongo_store(&database, "eu-west").await;
    let second = mongo_store(&database, "us-east").await;
    first
        .store(&checkpoint(1_000, Some(1), false))
        .await
        .unwrap();
    second.store(&checkpoint(2_000, None, true)).await.unwrap();
    first
        .store(&checkpoint(1_500, Some(2), false))
        .await
        .unwrap();

    let raw = raw_collection(&mongo_url(), &database).await;
    let mut ids = Vec::new();
    let mut cursor = raw.find(doc! {}).await.unwrap();
    while cursor.advance().await.unwrap() {
        ids.push(cursor.current().get_str("_id").unwrap().to_owned());
    }
    ids.sort();
    assert_eq!(ids, ["eu-west", "us-east"]);
    assert_eq!(
        first.load().await.unwrap(),
        Some(checkpoint(1_500, Some(2), false))
    );
    assert_eq!(
        second.load().await.unwrap(),
        Some(checkpoint(2_000, None, true))
    );
    first.delete().await.unwrap();
    assert_eq!(raw.count_documents(doc! {}).await.unwrap(), 1);
    assert_eq!(first.load().await.unwrap(), None);
    assert!(second.load().await.unwrap().is_some());
}

#[tokio::test]
async fn a_corrupt_mongo_document_is_an_error_naming_it() {
    let database = unique_name("corrupt");
    let raw = raw_collection(&mongo_url(), &database).await;
    raw.insert_many([
        doc! { "_id": "future", "version": 7_i64 },
        doc! { "_id": "junk", "hello": "world" },
        doc! { "_id": "broken", "version": 1_i64, "source": { "commit": -1_i64, "prepare": 0_i64 } },
        doc! { "_id": "bad-legacy", "LogPosition": { "EventNumber": 1_i64 } },
    ])
    .await
    .unwrap();
    for (instance, says) in [
        ("future", "version 7"),
        ("junk", "neither"),
        ("broken", "source"),
        ("bad-legacy", "EventPosition"),
    ] {
        let store = mongo_store(&database, instance).await;
        let error = store.load().await.unwrap_err();
        eprintln!("{instance} -> {error}");
        assert!(!error.is_transient(), "{instance}: {error}");
        assert!(
            error.message().contains(&format!("{instance:?}")),
            "{instance}: {error}"
        );
        assert!(error.message().contains(&database), "{instance}: {error}");
        assert!(error.message().contains(says), "{instance}: {error}");
        // Nor does seeding paper over it.
        assert!(seed_if_empty(&store, Position::at(5)).await.is_err());
        // Deleting is how an operator starts over.
        store.delete().await.unwrap();
        assert_eq!(store.load().await.unwrap(), None);
    }
}

#[tokio::test]
async fn a_bad_connection_string_is_a_permanent_error_without_the_password() {
    for url in [
        "mongodb://admin:hunter2-secret@127.0.0.1:notaport",
        "mongodb://admin:hunter2-secret@127.0.0.1:27017/?authMechanism=NOPE",
        "mongodb://admin:hunter2-secret@127.0.0.1:27017/?unknownOption=1&w=banana",
        "postgres://admin:hunter2-secret@127.0.0.1:5432",
        "admin:hunter2-secret",
    ] {
        let error = MongoCheckpointStore::connect(url, "replicator", "default")
            .await
            .unwrap_err();
        let shown = format!("{error} {error:?} {}", error.message());
        eprintln!("{url} -> {error}");
        assert!(!error.is_transient(), "{url}: {shown}");
        assert!(!shown.contains("hunter2"), "the password leaked: {shown}");
        assert!(shown.contains("connection string"), "{url}: {shown}");
    }
    let error = MongoCheckpointStore::connect(&mongo_url(), "", "default")
        .await
        .unwrap_err();
    assert!(error.message().contains("database"), "{error}");
    let error = MongoCheckpointStore::connect(&mongo_url(), "replicator", "")
        .await
        .unwrap_err();
    assert!(error.message().contains("instance id"), "{error}");
}

#[tokio::test]
async fn an_authentication_failure_is_a_permanent_start_up_error_without_the_password() {
    let server = SecantusServer::start().await;
    server.create_user("replicator", "Corr3ct-Horse").await;
    let server = server.restart_with_auth().await;
    let port = server.port();

    let wrong = format!("mongodb://replicator:Wr0ng-Battery@127.0.0.1:{port}/?authSource=admin");
    let error = MongoCheckpointStore::connect(&wrong, "replicator", "default")
        .await
        .unwrap_err();
    let shown = format!("{error} {error:?}");
    eprintln!("wrong password -> {error}");
    assert!(!error.is_transient(), "{shown}");
    assert!(
        !shown.contains("Wr0ng-Battery"),
        "the password leaked: {shown}"
    );
    assert!(shown.contains("replicator:***@"), "{shown}");
    assert!(shown.to_lowercase().contains("auth"), "{shown}");

    // No credentials at all against a server that requires them.
    let anonymous = format!("mongodb://127.0.0.1:{port}");
    let error = MongoCheckpointStore::connect(&anonymous, "replicator", "default")
        .await
        .unwrap_err();
    eprintln!("no credentials -> {error}");
    assert!(!error.is_transient(), "{error}");

    let right = format!("mongodb://replicator:Corr3ct-Horse@127.0.0.1:{port}/?authSource=admin");
    let store = MongoCheckpointStore::connect(&right, "replicator", "default")
        .await
        .unwrap();
    store.store(&checkpoint(77, None, false)).await.unwrap();
    assert_eq!(
        store.load().await.unwrap(),
        Some(checkpoint(77, None, false))
    );
    assert!(!format!("{store:?}").contains("Corr3ct-Horse"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_retry_budget_a_store_during_a_server_restart_completes_once_the_server_is_back() {
    let server = SecantusServer::start().await;
    let url = server.url();
    let store = std::sync::Arc::new(
        MongoCheckpointStore::connect(&url, "replicator", "restart")
            .await
            .unwrap()
            .with_retry_budget(Duration::from_secs(60)),
    );
    let before = checkpoint(10_000, Some(100), false);
    store.store(&before).await.unwrap();

    let stopped = server.stop().await;
    let during = checkpoint(20_000, Some(200), false);
    let pending = tokio::spawn({
        let store = std::sync::Arc::clone(&store);
        let during = during.clone();
        async move { store.store(&during).await }
    });
    // The store cannot finish while the server is down; it must keep trying
    // rather than fail or drop the position. The server comes back only once
    // an attempt has failed and a retry is under way, so the outage outlasts
    // one attempt and only retries bridge it.
    let retrying = async {
        while store.retries() == 0 && !pending.is_finished() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(PATIENCE, retrying)
        .await
        .expect("no attempt failed while the server was down");
    assert!(
        !pending.is_finished(),
        "the store finished while the server was down: {:?}",
        pending.await
    );

    let server = stopped.restart().await;
    pending
        .await
        .unwrap()
        .expect("the store issued during the outage failed after the server came back");
    assert_eq!(store.load().await.unwrap(), Some(during.clone()));

    // And it is durable: a new client after another restart sees it.
    let server = server.stop().await.restart().await;
    let reopened = MongoCheckpointStore::connect(&server.url(), "replicator", "restart")
        .await
        .unwrap();
    assert_eq!(reopened.load().await.unwrap(), Some(during));
}

#[tokio::test]
async fn by_default_a_store_on_a_stopped_server_is_one_attempt_and_a_transient_error() {
    let server = SecantusServer::start().await;
    let store = MongoCheckpointStore::connect(&server.url(), "replicator", "stopped")
        .await
        .unwrap();
    let _stopped = server.stop().await;
    let started = std::time::Instant::now();
    let error = store.store(&checkpoint(1, None, false)).await.unwrap_err();
    let took = started.elapsed();
    eprintln!("stopped, after {took:?} -> {error}");
    assert!(error.is_transient(), "{error}");
    assert!(error.message().contains("\"stopped\""), "{error}");
    // One attempt: server selection (5 s) and no more.
    assert!(took < Duration::from_secs(10), "store took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_server_makes_store_and_check_fail_fast_and_recover_after_it_resumes() {
    let server = SecantusServer::start().await;
    let store = MongoCheckpointStore::connect(&server.url(), "replicator", "frozen")
        .await
        .unwrap();
    let before = checkpoint(10_000, Some(100), false);
    store.store(&before).await.unwrap();

    server.freeze();
    // The pooled connection stays open and the kernel still accepts new
    // ones: only a deadline ends the wait.
    let started = std::time::Instant::now();
    let error = store
        .store(&checkpoint(20_000, Some(200), false))
        .await
        .unwrap_err();
    let took = started.elapsed();
    eprintln!("frozen, after {took:?} -> {error}");
    assert!(error.is_transient(), "{error}");
    assert!(error.message().contains("\"frozen\""), "{error}");
    assert!(took < Duration::from_secs(10), "store took {took:?}");
    let started = std::time::Instant::now();
    let error = store.check().await.unwrap_err();
    assert!(error.is_transient(), "{error}");
    assert!(started.elapsed() < Duration::from_secs(10));

    server.thaw();
    let after = checkpoint(30_000, Some(300), false);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match store.store(&after).await {
            Ok(()) => break,
            Err(error) => {
                assert!(error.is_transient(), "{error}");
                assert!(
                    std::time::Instant::now() < deadline,
                    "no store succeeded within 30 s of the server resuming: {error}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    assert_eq!(store.load().await.unwrap(), Some(after));
    store.check().await.unwrap();
}

#[tokio::test]
async fn the_mongo_check_proves_writes_work_and_changes_nothing() {
    let database = unique_name("check");
    let raw = raw_collection(&mongo_url(), &database).await;
    let empty = mongo_store(&database, "empty").await;
    empty.check().await.unwrap();
    assert_eq!(raw.count_documents(doc! {}).await.unwrap(), 0);
    assert_eq!(empty.load().await.unwrap(), None);

    let store = mongo_store(&database, "stored").await;
    let stored = checkpoint(9_000, Some(90), true);
    store.store(&stored).await.unwrap();
    let document = raw.find_one(doc! { "_id": "stored" }).await.unwrap();
    store.check().await.unwrap();
    assert_eq!(
        raw.find_one(doc! { "_id": "stored" }).await.unwrap(),
        document
    );
    assert_eq!(store.load().await.unwrap(), Some(stored));
}

#[tokio::test]
async fn a_user_who_may_only_read_fails_the_check_permanently() {
    let server = SecantusServer::start().await;
    server.create_user("reader", "R3ad-0nly").await;
    server
        .create_user_with_role("viewer", "V1ew-0nly", "read")
        .await;
    let server = server.restart_with_auth().await;
    let port = server.port();
    let url = format!("mongodb://viewer:V1ew-0nly@127.0.0.1:{port}/?authSource=admin");
    let store = MongoCheckpointStore::connect(&url, "replicator", "default")
        .await
        .expect("a read-only user may connect: connect only reads");
    let error = store.check().await.unwrap_err();
    eprintln!("read-only -> {error}");
    assert!(!error.is_transient(), "{error}");
    assert!(!format!("{error:?}").contains("V1ew-0nly"));
    assert_eq!(store.load().await.unwrap(), None);
}

#[tokio::test]
async fn a_server_down_for_longer_than_the_retry_budget_is_a_transient_error() {
    let server = SecantusServer::start().await;
    let store = MongoCheckpointStore::connect(&server.url(), "replicator", "outage")
        .await
        .unwrap()
        .with_retry_budget(Duration::from_secs(2));
    let _stopped = server.stop().await;
    let error = store.store(&checkpoint(1, None, false)).await.unwrap_err();
    eprintln!("outage -> {error}");
    assert!(error.is_transient(), "{error}");
    assert!(error.message().contains("\"outage\""), "{error}");
}
