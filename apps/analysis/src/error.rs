//! Errors of the analysis.

/// What can go wrong in an analysis.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input: no finished runs, missing saved model, mismatched shapes, bad options.
    #[error("{0}")]
    Input(String),
    /// A file could not be read or written.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The model or a tensor operation failed.
    #[error(transparent)]
    Tram(#[from] tram::Error),
    /// Preparing a run's model and data failed.
    #[error(transparent)]
    Trainer(Box<tram_trainer::Error>),
    /// Loading a saved model failed.
    #[error(transparent)]
    Hub(Box<tram_hub::Error>),
    /// A tensor operation failed.
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

impl From<tram_trainer::Error> for Error {
    fn from(e: tram_trainer::Error) -> Self {
        Error::Trainer(Box::new(e))
    }
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
}

/// The analysis result type.
pub type Result<T> = std::result::Result<T, Error>;
