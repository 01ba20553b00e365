//! `replicator verify` as a user runs it: identical clusters, each kind of
//! difference named, an order difference (checked with `sink.order: source`,
//! not with `stream`), a source it cannot reach, a pair still replicating
//! (`--until`, the stored checkpoint by default), and its peak memory on a
//! workload larger than that bound.

use eventstore::{
    AppendToStreamOptions, Client, DeleteStreamOptions, EventData, ExpectedRevision, StreamMetadata,
};
use serde_json::Value;
use uuid::Uuid;

use crate::{assert_ok, run_async, stderr, stdout, Clusters, Workdir};

fn event(id: Uuid, data: &str) -> EventData {
    EventData::binary("Tested", data.as_bytes().to_vec().into()).id(id)
}

async fn append(client: &Client, stream: &str, events: Vec<EventData>) {
    client
        .append_to_stream(stream, &AppendToStreamOptions::default(), events)
        .await
        .unwrap();
}

fn json_report(o: &std::process::Output) -> Value {
    serde_json::from_str(stdout(o).trim()).unwrap_or_else(|e| {
        panic!(
            "not one JSON object ({e}):\n{}\nstderr:\n{}",
            stdout(o),
            stderr(o)
        )
    })
}

/// The kinds of the differences listed for `stream` in a JSON report.
fn kinds_of(report: &Value, stream: &str) -> Vec<String> {
    report["streams"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["stream"] == stream)
        .flat_map(|s| s["differences"].as_array().unwrap().iter())
        .map(|d| d["kind"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_after_a_run_then_each_difference_is_named_with_exit_code_1() {
    let c = Clusters::start().await;
    let spec = replicator_testkit::workload::WorkloadSpec::new(3, 400);
    replicator_testkit::workload::generate(&c.source_client, &spec)
        .await
        .unwrap();
    let w = c.workdir("  runContinuously: false\n");
    assert_ok(&run_async(&w, &["run"]).await);

    // Up to the stored checkpoint (the default), then everything.
    for args in [&["verify"][..], &["verify", "--until", "end"][..]] {
        let o = run_async(&w, args).await;
        assert_ok(&o);
        assert!(stdout(&o).contains(": identical"), "{}", stdout(&o));
    }
    let o = run_async(&w, &["verify", "--json"]).await;
    assert_ok(&o);
    let report = json_report(&o);
    assert_eq!(report["identical"], true, "{report}");
    assert!(report["source_events"].as_u64().unwrap() > 300, "{report}");
    assert_eq!(report["until"]["kind"], "including", "{report}");

    // Each kind of difference, in a stream of its own, written directly.
    let (s, t) = (&c.source_client, &c.target_client);
    let [a, b, x] = [Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4()];
    append(s, "v-missing", vec![event(a, "1"), event(b, "2")]).await;
    append(t, "v-missing", vec![event(a, "1")]).await;
    append(s, "v-extra", vec![event(a, "1")]).await;
    append(t, "v-extra", vec![event(a, "1"), event(x, "x")]).await;
    append(s, "v-duplicate", vec![event(a, "1"), event(b, "2")]).await;
    append(t, "v-duplicate", vec![event(a, "1"), event(b, "2")]).await;
    t.append_to_stream(
        "v-duplicate",
        &AppendToStreamOptions::default().expected_revision(ExpectedRevision::Exact(1)),
        event(a, "1"),
    )
    .await
    .unwrap();
    append(s, "v-content", vec![event(a, "payload")]).await;
    append(t, "v-content", vec![event(a, "changed")]).await;
    for (client, max_count) in [(s, 10), (t, 20)] {
        append(client, "v-metadata", vec![event(a, "1")]).await;
        client
            .set_stream_metadata(
                "v-metadata",
                &Default::default(),
                &StreamMetadata::builder().max_count(max_count).build(),
            )
            .await
            .unwrap();
        append(client, "v-soft-deleted", vec![event(a, "1")]).await;
    }
    s.delete_stream("v-soft-deleted", &DeleteStreamOptions::default())
        .await
        .unwrap();

    // The stored checkpoint is older than all of this: only the stream the
    // target has and the source never had counts.
    let o = run_async(&w, &["verify", "--json"]).await;
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let report = json_report(&o);
    assert_eq!(report["identical"], false);
    assert_eq!(kinds_of(&report, "v-extra"), ["extra"], "{report}");
    assert!(kinds_of(&report, "v-missing").is_empty(), "{report}");

    let o = run_async(&w, &["verify", "--until", "end", "--json"]).await;
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let report = json_report(&o);
    for (stream, kind) in [
        ("v-missing", "missing"),
        ("v-extra", "extra"),
        ("v-duplicate", "duplicate"),
        ("v-content", "content"),
        ("v-metadata", "metadata"),
        ("v-soft-deleted", "deletion"),
    ] {
        assert_eq!(kinds_of(&report, stream), [kind], "{stream}: {report:#}");
    }
    assert_eq!(report["streams_differing"], 6, "{report:#}");
    assert_eq!(report["differences"], 6, "{report:#}");
    let content = &report["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stream"] == "v-content")
        .unwrap()["differences"][0];
    assert_eq!(content["field"], "data", "{content}");
    assert_eq!(content["revision"], 0, "{content}");

    // The text report names each stream, its first revision and the total.
    let o = run_async(&w, &["verify", "--until", "end"]).await;
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    for line in [
        "stream \"v-missing\": 1 difference, first at revision 1",
        "missing at revision 1",
        "duplicate at revision 2",
        "content at revision 0: data",
        "6 differences in 6 streams",
    ] {
        assert!(out.contains(line), "{line:?} not in:\n{out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_difference_is_exit_code_1_naming_the_pair_unless_sink_order_is_stream() {
    let c = Clusters::start().await;
    let (s, t) = (&c.source_client, &c.target_client);
    let [a1, a2, b1, b2] = [(); 4].map(|()| Uuid::new_v4());
    // The same events, each stream in the same order, the streams
    // interleaved otherwise: a1 b1 a2 b2 on the source, a1 b1 b2 a2 on the
    // target.
    for (stream, id) in [("o-a", a1), ("o-b", b1), ("o-a", a2), ("o-b", b2)] {
        append(s, stream, vec![event(id, "x")]).await;
    }
    for (stream, id) in [("o-a", a1), ("o-b", b1), ("o-b", b2), ("o-a", a2)] {
        append(t, stream, vec![event(id, "x")]).await;
    }

    // sink.order: source (the default) promises the source's order.
    let w = c.workdir("");
    let o = run_async(&w, &["verify", "--until", "end"]).await;
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    for line in [
        format!("order differs: source has {a2} (\"o-a\", "),
        format!(") before {b2} (\"o-b\", "),
        format!("; the target has {b2} at "),
        format!(" before {a2} at "),
        ": the order differs".to_owned(),
    ] {
        assert!(out.contains(&line), "{line:?} not in:\n{out}");
    }
    let o = run_async(&w, &["verify", "--until", "end", "--json"]).await;
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let report = json_report(&o);
    assert_eq!(report["identical"], false, "{report:#}");
    assert_eq!(report["differences"], 0, "{report:#}");
    assert_eq!(report["order_checked"], true, "{report:#}");
    assert_eq!(report["order_not_checked"], Value::Null, "{report:#}");
    let order = &report["order"];
    assert_eq!(order["first"]["id"], a2.to_string(), "{order:#}");
    assert_eq!(order["first"]["stream"], "o-a", "{order:#}");
    assert_eq!(order["second"]["id"], b2.to_string(), "{order:#}");
    let commit = |side: &str, event: &str| order[event][side]["commit"].as_u64().unwrap();
    assert!(
        commit("source_position", "first") < commit("source_position", "second")
            && commit("target_position", "second") < commit("target_position", "first"),
        "{order:#}"
    );

    // sink.order: stream promises only each stream's order: not checked, said.
    let w = c.workdir_with("", "    order: stream\n", "");
    let o = run_async(&w, &["verify", "--until", "end"]).await;
    assert_ok(&o);
    let out = stdout(&o);
    for line in [
        ": identical; order not checked",
        "order not checked: sink.order is stream",
    ] {
        assert!(out.contains(line), "{line:?} not in:\n{out}");
    }
    let o = run_async(&w, &["verify", "--until", "end", "--json"]).await;
    assert_ok(&o);
    let report = json_report(&o);
    assert_eq!(report["identical"], true, "{report:#}");
    assert_eq!(report["order_checked"], false, "{report:#}");
    assert_eq!(
        report["order_not_checked"], "sink.order is stream",
        "{report:#}"
    );
}

#[test]
fn a_source_it_cannot_reach_is_exit_code_2_naming_it() {
    let closed = crate::ClosedPort::new();
    let port = closed.port;
    let w = Workdir::with_config("  callTimeoutInSeconds: 4\n  scavenge: true\n");
    let yaml = std::fs::read_to_string(w.path("config/appsettings.yaml"))
        .unwrap()
        .replace(
            "esdb://admin:changeit@source:2113?tls=false",
            &format!("esdb://admin:changeit@127.0.0.1:{port}?tls=false&discoveryInterval=0"),
        );
    std::fs::write(w.path("config/appsettings.yaml"), yaml).unwrap();
    let o = w.run(&["verify", "--until", "end"], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("cannot verify: source:"), "{err}");
    // Settings that change what the target holds are not applied yet: said.
    assert!(
        err.contains("warning: replicator.scavenge configured, but verify does not apply"),
        "{err}"
    );
    assert!(!err.contains("changeit"), "the password shows: {err}");

    // Without a stored checkpoint and without --until there is nothing to
    // require: said, exit code 2.
    let o = w.run(&["verify"], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("no checkpoint is stored"),
        "{}",
        stderr(&o)
    );
    let o = w.run(&["verify", "--until", "later"], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("`later` is not a position"),
        "{}",
        stderr(&o)
    );
}

/// Two servers holding the same workload of about 100 MB each (the seeded
/// generator writes the same history twice): the binary compares them within
/// a peak RSS well under one server's data (a comparison holding the clusters
/// would need twice it), since it holds a few streams' pages at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_workload_is_verified_in_bounded_memory() {
    let c = Clusters::start().await;
    let spec = replicator_testkit::workload::WorkloadSpec {
        large_events: 80,
        ..replicator_testkit::workload::WorkloadSpec::new(5, 8_000)
    };
    let (a, b) = tokio::join!(
        replicator_testkit::workload::generate(&c.source_client, &spec),
        replicator_testkit::workload::generate(&c.target_client, &spec)
    );
    let written = a.unwrap();
    b.unwrap();
    let w = c.workdir("");
    // Memory grows with the streams compared at once (a page per side each,
    // plus what the transport buffers ahead of a slow reader): 8 here. With 16
    // it peaked at 51 MiB on an idle machine and at 64 MiB (over the bound)
    // on a loaded one, where more pages wait in buffers; 64 peaked at 82 MiB.
    let o = run_async(
        &w,
        &["verify", "--until", "end", "--json", "--concurrency", "8"],
    )
    .await;
    assert_ok(&o);
    let report = json_report(&o);
    assert_eq!(report["identical"], true, "{report}");
    let bytes = report["source_bytes"].as_u64().unwrap();
    let peak = report["peak_rss_kib"]
        .as_u64()
        .expect("Linux reports VmHWM")
        * 1024;
    eprintln!(
        "verified {} events ({} MB) in {:.1} s (listing {:.1} s) at {:.0} events/s, peak RSS {} MiB",
        report["source_events"],
        bytes / 1_000_000,
        report["seconds"].as_f64().unwrap(),
        report["listing_seconds"].as_f64().unwrap(),
        report["events_per_second"].as_f64().unwrap(),
        peak / (1024 * 1024)
    );
    assert!(
        written.large_events >= 60 && bytes > 80_000_000,
        "the workload must outweigh the bound: {bytes} bytes, {written:?}"
    );
    // Holding one side's data would take `bytes`, both sides twice that; the
    // bound leaves room for buffers that grow on a loaded machine.
    assert!(
        peak < bytes * 3 / 4,
        "peak RSS {peak} bytes for {bytes} bytes of source data: the comparison holds more \
         than a few streams at a time"
    );
}
