//! `replicator status [--url]`: a running instance's `/api/status`, printed
//! for people.

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::Value;

/// Where `replicator status` looks when `--url` is not given.
pub const DEFAULT_URL: &str = "http://127.0.0.1:5000";

/// Fetches `{url}/api/status` and prints it (`json`: as it came). Exit code
/// 0 when the instance is ready (with `live`: live, as `/health/live` says),
/// 2 when it answers but is not.
///
/// # Errors
/// When the instance cannot be reached or answers something else than its
/// status.
pub async fn show(url: &str, json: bool, live: bool) -> anyhow::Result<ExitCode> {
    let endpoint = format!("{}/api/status", url.trim_end_matches('/'));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .context("cannot create an HTTP client")?;
    let response =
        client.get(&endpoint).send().await.with_context(|| {
            format!("cannot reach {endpoint} (is `replicator run` running there?)")
        })?;
    let code = response.status();
    if !code.is_success() {
        anyhow::bail!("{endpoint} answered {code}");
    }
    let status: Value = response
        .json()
        .await
        .with_context(|| format!("{endpoint} did not answer a replicator status"))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", describe(url, &status));
    }
    let verdict = if live { "live" } else { "ready" };
    Ok(if status[verdict] == Value::Bool(true) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

/// The status as lines of text.
fn describe(url: &str, s: &Value) -> String {
    let mut out = String::new();
    let flag = |key: &str, yes: &'static str, no: &'static str| {
        if s[key] == Value::Bool(true) {
            yes
        } else {
            no
        }
    };
    let _ = writeln!(
        out,
        "replicator {} at {url}: {}, {}, {}",
        text(&s["version"]),
        text(&s["state"]),
        flag("ready", "ready", "NOT READY"),
        flag("caught_up", "caught up", "catching up"),
    );
    if let Some(error) = s["state_error"].as_str() {
        let _ = writeln!(out, "  error:      {error}");
    }
    let _ = writeln!(
        out,
        "  progress:   {}  ETA {}  lag {}  gap {} bytes",
        s["percent"]
            .as_f64()
            .map_or("-".to_owned(), |p| format!("{p:.1}%")),
        seconds(&s["eta_seconds"]),
        seconds(&s["lag_seconds"]),
        text(&s["gap_bytes"]),
    );
    let e = &s["events"];
    let _ = writeln!(
        out,
        "  events:     read {}, written {}, skipped {}; {:.0}/s; in flight {}",
        text(&e["read"]),
        text(&e["written"]),
        text(&e["skipped"]),
        s["events_per_second"].as_f64().unwrap_or(0.0),
        text(&s["in_flight"]),
    );
    let _ = writeln!(
        out,
        "  positions:  source head {} (unmoved for {}), read {}, processed {}, target {}",
        position(&s["source_head"]),
        seconds(&s["source_quiet_seconds"]),
        position(&s["read"]),
        position(&s["processed"]),
        position(&s["target"]),
    );
    let c = &s["checkpoint"];
    let _ = writeln!(
        out,
        "  checkpoint: {} (target {}), age {}, {} records not yet stored; {}",
        position(&c["position"]),
        position(&c["target"]),
        seconds(&c["age_seconds"]),
        text(&c["unstored"]),
        text(&c["store"]),
    );
    for name in ["source", "target", "checkpoint", "transform"] {
        let h = &s["components"][name];
        if h.is_null() {
            // A server of an older version.
            continue;
        }
        let line = if h["healthy"] == Value::Bool(true) {
            format!("healthy since {}", text(&h["since"]))
        } else {
            format!(
                "FAILING for {} (since {}): {}",
                seconds(&h["failing_seconds"]),
                text(&h["since"]),
                text(&h["error"])
            )
        };
        let _ = writeln!(out, "  {:<11} {line}", format!("{name}:"));
    }
    if let Some(problems) = s["problems"].as_array().filter(|p| !p.is_empty()) {
        let _ = writeln!(out, "  problems:");
        for p in problems {
            let _ = writeln!(out, "    - {}", text(p));
        }
    }
    out
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn position(v: &Value) -> String {
    match (v["commit"].as_u64(), v["prepare"].as_u64()) {
        (Some(c), Some(p)) => format!("C:{c}/P:{p}"),
        _ => "-".to_owned(),
    }
}

fn seconds(v: &Value) -> String {
    v.as_f64().map_or("-".to_owned(), |s| {
        crate::time::short(Duration::from_secs_f64(s.max(0.0)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_a_status_readably() {
        let s = serde_json::json!({
            "version": "0.1.0", "state": "running", "ready": false, "caught_up": false,
            "state_error": null, "percent": 42.0, "eta_seconds": 75.0, "lag_seconds": 3.0,
            "gap_bytes": 1000, "events_per_second": 12.4, "in_flight": 3,
            "events": {"read": 10, "written": 8, "skipped": 1},
            "source_head": {"commit": 2000, "prepare": 2000}, "read": null,
            "processed": {"commit": 1000, "prepare": 1000}, "target": null,
            "checkpoint": {"position": null, "target": null, "age_seconds": null,
                           "unstored": 9, "store": "file ./checkpoint"},
            "components": {
                "source": {"healthy": true, "since": "2024-01-01T00:00:00Z"},
                "target": {"healthy": false, "since": "2024-01-01T00:00:01Z",
                           "failing_seconds": 12.0, "error": "connection refused"},
                "checkpoint": {"healthy": true, "since": "2024-01-01T00:00:00Z"}
            },
            "problems": ["target failing for 12.0s: connection refused"]
        });
        let out = describe("http://x:5000", &s);
        assert!(out.contains("running, NOT READY, catching up"), "{out}");
        assert!(out.contains("42.0%  ETA 1m15s"), "{out}");
        assert!(out.contains("written 8"), "{out}");
        assert!(out.contains("processed C:1000/P:1000"), "{out}");
        assert!(out.contains("target:     FAILING for 12.0s"), "{out}");
        assert!(out.contains("- target failing"), "{out}");
    }
}
