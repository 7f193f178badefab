//! A component's view of an optimizer checkpoint: its tensors by key (base-optimizer moments,
//! step counters, trust-region snapshots), read back with shape checks. The file format and the
//! optimizer's own save / load are in `engine::checkpoint`.

use crate::components::model::Params;
use crate::error::{Error, Result};
use candle_core::{Device, Tensor};
use std::collections::HashMap;

/// Read access to one component's tensors in a checkpoint.
pub struct StateReader<'a> {
    prefix: String,
    tensors: &'a HashMap<String, Tensor>,
    path: &'a str,
}

impl<'a> StateReader<'a> {
    /// A reader over tensors held in memory, keys without prefix (the engine's rollback of a
    /// step that produced non-finite weights).
    pub(crate) fn in_memory(tensors: &'a HashMap<String, Tensor>, origin: &'a str) -> Self {
        Self::with_prefix("", tensors, origin)
    }

    /// A reader over the tensors of `tensors` whose keys start with `prefix` (one component's
    /// part of a checkpoint read from `origin`).
    pub(crate) fn with_prefix(prefix: &str, tensors: &'a HashMap<String, Tensor>, origin: &'a str) -> Self {
        Self { prefix: prefix.to_string(), tensors, path: origin }
    }

    /// The tensor stored under `key`, if any.
    pub fn get(&self, key: &str) -> Option<Tensor> {
        self.tensors.get(&format!("{}{key}", self.prefix)).cloned()
    }
    /// The tensor stored under `key`; missing is a checkpoint error.
    pub fn require(&self, key: &str) -> Result<Tensor> {
        self.get(key)
            .ok_or_else(|| Error::Checkpoint { path: self.path.into(), reason: format!("tensor `{}{key}` is missing", self.prefix) })
    }
    /// The tensor for parameter `name` under `key`, checked against the parameter's shape.
    pub fn require_like(&self, key: &str, like: &Tensor) -> Result<Tensor> {
        let t = self.require(key)?;
        if t.shape() != like.shape() {
            return Err(Error::Checkpoint {
                path: self.path.into(),
                reason: format!("tensor `{}{key}` has shape {:?}, the model's parameter has {:?}", self.prefix, t.dims(), like.dims()),
            });
        }
        Ok(t.to_device(like.device())?.to_dtype(like.dtype())?)
    }
}

/// Parse a step counter stored as a one-element i64 tensor.
pub fn scalar_u64(t: &Tensor) -> Result<u64> {
    Ok(t.flatten_all()?.to_vec1::<i64>()?.first().copied().unwrap_or(0).max(0) as u64)
}

/// A step counter as a tensor.
pub fn u64_tensor(v: u64) -> Result<Tensor> {
    Ok(Tensor::new(&[v as i64], &Device::Cpu)?)
}

/// Checkpoint entries `<key>/<param name>` for a snapshot aligned with `params`.
pub fn snapshot_state(key: &str, params: &Params, snapshot: &crate::components::model::Snapshot) -> Vec<(String, Tensor)> {
    params.iter().zip(snapshot.tensors()).map(|(p, t)| (format!("{key}/{}", p.name), t.clone())).collect()
}

/// Read a snapshot written by [`snapshot_state`], checking every parameter's shape.
pub fn load_snapshot(key: &str, params: &Params, reader: &StateReader<'_>) -> Result<crate::components::model::Snapshot> {
    let tensors =
        params.iter().map(|p| reader.require_like(&format!("{key}/{}", p.name), p.var.as_tensor())).collect::<Result<Vec<_>>>()?;
    crate::components::model::Snapshot::from_tensors(params, tensors)
}
