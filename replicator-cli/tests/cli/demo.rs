//! `replicator demo`: the README's command, at a size a test can afford.

use crate::{assert_ok, command, stderr, stdout};

#[test]
fn demo_replicates_a_workload_and_proves_the_target_identical() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join("demo.chk");
    let o = command(dir.path())
        .args(["demo", "--events", "2000", "--seed", "7", "--checkpoint"])
        .arg(&checkpoint)
        .output()
        .unwrap();
    assert_ok(&o);
    let out = stdout(&o);
    assert!(out.contains("2000 user events"), "{out}");
    assert!(
        out.contains("the target is identical to the source"),
        "{out}\n{}",
        stderr(&o)
    );
    assert!(out.contains("(the source's last record)"), "{out}");
    assert!(out.contains("events written/s"), "{out}");
    assert!(out.contains("peak memory:"), "{out}");
    // The demo's checkpoint is the real file store's.
    let text = std::fs::read_to_string(&checkpoint).unwrap();
    assert!(text.trim_start().starts_with('{'), "{text}");

    // A second demo refuses the now stored checkpoint instead of skipping the
    // workload and reporting nonsense.
    let o = command(dir.path())
        .args(["demo", "--events", "10", "--checkpoint"])
        .arg(&checkpoint)
        .output()
        .unwrap();
    assert!(!o.status.success(), "{}", stdout(&o));
    assert!(stderr(&o).contains("already exists"), "{}", stderr(&o));
}

/// A replicator already serving its status page on the usual port 5000 (held
/// here, or by whatever holds it on this machine) does not stop a demo: the
/// demo's own status server takes a free port. A bad `--listen` is named.
#[test]
fn demo_runs_beside_a_replicator_on_port_5000_and_names_a_bad_listen_address() {
    let _held = std::net::TcpListener::bind("0.0.0.0:5000");
    let dir = tempfile::tempdir().unwrap();
    let o = command(dir.path())
        .args(["demo", "--events", "50"])
        .output()
        .unwrap();
    assert_ok(&o);
    assert!(
        stdout(&o).contains("the target is identical to the source"),
        "{}",
        stdout(&o)
    );
    let o = command(dir.path())
        .args(["demo", "--events", "50", "--listen", "nowhere"])
        .output()
        .unwrap();
    assert!(!o.status.success(), "{}", stdout(&o));
    assert!(stderr(&o).contains("nowhere"), "{}", stderr(&o));
}

#[test]
fn demo_rejects_zero_events_and_partitions() {
    let dir = tempfile::tempdir().unwrap();
    for flag in ["--events", "--partitions"] {
        let o = command(dir.path())
            .args(["demo", flag, "0"])
            .output()
            .unwrap();
        assert!(!o.status.success(), "{flag} 0 was accepted");
        assert!(stderr(&o).contains(flag), "{}", stderr(&o));
    }
}
