//! `replicator run` against secure servers: TLS with a private CA named by
//! `tlsCaFile` in each connection string, and basic authentication. A workload
//! is copied; a wrong password and a user who may not read `$all` are start-up
//! errors naming the side and the cause, within a bound (never an endless
//! retry), and no password reaches the output. In-process servers only (made
//! secure here, see `replicator_testkit::security`).

use std::time::Duration;

use replicator_esdb::verify::{verify, VerifyOptions};
use replicator_testkit::security::{TestCertificates, User};
use replicator_testkit::{EsdbServer, ServerOptions};
use tempfile::TempDir;

use super::{assert_ok, command, reads, stderr, stdout, Workdir};

/// The password of every side's admin in these tests (distinctive, so a leak
/// into the output is found).
const ADMIN_PASSWORD: &str = "s3cret-Admin-pw";
const READER_PASSWORD: &str = "s3cret-Reader-pw";
/// How long a failing start may take: well above the replicator's own request
/// deadlines, far below "for ever".
const START_FAILURE_BOUND: Duration = Duration::from_secs(90);

/// One secure server, its CA file and the directory holding it.
struct SecureServer {
    server: EsdbServer,
    ca_file: std::path::PathBuf,
    _dir: TempDir,
}

impl SecureServer {
    async fn start() -> SecureServer {
        let certificates = TestCertificates::generate(&[]).expect("certificates");
        let dir = tempfile::tempdir().expect("temp dir");
        let ca_file = certificates.write_ca(dir.path()).expect("CA file");
        let server = EsdbServer::start_with(ServerOptions {
            tls: Some(certificates),
            users: Some(vec![
                User {
                    password: ADMIN_PASSWORD.to_owned(),
                    ..User::admin()
                },
                User::new("reader", READER_PASSWORD),
            ]),
            ..ServerOptions::default()
        })
        .await
        .expect("server");
        SecureServer {
            server,
            ca_file,
            _dir: dir,
        }
    }

    fn url(&self, user: &str, password: &str) -> String {
        self.server
            .connection_string_with(Some((user, password)), Some(&self.ca_file))
    }

    fn admin_client(&self) -> eventstore::Client {
        replicator_testkit::support::client(&self.url("admin", ADMIN_PASSWORD))
    }
}

fn workdir(source_url: &str, target_url: &str) -> Workdir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("config")).unwrap();
    let yaml = format!(
        "replicator:\n  reader:\n    connectionString: \"{source_url}\"\n  sink:\n    connectionString: \"{target_url}\"\n  runContinuously: false\n"
    );
    std::fs::write(dir.path().join("config/appsettings.yaml"), yaml).unwrap();
    Workdir { dir }
}

/// `replicator run`, failing the test if it has not ended within `bound`.
async fn run_within(w: &Workdir, bound: Duration) -> std::process::Output {
    let mut cmd = tokio::process::Command::from(command(w.dir.path()));
    cmd.arg("run").kill_on_drop(true);
    tokio::time::timeout(bound, cmd.output())
        .await
        .unwrap_or_else(|_| {
            panic!("`replicator run` still running after {bound:?}: it must give up")
        })
        .expect("run the binary")
}

#[track_caller]
fn assert_no_password(o: &std::process::Output) {
    for password in [ADMIN_PASSWORD, READER_PASSWORD, "wrong-pw"] {
        assert!(
            !stdout(o).contains(password) && !stderr(o).contains(password),
            "a password reached the output:\nstdout:\n{}\nstderr:\n{}",
            stdout(o),
            stderr(o)
        );
    }
}

#[track_caller]
fn assert_start_failure_naming(o: &std::process::Output, side: &str, cause: &[&str]) {
    assert!(
        !o.status.success(),
        "expected a failure\nstdout:\n{}",
        stdout(o)
    );
    let err = stderr(o).to_lowercase();
    assert!(err.contains(side), "stderr should name the {side}:\n{err}");
    assert!(
        cause.iter().any(|c| err.contains(c)),
        "stderr should name the cause (one of {cause:?}):\n{err}"
    );
    assert_no_password(o);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_copies_a_workload_over_tls_with_private_cas_and_credentials() {
    let source = SecureServer::start().await;
    let target = SecureServer::start().await;
    let source_client = source.admin_client();
    let target_client = target.admin_client();
    let spec = replicator_testkit::workload::WorkloadSpec::new(21, 300);
    replicator_testkit::workload::generate(&source_client, &spec)
        .await
        .expect("workload");

    let w = workdir(
        &source.url("admin", ADMIN_PASSWORD),
        &target.url("admin", ADMIN_PASSWORD),
    );
    let o = run_within(&w, Duration::from_secs(300)).await;
    assert_ok(&o);
    assert_no_password(&o);
    let report = verify(
        &reads(&source_client),
        &reads(&target_client),
        &VerifyOptions::default(),
    )
    .await
    .expect("verify");
    assert!(report.is_identical(), "{report}");
    assert!(report.source_events > 200, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_source_password_is_a_start_up_error_naming_the_source() {
    let source = SecureServer::start().await;
    let target = SecureServer::start().await;
    let w = workdir(
        &source.url("admin", "wrong-pw"),
        &target.url("admin", ADMIN_PASSWORD),
    );
    let o = run_within(&w, START_FAILURE_BOUND).await;
    assert_start_failure_naming(
        &o,
        "source",
        &["access denied", "credentials", "unauthenticated"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_target_password_is_a_start_up_error_naming_the_target() {
    let source = SecureServer::start().await;
    let target = SecureServer::start().await;
    source
        .admin_client()
        .append_to_stream(
            "orders-1",
            &Default::default(),
            eventstore::EventData::binary("E", "x".into()),
        )
        .await
        .expect("append");
    let w = workdir(
        &source.url("admin", ADMIN_PASSWORD),
        &target.url("admin", "wrong-pw"),
    );
    let o = run_within(&w, START_FAILURE_BOUND).await;
    assert_start_failure_naming(
        &o,
        "target",
        &["access denied", "credentials", "unauthenticated"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_user_who_may_not_read_all_is_a_start_up_error() {
    let source = SecureServer::start().await;
    let target = SecureServer::start().await;
    let w = workdir(
        &source.url("reader", READER_PASSWORD),
        &target.url("admin", ADMIN_PASSWORD),
    );
    let o = run_within(&w, START_FAILURE_BOUND).await;
    assert_start_failure_naming(&o, "source", &["access denied", "permission"]);
}
