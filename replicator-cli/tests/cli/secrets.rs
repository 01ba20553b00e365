//! No password or token of a setting reaches anything a user sees (issue 22):
//! every secret-bearing setting (the reader's, the sink's and the MongoDB
//! checkpoint store's connection strings, the HTTP transform's URL), with
//! passwords as plain text, percent-encoded, and holding `/`, `@` and `?`, is
//! fed through the log at `debug`, the start-up errors of bad or unreachable
//! settings, `/api/status`, `/metrics`, the status page (its HTML and the
//! DOM Chromium renders), and `verify --json` / `map-position --json`.
//!
//! In-process servers without users: they ignore the credentials, so a run
//! with them replicates.

use std::time::Duration;

use replicator_testkit::EsdbServer;

use crate::status::{chromium_dom, Running};
use crate::{command, run_async, stderr, stdout, Workdir};

/// The source's password, percent-encoded in its connection string; decoded,
/// it holds `/`, `@` and `?`.
const SOURCE_PASSWORD: &str = "s0urce%2Fp%40ss%3Fw0rd";
const SOURCE_PASSWORD_DECODED: &str = "s0urce/p@ss?w0rd";
const TARGET_PASSWORD: &str = "t4rget-Pass-w0rd";
/// The HTTP transform's password and query token.
const HOOK_PASSWORD: &str = "h00k-Pass-w0rd";
const HOOK_TOKEN: &str = "qu3ry-T0ken-x";
/// The MongoDB store's password, percent-encoded.
const MONGO_PASSWORD: &str = "m0ngo%40p%2Fss%3Fw";
const MONGO_PASSWORD_DECODED: &str = "m0ngo@p/ss?w";
/// A password written with unescaped `/`, `@` and `?`: not a valid
/// connection string.
const RAW_PASSWORD: &str = "r4w/p@ss?w0rd";

const ALL: [&str; 9] = [
    SOURCE_PASSWORD,
    SOURCE_PASSWORD_DECODED,
    TARGET_PASSWORD,
    HOOK_PASSWORD,
    HOOK_TOKEN,
    MONGO_PASSWORD,
    MONGO_PASSWORD_DECODED,
    RAW_PASSWORD,
    // Parts of the raw one a half-right redaction would leave.
    "ss?w0rd",
];

/// `url` (an in-process server's, without credentials) with `user:password@`.
fn with_credentials(url: &str, user: &str, password: &str) -> String {
    assert!(!url.contains('@'), "{url}");
    url.replacen("://", &format!("://{user}:{password}@"), 1)
}

#[track_caller]
fn assert_no_secret(what: &str, text: &str) {
    for secret in ALL {
        assert!(!text.contains(secret), "{secret:?} reached {what}:\n{text}");
    }
}

fn workdir(source: &str, target: &str, extra: &str) -> Workdir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("config")).unwrap();
    let yaml = format!(
        "replicator:\n  reader:\n    connectionString: \"{source}\"\n  sink:\n    connectionString: \"{target}\"\n{extra}"
    );
    std::fs::write(dir.path().join("config/appsettings.yaml"), yaml).unwrap();
    Workdir { dir }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_log_the_status_server_or_the_json_outputs() {
    let source = EsdbServer::start().await.unwrap();
    let target = EsdbServer::start().await.unwrap();
    let client = eventstore::Client::new(source.connection_string().parse().unwrap()).unwrap();
    client
        .append_to_stream(
            "secrets-1",
            &eventstore::AppendToStreamOptions::default(),
            crate::status::counted(0..20),
        )
        .await
        .unwrap();
    let source_url = with_credentials(&source.connection_string(), "admin", SOURCE_PASSWORD);
    let target_url = with_credentials(&target.connection_string(), "writer", TARGET_PASSWORD);
    // Nothing listens there: every POST fails and the transform's error (with
    // the URL in it) shows in the status.
    let closed = crate::ClosedPort::new();
    let hook = format!(
        "http://hook:{HOOK_PASSWORD}@127.0.0.1:{}/t?token={HOOK_TOKEN}",
        closed.port
    );
    let w = workdir(
        &source_url,
        &target_url,
        &format!("  transform:\n    type: http\n    config: \"{hook}\"\n"),
    );

    let run = Running::start(&w, &[("RUST_LOG", "debug")]).await;
    let status = run
        .wait_status("the transform's failure in the status", 60, |s| {
            s.to_string().contains("POST ")
        })
        .await;
    let status = status.to_string();
    assert!(status.contains("hook:***@127.0.0.1"), "{status}");
    assert!(status.contains("admin:***@127.0.0.1"), "{status}");
    assert_no_secret("/api/status", &status);
    for path in ["/", "/metrics", "/health/ready", "/health/live"] {
        let (_, body) = run.get(path).await;
        assert_no_secret(path, &body);
    }
    let dom = chromium_dom(&run.url("/"), &w.path("chromium")).await;
    assert!(dom.contains("***"), "the page shows the settings:\n{dom}");
    assert_no_secret("the status page", &dom);
    let log = run.log();
    assert!(log.contains("DEBUG"), "the log is at debug:\n{log}");
    assert_no_secret("the log", &log);
    run.stop().await;
    assert_no_secret("the log", &run_log(&w));

    // The one-shot commands that connect with the same settings.
    let w = workdir(&source_url, &target_url, "");
    for args in [
        &["verify", "--until", "end", "--json"][..],
        &["map-position", "--json", "0/0"][..],
    ] {
        let o = run_async(&w, args).await;
        assert_no_secret(&format!("{args:?} (stdout)"), &stdout(&o));
        assert_no_secret(&format!("{args:?} (stderr)"), &stderr(&o));
    }
}

fn run_log(w: &Workdir) -> String {
    std::fs::read_to_string(w.path("run.log")).unwrap_or_default()
}

/// `replicator args` in `w` at `debug`, its output, killed after `bound` if
/// it has not ended (an unreachable setting may be retried for a while):
/// whatever it printed by then must hold no secret either.
async fn output_within(w: &Workdir, args: &[&str], bound: Duration) -> String {
    let out = w.path("out.log");
    let mut cmd = command(w.dir.path());
    cmd.args(args)
        .env("RUST_LOG", "debug")
        .stdout(std::fs::File::create(w.path("stdout.log")).unwrap())
        .stderr(std::fs::File::create(&out).unwrap());
    let mut child = tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let ended = tokio::time::timeout(bound, child.wait()).await.is_ok();
    if !ended {
        child.kill().await.unwrap();
    }
    format!(
        "{}{}",
        std::fs::read_to_string(w.path("stdout.log")).unwrap(),
        std::fs::read_to_string(out).unwrap()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_a_start_up_error() {
    let server = EsdbServer::start().await.unwrap();
    let good = with_credentials(&server.connection_string(), "admin", SOURCE_PASSWORD);
    let closed = crate::ClosedPort::new();
    let raw = format!(
        "esdb://admin:{RAW_PASSWORD}@127.0.0.1:{}?tls=false",
        closed.port
    );
    let unreachable = with_credentials(
        &format!("esdb://127.0.0.1:{}?tls=false", closed.port),
        "writer",
        TARGET_PASSWORD,
    );
    let mongo_host = std::env::var("MONGODB_URL")
        .ok()
        .and_then(|url| {
            let rest = url.split_once("://")?.1;
            let rest = rest.rsplit_once('@').map_or(rest, |(_, hosts)| hosts);
            Some(rest.split(['/', '?']).next()?.to_owned())
        })
        .unwrap_or_else(|| format!("127.0.0.1:{}", closed.port));
    let mongo = format!(
        "mongodb://ckpt:{MONGO_PASSWORD}@{mongo_host}/?serverSelectionTimeoutMS=1000&connectTimeoutMS=1000"
    );
    let hook = format!("ftp://hook:{HOOK_PASSWORD}@127.0.0.1/t?token={HOOK_TOKEN}");
    let cases = [
        (
            "an unparseable source",
            workdir(&raw, &good, "  runContinuously: false\n"),
        ),
        (
            "an unparseable target",
            workdir(&good, &raw, "  runContinuously: false\n"),
        ),
        (
            "an unreachable target",
            workdir(&good, &unreachable, "  runContinuously: false\n"),
        ),
        (
            "a MongoDB store refusing the credentials",
            workdir(
                &good,
                &good,
                &format!("  checkpoint:\n    type: mongo\n    path: \"{mongo}\"\n"),
            ),
        ),
        (
            "a transform URL that is not http",
            workdir(
                &good,
                &good,
                &format!("  transform:\n    type: http\n    config: \"{hook}\"\n"),
            ),
        ),
    ];
    let mut outputs = Vec::new();
    for (what, w) in &cases {
        for args in [&["run"][..], &["checkpoint", "show"][..]] {
            let output = output_within(w, args, Duration::from_secs(20)).await;
            assert_no_secret(&format!("{what}: {args:?}"), &output);
            outputs.push(output);
        }
    }
    // The start-up errors say what is wrong, with the credentials hidden.
    assert!(outputs[0].contains("admin:***@"), "{}", outputs[0]);
    assert!(
        outputs[8].contains("ftp://hook:***@127.0.0.1"),
        "{}",
        outputs[8]
    );
    assert!(outputs[7].contains("ckpt:***@"), "{}", outputs[7]);
}
