//! `checkpoint.type: stream` through the commands an operator runs: `show`,
//! `seed` (refused over a stored checkpoint, `--force` replaces it even
//! backwards), `delete`, and a run whose sink user may not write `$` streams,
//! stopped at start-up naming the stream, never the password.

use replicator_core::{Checkpoint, CheckpointStore as _, Position};
use replicator_esdb::StreamCheckpointStore;
use replicator_testkit::security::User;
use replicator_testkit::{EsdbServer, ServerOptions};

use crate::{assert_fails_naming, assert_ok, run_async, stdout, write_chaser, Workdir};

/// A working directory replicating from `source` to `target` (and its
/// checkpoint).
fn workdir(source: &str, target: &str) -> Workdir {
    let w = Workdir::with_config("");
    let yaml = format!(
        "replicator:\n  reader:\n    connectionString: \"{source}\"\n  sink:\n    connectionString: \"{target}\"\n  runContinuously: false\n  restartOnFailure: false\n  checkpoint:\n    type: stream\n    instanceId: ops\n"
    );
    std::fs::write(w.path("config/appsettings.yaml"), yaml).unwrap();
    w
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_commands_work_on_the_stream_in_the_target() {
    let server = EsdbServer::start().await.unwrap();
    let w = workdir(&server.connection_string(), &server.connection_string());
    let o = run_async(&w, &["checkpoint", "show"]).await;
    assert_ok(&o);
    let out = stdout(&o);
    assert!(
        out.contains("stream $replicator-checkpoint-ops on the target"),
        "{out}"
    );
    assert!(out.contains("no checkpoint stored"), "{out}");

    StreamCheckpointStore::new(server.connection_string(), "ops")
        .unwrap()
        .store(&Checkpoint::processed(Position::at(9_000), None))
        .await
        .unwrap();
    write_chaser(&w.path("chaser.chk"), 500);
    let o = run_async(&w, &["checkpoint", "seed", "--chaser", "chaser.chk"]).await;
    assert_fails_naming(&o, &["already stored", "C:9000/P:9000"]);
    let o = run_async(
        &w,
        &["checkpoint", "seed", "--chaser", "chaser.chk", "--force"],
    )
    .await;
    assert_ok(&o);
    let out = stdout(&run_async(&w, &["checkpoint", "show"]).await);
    assert!(out.contains("source:   C:500/P:500"), "{out}");
    assert!(out.contains("seed:     yes"), "{out}");

    let o = run_async(&w, &["checkpoint", "delete"]).await;
    assert_ok(&o);
    assert!(stdout(&o).contains("C:500/P:500"), "{}", stdout(&o));
    let out = stdout(&run_async(&w, &["checkpoint", "show"]).await);
    assert!(out.contains("no checkpoint stored"), "{out}");
    assert!(!w.path("checkpoint").exists(), "no file is written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_user_who_may_not_write_the_checkpoint_stream_stops_the_run_at_start_up() {
    let server = EsdbServer::start_with(ServerOptions {
        users: Some(vec![User::admin(), User::new("ops", "pa55-w0rd")]),
        ..ServerOptions::default()
    })
    .await
    .unwrap();
    let url = format!("esdb://ops:pa55-w0rd@127.0.0.1:{}?tls=false", server.port());
    let admin = format!(
        "esdb://admin:changeit@127.0.0.1:{}?tls=false",
        server.port()
    );
    let w = workdir(&admin, &url);
    let o = run_async(&w, &["run"]).await;
    assert_fails_naming(&o, &["$replicator-checkpoint-ops", "ops:***@127.0.0.1"]);
    let all = format!("{}{}", stdout(&o), String::from_utf8_lossy(&o.stderr));
    assert!(!all.contains("pa55-w0rd"), "{all}");
    println!("{}", String::from_utf8_lossy(&o.stderr));
}
