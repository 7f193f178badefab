//! The rollback copy of the base optimizer's state: what a step that made a weight non-finite
//! restores. Base optimizers may update their state in place (the fused Adam / AdamW / SGD
//! kernels do), so the tensors [`BaseOptimizer::state`](crate::components::base::BaseOptimizer::state)
//! returns may be the live buffers: the backup must be a copy. It is copied into buffers kept
//! from step to step (allocated once per key, shape, dtype and device), so a step allocates
//! nothing for it.

use crate::error::Result;
use candle_core::{Tensor, Var};
use std::collections::HashMap;

/// Persistent copies of a state, by key.
#[derive(Default)]
pub(crate) struct StateBackup {
    buffers: Vec<(String, Var)>,
}

impl StateBackup {
    /// Copy `state` into the buffers (each written in place when its key, shape, dtype and
    /// device match the previous step's, allocated otherwise).
    pub(crate) fn save(&mut self, state: Vec<(String, Tensor)>) -> Result<()> {
        let mut old: HashMap<String, Var> = std::mem::take(&mut self.buffers).into_iter().collect();
        for (key, t) in state {
            let buf = match old.remove(&key) {
                Some(b) if b.shape() == t.shape() && b.dtype() == t.dtype() && b.device().same_device(t.device()) => b,
                _ => Var::zeros(t.shape(), t.dtype(), t.device())?,
            };
            buf.set(&t)?;
            self.buffers.push((key, buf));
        }
        Ok(())
    }

    /// Fresh copies of the saved tensors, by key (for `load_state`: the buffers stay the
    /// backup's own, whatever the optimizer does with what it is given).
    pub(crate) fn copies(&self) -> Result<HashMap<String, Tensor>> {
        self.buffers.iter().map(|(k, b)| Ok((k.clone(), b.as_detached_tensor().copy()?))).collect()
    }
}
