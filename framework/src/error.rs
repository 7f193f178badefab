//! Errors of the TRAM framework: every variant names the problem and, where there is one, the fix.

/// Result alias used throughout the framework.
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong while composing, stepping or checkpointing an optimizer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor operation failed (shape, dtype or device mismatch inside candle).
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
    /// A composition or config named a component that is not registered.
    #[error("unknown {kind} `{name}`; registered {kind}s are: {valid}")]
    UnknownComponent {
        /// The kind looked up ("component", "trust region", ...).
        kind: String,
        /// The name that was not found.
        name: String,
        /// Every valid name, comma separated.
        valid: String,
    },
    /// Two registrations used the same name.
    #[error("component name `{name}` is registered twice ({first} and {second}); names must be unique, rename one of them")]
    DuplicateComponent {
        /// The clashing name.
        name: String,
        /// Where the first registration came from.
        first: String,
        /// Where the second registration came from.
        second: String,
    },
    /// A composition string could not be parsed or does not describe a valid optimizer.
    #[error("invalid composition `{input}`: {reason}")]
    Composition {
        /// The composition string given.
        input: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// A component parameter table is malformed (unknown key, wrong type).
    #[error("invalid parameters for {component}: {reason}")]
    Config {
        /// The component whose parameters were rejected.
        component: String,
        /// What is wrong.
        reason: String,
    },
    /// A parameter received no gradient from the backward pass.
    #[error("parameter `{0}` received no gradient: the loss does not depend on it, or the model uses an op whose gradient candle drops (softmax_last_dim, fused layer_norm/rms_norm, rope); use differentiable ops or set `allow_missing_gradients`")]
    MissingGradient(String),
    /// The model or batch handed to the optimizer is inconsistent.
    #[error("model error: {0}")]
    Model(String),
    /// An optimizer checkpoint is missing, corrupt or does not match the optimizer.
    #[error("optimizer checkpoint {path}: {reason}")]
    Checkpoint {
        /// The checkpoint file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A run-time plugin could not be loaded (missing file, not a shared library, not a tram
    /// plugin, its registration failed).
    #[error("plugin {path}: {reason}")]
    Plugin {
        /// The plugin library.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A run-time plugin was built differently from this program (see `tram::plugin`).
    #[error("plugin {path} was built with {field} `{plugin}`, but this program with {field} `{host}`: rebuild the plugin with the same compiler against the same tram and candle, with the same features")]
    PluginMismatch {
        /// The plugin library.
        path: String,
        /// The fingerprint field that differs ("rustc version", "framework features", ...).
        field: String,
        /// The plugin's value.
        plugin: String,
        /// This program's value.
        host: String,
    },
    /// File-system error.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn composition(input: &str, reason: impl Into<String>) -> Self {
        Error::Composition { input: input.to_string(), reason: reason.into() }
    }
}
