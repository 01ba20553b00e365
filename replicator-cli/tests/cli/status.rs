//! The status server of `replicator run` (`replicator.http.listen`), as an
//! operator and Prometheus use it: a run whose numbers are known shows them
//! in `/api/status`, `/metrics` (parsed by the official Python
//! `prometheus_client` parser), the health checks and the status page
//! (rendered in headless Chromium); a stopped target turns readiness to 503
//! naming it and the page red, and its return turns both back.
//!
//! The parser and Chromium are installed by `scripts/test`; without them
//! these tests fail saying what is missing, they never skip.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use replicator_testkit::support::wait_for;
use serde_json::Value;
use tokio::process::Child;
use tokio::time::Instant;

use crate::{command, run_async, stderr, Clusters, Workdir};

/// User events written to the source: the numbers the status must show.
const EVENTS: u64 = 1_200;
/// Streams they are spread over.
const STREAMS: u64 = 12;

/// A `replicator run` in the background, its log, and its status server.
pub(crate) struct Running {
    child: Child,
    log: PathBuf,
    url: String,
}

impl Running {
    /// Starts `replicator run` in `w` with `env` and waits for its status
    /// server's address in the log.
    pub(crate) async fn start(w: &Workdir, env: &[(&str, &str)]) -> Running {
        let log = w.path("run.log");
        let mut cmd = command(w.dir.path());
        cmd.arg("run")
            .env("RUST_LOG", "info,eventstore=off")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = tokio::process::Command::from(cmd)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut running = Running {
            child,
            log,
            url: String::new(),
        };
        running.url = wait_for(
            "the status server's address in the log",
            Duration::from_secs(30),
            || {
                let log = running.log();
                async move {
                    let start = log.find("listening on http://")? + "listening on ".len();
                    let url: String = log[start..]
                        .chars()
                        .take_while(|c| !c.is_whitespace())
                        .collect();
                    Some(url)
                }
            },
        )
        .await;
        running
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// `GET path`: status code and body.
    pub(crate) async fn get(&self, path: &str) -> (u16, String) {
        let response = http()
            .get(self.url(path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}\n{}", self.log()));
        let code = response.status().as_u16();
        (code, response.text().await.unwrap())
    }

    pub(crate) async fn json(&self, path: &str) -> (u16, Value) {
        let (code, body) = self.get(path).await;
        let value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("GET {path} is not JSON ({e}): {body}"));
        (code, value)
    }

    pub(crate) async fn status(&self) -> Value {
        let (code, status) = self.json("/api/status").await;
        assert_eq!(code, 200, "{status:#}");
        status
    }

    /// Polls `/api/status` until `done` holds, failing after `secs`.
    pub(crate) async fn wait_status(
        &self,
        what: &str,
        secs: u64,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let status = self.status().await;
            if done(&status) {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {secs}s; last status:\n{status:#}\nlog:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Kills it with SIGKILL, as a crash or an OOM kill would, and waits
    /// for it to be gone.
    pub(crate) async fn kill(mut self) {
        self.child.kill().await.unwrap();
    }

    /// Sends SIGTERM and expects a clean exit.
    pub(crate) async fn stop(mut self) {
        let pid = self.child.id().unwrap().to_string();
        assert!(std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        let status = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .expect("replicator run did not stop within 60s of SIGTERM")
            .unwrap();
        assert!(status.success(), "exit {status:?}\n{}", self.log());
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Binary events numbered by `range`, each with a new id.
pub(crate) fn counted(range: std::ops::Range<u64>) -> Vec<eventstore::EventData> {
    range
        .map(|i| {
            eventstore::EventData::binary("Counted", i.to_le_bytes().to_vec().into())
                .id(uuid::Uuid::new_v4())
        })
        .collect()
}

/// Writes [`EVENTS`] user events over [`STREAMS`] streams.
async fn write_events(client: &eventstore::Client) {
    for stream in 0..STREAMS {
        client
            .append_to_stream(
                format!("status-{stream}"),
                &Default::default(),
                counted(0..EVENTS / STREAMS),
            )
            .await
            .unwrap();
    }
}

pub(crate) fn commit(v: &Value) -> Option<u64> {
    v["commit"].as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_server_shows_a_known_run_and_a_failing_target() {
    let c = Clusters::start().await;
    write_events(&c.source_client).await;
    let end = c.source_end_position().await;
    let w = c.workdir(
        "  checkpoint:\n    checkpointAfter: 100\n  http:\n    unhealthyAfterSeconds: 1\n",
    );
    let run = Running::start(&w, &[]).await;

    // /api/status: every number of a finished catch-up.
    let s = run
        .wait_status("caught up with every event written", 60, |s| {
            s["events"]["written"] == EVENTS
                && s["caught_up"] == true
                && commit(&s["checkpoint"]["position"]) == Some(end.commit)
        })
        .await;
    assert_eq!(s["state"], "running", "{s:#}");
    assert_eq!(s["ready"], true, "{s:#}");
    assert_eq!(s["live"], true, "{s:#}");
    assert_eq!(s["percent"], 100.0, "{s:#}");
    assert_eq!(s["eta_seconds"], 0.0, "{s:#}");
    assert_eq!(s["lag_seconds"], 0.0, "{s:#}");
    assert_eq!(s["gap_bytes"], 0, "{s:#}");
    assert_eq!(commit(&s["processed"]), Some(end.commit), "{s:#}");
    assert_eq!(commit(&s["source_head"]), Some(end.commit), "{s:#}");
    assert_eq!(commit(&s["read"]), Some(end.commit), "{s:#}");
    assert!(commit(&s["target"]).is_some(), "{s:#}");
    let skipped = s["events"]["skipped"].as_u64().unwrap();
    assert_eq!(s["events"]["read"], EVENTS + skipped, "{s:#}");
    let by_reason: u64 = s["events"]["skipped_by_reason"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(by_reason, skipped, "{s:#}");
    assert_eq!(s["in_flight"], 0, "{s:#}");
    assert_eq!(s["checkpoint"]["unstored"], 0, "{s:#}");
    assert!(
        s["checkpoint"]["store"]
            .as_str()
            .unwrap()
            .starts_with("file "),
        "{s:#}"
    );
    assert!(s["checkpoint"]["age_seconds"].as_f64().is_some(), "{s:#}");
    for name in ["source", "target", "checkpoint", "transform"] {
        let h = &s["components"][name];
        assert_eq!(h["healthy"], true, "{name}: {s:#}");
        assert!(h["since"].as_str().unwrap().ends_with('Z'), "{name}: {s:#}");
    }
    // partitionCount 4 is configured, but source order (the default) has
    // one ordered writer, and says so.
    assert_eq!(s["config"]["order"], "source", "{s:#}");
    assert_eq!(s["config"]["partitions"], 1, "{s:#}");
    assert_eq!(s["config"]["checkpoint_after"], 100, "{s:#}");
    assert_eq!(s["config"]["unhealthy_after_seconds"], 1, "{s:#}");

    // The health checks and the C# tool's ping.
    assert_eq!(run.get("/ping").await, (200, "Pong".to_owned()));
    for path in ["/health/ready", "/health", "/health/live"] {
        let (code, body) = run.json(path).await;
        assert_eq!(code, 200, "{path}: {body:#}");
        assert_eq!(body["status"], "ok", "{path}: {body:#}");
        assert_eq!(
            body["components"]["target"]["healthy"], true,
            "{path}: {body:#}"
        );
    }

    // /metrics, read by Prometheus' own parser.
    let response = http().get(run.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let metrics = Metrics::parse(&response.text().await.unwrap());
    assert_eq!(
        metrics.value("replicator_records_written_total", &[]),
        EVENTS as f64
    );
    assert_eq!(
        metrics.value("replicator_records_read_total", &[]),
        (EVENTS + skipped) as f64
    );
    let skipped_total: f64 = metrics
        .samples("replicator_records_skipped_total")
        .iter()
        .map(|s| s.value)
        .sum();
    assert_eq!(skipped_total, skipped as f64);
    assert_eq!(metrics.family_type("replicator_records_written"), "counter");
    assert_eq!(
        metrics.family_type("replicator_append_latency_seconds"),
        "histogram"
    );
    assert_eq!(metrics.value("processed_position", &[]), end.commit as f64);
    assert_eq!(metrics.value("read_position", &[]), end.commit as f64);
    assert_eq!(metrics.value("last_known_position", &[]), end.commit as f64);
    assert!(metrics.value("sink_position", &[]) > 0.0);
    assert_eq!(metrics.value("prepare_size", &[]), 0.0);
    assert_eq!(metrics.value("replicator_progress_percent", &[]), 100.0);
    assert_eq!(metrics.value("replicator_eta_seconds", &[]), 0.0);
    assert_eq!(metrics.value("replicator_gap_bytes", &[]), 0.0);
    assert_eq!(metrics.value("replicator_caught_up", &[]), 1.0);
    assert_eq!(metrics.value("replicator_ready", &[]), 1.0);
    assert_eq!(
        metrics.value("replicator_state", &[("state", "running")]),
        1.0
    );
    for name in ["source", "target", "checkpoint", "transform"] {
        assert_eq!(
            metrics.value("replicator_component_healthy", &[("component", name)]),
            1.0
        );
    }
    let batches = metrics.value("replicator_append_batch_size_count", &[]);
    assert!(batches >= 1.0, "{batches}");
    assert_eq!(
        metrics.value("replicator_append_batch_size_bucket", &[("le", "+Inf")]),
        batches
    );
    assert_eq!(
        metrics.value("replicator_append_batch_size_sum", &[]),
        EVENTS as f64
    );
    assert_eq!(
        metrics.value("replicator_append_latency_seconds_count", &[]),
        batches
    );
    assert!(metrics.value("replicator_checkpoints_stored_total", &[]) >= 1.0);

    // The page, in a real browser: the run's numbers.
    let dom = chromium_dom(&run.url("/"), &w.path("chromium")).await;
    assert!(
        dom.contains(&format!("id=\"written\" data-value=\"{EVENTS}\"")),
        "the page should show {EVENTS} written:\n{dom}"
    );
    assert!(dom.contains(">100%<"), "the page should show 100%:\n{dom}");
    assert!(dom.contains(">caught up<"), "{dom}");
    assert!(!tag_of(&dom, "comp-target").contains("bad"), "{dom}");
    chromium_screenshot(
        &run.url("/"),
        &w.path("chromium"),
        "status-page-running.png",
    )
    .await;

    // `replicator status` prints it.
    let o = run_async(&w, &["status", "--url", &run.url("")]).await;
    let out = crate::stdout(&o);
    assert!(o.status.success(), "{out}\n{}", stderr(&o));
    assert!(out.contains("running, ready, caught up"), "{out}");
    assert!(out.contains(&format!("written {EVENTS}")), "{out}");

    // The target goes away while there is something to write.
    c.target.server().stop().await;
    c.source_client
        .append_to_stream(
            "status-late",
            &Default::default(),
            eventstore::EventData::binary("Late", vec![1].into()),
        )
        .await
        .unwrap();
    let (code, body) = wait_for(
        "readiness 503 with the target stopped",
        Duration::from_secs(60),
        || async {
            let (code, body) = run.json("/health/ready").await;
            (code == 503).then_some((code, body))
        },
    )
    .await;
    assert_eq!(code, 503);
    assert_eq!(body["status"], "unhealthy", "{body:#}");
    assert_eq!(body["components"]["target"]["healthy"], false, "{body:#}");
    assert_eq!(body["components"]["source"]["healthy"], true, "{body:#}");
    let problems = body["problems"].to_string();
    assert!(problems.contains("target failing"), "{body:#}");
    let error = body["components"]["target"]["error"]
        .as_str()
        .expect("the target's last error")
        .to_owned();
    let (code, live) = run.json("/health/live").await;
    assert_eq!(
        code, 200,
        "an outage of the target is no reason to restart: {live:#}"
    );
    let (code, _) = run.json("/health").await;
    assert_eq!(code, 503);
    let metrics = Metrics::parse(&run.get("/metrics").await.1);
    assert_eq!(
        metrics.value("replicator_component_healthy", &[("component", "target")]),
        0.0
    );
    assert!(
        metrics.value(
            "replicator_component_failures_total",
            &[("component", "target")]
        ) >= 1.0
    );
    assert_eq!(metrics.value("replicator_ready", &[]), 0.0);

    let dom = chromium_dom(&run.url("/"), &w.path("chromium")).await;
    assert!(
        tag_of(&dom, "comp-target").contains("bad"),
        "the target should be shown failing:\n{dom}"
    );
    let shown = component_error(&dom, "comp-target");
    assert_eq!(shown, error, "the page should show the target's last error");
    assert!(!tag_of(&dom, "problems").contains("hidden"), "{dom}");
    chromium_screenshot(
        &run.url("/"),
        &w.path("chromium"),
        "status-page-failing.png",
    )
    .await;

    let o = run_async(&w, &["status", "--url", &run.url("")]).await;
    assert_eq!(o.status.code(), Some(2), "not ready: exit code 2");
    assert!(
        crate::stdout(&o).contains("target:     FAILING"),
        "{}",
        crate::stdout(&o)
    );
    // Not ready, but live: a container HEALTHCHECK (`--live`) stays green
    // while the replicator waits for its peer.
    let o = run_async(&w, &["status", "--live", "--url", &run.url("")]).await;
    assert!(o.status.success(), "live: exit code 0, {}", stderr(&o));

    // Back: ready again, and the late event arrives.
    c.target.server().restart().await.unwrap();
    run.wait_status("recovered with the late event written", 90, |s| {
        s["ready"] == true && s["events"]["written"] == EVENTS + 1 && s["caught_up"] == true
    })
    .await;
    let (code, body) = run.json("/health/ready").await;
    assert_eq!(code, 200, "{body:#}");
    assert_eq!(body["components"]["target"]["healthy"], true, "{body:#}");
    run.stop().await;
    let report = c.compare().await;
    assert!(report.is_identical(), "{report}");
}

#[test]
fn a_listen_address_in_use_is_a_start_up_error_naming_the_key_and_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let w = Workdir::with_config("");
    let o = w.run(&["run"], &[("REPLICATOR_HTTP_LISTEN", &address)]);
    crate::assert_fails_naming(&o, &["replicator.http.listen", &address]);
    // Before anything else: no checkpoint store was touched.
    assert!(!w.path("checkpoint").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_listen_address_runs_without_the_status_server() {
    let c = Clusters::start().await;
    write_events(&c.source_client).await;
    let w = c.workdir("  runContinuously: false\n  http:\n    listen: \"\"\n");
    let mut cmd = command(w.dir.path());
    cmd.arg("run").env("RUST_LOG", "info,eventstore=off");
    // The file's empty string, not the tests' default address.
    cmd.env_remove("REPLICATOR_HTTP_LISTEN");
    let o = tokio::process::Command::from(cmd).output().await.unwrap();
    let log = stderr(&o);
    assert!(o.status.success(), "{log}");
    assert!(!log.contains("Status server listening"), "{log}");
    assert!(c.compare().await.is_identical());
}

/// One sample as the parser read it.
#[derive(Debug, serde::Deserialize)]
struct Sample {
    name: String,
    labels: std::collections::BTreeMap<String, String>,
    value: f64,
}

/// One metric family as the parser read it.
#[derive(Debug, serde::Deserialize)]
struct Family {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    samples: Vec<Sample>,
}

/// A `/metrics` text as Prometheus' official Python parser reads it.
struct Metrics(Vec<Family>);

/// Reads the text on stdin with `prometheus_client`'s parser and prints its
/// families as JSON; any malformed line raises.
const PARSER: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
families = []
for f in text_string_to_metric_families(sys.stdin.read()):
    families.append({"name": f.name, "type": f.type, "samples": [
        {"name": s.name, "labels": s.labels, "value": s.value} for s in f.samples]})
json.dump(families, sys.stdout)
"#;

impl Metrics {
    fn parse(text: &str) -> Metrics {
        use std::io::Write as _;
        let python = parser_python();
        let mut child = std::process::Command::new(&python)
            .args(["-c", PARSER])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let o = child.wait_with_output().unwrap();
        assert!(
            o.status.success(),
            "the Prometheus parser rejected /metrics: {}\n{text}",
            String::from_utf8_lossy(&o.stderr)
        );
        let families: Vec<Family> = serde_json::from_slice(&o.stdout).unwrap();
        assert!(!families.is_empty(), "no metric families in:\n{text}");
        Metrics(families)
    }

    fn samples(&self, name: &str) -> Vec<&Sample> {
        self.0
            .iter()
            .flat_map(|f| &f.samples)
            .filter(|s| s.name == name)
            .collect()
    }

    /// The value of the one sample `name` with these labels (and no others).
    #[track_caller]
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<&Sample> = self
            .samples(name)
            .into_iter()
            .filter(|s| {
                s.labels.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect();
        assert_eq!(found.len(), 1, "{name} {labels:?}: {found:?}");
        found[0].value
    }

    #[track_caller]
    fn family_type(&self, name: &str) -> &str {
        &self
            .0
            .iter()
            .find(|f| f.name == name)
            .unwrap_or_else(|| panic!("no family {name}"))
            .kind
    }
}

/// A python with `prometheus_client`: `PROMETHEUS_PARSER_PYTHON` (set by
/// `scripts/test`), else the environment `scripts/test` makes, else
/// `python3`. Fails when none can import it.
fn parser_python() -> PathBuf {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/secantus/venv/bin/python");
    let candidates: Vec<PathBuf> = match std::env::var_os("PROMETHEUS_PARSER_PYTHON") {
        Some(p) => vec![p.into()],
        None => vec![venv, "python3".into()],
    };
    for python in &candidates {
        let ok = std::process::Command::new(python)
            .args(["-c", "import prometheus_client.parser"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return python.clone();
        }
    }
    panic!(
        "no python with prometheus_client among {candidates:?}: run scripts/test (it installs \
         it), or `pip install prometheus-client` and set PROMETHEUS_PARSER_PYTHON"
    );
}

/// The Chromium binary; fails when there is none.
fn chromium() -> PathBuf {
    for candidate in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if Path::new(candidate).exists() {
            return candidate.into();
        }
    }
    panic!("no Chromium at /usr/bin/chromium: run scripts/test (it installs the chromium package)");
}

/// Headless Chromium on `url`, with `args` added.
async fn run_chromium(url: &str, profile: &Path, args: &[&str]) -> std::process::Output {
    let mut cmd = tokio::process::Command::new(chromium());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--no-first-run",
        "--disable-component-update",
        "--disable-sync",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(args)
    .arg(url)
    .kill_on_drop(true);
    let o = tokio::time::timeout(Duration::from_secs(90), cmd.output())
        .await
        .expect("Chromium did not finish within 90s")
        .unwrap();
    assert!(
        o.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// The page's DOM after it polled `/api/status` a few times.
pub(crate) async fn chromium_dom(url: &str, profile: &Path) -> String {
    let o = run_chromium(url, profile, &["--virtual-time-budget=4000", "--dump-dom"]).await;
    String::from_utf8(o.stdout).unwrap()
}

/// A screenshot of the page, checked to be a real image, and kept in
/// `STATUS_PAGE_SCREENSHOTS` (a directory) when that is set.
async fn chromium_screenshot(url: &str, profile: &Path, name: &str) {
    let path = profile.with_file_name(name);
    run_chromium(
        url,
        profile,
        &[
            "--virtual-time-budget=4000",
            "--window-size=1280,1500",
            "--hide-scrollbars",
            &format!("--screenshot={}", path.display()),
        ],
    )
    .await;
    let png = std::fs::read(&path).expect("no screenshot written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    if let Some(dir) = std::env::var_os("STATUS_PAGE_SCREENSHOTS") {
        std::fs::copy(&path, Path::new(&dir).join(name)).unwrap();
    }
}

/// The opening tag of the element with `id`.
#[track_caller]
fn tag_of<'a>(dom: &'a str, id: &str) -> &'a str {
    let at = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in:\n{dom}"));
    let start = dom[..at].rfind('<').unwrap();
    let end = at + dom[at..].find('>').unwrap();
    &dom[start..=end]
}

/// The text of the `.error` line of the component card `id`.
fn component_error(dom: &str, id: &str) -> String {
    let card = &dom[dom.find(&format!("id=\"{id}\"")).unwrap()..];
    let open = "<div class=\"error\">";
    let start = card.find(open).unwrap() + open.len();
    let end = start + card[start..].find("</div>").unwrap();
    card[start..end]
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}
