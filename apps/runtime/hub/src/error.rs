//! Errors of hub resolution, loading and saving.

use std::path::PathBuf;

/// Result of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong while resolving, loading or saving a checkpoint. Every message
/// names the file and the source involved and, where there is one, the fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A model source string is neither an existing directory nor a hub id.
    #[error("invalid model source `{input}`: {reason}")]
    InvalidSource {
        /// The string given.
        input: String,
        /// What is wrong and what is accepted.
        reason: String,
    },
    /// A required file is absent from a local directory or from the cache (offline mode).
    #[error("`{file}` not found for {source_desc}: {detail}; {fix}")]
    MissingFile {
        /// The file name inside the repository (`config.json`, a shard, ...).
        file: String,
        /// The model source (`org/name@revision` or the directory).
        source_desc: String,
        /// What was looked at and what was found.
        detail: String,
        /// How to fix it.
        fix: String,
    },
    /// The hub could not be reached and the file is not cached.
    #[error("cannot reach the Hugging Face hub at {endpoint} to download `{file}` of {source_desc}, and it is not in the cache at {cache}: {reason}; check the network / proxy, or set HF_HOME (or HF_HUB_CACHE) to a cache containing it, or pass a local directory")]
    HubUnreachable {
        /// The file name inside the repository.
        file: String,
        /// `org/name@revision`.
        source_desc: String,
        /// The hub endpoint used.
        endpoint: String,
        /// The cache directory searched.
        cache: PathBuf,
        /// The transport error.
        reason: String,
    },
    /// The hub answered, but refused or failed the download (404, 401, ...).
    #[error("downloading `{file}` of {source_desc} from {endpoint} failed: {reason}")]
    Download {
        /// The file name inside the repository.
        file: String,
        /// `org/name@revision`.
        source_desc: String,
        /// The hub endpoint used.
        endpoint: String,
        /// What the hub said, and the fix where known.
        reason: String,
    },
    /// A file exists but cannot be parsed (truncated or corrupt safetensors, bad JSON, a shard
    /// index that does not match its shards, an unusable tokenizer).
    #[error("{path}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A shard named by `model.safetensors.index.json` is missing.
    #[error("shard `{shard}` listed in {index} (for {tensors}) is missing for {source_desc}: {detail}; re-download the checkpoint or copy the shard next to the index")]
    MissingShard {
        /// The shard file name.
        shard: String,
        /// The index file.
        index: PathBuf,
        /// `org/name@revision` or the directory.
        source_desc: String,
        /// The tensors the index maps to it (`N tensors, e.g. `name``).
        tensors: String,
        /// Where it was looked for.
        detail: String,
    },
    /// `config.json` names an architecture this crate cannot build.
    #[error("{path}: unsupported model_type `{model_type}`; supported model types: {supported}")]
    UnknownArchitecture {
        /// The config file.
        path: PathBuf,
        /// The `model_type` found (`<missing>` when absent).
        model_type: String,
        /// The supported ones, comma separated.
        supported: String,
    },
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
    /// Building the model from the checkpoint failed (missing or mis-shaped weights, bad config
    /// field).
    #[error("building the model from {source_desc}: {error}")]
    Model {
        /// The model source.
        source_desc: String,
        /// The model crate's error.
        error: tram::Error,
    },
}

impl Error {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }
    pub(crate) fn corrupt(path: impl Into<PathBuf>, reason: impl Into<String>) -> Error {
        Error::Corrupt { path: path.into(), reason: reason.into() }
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
