//! Errors of the trainer: each names what is wrong and, where there is one, the fix.

/// Result alias of the trainer.
pub type Result<T> = std::result::Result<T, Error>;

/// What can go wrong in a run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid (unknown key, wrong type, impossible value).
    #[error("config: {0}")]
    Config(String),
    /// The training checkpoint is missing, corrupt or does not match the run.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The checkpoint directory or file.
        path: String,
        /// What is wrong, and the fix.
        reason: String,
    },
    /// The run directory is in use by another process (it holds the directory's lock).
    #[error("{0}")]
    Busy(String),
    /// The data cannot be used.
    #[error("data: {0}")]
    Data(String),
    /// A file could not be read or written.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The optimizer, the model or a tensor operation failed.
    #[error(transparent)]
    Tram(#[from] tram::Error),
    /// Loading or saving a model failed.
    #[error(transparent)]
    Hub(Box<tram_hub::Error>),
    /// A tensor operation failed.
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

impl From<tram_hub::Error> for Error {
    fn from(e: tram_hub::Error) -> Self {
        Error::Hub(Box::new(e))
    }
}

impl Error {
    /// An I/O error with context.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io { context: context.into(), source }
    }
    /// A checkpoint error.
    pub fn checkpoint(path: &std::path::Path, reason: impl Into<String>) -> Self {
        Error::Checkpoint { path: path.display().to_string(), reason: reason.into() }
    }
}
