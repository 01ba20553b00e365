//! What `deploy/` and the `Dockerfile` ship, held against the binary: the
//! Kubernetes configuration runs, the probes' paths answer on the port the
//! image exposes and the manifests probe, the checkpoint lands on the volume,
//! and every metric the Grafana dashboard queries is one `/metrics` exports.
//!
//! The schemas of the manifests are checked by `scripts/check-deploy`, the
//! image's build steps by `scripts/build-image` (both run by `scripts/test`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use replicator_testkit::support::wait_for;
use serde_json::Value;

use crate::status::Running;
use crate::{assert_ok, command, stdout, Workdir};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn yaml(path: &str) -> Value {
    serde_saphyr::from_str(&read(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The StatefulSet's pod template and its one container.
struct Manifests {
    statefulset: Value,
    /// `deploy/kubernetes/appsettings.yaml`, the ConfigMap's file.
    config: Value,
}

impl Manifests {
    fn load() -> Self {
        Manifests {
            statefulset: yaml("deploy/kubernetes/statefulset.yaml"),
            config: yaml("deploy/kubernetes/appsettings.yaml"),
        }
    }

    fn pod(&self) -> &Value {
        &self.statefulset["spec"]["template"]["spec"]
    }

    fn container(&self) -> &Value {
        let containers = self.pod()["containers"].as_array().expect("containers");
        assert_eq!(containers.len(), 1, "one container");
        &containers[0]
    }

    /// The container's environment: plain values, and `secret:NAME/KEY` for
    /// values from a Secret.
    fn env(&self) -> BTreeMap<String, String> {
        let env = self.container()["env"].as_array().expect("env");
        env.iter()
            .map(|e| {
                let name = e["name"].as_str().unwrap().to_owned();
                let value = match (&e["value"], &e["valueFrom"]["secretKeyRef"]) {
                    (Value::String(v), _) => v.clone(),
                    (_, Value::Object(s)) => {
                        format!(
                            "secret:{}/{}",
                            s["name"].as_str().unwrap(),
                            s["key"].as_str().unwrap()
                        )
                    }
                    _ => panic!("env {name}: neither a value nor a Secret key: {e}"),
                };
                (name, value)
            })
            .collect()
    }

    /// The container port a probe or the PodMonitor names (or gives).
    fn port(&self, port: &Value) -> u64 {
        if let Some(n) = port.as_u64() {
            return n;
        }
        let name = port.as_str().expect("a port name or number");
        self.container()["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no container port named {name}"))["containerPort"]
            .as_u64()
            .unwrap()
    }

    /// `(path, port)` of the liveness or readiness probe.
    fn probe(&self, which: &str) -> (String, u64) {
        let get = &self.container()[which]["httpGet"];
        let path = get["path"]
            .as_str()
            .unwrap_or_else(|| panic!("{which}: no httpGet path"));
        (path.to_owned(), self.port(&get["port"]))
    }

    /// The port of the configured `replicator.http.listen`.
    fn listen_port(&self) -> u64 {
        let listen = self.config["replicator"]["http"]["listen"]
            .as_str()
            .expect("replicator.http.listen in the ConfigMap");
        listen.rsplit(':').next().unwrap().parse().unwrap()
    }
}

/// The Dockerfile's instructions, as (instruction, rest).
fn dockerfile() -> Vec<(String, String)> {
    let text = read("Dockerfile").replace("\\\n", " ");
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (word, rest) = l.split_once(char::is_whitespace).unwrap_or((l, ""));
            (word.to_ascii_uppercase(), rest.trim().to_owned())
        })
        .collect()
}

/// The instructions of the Dockerfile's final stage.
fn dockerfile_runtime() -> Vec<(String, String)> {
    let lines = dockerfile();
    let last_from = lines.iter().rposition(|(w, _)| w == "FROM").expect("FROM");
    lines[last_from..].to_vec()
}

#[test]
fn the_dockerfile_builds_only_through_the_script_ci_runs() {
    // scripts/test runs scripts/build-image (debug): a step of the image's
    // build that is not in that script would go untested.
    let lines = dockerfile();
    assert_eq!(
        instruction(&lines, "RUN"),
        ["scripts/build-image --release --out /out"],
        "every RUN of the Dockerfile must be scripts/build-image"
    );
    // What the runtime stage takes from the build stage is what the script
    // lays out under --out.
    let script = read("scripts/build-image");
    for copy in instruction(&lines, "COPY") {
        let Some(from_build) = copy.strip_prefix("--from=build ") else {
            continue;
        };
        let source = from_build
            .split_whitespace()
            .find(|w| !w.starts_with("--"))
            .expect("a COPY source");
        let laid_out = source.strip_prefix("/out/").expect("COPY from /out");
        let dir = laid_out.trim_end_matches('/');
        assert!(
            script.contains(&format!("$out/{dir}")),
            "the Dockerfile copies {source}, which scripts/build-image does not lay out"
        );
    }
    assert!(
        script.contains("--no-default-features"),
        "the image's binary must be built without the demo feature"
    );
}

fn instruction<'a>(lines: &'a [(String, String)], word: &str) -> Vec<&'a str> {
    lines
        .iter()
        .filter(|(w, _)| w == word)
        .map(|(_, rest)| rest.as_str())
        .collect()
}

#[test]
fn image_and_manifests_agree_on_port_user_and_checkpoint_volume() {
    let m = Manifests::load();
    let image = dockerfile_runtime();

    // One port everywhere: what the image exposes, what the configuration
    // listens on, what the probes and Prometheus use (the C# image listened
    // on another port than its chart probed: its PR #255).
    let expose: Vec<u64> = instruction(&image, "EXPOSE")
        .iter()
        .map(|p| p.trim_end_matches("/tcp").parse().unwrap())
        .collect();
    assert_eq!(expose, [5000], "EXPOSE");
    assert_eq!(m.listen_port(), 5000, "http.listen in the ConfigMap");
    assert_eq!(m.probe("livenessProbe"), ("/health/live".into(), 5000));
    assert_eq!(m.probe("readinessProbe"), ("/health/ready".into(), 5000));
    let annotations = &m.statefulset["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], "5000");
    assert_eq!(annotations["prometheus.io/path"], "/metrics");
    let healthcheck = instruction(&image, "HEALTHCHECK").join(" ");
    assert!(
        healthcheck.contains(r#""status", "--live", "--url", "http://127.0.0.1:5000""#),
        "HEALTHCHECK does not ask the image's port: {healthcheck}"
    );
    let podmonitor = yaml("deploy/kubernetes/podmonitor.yaml");
    for endpoint in podmonitor["spec"]["podMetricsEndpoints"]
        .as_array()
        .unwrap()
    {
        assert_eq!(m.port(&endpoint["port"]), 5000, "PodMonitor port");
    }

    // The checkpoint is on the persistent volume, in the image and in the
    // StatefulSet (the C# chart's was not: its issue #104).
    let env = m.env();
    let checkpoint = &env["REPLICATOR_CHECKPOINT_PATH"];
    let mounts = m.container()["volumeMounts"].as_array().unwrap();
    let mount = mounts
        .iter()
        .find(|v| checkpoint.starts_with(&format!("{}/", v["mountPath"].as_str().unwrap())))
        .unwrap_or_else(|| panic!("{checkpoint} is on no volume mount"));
    let claims = m.statefulset["spec"]["volumeClaimTemplates"]
        .as_array()
        .unwrap();
    assert!(
        claims
            .iter()
            .any(|c| c["metadata"]["name"] == mount["name"]),
        "{checkpoint} is on volume {}, which is not a volumeClaimTemplate",
        mount["name"]
    );
    assert!(
        instruction(&image, "ENV")
            .contains(&format!("REPLICATOR_CHECKPOINT_PATH={checkpoint}").as_str()),
        "the image's checkpoint default differs from the StatefulSet's {checkpoint}"
    );
    let volume = instruction(&image, "VOLUME").join(" ");
    let volume_dir = mount["mountPath"].as_str().unwrap();
    assert!(
        volume.contains(&format!("\"{volume_dir}\"")),
        "VOLUME {volume} is not {volume_dir}"
    );

    // The configuration is read where the image puts it (WORKDIR /app, the
    // default ./config/appsettings.yaml), which is where the ConfigMap goes.
    assert_eq!(instruction(&image, "WORKDIR"), ["/app"]);
    assert!(
        mounts.iter().any(|v| v["mountPath"] == "/app/config"),
        "ConfigMap not at /app/config"
    );

    // Connection strings come from the Secret.
    assert_eq!(
        env["REPLICATOR_READER_CONNECTIONSTRING"],
        "secret:replicator-connections/source"
    );
    assert_eq!(
        env["REPLICATOR_SINK_CONNECTIONSTRING"],
        "secret:replicator-connections/target"
    );

    // The pod runs as the image's user, and no Service link variables
    // (REPLICATOR_SERVICE_HOST, …) reach the configuration.
    let user = instruction(&image, "USER").join("");
    let run_as = m.pod()["securityContext"]["runAsUser"].as_u64().unwrap();
    assert_eq!(
        user.split(':').next().unwrap(),
        run_as.to_string(),
        "USER vs runAsUser"
    );
    assert_eq!(m.pod()["enableServiceLinks"], false);

    // One replica, and time for the drain: SIGTERM lets in-flight writes
    // and the final checkpoint finish within the shutdown deadline.
    assert_eq!(m.statefulset["spec"]["replicas"], 1);
    let drain = replicator_core::pipeline::PipelineConfig::default().shutdown_deadline;
    let grace = m.pod()["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        Duration::from_secs(grace) > drain + Duration::from_secs(10),
        "terminationGracePeriodSeconds {grace} leaves no room after the {drain:?} drain"
    );
    let resources = &m.container()["resources"];
    assert!(
        resources["requests"]["memory"].is_string(),
        "no memory request"
    );
    assert!(resources["limits"]["memory"].is_string(), "no memory limit");
}

/// The StatefulSet's environment, with the Secret's values and the volume
/// replaced by what this test has.
fn pod_env(m: &Manifests, source: &str, target: &str, data: &Path) -> Vec<(String, String)> {
    m.env()
        .into_iter()
        .map(|(name, value)| {
            let value = match value.as_str() {
                "secret:replicator-connections/source" => source.to_owned(),
                "secret:replicator-connections/target" => target.to_owned(),
                v if v.starts_with("/data/") => {
                    data.join(&v["/data/".len()..]).display().to_string()
                }
                v => v.to_owned(),
            };
            (name, value)
        })
        .collect()
}

/// A working directory holding `config` as `config/appsettings.yaml`, as the
/// image's /app with the ConfigMap mounted.
fn app_dir(config: &str) -> Workdir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("config")).unwrap();
    std::fs::copy(repo(config), dir.path().join("config/appsettings.yaml")).unwrap();
    Workdir { dir }
}

#[test]
fn the_shipped_configurations_are_accepted_with_the_pods_environment() {
    let m = Manifests::load();
    for config in [
        "deploy/kubernetes/appsettings.yaml",
        "deploy/image/appsettings.yaml",
    ] {
        let w = app_dir(config);
        let data = w.path("data");
        let env = pod_env(
            &m,
            "esdb://source:2113?tls=false",
            "esdb://target:2113?tls=false",
            &data,
        );
        let mut cmd = command(w.dir.path());
        cmd.args(["checkpoint", "show"]).envs(env);
        let out = cmd.output().unwrap();
        assert_ok(&out);
        let shown = stdout(&out);
        assert!(
            shown.contains(&data.join("checkpoint").display().to_string()),
            "{config}: the checkpoint is not on the volume:\n{shown}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pod_configuration_runs_and_serves_the_probes_and_every_dashboard_metric() {
    let m = Manifests::load();
    let source = replicator_testkit::EsdbServer::start().await.unwrap();
    let target = replicator_testkit::EsdbServer::start().await.unwrap();
    let w = app_dir("deploy/kubernetes/appsettings.yaml");
    let env = pod_env(
        &m,
        &source.connection_string(),
        &target.connection_string(),
        &w.path("data"),
    );
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    // `command` listens on a free port (REPLICATOR_HTTP_LISTEN) instead of
    // the ConfigMap's 5000: tests run side by side.
    let run = Running::start(&w, &env).await;

    for probe in ["livenessProbe", "readinessProbe"] {
        let (path, _) = m.probe(probe);
        let (path, run) = (path.as_str(), &run);
        wait_for(
            &format!("{probe} {path} answering 200"),
            Duration::from_secs(30),
            || async move { (run.get(path).await.0 == 200).then_some(()) },
        )
        .await;
    }

    let (code, text) = run.get("/metrics").await;
    assert_eq!(code, 200);
    let exported = families(&text);
    let dashboard: Value = serde_json::from_str(&read("deploy/grafana/replicator.json")).unwrap();
    let queried = dashboard_metrics(&dashboard);
    for (metric, wheres) in &queried {
        assert!(
            is_exported(metric, &exported),
            "the dashboard queries {metric} ({}), which /metrics does not export; it exports {:?}",
            wheres.join("; "),
            exported.keys().collect::<Vec<_>>()
        );
    }
    // What the dashboard is for.
    for needed in [
        "replicator_progress_percent",
        "replicator_gap_events",
        "replicator_eta_seconds",
        "replicator_events_per_second",
        "replicator_append_latency_seconds_bucket",
        "replicator_component_healthy",
        "replicator_sink_retries_total",
        "replicator_component_failures_total",
        "replicator_checkpoint_age_seconds",
        "replicator_checkpoint_unstored_records",
    ] {
        assert!(
            queried.contains_key(needed),
            "the dashboard does not show {needed}"
        );
    }
    run.stop().await;
}

/// Metric families in a text exposition: `# TYPE name kind`.
fn families(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| {
            let mut words = l.split_whitespace();
            (
                words.next().unwrap().to_owned(),
                words.next().unwrap_or("untyped").to_owned(),
            )
        })
        .collect()
}

fn is_exported(metric: &str, families: &BTreeMap<String, String>) -> bool {
    if families.contains_key(metric) {
        return true;
    }
    ["_bucket", "_sum", "_count"].iter().any(|suffix| {
        metric
            .strip_suffix(suffix)
            .and_then(|base| families.get(base))
            .is_some_and(|kind| kind == "histogram" || (kind == "summary" && *suffix != "_bucket"))
    })
}

/// Every metric the dashboard queries, with the panels that query it.
fn dashboard_metrics(dashboard: &Value) -> BTreeMap<String, Vec<String>> {
    let mut found: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut panels: Vec<&Value> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .collect();
    let mut exprs = 0;
    while let Some(panel) = panels.pop() {
        if let Some(nested) = panel["panels"].as_array() {
            panels.extend(nested);
        }
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap_or_else(|| {
                panic!("panel {:?}: a target without a PromQL expr", panel["title"])
            });
            exprs += 1;
            for metric in promql_metrics(expr) {
                found
                    .entry(metric)
                    .or_default()
                    .push(format!("panel {}", panel["title"]));
            }
        }
    }
    assert!(exprs > 0, "no queries in the dashboard");
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if variable["type"] != "query" {
            continue;
        }
        let query = match &variable["query"] {
            Value::String(q) => q.as_str(),
            q => q["query"].as_str().expect("a query variable's query"),
        };
        for metric in grafana_query_metrics(query) {
            found
                .entry(metric)
                .or_default()
                .push(format!("variable {}", variable["name"]));
        }
    }
    found
}

/// The metrics of a Grafana Prometheus variable query: `label_values(metric,
/// label)` (a lone argument is a label name), `metrics(…)`, or PromQL.
fn grafana_query_metrics(query: &str) -> BTreeSet<String> {
    let query = query.trim();
    if let Some(args) = query
        .strip_prefix("label_values(")
        .and_then(|a| a.strip_suffix(')'))
    {
        return match args.rsplit_once(',') {
            Some((selector, _label)) => promql_metrics(selector),
            None => BTreeSet::new(),
        };
    }
    assert!(
        !query.starts_with("metrics("),
        "metrics() queries are not checked: {query}"
    );
    promql_metrics(
        query
            .strip_prefix("query_result(")
            .map_or(query, |q| q.trim_end_matches(')')),
    )
}

/// The metric names a PromQL expression selects: identifiers that are not
/// function or aggregation calls, keywords, label names or Grafana variables.
fn promql_metrics(expr: &str) -> BTreeSet<String> {
    const KEYWORDS: &[&str] = &["and", "or", "unless", "bool", "offset", "inf", "nan"];
    const GROUPING: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let mut metrics = BTreeSet::new();
    let mut i = 0;
    let skip_to = |i: usize, close: char| -> usize {
        let mut j = i;
        while j < chars.len() && chars[j] != close {
            if chars[j] == '"' || chars[j] == '\'' {
                let quote = chars[j];
                j += 1;
                while j < chars.len() && chars[j] != quote {
                    j += if chars[j] == '\\' { 2 } else { 1 };
                }
            }
            j += 1;
        }
        j + 1
    };
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => i = skip_to(i + 1, c),
            '{' => i = skip_to(i + 1, '}'),
            '[' => i = skip_to(i + 1, ']'),
            '$' => {
                // A Grafana variable: $name, ${name}, $__rate_interval.
                i += 1;
                if chars.get(i) == Some(&'{') {
                    i = skip_to(i, '}');
                }
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
            }
            c if c.is_ascii_digit() || c == '.' => {
                // A number or a duration (0.95, 1e3, 5m).
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
            }
            c if c.is_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let mut next = i;
                while next < chars.len() && chars[next].is_whitespace() {
                    next += 1;
                }
                let lower = word.to_ascii_lowercase();
                if GROUPING.contains(&lower.as_str()) {
                    // by (label, …): label names, not metrics.
                    if chars.get(next) == Some(&'(') {
                        i = skip_to(next + 1, ')');
                    }
                } else if lower == "offset" {
                    // offset 5m: the duration follows.
                } else if KEYWORDS.contains(&lower.as_str()) || chars.get(next) == Some(&'(') {
                    // A keyword, or a function or aggregation call.
                } else if is_aggregation(&lower)
                    && GROUPING.iter().any(|g| starts_word(&chars, next, g))
                {
                    // sum by (le) (…): the aggregation's call comes later.
                } else {
                    metrics.insert(word);
                }
            }
            _ => i += 1,
        }
    }
    metrics
}

fn is_aggregation(word: &str) -> bool {
    matches!(
        word,
        "sum"
            | "min"
            | "max"
            | "avg"
            | "group"
            | "stddev"
            | "stdvar"
            | "count"
            | "count_values"
            | "bottomk"
            | "topk"
            | "quantile"
            | "limitk"
            | "limit_ratio"
    )
}

fn starts_word(chars: &[char], at: usize, word: &str) -> bool {
    let w: Vec<char> = word.chars().collect();
    chars.len() >= at + w.len()
        && chars[at..at + w.len()]
            .iter()
            .zip(&w)
            .all(|(a, b)| a.eq_ignore_ascii_case(b))
        && chars
            .get(at + w.len())
            .is_none_or(|c| !(c.is_alphanumeric() || *c == '_'))
}

#[test]
fn promql_metric_names_are_found_and_nothing_else() {
    let cases: &[(&str, &[&str])] = &[
        (
            r#"replicator_progress_percent{instance=~"$instance"}"#,
            &["replicator_progress_percent"],
        ),
        (
            r#"histogram_quantile(0.95, sum by (le, instance) (rate(a_bucket{x="y, z", instance=~"$instance"}[$__rate_interval])))"#,
            &["a_bucket"],
        ),
        (
            "sum without(job) (b) / on (instance) group_left(state) c offset 5m",
            &["b", "c"],
        ),
        (
            r#"rate(s_sum[5m]) / rate(s_count[5m]) > bool 1e3 and up == 1"#,
            &["s_count", "s_sum", "up"],
        ),
        (
            "sum(rate(x_total[${__rate_interval}])) by (reason)",
            &["x_total"],
        ),
        (r#"count by (k) ({__name__="q"})"#, &[]),
    ];
    for (expr, want) in cases {
        let got: Vec<String> = promql_metrics(expr).into_iter().collect();
        assert_eq!(got, *want, "{expr}");
    }
    assert_eq!(
        grafana_query_metrics("label_values(replicator_up{job=\"r\"}, instance)")
            .into_iter()
            .collect::<Vec<_>>(),
        ["replicator_up"]
    );
    assert!(grafana_query_metrics("label_values(instance)").is_empty());
}
