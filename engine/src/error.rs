//! The engine's error type. Every fallible library call returns [`Result`].

use std::path::PathBuf;

/// Errors raised by the engine and the model families built on it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O failure on a named file or folder.
    #[error("{path}: {error}")]
    Io {
        /// The file or folder involved.
        path: PathBuf,
        /// The underlying failure. Not a `source`: the message already says it, and a chain
        /// printed with its sources would say it twice.
        error: std::io::Error,
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
    /// A corpus or token stream that cannot feed the requested batches.
    #[error("data: {0}")]
    Data(String),
    /// A generation request the model cannot serve (a prompt longer than the context, a beam
    /// width of 0, ...).
    #[error("generation: {0}")]
    Request(String),
    /// A chat template that does not compile or render.
    #[error("chat template: {0}")]
    Template(String),
    /// Tensors whose shapes or layouts do not fit together (a weight matrix that cannot be
    /// quantized in blocks, optimizer state for a parameter the model lacks, ...).
    #[error("{0}")]
    Shape(String),
    /// A training step whose loss or gradients hold a NaN or an infinity.
    #[error("numerics: {0}")]
    NonFinite(String),
    /// Reading a tensor back from the device failed.
    #[error("reading {what} back from the device: {message}")]
    Readback {
        /// What was being read ("the loss", "the gradient norm").
        what: String,
        /// The backend's error.
        message: String,
    },
    /// Serialising a value (JSON, safetensors) failed.
    #[error("serialising {what}: {message}")]
    Serialize {
        /// What was being serialised.
        what: String,
        /// The serialiser's error.
        message: String,
    },
    /// A state the engine should never reach (a bug): reported instead of panicking.
    #[error("internal error: {0}")]
    Internal(String),
    /// A model that cannot be saved in an interchange format (e.g. block-quantized weights).
    #[error("export: {0}")]
    Export(String),
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
    pub fn io(path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            error,
        }
    }

    /// A serialisation error about `what`.
    pub fn serialize(what: impl Into<String>, message: impl std::fmt::Display) -> Self {
        Self::Serialize {
            what: what.into(),
            message: message.to_string(),
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
