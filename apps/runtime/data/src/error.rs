//! Errors of dataset resolution, reading and encoding.

use std::path::PathBuf;

/// Result of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong while finding, reading or encoding a dataset. Every message
/// names the dataset, file, split or column involved and, where there is one, the fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A data source string is neither an existing directory nor a hub dataset id.
    #[error("invalid dataset source `{input}`: {reason}")]
    InvalidSource {
        /// The string given.
        input: String,
        /// What is wrong and what is accepted.
        reason: String,
    },
    /// The requested split (or config) has no data files.
    #[error("no split `{split}`{config} in {source_desc}: {detail}")]
    MissingSplit {
        /// The split asked for.
        split: String,
        /// ` (config `x`)` or empty.
        config: String,
        /// The dataset (`org/name@revision` or the directory).
        source_desc: String,
        /// The splits and configs that were found, and where they were looked for.
        detail: String,
    },
    /// A record has no column of that name.
    #[error("no column `{column}`{context}; available columns: {available}")]
    MissingColumn {
        /// The column asked for.
        column: String,
        /// Where (` in row 3 of ...`), possibly empty.
        context: String,
        /// The columns present, comma separated.
        available: String,
    },
    /// A column holds a value of the wrong kind.
    #[error("column `{column}`{context}: expected {expected}, found {found}")]
    BadField {
        /// The column.
        column: String,
        /// Where (` in row 3`), possibly empty.
        context: String,
        /// What was expected.
        expected: String,
        /// What was found.
        found: String,
    },
    /// A data file exists but cannot be read (corrupt parquet, bad JSON line, unsupported
    /// codec).
    #[error("{path}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The hub could not be reached, or refused a listing or a download, and the cache does
    /// not have what is needed.
    #[error("Hugging Face hub ({endpoint}) for {source_desc}: {reason}")]
    Hub {
        /// `org/name@revision`.
        source_desc: String,
        /// The hub endpoint used.
        endpoint: String,
        /// What failed and the fix.
        reason: String,
    },
    /// The tokenizer failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// An argument is out of range (a zero block length, an empty batch, ...).
    #[error("{0}")]
    Invalid(String),
    /// File-system error.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A tensor operation failed.
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

impl Error {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }
    pub(crate) fn corrupt(path: impl Into<PathBuf>, reason: impl std::fmt::Display) -> Error {
        Error::Corrupt { path: path.into(), reason: reason.to_string() }
    }
}

impl From<Error> for tram::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Io { context, source } => tram::Error::Io { context, source },
            Error::Candle(c) => tram::Error::Candle(c),
            other => tram::Error::Model(other.to_string()),
        }
    }
}
