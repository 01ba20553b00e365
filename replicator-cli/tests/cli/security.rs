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

use super::{assert_ok, command, reads, run_async, stderr, stdout, Workdir};

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

/// Bearer tokens (`reader.tokenFile`, `sink.token`) on a TLS source and
/// target that accept them: the copy runs with no credentials in either
/// connection string. A target token refused from the start is a start-up
/// error naming the target, the refusal and the token's file, within a
/// bound; no token reaches the output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_authenticate_each_side_and_a_refused_one_is_a_start_up_error() {
    use replicator_testkit::security::BearerTokens;

    const SOURCE_TOKEN: &str = "s0urce-t0ken-7c1e";
    const TARGET_TOKEN: &str = "target-t0ken-9a2f";
    let secure = |tokens: &BearerTokens| {
        let certificates = TestCertificates::generate(&[]).expect("certificates");
        let dir = tempfile::tempdir().expect("temp dir");
        let ca_file = certificates.write_ca(dir.path()).expect("CA file");
        let options = ServerOptions {
            tls: Some(certificates),
            users: Some(vec![User {
                password: ADMIN_PASSWORD.to_owned(),
                ..User::admin()
            }]),
            bearer_tokens: Some(tokens.clone()),
            ..ServerOptions::default()
        };
        (options, ca_file, dir)
    };
    let (source_tokens, target_tokens) = (BearerTokens::new(), BearerTokens::new());
    source_tokens.accept(SOURCE_TOKEN, User::admin());
    let (options, source_ca, _source_dir) = secure(&source_tokens);
    let source = EsdbServer::start_with(options).await.expect("source");
    let (options, target_ca, _target_dir) = secure(&target_tokens);
    let target = EsdbServer::start_with(options).await.expect("target");
    let source_url = source.connection_string_with(None, Some(&source_ca));
    let target_url = target.connection_string_with(None, Some(&target_ca));
    let admin = replicator_testkit::support::client(
        &source.connection_string_with(Some(("admin", ADMIN_PASSWORD)), Some(&source_ca)),
    );
    let spec = replicator_testkit::workload::WorkloadSpec::new(5, 100);
    replicator_testkit::workload::generate(&admin, &spec)
        .await
        .expect("workload");

    let workdir = |target_token: &str| {
        let w = workdir(&source_url, &target_url);
        let token_file = w.dir.path().join("source-token");
        std::fs::write(&token_file, SOURCE_TOKEN).unwrap();
        let yaml = format!(
            "replicator:\n  reader:\n    connectionString: \"{source_url}\"\n    tokenFile: \"{}\"\n  sink:\n    connectionString: \"{target_url}\"\n    token: \"{target_token}\"\n  runContinuously: false\n",
            token_file.display()
        );
        std::fs::write(w.dir.path().join("config/appsettings.yaml"), yaml).unwrap();
        w
    };
    let no_token = |o: &std::process::Output| {
        for token in [SOURCE_TOKEN, TARGET_TOKEN] {
            assert!(
                !stdout(o).contains(token) && !stderr(o).contains(token),
                "a token reached the output:\nstdout:\n{}\nstderr:\n{}",
                stdout(o),
                stderr(o)
            );
        }
    };

    // Not (yet) accepted by the target: a start-up error, no endless retry.
    let o = run_within(&workdir(TARGET_TOKEN), START_FAILURE_BOUND).await;
    assert_start_failure_naming(&o, "target", &["bearer token was refused"]);
    no_token(&o);

    target_tokens.accept(TARGET_TOKEN, User::admin());
    let o = run_within(&workdir(TARGET_TOKEN), Duration::from_secs(300)).await;
    assert_ok(&o);
    no_token(&o);
    let source_reads = replicator_esdb::cluster::client(&source_url.as_str().into())
        .unwrap()
        .with_bearer_token(Some(
            replicator_esdb::cluster::BearerToken::new(SOURCE_TOKEN).unwrap(),
        ));
    let target_reads = replicator_esdb::cluster::client(&target_url.as_str().into())
        .unwrap()
        .with_bearer_token(Some(
            replicator_esdb::cluster::BearerToken::new(TARGET_TOKEN).unwrap(),
        ));
    let report = verify(&source_reads, &target_reads, &VerifyOptions::default())
        .await
        .expect("verify");
    assert!(report.is_identical(), "{report}");
    assert!(report.source_events > 50, "{report:?}");

    // The cutover commands carry the tokens too (the connection strings
    // hold no credentials): each side's groups and projections are listed…
    let w = workdir(TARGET_TOKEN);
    for command in ["subscriptions", "projections"] {
        let o = run_async(&w, &[command]).await;
        assert_ok(&o);
        no_token(&o);
    }
    // …and a refused token is an error naming the side, not an empty list.
    target_tokens.revoke(TARGET_TOKEN);
    for command in ["subscriptions", "projections"] {
        let o = run_async(&w, &[command]).await;
        assert_eq!(o.status.code(), Some(2), "{command}: {}", stderr(&o));
        assert!(stderr(&o).contains("target"), "{command}: {}", stderr(&o));
        no_token(&o);
    }
}
