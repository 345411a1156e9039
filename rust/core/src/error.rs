//! One error type for the whole core. Every variant renders as a single line that names the
//! file (and line, where there is one) so the CLI can print it as is.

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be opened or read.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A line of a rating file is malformed.
    #[error("{path}:{line}: {message}")]
    Parse {
        path: String,
        line: u64,
        message: String,
    },
    /// The file as a whole is unusable (empty, truncated gzip, ...).
    #[error("{path}: {message}")]
    File { path: String, message: String },
    /// A caller passed arguments that do not fit together (lengths, ranges, empty pools).
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.display().to_string(),
            source,
        }
    }

    pub fn parse(path: &Path, line: u64, message: impl Into<String>) -> Self {
        Error::Parse {
            path: path.display().to_string(),
            line,
            message: message.into(),
        }
    }

    pub fn file(path: &Path, message: impl Into<String>) -> Self {
        Error::File {
            path: path.display().to_string(),
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Error::Invalid(message.into())
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Fails with `Error::Invalid` unless all named lengths are equal.
pub fn check_same_len(what: &str, lens: &[(&str, usize)]) -> Result<()> {
    if let Some((first_name, first)) = lens.first() {
        for (name, len) in &lens[1..] {
            if len != first {
                return Err(Error::invalid(format!(
                    "{what}: `{name}` has {len} entries but `{first_name}` has {first}"
                )));
            }
        }
    }
    Ok(())
}
