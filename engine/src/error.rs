//! The engine's error type. Every fallible library call returns [`Result`].

use std::path::PathBuf;

/// Errors raised by the engine and the model families built on it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O failure on a named file or folder.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder involved.
        path: PathBuf,
        /// The underlying failure.
        source: std::io::Error,
    },
    /// A file whose contents are not what its format requires.
    #[error("{path}: {message}")]
    Format {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A configuration that is incomplete or inconsistent.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A tokenizer that could not be built, loaded, trained or run.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A device that does not exist or cannot be opened.
    #[error("device: {0}")]
    Device(String),
    /// Input that the operation cannot accept (a prompt too long, an empty corpus, ...).
    #[error("{0}")]
    Invalid(String),
    /// An external command (npm, tar, ...) that failed.
    #[error("{command}: {message}")]
    Command {
        /// The command line that was run.
        command: String,
        /// What went wrong.
        message: String,
    },
}

impl Error {
    /// An I/O error tied to `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// A format error tied to `path`.
    pub fn format(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::Format {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// The engine's result type.
pub type Result<T> = std::result::Result<T, Error>;
