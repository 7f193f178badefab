//! Reading the files of a checkpoint: `config.json`, `model.safetensors` (or a sharded
//! `model.safetensors.index.json` with its shards) and `tokenizer.json`.

use crate::error::{Error, Result};
use crate::source::ModelFiles;
use candle_core::safetensors::Load;
use candle_core::{DType, Device};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tokenizers::Tokenizer;

/// Named tensors as read from a checkpoint (Hugging Face names).
pub type WeightMap = tram_models::WeightMap;

/// The configuration file.
pub const CONFIG_FILE: &str = "config.json";
/// A single-file checkpoint.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The index of a sharded checkpoint.
pub const WEIGHTS_INDEX_FILE: &str = "model.safetensors.index.json";
/// The `tokenizers` tokenizer.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// Where the weights of a checkpoint are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WeightFiles {
    /// One `model.safetensors`.
    Single(PathBuf),
    /// A `model.safetensors.index.json` and its shards (in the order of their names).
    Sharded {
        /// The index file.
        index: PathBuf,
        /// Every shard the index names, resolved.
        shards: Vec<PathBuf>,
    },
}

/// A loaded checkpoint.
#[derive(Debug)]
pub struct Checkpoint {
    /// `config.json`.
    pub config: serde_json::Value,
    /// Every tensor of the weights.
    pub weights: WeightMap,
    /// `tokenizer.json`, when the model has one (vision models do not).
    pub tokenizer: Option<Tokenizer>,
}

/// Parse a `config.json` (must be a JSON object).
pub fn read_config(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(Error::io(format!("reading {}", path.display())))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::corrupt(path, format!("not valid JSON ({e}); the file is corrupt or truncated")))?;
    if !v.is_object() {
        return Err(Error::corrupt(path, "the file must hold a JSON object"));
    }
    Ok(v)
}

/// Load every tensor of one safetensors file onto `device`, floating-point tensors cast to
/// `dtype` (integer buffers such as `position_ids` keep their type). A truncated or corrupt
/// file is an error naming it.
pub fn load_safetensors(path: &Path, device: &Device, dtype: DType) -> Result<WeightMap> {
    let bytes = std::fs::read(path).map_err(Error::io(format!("reading {}", path.display())))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| {
        Error::corrupt(
            path,
            format!(
                "not a valid safetensors file ({e}; {} bytes on disk): it is truncated or corrupt, delete it and download or \
                 save it again",
                bytes.len()
            ),
        )
    })?;
    let mut out = WeightMap::with_capacity(st.len());
    for (name, view) in st.tensors() {
        let t =
            view.load(device).map_err(|e| Error::corrupt(path, format!("tensor `{name}` ({:?}) cannot be loaded: {e}", view.dtype())))?;
        let t = if t.dtype().is_float() && t.dtype() != dtype { t.to_dtype(dtype)? } else { t };
        out.insert(name, t);
    }
    Ok(out)
}

/// Parse a sharded-checkpoint index: tensor name → shard file name.
pub fn read_weight_index(path: &Path) -> Result<BTreeMap<String, String>> {
    let v = read_config(path)?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::corrupt(path, "no `weight_map` object (tensor name → shard file)"))?;
    let mut out = BTreeMap::new();
    for (name, shard) in map {
        let shard = shard.as_str().ok_or_else(|| Error::corrupt(path, format!("`weight_map.{name}` is not a file name")))?;
        if shard.is_empty() || shard.contains(['/', '\\']) || shard == ".." {
            return Err(Error::corrupt(path, format!("`weight_map.{name}` names `{shard}`, which is not a file next to the index")));
        }
        out.insert(name.clone(), shard.to_string());
    }
    if out.is_empty() {
        return Err(Error::corrupt(path, "`weight_map` is empty"));
    }
    Ok(out)
}

/// Load a tokenizer from a `tokenizer.json`.
pub fn load_tokenizer(path: &Path) -> Result<Tokenizer> {
    if !path.is_file() {
        return Err(Error::Io {
            context: format!("reading tokenizer {}", path.display()),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        });
    }
    Tokenizer::from_file(path).map_err(|e| Error::corrupt(path, format!("not a usable tokenizer.json: {e}")))
}

impl ModelFiles {
    /// `config.json`'s path.
    pub fn config_path(&self) -> Result<PathBuf> {
        self.get(CONFIG_FILE)
    }

    /// `config.json`.
    pub fn config(&self) -> Result<serde_json::Value> {
        read_config(&self.config_path()?)
    }

    /// Where the weights are: `model.safetensors`, else `model.safetensors.index.json` with
    /// every shard it lists (a missing shard is an error naming it).
    pub fn weight_files(&self) -> Result<WeightFiles> {
        let single_missing = match self.find_or_why(WEIGHTS_FILE)? {
            Ok(p) => return Ok(WeightFiles::Single(p)),
            Err(why) => why,
        };
        let index = match self.find_or_why(WEIGHTS_INDEX_FILE)? {
            Ok(p) => p,
            Err(index_missing) => {
                let mut detail = format!("no `{WEIGHTS_FILE}` ({single_missing}) and no `{WEIGHTS_INDEX_FILE}` ({index_missing})");
                if let crate::ModelSource::Local(dir) = self.source() {
                    if dir.join("pytorch_model.bin").exists() || dir.join("pytorch_model.bin.index.json").exists() {
                        detail.push_str(
                            "; the directory holds PyTorch `.bin` weights only: convert them to safetensors \
                             (`model.save_pretrained(dir, safe_serialization=True)` in transformers)",
                        );
                    }
                }
                return Err(Error::MissingFile {
                    file: WEIGHTS_FILE.into(),
                    source_desc: self.source().to_string(),
                    detail,
                    fix: self.missing_fix().into(),
                });
            }
        };
        let map = read_weight_index(&index)?;
        let mut by_shard: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (name, shard) in &map {
            by_shard.entry(shard).or_default().push(name);
        }
        let mut shards = Vec::with_capacity(by_shard.len());
        for (shard, names) in &by_shard {
            match self.find_or_why(shard)? {
                Ok(p) => shards.push(p),
                Err(detail) => {
                    return Err(Error::MissingShard {
                        shard: shard.to_string(),
                        index: index.clone(),
                        source_desc: self.source().to_string(),
                        tensors: format!("{} tensors, e.g. `{}`", names.len(), names[0]),
                        detail,
                    })
                }
            }
        }
        Ok(WeightFiles::Sharded { index, shards })
    }

    /// Every weight tensor, on `device`, floating-point ones cast to `dtype`.
    pub fn weights(&self, device: &Device, dtype: DType) -> Result<WeightMap> {
        match self.weight_files()? {
            WeightFiles::Single(p) => load_safetensors(&p, device, dtype),
            WeightFiles::Sharded { index, shards } => {
                let map = read_weight_index(&index)?;
                let mut out = WeightMap::with_capacity(map.len());
                for shard in &shards {
                    let shard_name = shard.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                    let tensors = load_safetensors(shard, device, dtype)?;
                    for (name, _) in map.iter().filter(|(_, s)| s.as_str() == shard_name) {
                        if !tensors.contains_key(name) {
                            return Err(Error::corrupt(
                                shard,
                                format!("{} maps `{name}` to this shard, but the shard does not hold it", index.display()),
                            ));
                        }
                    }
                    for (name, t) in tensors {
                        if out.insert(name.clone(), t).is_some() {
                            return Err(Error::corrupt(shard, format!("tensor `{name}` also appears in another shard")));
                        }
                    }
                }
                Ok(out)
            }
        }
    }

    /// `tokenizer.json`'s path.
    pub fn tokenizer_path(&self) -> Result<PathBuf> {
        self.get(TOKENIZER_FILE)
    }

    /// The tokenizer (`tokenizer.json`); its absence is an error.
    pub fn tokenizer(&self) -> Result<Tokenizer> {
        load_tokenizer(&self.tokenizer_path()?)
    }

    /// The tokenizer, or `None` when the model has no `tokenizer.json`.
    pub fn try_tokenizer(&self) -> Result<Option<Tokenizer>> {
        self.find(TOKENIZER_FILE)?.map(|p| load_tokenizer(&p)).transpose()
    }

    /// Config, weights and (if present) tokenizer.
    pub fn load(&self, device: &Device, dtype: DType) -> Result<Checkpoint> {
        Ok(Checkpoint { config: self.config()?, weights: self.weights(device, dtype)?, tokenizer: self.try_tokenizer()? })
    }

    fn missing_fix(&self) -> &'static str {
        match self.source() {
            crate::ModelSource::Local(_) => "copy the checkpoint into the directory, or pass a hub id `org/name[@revision]` instead",
            crate::ModelSource::Hub { .. } if self.hub().offline => {
                "HF_HUB_OFFLINE is set, so nothing is downloaded: set HF_HOME (or HF_HUB_CACHE) to a cache containing it, \
                 unset HF_HUB_OFFLINE to download it, or pass a local directory"
            }
            crate::ModelSource::Hub { .. } => {
                "check the model id and revision (the repository must hold safetensors weights), or pass a local directory"
            }
        }
    }
}
