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
    #[error("plugin {path} was built with {field} `{plugin}`, but this program with {field} `{host}`: {}", mismatch_advice(.field, .host))]
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

/// How to fix a plugin whose fingerprint `field` differs from the host's value `host`.
pub fn mismatch_advice(field: &str, host: &str) -> String {
    match field {
        "plugin ABI version" | "declaration size" => {
            "the plugin was built against a tram with another plugin ABI: rebuild it against this program's tram (a path dependency on the same checkout, or the same git commit)".into()
        }
        "rustc version" => format!(
            "build the plugin with the compiler that built this program ({host}): copy tram's rust-toolchain.toml into the plugin crate, or `rustup run <version> cargo build`; `tram --version --verbose` prints the host's build"
        ),
        "tram version" | "tram code digest" => "rebuild the plugin against this program's tram: a path dependency on the same checkout (or the same git commit); a library under target/ that `cargo test` did not rebuild is stale, run `cargo build` in the plugin crate".into(),
        "candle version" => format!("pin `candle-core = \"={host}\"` in the plugin crate and copy tram's Cargo.lock into it"),
        "framework features" => format!(
            "enable the same tram features in the plugin crate (`{host}`; for a CUDA build `tram = {{ …, features = [\"cuda\"] }}`), or build the program without them"
        ),
        "type layout digest" => "a dependency shared with the plugin (serde_json, candle) was built with other versions or features: copy tram's Cargo.lock into the plugin crate and enable the same features of candle-core and serde_json".into(),
        _ => "rebuild the plugin with the same compiler against the same tram and candle, with the same features".into(),
    }
}

impl Error {
    pub(crate) fn composition(input: &str, reason: impl Into<String>) -> Self {
        Error::Composition { input: input.to_string(), reason: reason.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mismatch(field: &str, host: &str) -> String {
        Error::PluginMismatch { path: "/p/lib.so".into(), field: field.into(), plugin: "P".into(), host: host.into() }.to_string()
    }

    #[test]
    fn every_fingerprint_field_gets_advice_of_its_own() {
        let fields = crate::plugin::Fingerprint::CURRENT.fields().map(|(name, _)| name);
        let mut advice: Vec<String> = ["plugin ABI version"].into_iter().chain(fields).map(|f| mismatch_advice(f, "H")).collect();
        let generic = mismatch_advice("(unknown field)", "H");
        assert!(advice.iter().all(|a| *a != generic), "{advice:#?}");
        // tram version and code digest share their fix; every other cause has its own.
        advice.dedup();
        assert_eq!(advice.len(), 6, "{advice:#?}");
        let rustc = mismatch("rustc version", "rustc 1.95.0");
        assert!(rustc.contains("`rustc 1.95.0`") && rustc.contains("rust-toolchain.toml"), "{rustc}");
        let candle = mismatch("candle version", "0.11.1");
        assert!(candle.contains("candle-core = \"=0.11.1\"") && candle.contains("Cargo.lock"), "{candle}");
        assert!(mismatch("tram code digest", "abc").contains("stale"));
        assert!(mismatch("framework features", "cuda").contains("features = [\"cuda\"]"));
    }
}
