//! `replicator checkpoint show|delete|seed`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use replicator_checkpoint::{chaser, seed_if_empty};
use replicator_core::{Checkpoint, CheckpointStore as _};

use crate::app::open_store;
use crate::config::{Config, StoreConfig};
use crate::time;

/// Prints the stored checkpoint, or says that none is stored.
///
/// # Errors
/// When the store cannot be opened or read (a corrupt file included).
pub async fn show(config: &Config) -> anyhow::Result<ExitCode> {
    let store = open_store(&config.checkpoint).await?;
    let loaded = store
        .load()
        .await
        .with_context(|| format!("cannot read the checkpoint ({})", config.checkpoint.store))?;
    println!("store:    {}", config.checkpoint.store);
    match loaded {
        None => println!("no checkpoint stored: a run starts from the beginning of $all (or from the configured seed)"),
        Some(c) => print!("{}", describe(&c, csharp_file(&config.checkpoint.store))),
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether the file store holds a file in the C# replicator's format: its
/// checkpoint has no time of its own (the file's is shown) and no target.
fn csharp_file(store: &StoreConfig) -> bool {
    match store {
        StoreConfig::File { path } => std::fs::read(path)
            .map(|b| !String::from_utf8_lossy(&b).trim_start().starts_with('{'))
            .unwrap_or(false),
        StoreConfig::Mongo { .. } | StoreConfig::Stream { .. } => false,
    }
}

/// The lines `show` prints for a checkpoint.
fn describe(c: &Checkpoint, csharp: bool) -> String {
    let mut out = String::new();
    if csharp {
        out.push_str("format:   C# replicator checkpoint file (eventNumber,commitPosition)\n");
    }
    out.push_str(&format!(
        "source:   {} (commit {}, prepare {})\n",
        c.source, c.source.commit, c.source.prepare
    ));
    out.push_str(&format!(
        "resumes:  {} this position\n",
        if c.seed { "AT (inclusive)" } else { "after" }
    ));
    out.push_str(&format!(
        "target:   {}\n",
        c.target.map_or_else(
            || "unknown (no event written yet, or written by a tool that does not record it)"
                .to_owned(),
            |t| format!("{t} (commit {}, prepare {})", t.commit, t.prepare)
        )
    ));
    out.push_str(&format!(
        "taken at: {}{}\n",
        time::rfc3339(c.taken_at),
        if csharp {
            " (the file's modification time)"
        } else {
            ""
        }
    ));
    out.push_str(&format!(
        "seed:     {}\n",
        if commit_only(c) {
            "no (a commit position only, as the C# replicator stores it: that commit is read \
             again from its first record, in case it is a v5 transaction processed in part; \
             what the target holds of it is skipped as replays)"
        } else if c.seed {
            "yes (from seeding, before any event was processed)"
        } else {
            "no"
        }
    ));
    out
}

/// Whether `c` holds a commit position alone (the C# replicator's file or
/// document), loaded as an inclusive start at that commit's first record
/// ([`Checkpoint::of_commit`]); a chaser seed has both parts.
fn commit_only(c: &Checkpoint) -> bool {
    c.seed && c.source.prepare == 0 && c.source.commit > 0
}

/// Deletes the stored checkpoint, printing what it was so it can be restored.
///
/// # Errors
/// When the store cannot be opened, read or changed.
pub async fn delete(config: &Config) -> anyhow::Result<ExitCode> {
    let store = open_store(&config.checkpoint).await?;
    let what = format!("{}", config.checkpoint.store);
    // Read first so the user sees what was removed; a corrupt checkpoint is
    // still deleted (that is one way out of it).
    let previous = store.load().await;
    store
        .delete()
        .await
        .with_context(|| format!("cannot delete the checkpoint ({what})"))?;
    match previous {
        Ok(None) => println!("no checkpoint was stored ({what})"),
        Ok(Some(c)) => println!(
            "deleted the checkpoint at source {}{} ({what}); the next run starts from the \
             beginning of $all, or from the configured seed",
            c.source,
            if commit_only(&c) {
                " (a C# replicator's commit position)"
            } else if c.seed {
                " (a seed)"
            } else {
                ""
            }
        ),
        Err(e) => println!("deleted an unreadable checkpoint ({what}): {e}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// Seeds the store from a `chaser.chk`; refuses when a checkpoint is stored
/// unless `force`.
///
/// # Errors
/// When the chaser file is missing or malformed, or the store fails.
pub async fn seed(config: &Config, chaser_path: &Path, force: bool) -> anyhow::Result<ExitCode> {
    let position = chaser::read_chaser(chaser_path)
        .with_context(|| format!("cannot seed from {}", chaser_path.display()))?;
    let store = open_store(&config.checkpoint).await?;
    let what = format!("{}", config.checkpoint.store);
    if force {
        if matches!(config.checkpoint.store, StoreConfig::Stream { .. }) {
            // The stream store refuses to move a checkpoint it reads
            // backwards; a delete first says that this one is meant to.
            store
                .delete()
                .await
                .with_context(|| format!("cannot replace the checkpoint ({what})"))?;
        }
        store
            .store(&Checkpoint::seeded(position))
            .await
            .with_context(|| format!("cannot store the seed ({what})"))?;
    } else if !seed_if_empty(&*store, position)
        .await
        .with_context(|| format!("cannot seed the checkpoint store ({what})"))?
    {
        let existing = store.load().await.ok().flatten();
        eprintln!(
            "error: a checkpoint is already stored{} ({what}); not seeding. A stored checkpoint \
             wins over a seed: run `replicator checkpoint delete` first, or pass --force to \
             replace it",
            existing.map_or(String::new(), |c| format!(" at source {}", c.source))
        );
        return Ok(ExitCode::FAILURE);
    }
    println!(
        "seeded the checkpoint at {position} from {} ({what}); the next run replicates from \
         this position, inclusive",
        chaser_path.display()
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use replicator_core::Position;

    use super::*;

    #[test]
    fn describes_every_field() {
        let c = Checkpoint {
            source: Position {
                commit: 1200,
                prepare: 1100,
            },
            target: Some(Position::at(77)),
            taken_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600),
            seed: false,
        };
        let text = describe(&c, false);
        assert!(text.contains("source:   C:1200/P:1100"), "{text}");
        assert!(text.contains("resumes:  after"), "{text}");
        assert!(text.contains("target:   C:77/P:77"), "{text}");
        assert!(text.contains("taken at: 2026-01-01T00:00:00Z\n"), "{text}");
        assert!(text.contains("seed:     no"), "{text}");
        assert!(!text.contains("format:"), "{text}");
    }

    #[test]
    fn a_seed_resumes_at_its_position() {
        let text = describe(&Checkpoint::seeded(Position::at(5)), false);
        assert!(text.contains("resumes:  AT (inclusive)"), "{text}");
        assert!(text.contains("seed:     yes"), "{text}");
        assert!(text.contains("target:   unknown"), "{text}");
    }
}
