//! A bearer token (KurrentDB's OAuth authentication), sent as
//! `authorization: Bearer <token>` on every call of one side instead of the
//! connection string's basic credentials.
//!
//! The server checks the token when each call starts, and tokens expire: a
//! token file is read again when it changes (its modification time or
//! length, and at least every second), before each new call, so a renewed
//! token is used without a restart. A file that cannot be read then (being
//! replaced) leaves the last good token in use.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tonic::metadata::{MetadataMap, MetadataValue};
use tracing::debug;

/// How often an unchanged-looking token file is read again anyway (a
/// replacement within the file system's time resolution, same length).
const REREAD_AFTER: Duration = Duration::from_secs(1);

/// A bearer token, given inline or read from a file. Cheap to clone (every
/// clone shares the token read last). Neither `Debug` nor any error shows the
/// token; they name its file.
#[derive(Clone)]
pub struct BearerToken {
    inner: Arc<Inner>,
}

struct Inner {
    file: Option<PathBuf>,
    state: Mutex<State>,
}

/// The `authorization` header value.
type Header = MetadataValue<tonic::metadata::Ascii>;

/// A file's modification time and length.
type Stamp = (Option<SystemTime>, u64);

struct State {
    header: Header,
    /// The file's stamp when it was read.
    stamp: Option<Stamp>,
    read_at: Instant,
}

/// Why a bearer token cannot be used. No message shows the token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The token given is empty.
    #[error("the bearer token is empty")]
    Empty,
    /// The token file cannot be read.
    #[error("cannot read the bearer token file `{}`: {source}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The token file holds no token.
    #[error("the bearer token file `{}` is empty", .path.display())]
    EmptyFile {
        /// The file.
        path: PathBuf,
    },
    /// The token holds characters an HTTP header cannot carry (a token is
    /// printable ASCII without spaces).
    #[error("the bearer token{} holds characters a header cannot carry", .path.as_ref().map(|p| format!(" in `{}`", p.display())).unwrap_or_default())]
    Invalid {
        /// Its file, when read from one.
        path: Option<PathBuf>,
    },
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.inner.file {
            Some(file) => f.debug_struct("BearerToken").field("file", file).finish(),
            None => f.write_str("BearerToken(***)"),
        }
    }
}

fn header(token: &str, path: Option<&Path>) -> Result<Header, TokenError> {
    let token = token.trim();
    if token.is_empty() {
        return Err(match path {
            Some(path) => TokenError::EmptyFile {
                path: path.to_owned(),
            },
            None => TokenError::Empty,
        });
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(TokenError::Invalid {
            path: path.map(Path::to_owned),
        });
    }
    MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| TokenError::Invalid {
        path: path.map(Path::to_owned),
    })
}

fn stamp(path: &Path) -> std::io::Result<Stamp> {
    let metadata = std::fs::metadata(path)?;
    Ok((metadata.modified().ok(), metadata.len()))
}

fn read(path: &Path) -> Result<(Header, Stamp), TokenError> {
    let failed = |source| TokenError::Read {
        path: path.to_owned(),
        source,
    };
    let stamp = stamp(path).map_err(failed)?;
    let text = std::fs::read_to_string(path).map_err(failed)?;
    Ok((header(&text, Some(path))?, stamp))
}

impl BearerToken {
    /// A token given as is (surrounding whitespace ignored).
    ///
    /// # Errors
    /// [`TokenError::Empty`] or [`TokenError::Invalid`].
    pub fn new(token: &str) -> Result<Self, TokenError> {
        Ok(Self::with(None, header(token, None)?, None))
    }

    /// The token in `path` (its whole content, surrounding whitespace
    /// ignored), read now and again whenever the file changes.
    ///
    /// # Errors
    /// When the file cannot be read now, or holds no usable token.
    pub fn from_file(path: impl Into<PathBuf>) -> Result<Self, TokenError> {
        let path = path.into();
        let (header, stamp) = read(&path)?;
        Ok(Self::with(Some(path), header, Some(stamp)))
    }

    fn with(file: Option<PathBuf>, header: Header, stamp: Option<Stamp>) -> Self {
        BearerToken {
            inner: Arc::new(Inner {
                file,
                state: Mutex::new(State {
                    header,
                    stamp,
                    read_at: Instant::now(),
                }),
            }),
        }
    }

    /// The file the token is read from, if any.
    pub fn file(&self) -> Option<&Path> {
        self.inner.file.as_deref()
    }

    /// Sets `authorization: Bearer <token>` in `metadata` (replacing basic
    /// credentials), with the file read again first if it changed.
    pub(crate) fn authorize(&self, metadata: &mut MetadataMap) {
        let mut state = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(path) = &self.inner.file {
            let changed = stamp(path).ok() != state.stamp;
            if changed || state.read_at.elapsed() >= REREAD_AFTER {
                state.read_at = Instant::now();
                match read(path) {
                    Ok((header, stamp)) => {
                        state.header = header;
                        state.stamp = Some(stamp);
                    }
                    // Being replaced, or broken: the last good token stays,
                    // and the server says whether it still holds.
                    Err(error) => debug!(%error, "Keeping the last bearer token read"),
                }
            }
        }
        metadata.insert("authorization", state.header.clone());
    }

    /// What a refusal of the token says: never the token, its file if any.
    pub(crate) fn refusal(&self) -> String {
        match &self.inner.file {
            Some(file) => format!(
                "the bearer token was refused (expired?) — file {}",
                file.display()
            ),
            None => "the bearer token was refused (expired?)".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(token: &BearerToken) -> String {
        let mut metadata = MetadataMap::new();
        metadata.insert("authorization", MetadataValue::from_static("Basic dTpw"));
        token.authorize(&mut metadata);
        metadata
            .get("authorization")
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned()
    }

    #[test]
    fn a_token_file_is_read_again_when_it_changes_and_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "first-t0ken\n").unwrap();
        let token = BearerToken::from_file(&path).unwrap();
        assert_eq!(sent(&token), "Bearer first-t0ken");
        std::fs::write(&path, "second-longer-t0ken").unwrap();
        assert_eq!(sent(&token), "Bearer second-longer-t0ken");
        // Replaced by nothing usable: the last good token stays.
        std::fs::remove_file(&path).unwrap();
        assert_eq!(sent(&token), "Bearer second-longer-t0ken");
        let shown = format!("{token:?} {}", token.refusal());
        assert!(!shown.contains("t0ken"), "{shown}");
        assert!(shown.contains(&path.display().to_string()), "{shown}");
    }

    #[test]
    fn unusable_tokens_are_named_without_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let missing = BearerToken::from_file(&path).unwrap_err().to_string();
        assert!(
            missing.contains("token` ") || missing.contains("token`:"),
            "{missing}"
        );
        std::fs::write(&path, "  \n").unwrap();
        assert!(BearerToken::from_file(&path)
            .unwrap_err()
            .to_string()
            .contains("is empty"));
        std::fs::write(&path, "s3cr3t with space").unwrap();
        let invalid = BearerToken::from_file(&path).unwrap_err().to_string();
        assert!(!invalid.contains("s3cr3t"), "{invalid}");
        assert!(matches!(BearerToken::new(""), Err(TokenError::Empty)));
        assert_eq!(
            format!("{:?}", BearerToken::new("s3cr3t").unwrap()),
            "BearerToken(***)"
        );
    }
}
