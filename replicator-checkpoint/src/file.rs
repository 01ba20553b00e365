//! The checkpoint kept in a local file.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use async_trait::async_trait;
use replicator_core::{Checkpoint, CheckpointError, CheckpointStore, Position};
use serde::{Deserialize, Serialize};

/// The format version this replicator writes.
const FORMAT_VERSION: u64 = 1;

/// A checkpoint kept in one local file (by default `./checkpoint`).
///
/// The file is a small JSON document carrying a format version:
///
/// ```json
/// {"version":1,"source":{"commit":1200,"prepare":1200},"target":null,
///  "taken_at":{"secs_since_epoch":1767225600,"nanos_since_epoch":0},"seed":false}
/// ```
///
/// - `store` replaces it atomically: it writes a temporary file beside it,
///   flushes it to disk, renames it over the old one and flushes the directory,
///   so after a crash the file holds either the old or the new checkpoint. A
///   missing directory is created first.
/// - `check` (called by the pipeline before it replicates) creates a missing
///   directory and proves that a file can be written beside the checkpoint
///   (it writes, flushes and removes a hidden `.{name}.*.check` file), without
///   touching the checkpoint itself. A directory that cannot be created or
///   written, or a checkpoint path that is a directory, is a permanent error
///   naming the path and the system's reason, before anything is replicated.
/// - `load` also reads the C# replicator's file (`"{eventNumber},{commitPosition}"`),
///   so its users keep their place: replication starts again at that commit
///   ([`Checkpoint::of_commit`]: its records already on the target are replays).
/// - A file that is empty, corrupt, unreadable or of an unknown version is an
///   error naming the file, never "no checkpoint": that would silently start the
///   replication again from the beginning.
///
/// One process should own the file; stores from several tasks of that process
/// are serialised.
#[derive(Debug)]
pub struct FileCheckpointStore {
    path: PathBuf,
    /// Serialises writers, so the last `store` to return is the one on disk.
    write_lock: tokio::sync::Mutex<()>,
}

impl FileCheckpointStore {
    /// A store keeping its checkpoint in the file at `path`. Nothing is touched
    /// until the first call.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileCheckpointStore {
            path: path.into(),
            write_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// The checkpoint file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[async_trait]
impl CheckpointStore for FileCheckpointStore {
    async fn load(&self) -> Result<Option<Checkpoint>, CheckpointError> {
        let path = self.path.clone();
        run_blocking(move || load_file(&path)).await
    }

    async fn store(&self, checkpoint: &Checkpoint) -> Result<(), CheckpointError> {
        let contents = encode(&self.path, checkpoint)?;
        let _guard = self.write_lock.lock().await;
        let path = self.path.clone();
        run_blocking(move || replace_file(&path, &contents)).await
    }

    async fn delete(&self) -> Result<(), CheckpointError> {
        let _guard = self.write_lock.lock().await;
        let path = self.path.clone();
        run_blocking(move || delete_file(&path)).await
    }

    async fn check(&self) -> Result<(), CheckpointError> {
        let _guard = self.write_lock.lock().await;
        let path = self.path.clone();
        run_blocking(move || check_file(&path)).await
    }
}

/// What version 1 of the file holds.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileV1 {
    version: u64,
    source: Position,
    target: Option<Position>,
    taken_at: SystemTime,
    seed: bool,
}

async fn run_blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, CheckpointError> + Send + 'static,
) -> Result<T, CheckpointError> {
    tokio::task::spawn_blocking(work).await.map_err(|error| {
        CheckpointError::permanent("the checkpoint file task panicked").with_source(error)
    })?
}

fn io_error(path: &Path, what: &str, error: io::Error) -> CheckpointError {
    let message = format!("checkpoint file {}: {what}: {error}", path.display());
    // Only an interrupted or timed-out call can succeed as it is when retried; a
    // missing directory, a permission or a full disk needs the operator.
    let error_kind = error.kind();
    // The OS error is in the message already (health and logs show only the
    // message); attaching it as the source too would print it twice.
    if matches!(
        error_kind,
        io::ErrorKind::Interrupted | io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
    ) {
        CheckpointError::transient(message)
    } else {
        CheckpointError::permanent(message)
    }
}

fn corrupt(path: &Path, problem: impl std::fmt::Display) -> CheckpointError {
    CheckpointError::permanent(format!(
        "checkpoint file {} {problem}; fix it, or delete it to replicate from the start \
         (or from a seed) again",
        path.display()
    ))
}

fn load_file(path: &Path) -> Result<Option<Checkpoint>, CheckpointError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(io_error(path, "cannot be read", error)),
    };
    // The C# format carries no time: the file's own is the best we have.
    let modified = || {
        std::fs::metadata(path)
            .and_then(|meta| meta.modified())
            .unwrap_or(SystemTime::UNIX_EPOCH)
    };
    decode(path, &bytes, modified).map(Some)
}

fn decode(
    path: &Path,
    bytes: &[u8],
    modified: impl FnOnce() -> SystemTime,
) -> Result<Checkpoint, CheckpointError> {
    let text = std::str::from_utf8(bytes).map_err(|_| corrupt(path, "is not text"))?;
    let text = text.trim();
    if text.is_empty() {
        return Err(corrupt(path, "is empty"));
    }
    if text.starts_with('{') {
        return decode_versioned(path, text);
    }
    decode_csharp(path, text, modified)
}

fn decode_versioned(path: &Path, text: &str) -> Result<Checkpoint, CheckpointError> {
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|error| corrupt(path, format_args!("is not valid JSON ({error})")))?;
    let version = value
        .get("version")
        .ok_or_else(|| corrupt(path, "has no format \"version\""))?;
    if version.as_u64() != Some(FORMAT_VERSION) {
        return Err(corrupt(
            path,
            format_args!(
                "has format version {version}, but this replicator reads only version \
                 {FORMAT_VERSION} (was it written by a newer replicator?)"
            ),
        ));
    }
    let file: FileV1 = serde_json::from_value(value).map_err(|error| {
        corrupt(
            path,
            format_args!("is not a valid version {FORMAT_VERSION} checkpoint ({error})"),
        )
    })?;
    Ok(Checkpoint {
        source: file.source,
        target: file.target,
        taken_at: file.taken_at,
        seed: file.seed,
    })
}

/// The C# replicator's `"{eventNumber},{commitPosition}"`: the commit position
/// of the last event it processed.
fn decode_csharp(
    path: &Path,
    text: &str,
    modified: impl FnOnce() -> SystemTime,
) -> Result<Checkpoint, CheckpointError> {
    let not_a_checkpoint = || {
        corrupt(
            path,
            format_args!(
                "holds {text:?}, which is neither a replicator checkpoint (JSON) nor a C# \
                 replicator checkpoint (\"eventNumber,commitPosition\")"
            ),
        )
    };
    let (event_number, commit) = text.split_once(',').ok_or_else(not_a_checkpoint)?;
    // The event number is the one within its stream: only checked, never used.
    event_number
        .trim()
        .parse::<i64>()
        .map_err(|_| not_a_checkpoint())?;
    let commit = commit
        .trim()
        .parse::<u64>()
        .map_err(|_| not_a_checkpoint())?;
    let mut checkpoint = Checkpoint::of_commit(commit);
    checkpoint.taken_at = modified();
    Ok(checkpoint)
}

fn encode(path: &Path, checkpoint: &Checkpoint) -> Result<Vec<u8>, CheckpointError> {
    let file = FileV1 {
        version: FORMAT_VERSION,
        source: checkpoint.source,
        target: checkpoint.target,
        taken_at: checkpoint.taken_at,
        seed: checkpoint.seed,
    };
    let mut contents = serde_json::to_vec(&file).map_err(|error| {
        CheckpointError::permanent(format!(
            "cannot encode the checkpoint for {} ({error})",
            path.display()
        ))
    })?;
    contents.push(b'\n');
    Ok(contents)
}

/// The directory holding `path`, where the temporary file must live for the
/// rename to be atomic.
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

fn replace_file(path: &Path, contents: &[u8]) -> Result<(), CheckpointError> {
    let dir = parent_dir(path);
    let name = path
        .file_name()
        .ok_or_else(|| corrupt(path, "is not a file name"))?;
    // A hidden name derived from the checkpoint's, so a leftover from a crash
    // is recognisable; dropping `temp` on any error below removes it.
    let prefix = format!(".{}.", name.to_string_lossy());
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(".tmp");
    // Creating the directory only when it is missing keeps a store to the
    // usual few system calls.
    let temp = match builder.tempfile_in(dir) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            create_dir(path, dir)?;
            builder.tempfile_in(dir)
        }
        other => other,
    };
    let mut temp =
        temp.map_err(|error| io_error(path, "cannot create a temporary file beside it", error))?;
    temp.write_all(contents)
        .and_then(|()| temp.as_file().sync_all())
        .map_err(|error| io_error(path, "cannot write a temporary file beside it", error))?;
    temp.persist(path)
        .map_err(|error| io_error(path, "cannot replace it", error.error))?;
    sync_dir(path, dir)
}

/// Creates `dir`, the directory of the checkpoint file `path`, and any
/// missing parent.
fn create_dir(path: &Path, dir: &Path) -> Result<(), CheckpointError> {
    std::fs::create_dir_all(dir).map_err(|error| {
        io_error(
            path,
            &format!("cannot create its directory {}", dir.display()),
            error,
        )
    })
}

/// What [`CheckpointStore::check`] does for a file: the directory exists (or
/// is created) and a file can be written and removed in it. The checkpoint
/// itself is left as it is.
fn check_file(path: &Path) -> Result<(), CheckpointError> {
    let dir = parent_dir(path);
    let name = path.file_name().ok_or_else(|| {
        CheckpointError::permanent(format!(
            "checkpoint file {}: the path does not end in a file name",
            path.display()
        ))
    })?;
    create_dir(path, dir)?;
    if path.is_dir() {
        return Err(CheckpointError::permanent(format!(
            "checkpoint file {}: is a directory",
            path.display()
        )));
    }
    let mut probe = tempfile::Builder::new()
        .prefix(&format!(".{}.", name.to_string_lossy()))
        .suffix(".check")
        .tempfile_in(dir)
        .map_err(|error| io_error(path, "cannot create a file beside it", error))?;
    probe
        .write_all(b"replicator write check\n")
        .and_then(|()| probe.as_file().sync_all())
        .map_err(|error| io_error(path, "cannot write a file beside it", error))?;
    probe
        .close()
        .map_err(|error| io_error(path, "cannot remove a file beside it", error))
}

fn delete_file(path: &Path) -> Result<(), CheckpointError> {
    match std::fs::remove_file(path) {
        Ok(()) => sync_dir(path, parent_dir(path)),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(io_error(path, "cannot be deleted", error)),
    }
}

/// Makes a rename or removal in `dir` durable.
fn sync_dir(path: &Path, dir: &Path) -> Result<(), CheckpointError> {
    File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(|error| io_error(path, "cannot flush its directory", error))
}

#[cfg(test)]
mod tests {
    use super::*;
    use replicator_core::StartFrom;

    fn never() -> SystemTime {
        panic!("the file time is only used for the C# format")
    }

    #[test]
    fn reads_the_csharp_format() {
        let path = Path::new("cp");
        let taken = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        for text in ["42,123456", "42,123456\n", " 42 , 123456 \r\n", "-1,123456"] {
            let checkpoint = decode(path, text.as_bytes(), || taken).unwrap();
            // The whole last commit again: it may be a v5 transaction
            // processed in part.
            assert_eq!(
                checkpoint.start_from(),
                StartFrom::At(Position {
                    commit: 123_456,
                    prepare: 0
                }),
                "{text:?}"
            );
            assert_eq!(checkpoint.target, None);
            assert_eq!(checkpoint.taken_at, taken);
        }
    }

    #[test]
    fn rejects_what_is_not_a_checkpoint() {
        let path = Path::new("/data/cp");
        for text in [
            "",
            "   \n",
            "42",
            "42,",
            "x,1",
            "1,-5",
            "1,2,3",
            "{",
            "{}",
            "{\"version\":2}",
            "{\"version\":\"1\"}",
            "{\"version\":1}",
        ] {
            let error = decode(path, text.as_bytes(), never).unwrap_err();
            assert!(!error.is_transient(), "{text:?}");
            assert!(error.message().contains("/data/cp"), "{text:?}: {error}");
        }
        let error = decode(path, &[0xff, 0xfe], never).unwrap_err();
        assert!(error.message().contains("not text"), "{error}");
        let error = decode(path, b"{\"version\":7}", never).unwrap_err();
        assert!(error.message().contains("version 7"), "{error}");
    }

    #[test]
    fn the_versioned_format_round_trips_every_field() {
        let path = Path::new("cp");
        let checkpoint = Checkpoint {
            source: Position {
                commit: u64::MAX - 1,
                prepare: 17,
            },
            target: Some(Position {
                commit: 5,
                prepare: 3,
            }),
            taken_at: SystemTime::UNIX_EPOCH + std::time::Duration::new(1_700_000_000, 123_456_789),
            seed: true,
        };
        let bytes = encode(path, &checkpoint).unwrap();
        let text = std::str::from_utf8(&bytes).unwrap();
        assert!(text.contains("\"version\":1"), "{text}");
        assert_eq!(decode(path, &bytes, never).unwrap(), checkpoint);
    }

    #[test]
    fn a_bare_file_name_lives_in_the_current_directory() {
        assert_eq!(parent_dir(Path::new("checkpoint")), Path::new("."));
        assert_eq!(parent_dir(Path::new("a/checkpoint")), Path::new("a"));
    }
}
