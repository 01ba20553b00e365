//! Reading a backup's `chaser.chk`.
//!
//! An EventStoreDB node's `chaser.chk` holds the log position up to which the
//! node has written its transaction log: exactly 8 bytes, a little-endian
//! signed 64-bit integer. In a backup, the event at that position is the first
//! one *not* in the backup, so replication must start at it, inclusive (see
//! [`crate::seed_if_empty`]).

use std::path::Path;

use replicator_core::{CheckpointError, Position};

/// The size of a `chaser.chk` file.
const CHASER_LEN: usize = 8;

/// Reads the log position in the `chaser.chk` file at `path`.
///
/// Only use the chaser of a backup or a stopped node: a running node's chaser
/// moves on while it is being read.
///
/// # Errors
/// A permanent [`CheckpointError`] naming the file when it does not exist,
/// cannot be read, is not exactly 8 bytes long or holds a negative position.
/// These are errors, not warnings: replicating from the start of `$all`
/// instead would duplicate the whole backup on the target.
pub fn read_chaser(path: &Path) -> Result<Position, CheckpointError> {
    let bytes = std::fs::read(path).map_err(|error| {
        let what = if error.kind() == std::io::ErrorKind::NotFound {
            "does not exist".to_owned()
        } else {
            format!("cannot be read: {error}")
        };
        CheckpointError::permanent(format!("chaser file {} {what}", path.display()))
            .with_source(error)
    })?;
    let bytes: [u8; CHASER_LEN] = bytes.as_slice().try_into().map_err(|_| {
        CheckpointError::permanent(format!(
            "chaser file {} is {} bytes long; a chaser.chk is exactly {CHASER_LEN} bytes \
             (a little-endian signed 64-bit log position)",
            path.display(),
            bytes.len()
        ))
    })?;
    let value = i64::from_le_bytes(bytes);
    let position = u64::try_from(value).map_err(|_| {
        CheckpointError::permanent(format!(
            "chaser file {} holds a negative log position ({value})",
            path.display()
        ))
    })?;
    Ok(Position::at(position))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &tempfile::TempDir, bytes: &[u8]) -> std::path::PathBuf {
        let path = dir.path().join("chaser.chk");
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn reads_a_little_endian_position() {
        let dir = tempfile::tempdir().unwrap();
        let value: i64 = 0x0102_0304_0506_0708;
        let path = write(&dir, &value.to_le_bytes());
        assert_eq!(read_chaser(&path).unwrap(), Position::at(value as u64));
    }

    #[test]
    fn zero_is_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, &[0; 8]);
        assert_eq!(read_chaser(&path).unwrap(), Position::START);
    }

    #[test]
    fn a_missing_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope.chk");
        let error = read_chaser(&path).unwrap_err();
        assert!(!error.is_transient());
        assert!(
            error.message().contains(&path.display().to_string()),
            "{error}"
        );
        assert!(error.message().contains("does not exist"), "{error}");
    }

    #[test]
    fn a_file_of_the_wrong_size_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        for len in [0, 7, 9, 16] {
            let path = write(&dir, &vec![1; len]);
            let error = read_chaser(&path).unwrap_err();
            assert!(!error.is_transient());
            assert!(
                error.message().contains(&path.display().to_string()),
                "{error}"
            );
            assert!(
                error.message().contains(&format!("is {len} bytes")),
                "{error}"
            );
        }
    }

    #[test]
    fn a_negative_position_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, &(-1i64).to_le_bytes());
        let error = read_chaser(&path).unwrap_err();
        assert!(!error.is_transient());
        assert!(
            error.message().contains(&path.display().to_string()),
            "{error}"
        );
        assert!(error.message().contains("negative"), "{error}");
    }

    #[test]
    fn a_directory_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let error = read_chaser(dir.path()).unwrap_err();
        assert!(
            error.message().contains(&dir.path().display().to_string()),
            "{error}"
        );
    }
}
