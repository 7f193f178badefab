//! Saving a checkpoint in hub layout, loadable by `transformers`' `from_pretrained`.

use crate::error::{Error, Result};
use crate::load::{CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE};
use candle_core::{Device, Tensor};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use tram::state::write_atomic;

/// Files copied along with a `tokenizer.json` when they sit beside it (they tell
/// `transformers`' `AutoTokenizer` the special tokens and casing).
pub const TOKENIZER_SIDE_FILES: &[&str] = &["tokenizer_config.json", "special_tokens_map.json"];

/// Something that yields named tensors to save: `[(String, Tensor)]`, `Vec<(String, Tensor)>`,
/// a `HashMap` / `BTreeMap` of tensors, or a model's [`tram::Params`].
pub trait NamedTensors {
    /// The `(name, tensor)` pairs.
    fn named_tensors(&self) -> Vec<(String, Tensor)>;
}

impl NamedTensors for [(String, Tensor)] {
    fn named_tensors(&self) -> Vec<(String, Tensor)> {
        self.to_vec()
    }
}

impl NamedTensors for Vec<(String, Tensor)> {
    fn named_tensors(&self) -> Vec<(String, Tensor)> {
        self.clone()
    }
}

impl<const N: usize> NamedTensors for [(String, Tensor); N] {
    fn named_tensors(&self) -> Vec<(String, Tensor)> {
        self.to_vec()
    }
}

impl<S: std::hash::BuildHasher> NamedTensors for HashMap<String, Tensor, S> {
    fn named_tensors(&self) -> Vec<(String, Tensor)> {
        self.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

impl NamedTensors for BTreeMap<String, Tensor> {
    fn named_tensors(&self) -> Vec<(String, Tensor)> {
        self.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

impl NamedTensors for tram::Params {
    fn named_tensors(&self) -> Vec<(String, Tensor)> {
        self.iter().map(|p| (p.name.clone(), p.var.as_detached_tensor())).collect()
    }
}

/// Serialise tensors to safetensors bytes with the metadata `{"format": "pt"}` that
/// `transformers` expects. Tensors are copied to the CPU; names must be unique.
pub fn safetensors_bytes(tensors: &[(String, Tensor)]) -> Result<Vec<u8>> {
    let mut seen = HashSet::new();
    let mut cpu = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        if !seen.insert(name.as_str()) {
            return Err(Error::corrupt(WEIGHTS_FILE, format!("tensor name `{name}` appears twice")));
        }
        cpu.push((name.as_str(), t.detach().to_device(&Device::Cpu)?.contiguous()?));
    }
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize(cpu.iter().map(|(n, t)| (*n, t)), Some(metadata))
        .map_err(|e| Error::corrupt(WEIGHTS_FILE, format!("cannot serialise the tensors: {e}")))
}

/// Save a checkpoint into `dir` in hub layout: `model.safetensors` (metadata
/// `{"format": "pt"}`), `tokenizer.json` copied from `tokenizer` when given (with
/// `tokenizer_config.json` / `special_tokens_map.json` when they sit beside it) and
/// `config.json` last, so that a directory with a `config.json` is complete. Each file is
/// written atomically (temporary file, then rename); `dir` is created if needed.
pub fn save_pretrained<T: NamedTensors + ?Sized>(
    dir: &Path,
    config: &serde_json::Value,
    tensors: &T,
    tokenizer: Option<&Path>,
) -> Result<()> {
    if !config.is_object() {
        return Err(Error::corrupt(dir.join(CONFIG_FILE), "the config to save must be a JSON object"));
    }
    std::fs::create_dir_all(dir).map_err(Error::io(format!("creating {}", dir.display())))?;
    let weights_path = dir.join(WEIGHTS_FILE);
    let bytes = safetensors_bytes(&tensors.named_tensors()).map_err(|e| match e {
        Error::Corrupt { reason, .. } => Error::corrupt(&weights_path, reason),
        other => other,
    })?;
    write(&weights_path, &bytes)?;
    if let Some(tok) = tokenizer {
        let bytes = std::fs::read(tok).map_err(Error::io(format!("reading tokenizer {} to save it", tok.display())))?;
        write(&dir.join(TOKENIZER_FILE), &bytes)?;
        if let Some(src_dir) = tok.parent() {
            for side in TOKENIZER_SIDE_FILES {
                let src = src_dir.join(side);
                if src.is_file() {
                    let bytes = std::fs::read(&src).map_err(Error::io(format!("reading {}", src.display())))?;
                    write(&dir.join(side), &bytes)?;
                }
            }
        }
    }
    let mut text = serde_json::to_string_pretty(config).map_err(|e| Error::corrupt(dir.join(CONFIG_FILE), e.to_string()))?;
    text.push('\n');
    write(&dir.join(CONFIG_FILE), text.as_bytes())
}

/// Save a model (its `config_json()` and parameters) with [`save_pretrained`].
pub fn save_model(dir: &Path, model: &dyn tram_models::Pretrained, tokenizer: Option<&Path>) -> Result<()> {
    save_pretrained(dir, &model.config_json(), model.params(), tokenizer)
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic(path, bytes).map_err(|e| match e {
        tram::Error::Io { context, source } => Error::Io { context, source },
        other => Error::Io { context: format!("writing {}", path.display()), source: std::io::Error::other(other.to_string()) },
    })
}
