//! Training checkpoints: the model parameters, the optimizer and trust-region state
//! ([`tram::Optimizer::state_bytes`]), the best parameters so far (model selection), the
//! dropout stream position, the data position, the step and the length of the metrics log.
//!
//! Layout under a run directory:
//! ```text
//! checkpoints/step-00000120/{model.safetensors, optimizer.safetensors, best.safetensors, trainer.json}
//! checkpoints/latest            # "step-00000120"
//! ```
//! A checkpoint is written into a temporary directory that is renamed into place, and only
//! then does `latest` (written atomically) point at it; older checkpoints are removed after.
//! Every file's size and FNV-1a hash are recorded in `trainer.json`, and `trainer.json` carries
//! the hash of its own text ([`TrainerState::state_hash`]); all are checked on load, so a
//! truncated or edited checkpoint (a changed step, data position or metrics length included)
//! is an error, never a silent restart or a silently different run.
//!
//! A checkpoint's bytes depend only on the run: two identical runs write identical files.
//! The wall-clock training time, which does not, is kept beside the checkpoints in
//! `checkpoints/timing.json` (informational; not verified).

use crate::error::{Error, Result};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tram::{Params, Snapshot};

/// `format` of `trainer.json`.
pub const FORMAT: &str = "tram-trainer-checkpoint";
/// Its version (2: `trainer.json` hashes itself; the training time moved to `timing.json`).
pub const VERSION: u32 = 2;
/// Parameters file.
pub const MODEL_FILE: &str = "model.safetensors";
/// Optimizer state file.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// Best-so-far parameters file.
pub const BEST_FILE: &str = "best.safetensors";
/// Trainer state file.
pub const STATE_FILE: &str = "trainer.json";
/// Pointer to the latest checkpoint.
pub const LATEST: &str = "latest";
/// Training seconds up to the latest checkpoint, beside the checkpoints (not part of one).
pub const TIMING_FILE: &str = "timing.json";

/// The model selection state.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Best {
    /// Step of the best validation loss.
    pub step: u64,
    /// That loss.
    pub loss: f64,
}

/// `trainer.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TrainerState {
    /// [`FORMAT`].
    pub format: String,
    /// [`VERSION`].
    pub version: u32,
    /// Optimizer steps done.
    pub step: u64,
    /// The run's seed.
    pub seed: u64,
    /// The data stream position.
    pub data_position: Value,
    /// Dropout stream position (a u128 as a decimal string).
    pub dropout_position: String,
    /// Best validation loss so far.
    pub best: Option<Best>,
    /// Bytes of `metrics.jsonl` written up to this checkpoint.
    pub metrics_bytes: u64,
    /// The configuration that must match on resume.
    pub fingerprint: Value,
    /// File name → (size, FNV-1a 64 hash as hex).
    pub files: BTreeMap<String, (u64, String)>,
    /// FNV-1a 64 of this file's text as written with this field empty (set by [`write()`],
    /// checked by [`read`]).
    #[serde(default)]
    pub state_hash: String,
}

/// The `"state_hash": "<hex>"` text of a pretty-printed `trainer.json`.
fn state_hash_text(hash: &str) -> String {
    format!("\"state_hash\": \"{hash}\"")
}

/// FNV-1a 64 of `bytes`.
pub fn fnv1a(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

/// Serialise parameters (or a snapshot aligned with them) by name.
pub fn params_bytes(params: &Params, values: Option<&Snapshot>) -> Result<Vec<u8>> {
    let tensors: Vec<(String, Tensor)> = match values {
        Some(s) => params.iter().zip(s.tensors()).map(|(p, t)| (p.name.clone(), t.clone())).collect(),
        None => params.iter().map(|p| (p.name.clone(), p.var.as_detached_tensor())).collect(),
    };
    Ok(tram_hub::safetensors_bytes(&tensors)?)
}

/// Read tensors saved by [`params_bytes`] as values aligned with `params` (every name
/// present, every shape equal).
pub fn read_params(params: &Params, bytes: &[u8], origin: &Path) -> Result<Vec<Tensor>> {
    let device = params.iter().next().map(|p| p.var.device().clone()).unwrap_or(candle_core::Device::Cpu);
    let map = candle_core::safetensors::load_buffer(bytes, &candle_core::Device::Cpu)
        .map_err(|e| Error::checkpoint(origin, format!("not a readable safetensors file: {e}")))?;
    if map.len() != params.len() {
        return Err(Error::checkpoint(
            origin,
            format!("holds {} tensors, the model has {} parameters: it was written for another model", map.len(), params.len()),
        ));
    }
    params
        .iter()
        .map(|p| {
            let t = map.get(&p.name).ok_or_else(|| {
                Error::checkpoint(origin, format!("has no tensor for parameter `{}`: it was written for another model", p.name))
            })?;
            if t.dims() != p.var.dims() {
                return Err(Error::checkpoint(
                    origin,
                    format!(
                        "parameter `{}` has shape {:?} there, {:?} in the model: it was written for another model",
                        p.name,
                        t.dims(),
                        p.var.dims()
                    ),
                ));
            }
            Ok(t.to_dtype(p.var.dtype())?.to_device(&device)?)
        })
        .collect()
}

/// The checkpoints directory of a run directory.
pub fn checkpoints_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("checkpoints")
}

/// The latest checkpoint of a run directory, if any (a dangling pointer is an error).
pub fn latest(run_dir: &Path) -> Result<Option<PathBuf>> {
    let root = checkpoints_dir(run_dir);
    let pointer = root.join(LATEST);
    if !pointer.exists() {
        // A checkpoint directory without a pointer means a write was interrupted before the
        // pointer landed; with nothing else there, there is no checkpoint.
        let any = std::fs::read_dir(&root)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .any(|e| e.file_name().to_string_lossy().starts_with("step-") && !e.file_name().to_string_lossy().contains(".tmp"))
            })
            .unwrap_or(false);
        if any {
            return Err(Error::checkpoint(
                &root,
                "holds checkpoints but no `latest` pointer; the directory was edited by hand: restore `latest` or delete the directory",
            ));
        }
        return Ok(None);
    }
    let name = std::fs::read_to_string(&pointer).map_err(|e| Error::io(format!("reading {}", pointer.display()), e))?;
    let name = name.trim();
    if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
        return Err(Error::checkpoint(&pointer, format!("does not name a checkpoint (`{name}`)")));
    }
    let dir = root.join(name);
    if !dir.is_dir() {
        return Err(Error::checkpoint(&pointer, format!("points at {}, which does not exist", dir.display())));
    }
    Ok(Some(dir))
}

/// The files of one checkpoint, in memory.
pub struct CheckpointFiles {
    /// Model parameters.
    pub model: Vec<u8>,
    /// Optimizer state.
    pub optimizer: Vec<u8>,
    /// Best parameters, when model selection holds some.
    pub best: Option<Vec<u8>>,
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
    f.write_all(bytes).map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    f.sync_all().map_err(|e| Error::io(format!("syncing {}", path.display()), e))
}

/// Write a checkpoint atomically and point `latest` at it; remove older ones.
pub fn write(run_dir: &Path, mut state: TrainerState, files: CheckpointFiles) -> Result<PathBuf> {
    let root = checkpoints_dir(run_dir);
    std::fs::create_dir_all(&root).map_err(|e| Error::io(format!("creating {}", root.display()), e))?;
    let name = format!("step-{:08}", state.step);
    let tmp = root.join(format!(".{name}.tmp{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(format!("removing {}", tmp.display()), e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(format!("creating {}", tmp.display()), e))?;
    let written = write_into(&root, &tmp, &name, &mut state, &files);
    if written.is_err() {
        // A full disk or a write error: leave no partial checkpoint behind.
        let _ = std::fs::remove_dir_all(&tmp);
    }
    let dir = written?;
    tram::state::write_atomic(&root.join(LATEST), name.as_bytes())?;
    // Remove every other checkpoint and leftover temporary directory.
    if let Ok(entries) = std::fs::read_dir(&root) {
        for e in entries.filter_map(|e| e.ok()) {
            let n = e.file_name().to_string_lossy().to_string();
            if n != name && n != LATEST && (n.starts_with("step-") || n.starts_with(".step-")) && e.path().is_dir() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    Ok(dir)
}

/// Write the files into `tmp` and rename it to `root/name`.
fn write_into(root: &Path, tmp: &Path, name: &str, state: &mut TrainerState, files: &CheckpointFiles) -> Result<PathBuf> {
    let mut list: Vec<(&str, &[u8])> = vec![(MODEL_FILE, &files.model), (OPTIMIZER_FILE, &files.optimizer)];
    if let Some(b) = &files.best {
        list.push((BEST_FILE, b));
    }
    state.files.clear();
    for (file, bytes) in &list {
        write_file(&tmp.join(file), bytes)?;
        state.files.insert(file.to_string(), (bytes.len() as u64, fnv1a(bytes)));
    }
    state.state_hash = String::new();
    let unhashed = serde_json::to_string_pretty(&state).expect("trainer state serialises");
    let hash = fnv1a(unhashed.as_bytes());
    let json = unhashed.replacen(&state_hash_text(""), &state_hash_text(&hash), 1);
    write_file(&tmp.join(STATE_FILE), json.as_bytes())?;
    let dir = root.join(name);
    if dir.exists() {
        // Same step written again (e.g. a final checkpoint right after a periodic one).
        let old = root.join(format!(".{name}.old{}", std::process::id()));
        std::fs::rename(&dir, &old).map_err(|e| Error::io(format!("moving {} aside", dir.display()), e))?;
        std::fs::rename(tmp, &dir).map_err(|e| Error::io(format!("renaming {} to {}", tmp.display(), dir.display()), e))?;
        let _ = std::fs::remove_dir_all(&old);
    } else {
        std::fs::rename(tmp, &dir).map_err(|e| Error::io(format!("renaming {} to {}", tmp.display(), dir.display()), e))?;
    }
    if let Ok(d) = std::fs::File::open(root) {
        let _ = d.sync_all();
    }
    Ok(dir)
}

/// A checkpoint read back and verified.
pub struct Loaded {
    /// Its directory.
    pub dir: PathBuf,
    /// `trainer.json`.
    pub state: TrainerState,
    /// The files.
    pub files: CheckpointFiles,
}

/// Read and verify the checkpoint in `dir`.
pub fn read(dir: &Path) -> Result<Loaded> {
    let state_path = dir.join(STATE_FILE);
    let text = std::fs::read(&state_path)
        .map_err(|e| Error::checkpoint(&state_path, format!("cannot read it ({e}); the checkpoint is incomplete")))?;
    let raw: Value = serde_json::from_slice(&text)
        .map_err(|e| Error::checkpoint(&state_path, format!("not valid JSON ({e}): the checkpoint is corrupt")))?;
    if raw.get("format").and_then(Value::as_str) != Some(FORMAT) {
        return Err(Error::checkpoint(&state_path, format!("not a tram trainer checkpoint (`format` is not `{FORMAT}`)")));
    }
    let version = raw.get("version").and_then(Value::as_u64).unwrap_or(0);
    if version != VERSION as u64 {
        return Err(Error::checkpoint(&state_path, format!("format version {version}; this build reads version {VERSION}")));
    }
    let state: TrainerState = serde_json::from_value(raw).map_err(|e| Error::checkpoint(&state_path, format!("malformed ({e})")))?;
    // The file's own hash: the text with the hash's value emptied must hash to it.
    let text = String::from_utf8_lossy(&text);
    let hashed = state.state_hash.len() == 16 && text.matches(&state_hash_text(&state.state_hash)).count() == 1;
    if !hashed || fnv1a(text.replacen(&state_hash_text(&state.state_hash), &state_hash_text(""), 1).as_bytes()) != state.state_hash {
        return Err(Error::checkpoint(
            &state_path,
            "its content hash does not match the one recorded when it was written: the file was edited or is corrupt \
             (restore it, or delete the checkpoints to start over)",
        ));
    }
    let read_one = |file: &str, required: bool| -> Result<Option<Vec<u8>>> {
        let path = dir.join(file);
        let Some((size, hash)) = state.files.get(file) else {
            if required {
                return Err(Error::checkpoint(&state_path, format!("does not list `{file}`: the checkpoint is corrupt")));
            }
            return Ok(None);
        };
        let bytes =
            std::fs::read(&path).map_err(|e| Error::checkpoint(&path, format!("cannot read it ({e}); the checkpoint is incomplete")))?;
        if bytes.len() as u64 != *size {
            return Err(Error::checkpoint(
                &path,
                format!("has {} bytes, {size} were written: the file is truncated or corrupt", bytes.len()),
            ));
        }
        if &fnv1a(&bytes) != hash {
            return Err(Error::checkpoint(
                &path,
                "its content hash does not match the one recorded when it was written: the file is corrupt",
            ));
        }
        Ok(Some(bytes))
    };
    let model = read_one(MODEL_FILE, true)?.expect("required");
    let optimizer = read_one(OPTIMIZER_FILE, true)?.expect("required");
    let best = read_one(BEST_FILE, false)?;
    Ok(Loaded { dir: dir.to_path_buf(), state, files: CheckpointFiles { model, optimizer, best } })
}

/// The keys of two fingerprints that differ (dotted paths), `a` being the checkpoint's.
pub fn differences(a: &Value, b: &Value) -> Vec<String> {
    differences_from(a, b, "checkpoint")
}

/// The keys of two fingerprints that differ (dotted paths), `a` being the one recorded in
/// `origin` (e.g. `checkpoint`, `results`).
pub fn differences_from(a: &Value, b: &Value, origin: &str) -> Vec<String> {
    fn walk(a: &Value, b: &Value, path: &str, origin: &str, out: &mut Vec<String>) {
        match (a, b) {
            (Value::Object(x), Value::Object(y)) => {
                let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
                for k in keys {
                    let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                    walk(x.get(k).unwrap_or(&Value::Null), y.get(k).unwrap_or(&Value::Null), &p, origin, out);
                }
            }
            _ if a != b => out.push(format!("{path} ({origin}: {a}, now: {b})")),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(a, b, "", origin, &mut out);
    out
}

/// Record the training seconds up to the checkpoint just written (see [`TIMING_FILE`]).
pub fn write_timing(run_dir: &Path, train_seconds: f64) -> Result<()> {
    let v = serde_json::json!({ "train_seconds": train_seconds });
    Ok(tram::state::write_atomic(&checkpoints_dir(run_dir).join(TIMING_FILE), v.to_string().as_bytes())?)
}

/// The training seconds recorded by [`write_timing`] (0 when absent or unreadable: they are
/// informational).
pub fn read_timing(run_dir: &Path) -> f64 {
    std::fs::read(checkpoints_dir(run_dir).join(TIMING_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| v.get("train_seconds").and_then(Value::as_f64))
        .unwrap_or(0.0)
}
