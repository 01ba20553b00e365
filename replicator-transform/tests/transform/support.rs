//! Records to feed the transforms, and a log capture.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use replicator_core::{Event, Position};

/// An appended JSON event of `stream` at `revision`.
pub fn event(stream: &str, revision: u64, event_type: &str, data: &str, metadata: &str) -> Event {
    Event::new(stream, event_type, Bytes::copy_from_slice(data.as_bytes()))
        .with_revision(revision)
        .with_metadata(Bytes::copy_from_slice(metadata.as_bytes()))
        .with_created(SystemTime::UNIX_EPOCH + Duration::from_millis(1_600_000_000_123))
        .with_position(Position::at(1000 + revision * 100))
}

/// A script in a temporary directory (kept while the guard lives).
pub struct Script {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
}

pub fn script(name: &str, source: &str) -> Script {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, source).unwrap();
    Script { _dir: dir, path }
}

/// Everything logged by any thread of this test binary (engines log from
/// their own threads, so a thread-local subscriber would miss them).
pub fn captured_log() -> String {
    String::from_utf8_lossy(&log_buffer().lock().unwrap()).into_owned()
}

fn log_buffer() -> &'static Arc<Mutex<Vec<u8>>> {
    static BUFFER: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    BUFFER.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = buffer.clone();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || LogWriter(writer.clone()))
            .init();
        buffer
    })
}

/// Installs the capture (call before the code that logs).
pub fn capture_log() {
    log_buffer();
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
