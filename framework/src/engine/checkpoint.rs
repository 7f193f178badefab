//! The optimizer's checkpoint: every component's state tensors (keyed `base/…`, `region<i>/…`,
//! `engine/…`) and the noise stream position, saved as safetensors with a format version and
//! written atomically (temp file + rename).

use super::Optimizer;
use crate::components::model::Params;
use crate::components::state::{scalar_u64, u64_tensor, StateReader};
use crate::error::{Error, Result};
use candle_core::{Device, Tensor};
use std::collections::BTreeMap;
use std::path::Path;

/// The `format` metadata value of optimizer checkpoints.
pub const FORMAT: &str = "tram-optimizer-state";
/// The current format version.
pub const VERSION: u32 = 1;

/// Write `bytes` to `path` atomically: a temp file in the same directory (`.<name>.tmp<pid>`),
/// fsync, rename. On failure (a full disk, say) the temp file is removed, not left behind.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let io = |context: String| move |source| Error::Io { context, source };
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    let tmp = dir.join(format!(".{}.tmp{}", path.file_name().and_then(|n| n.to_str()).unwrap_or("state"), std::process::id()));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(io(format!("creating {}", tmp.display())))?;
        f.write_all(bytes).map_err(io(format!("writing {}", tmp.display())))?;
        f.sync_all().map_err(io(format!("syncing {}", tmp.display())))?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(io(format!("renaming {} to {}", tmp.display(), path.display())))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Serialise tensors to safetensors bytes that depend only on the tensors and `metadata`.
///
/// `safetensors::serialize` takes the metadata as a `HashMap` and writes it in the map's
/// (random) iteration order, so two identical saves differ in bytes when there is more than one
/// entry. Here the tensors are serialised without metadata (their order is fixed: by dtype,
/// then name) and the metadata is spliced into the header in key order.
pub fn safetensors_bytes(tensors: Vec<(String, Tensor)>, metadata: &BTreeMap<String, String>) -> Result<Vec<u8>> {
    let bad = |reason: String| Error::Checkpoint { path: "<memory>".into(), reason };
    let plain = safetensors::serialize(tensors, None).map_err(|e| bad(e.to_string()))?;
    let n = u64::from_le_bytes(plain[..8].try_into().expect("8 bytes")) as usize;
    let header = std::str::from_utf8(&plain[8..8 + n]).map_err(|e| bad(e.to_string()))?.trim_end();
    let entries = header.strip_prefix('{').and_then(|h| h.strip_suffix('}')).ok_or_else(|| bad("unexpected safetensors header".into()))?;
    let meta = serde_json::to_string(metadata).map_err(|e| bad(e.to_string()))?;
    let mut spliced = format!("{{\"__metadata__\":{meta}");
    if !entries.is_empty() {
        spliced.push(',');
        spliced.push_str(entries);
    }
    spliced.push('}');
    // The data starts 8-byte aligned, as safetensors writes it.
    while spliced.len() % 8 != 0 {
        spliced.push(' ');
    }
    let mut out = Vec::with_capacity(8 + spliced.len() + plain.len() - 8 - n);
    out.extend((spliced.len() as u64).to_le_bytes());
    out.extend(spliced.as_bytes());
    out.extend(&plain[8 + n..]);
    Ok(out)
}

impl Optimizer {
    /// Every state tensor, keyed `base/…`, `region<i>/…`, `engine/…`, and `masters/…` (the
    /// f32 master weights of a bf16 model, on which the components' state is kept).
    fn state_tensors(&self, live: &Params) -> Result<BTreeMap<String, Tensor>> {
        let mut out: BTreeMap<String, Tensor> = self.masters_state(live).into_iter().collect();
        let params = self.working(live);
        for (k, t) in self.base().state(params)? {
            out.insert(format!("base/{k}"), t);
        }
        for (i, b) in self.bound().enumerate() {
            for (k, t) in b.region.state(params)? {
                out.insert(format!("region{i}/{k}"), t);
            }
        }
        out.insert("engine/step".into(), u64_tensor(self.step)?);
        out.insert("engine/skipped".into(), u64_tensor(self.skipped)?);
        out.insert("engine/no_ascent".into(), u64_tensor(self.no_ascent)?);
        Ok(out)
    }

    /// Serialise the optimizer state to safetensors bytes.
    pub fn state_bytes(&self, params: &Params) -> Result<Vec<u8>> {
        let tensors = self.state_tensors(params)?;
        let mut meta = BTreeMap::new();
        meta.insert("format".to_string(), FORMAT.to_string());
        meta.insert("version".to_string(), VERSION.to_string());
        meta.insert("composition".to_string(), self.to_string());
        meta.insert("tram_version".to_string(), env!("CARGO_PKG_VERSION").to_string());
        meta.insert("initialized".to_string(), self.initialized.to_string());
        if let Some(n) = self.noise().save() {
            meta.insert("noise".to_string(), n);
        }
        let tensors: Vec<(String, Tensor)> =
            tensors.into_iter().map(|(k, t)| Ok((k, t.to_device(&Device::Cpu)?.contiguous()?))).collect::<Result<_>>()?;
        safetensors_bytes(tensors, &meta)
    }

    /// Save the optimizer state to `path` atomically.
    pub fn save_state(&self, params: &Params, path: &Path) -> Result<()> {
        write_atomic(path, &self.state_bytes(params)?)
    }

    /// Restore state saved by [`Optimizer::save_state`] for the same composition and model.
    pub fn load_state(&mut self, params: &Params, path: &Path) -> Result<()> {
        let p = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| Error::Checkpoint { path: p.clone(), reason: format!("cannot read: {e}") })?;
        self.load_state_bytes(params, &bytes, &p)
    }

    /// Restore state from safetensors bytes (`origin` names them in errors).
    ///
    /// For a model with bf16 parameters this restores their f32 master weights too and sets
    /// the parameters from them; a checkpoint written for the other dtype is an error.
    pub fn load_state_bytes(&mut self, live: &Params, bytes: &[u8], origin: &str) -> Result<()> {
        let bad = |reason: String| Error::Checkpoint { path: origin.into(), reason };
        let (_, meta) = safetensors::SafeTensors::read_metadata(bytes)
            .map_err(|e| bad(format!("not a safetensors file ({e}); it is truncated or corrupt")))?;
        let meta = meta.metadata().clone().unwrap_or_default();
        if meta.get("format").map(String::as_str) != Some(FORMAT) {
            return Err(bad(format!("not a TRAM optimizer state (format `{}`)", meta.get("format").cloned().unwrap_or_default())));
        }
        let version: u32 = meta.get("version").and_then(|v| v.parse().ok()).unwrap_or(0);
        if version != VERSION {
            return Err(bad(format!("format version {version}, this build reads version {VERSION}")));
        }
        let comp = meta.get("composition").cloned().unwrap_or_default();
        if comp != self.to_string() {
            return Err(bad(format!("it was written by optimizer `{comp}`, this optimizer is `{self}`; resume with the same composition")));
        }
        let tensors = candle_core::safetensors::load_buffer(bytes, &Device::Cpu).map_err(|e| bad(format!("cannot decode tensors: {e}")))?;
        let reader = |prefix: &str| StateReader::with_prefix(prefix, &tensors, origin);
        let initialized = meta.get("initialized").map(String::as_str) == Some("true");
        self.load_masters(live, &reader(super::masters::KEY), initialized, origin)?;
        let masters = self.master_params().cloned();
        let params = masters.as_ref().unwrap_or(live);
        self.base_mut().load_state(params, &reader("base/"))?;
        let n = self.bound().count();
        let mut regions: Vec<_> = self.bound_mut().collect();
        for (i, b) in regions.iter_mut().enumerate().take(n) {
            b.region.load_state(params, &reader(&format!("region{i}/")))?;
        }
        let engine = reader("engine/");
        self.step = scalar_u64(&engine.require("step")?)?;
        self.skipped = scalar_u64(&engine.require("skipped")?)?;
        self.no_ascent = scalar_u64(&engine.require("no_ascent")?)?;
        self.initialized = initialized;
        if let Some(n) = meta.get("noise") {
            self.noise_mut().load(n)?;
        }
        Ok(())
    }
}
