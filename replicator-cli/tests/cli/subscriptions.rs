//! `replicator subscriptions`: the source's persistent subscription groups
//! re-created on the target, checked through the official Python client
//! (`kurrentdbclient`, via the testkit's `subscriptions_tool.py`) on both
//! sides: after `--apply`, a consumer of each target group gets the events a
//! consumer of the source group would get next.

use serde_json::Value;

use crate::{assert_ok, run_async, stdout, Clusters};
use replicator_testkit::support::python::subscriptions_tool;

/// The tool's answer to `args` on `url` (a failure panics, naming it).
async fn tool(command: &str, url: &str, args: &[&str]) -> Value {
    let mut argv = vec![command, url];
    argv.extend_from_slice(args);
    subscriptions_tool(&argv).await
}

/// The ids of the next `count` events a consumer of `group` gets (not
/// acknowledged: they go back to the group).
async fn next_ids(url: &str, group: &str, stream: Option<&str>, count: usize) -> Vec<String> {
    let count = count.to_string();
    let mut args = vec![group, "--count", &count];
    if let Some(stream) = stream {
        args.extend(["--stream", stream]);
    }
    tool("next", url, &args).await["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["id"].as_str().expect("id").to_owned())
        .collect()
}

/// The settings of a group's info, without its state (start, checkpoint,
/// counters, status).
fn settings_of(info: &Value) -> Value {
    let keys = [
        "resolve_links",
        "message_timeout",
        "extra_statistics",
        "max_retry_count",
        "live_buffer_size",
        "history_buffer_size",
        "read_batch_size",
        "checkpoint_after",
        "min_checkpoint_count",
        "max_checkpoint_count",
        "consumer_strategy",
        "max_subscriber_count",
    ];
    keys.iter()
        .map(|k| (k.to_string(), info[k].clone()))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

fn plan_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_are_re_created_on_the_target_each_resuming_where_its_consumers_stopped() {
    let c = Clusters::start().await;
    // Three streams written interleaved, so $all groups see them mixed.
    for i in 0..12 {
        for stream in ["orders-1", "orders-2", "payments-1"] {
            crate::append_json(
                &c.source_client,
                stream,
                &[("Placed", serde_json::json!({ "n": i }))],
            )
            .await;
        }
    }
    let (source, target) = (c.source.connection_string(), c.target.connection_string());
    let every_ack = ["--min-checkpoint", "1", "--max-checkpoint", "1"];
    let mut s_part = vec!["s-part", "orders-1"];
    s_part.extend(every_ack);
    tool("create-stream", &source, &s_part).await;
    tool(
        "create-stream",
        &source,
        &[
            "s-fresh",
            "orders-2",
            "--strategy",
            "RoundRobin",
            "--max-retry",
            "3",
        ],
    )
    .await;
    let mut a_part = vec!["a-part"];
    a_part.extend(every_ack);
    tool("create-all", &source, &a_part).await;
    let mut a_orders = vec![
        "a-orders",
        "--filter-include",
        "orders-.*",
        "--filter-by-stream-name",
        "--read-batch",
        "7",
    ];
    a_orders.extend(every_ack);
    tool("create-all", &source, &a_orders).await;
    tool("create-all", &source, &["a-end", "--from-end"]).await;
    // Consumers stopped part-way, each at a checkpoint of its last ack.
    tool(
        "consume",
        &source,
        &[
            "s-part",
            "--stream",
            "orders-1",
            "--ack",
            "4",
            "--wait-checkpoint",
        ],
    )
    .await;
    tool(
        "consume",
        &source,
        &["a-part", "--ack", "7", "--wait-checkpoint"],
    )
    .await;
    tool(
        "consume",
        &source,
        &["a-orders", "--ack", "5", "--wait-checkpoint"],
    )
    .await;

    let w = c.workdir("  runContinuously: false\n");
    assert_ok(&run_async(&w, &["run"]).await);

    // A dry run plans a creation for each group and changes nothing.
    let o = run_async(&w, &["subscriptions", "--json"]).await;
    assert_ok(&o);
    let plan = plan_lines(&stdout(&o));
    assert_eq!(plan.len(), 5, "{}", stdout(&o));
    assert!(plan.iter().all(|p| p["step"] == "create"), "{}", stdout(&o));
    let filtered = plan.iter().find(|p| p["group"] == "a-orders").unwrap();
    // The client turns the include pattern into an anchored regex.
    let filter = filtered["filter"].as_str().unwrap_or_default();
    assert!(
        filter.starts_with("stream ~ /") && filter.contains("orders-.*"),
        "{filtered}"
    );
    assert_eq!(
        tool("list", &target, &[]).await,
        Value::Array(vec![]),
        "the dry run created nothing"
    );

    let o = run_async(&w, &["subscriptions", "--apply"]).await;
    assert_ok(&o);
    assert_eq!(stdout(&o).matches("→ created").count(), 5, "{}", stdout(&o));

    // Each target group: the source group's settings, and what its consumer
    // gets next is what the source group's consumer would.
    for (group, stream) in [
        ("s-part", Some("orders-1")),
        ("s-fresh", Some("orders-2")),
        ("a-part", None),
        ("a-orders", None),
        ("a-end", None),
    ] {
        let mut args = vec![group];
        if let Some(stream) = stream {
            args.extend(["--stream", stream]);
        }
        let (on_source, on_target) = (
            tool("info", &source, &args).await,
            tool("info", &target, &args).await,
        );
        assert_eq!(settings_of(&on_target), settings_of(&on_source), "{group}");
        if group == "a-end" {
            assert_eq!(on_target["start_from"], "C:-1/P:-1", "{group}: {on_target}");
            continue;
        }
        let want = next_ids(&source, group, stream, 3).await;
        assert_eq!(
            next_ids(&target, group, stream, 3).await,
            want,
            "{group} resumes on the target"
        );
    }

    // A re-run changes nothing.
    let o = run_async(&w, &["subscriptions", "--apply", "--json"]).await;
    assert_ok(&o);
    let plan = plan_lines(&stdout(&o));
    assert!(
        plan.iter().all(|p| p["step"] == "unchanged"),
        "{}",
        stdout(&o)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_group_with_other_settings_is_left_alone_unless_forced() {
    let c = Clusters::start().await;
    crate::append_json(
        &c.source_client,
        "orders-1",
        &[("Placed", serde_json::json!({}))],
    )
    .await;
    let (source, target) = (c.source.connection_string(), c.target.connection_string());
    tool(
        "create-stream",
        &source,
        &["g", "orders-1", "--max-retry", "5"],
    )
    .await;
    tool(
        "create-stream",
        &target,
        &["g", "orders-1", "--max-retry", "9"],
    )
    .await;
    let w = c.workdir("  runContinuously: false\n");
    assert_ok(&run_async(&w, &["run"]).await);

    let o = run_async(&w, &["subscriptions", "--apply"]).await;
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(
        stdout(&o).contains("maxRetryCount: 9 → 5"),
        "{}",
        stdout(&o)
    );
    let info = tool("info", &target, &["g", "--stream", "orders-1"]).await;
    assert_eq!(info["max_retry_count"], 9, "left alone: {info}");

    let o = run_async(&w, &["subscriptions", "--force"]).await;
    assert_eq!(
        o.status.code(),
        Some(2),
        "--force without --apply is refused"
    );

    let o = run_async(&w, &["subscriptions", "--apply", "--force"]).await;
    assert_ok(&o);
    assert!(stdout(&o).contains("→ replaced"), "{}", stdout(&o));
    let info = tool("info", &target, &["g", "--stream", "orders-1"]).await;
    assert_eq!(info["max_retry_count"], 5, "replaced: {info}");
}
