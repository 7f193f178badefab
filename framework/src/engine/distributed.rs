//! The engine's side of data-parallel training (README "Data-parallel training"): where a step
//! calls its [`Collective`], and the global example offsets that key noise and dropout.

use super::PassOut;
use crate::components::model::Model;
use crate::distributed::{AscentScope, Collective, Single};
use crate::error::{Error, Result};
use crate::noise::NoiseSource;
use candle_core::{DType, Device, Tensor};
use std::sync::Arc;

/// The data-parallel setting of an [`Optimizer`](crate::Optimizer).
pub(crate) struct Dist {
    pub(crate) collective: Arc<dyn Collective>,
    pub(crate) ascent: AscentScope,
    /// Per micro-batch of the next step: the global index of its first example.
    pub(crate) offsets: Vec<usize>,
    /// The first pass's gradient is this rank's own (local ascent) and still has to be
    /// combined when no second pass does it; holds this rank's rows.
    unreduced: Option<usize>,
}

impl Default for Dist {
    fn default() -> Self {
        Self { collective: Arc::new(Single), ascent: AscentScope::Global, offsets: Vec::new(), unreduced: None }
    }
}

impl Dist {
    pub(crate) fn world(&self) -> usize {
        self.collective.world()
    }

    /// Before micro-batch `i` of a pass: its global example offset to the model (dropout) and
    /// the noise source. Nothing in a single process with no offsets set (the default).
    pub(crate) fn begin_batch(&self, i: usize, model: &dyn Model, noise: &mut dyn NoiseSource) -> Result<()> {
        if self.world() == 1 && self.offsets.is_empty() {
            return Ok(());
        }
        let offset = self.offsets.get(i).copied().unwrap_or(0);
        model.set_example_offset(offset)?;
        noise.set_example_offset(offset);
        Ok(())
    }

    /// The end of a pass on W > 1 ranks: the row-weighted sums of this rank's gradient (`acc`:
    /// the mean when `k == 1`, else already Σ rows·g) and statistics over the ranks, in one
    /// collective call, divided by the global rows. With `local` (the first pass of a
    /// two-pass step under [`AscentScope::Local`]) the gradient and δ stay this rank's own and
    /// only the loss and penalty are combined.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn finish_pass(
        &mut self,
        local: bool,
        k: usize,
        acc: Vec<Tensor>,
        sums: [f64; 3],
        rows: usize,
        penalties: bool,
        sizing: bool,
    ) -> Result<PassOut> {
        let [loss_sum, pen_sum, delta_sum] = sums;
        let n_local = rows.max(1) as f64;
        if local {
            let mut s = [loss_sum, pen_sum, rows as f64];
            self.collective.all_reduce_sum_f64(&mut s)?;
            let n = s[2].max(1.0);
            let grads = if k > 1 { crate::ops::scale_all(&acc, 1.0 / n_local)? } else { acc };
            self.unreduced = Some(rows);
            return Ok(PassOut {
                loss: s[0] / n,
                grads,
                penalty: penalties.then_some(s[1] / n),
                delta: sizing.then_some(delta_sum / n_local),
            });
        }
        let weighted = if k == 1 { crate::ops::scale_all(&acc, rows as f64)? } else { acc };
        let (grads, s) = self.reduce(weighted, [loss_sum, pen_sum, delta_sum, rows as f64])?;
        self.unreduced = None;
        let n = s[3].max(1.0);
        Ok(PassOut {
            loss: s[0] / n,
            grads: crate::ops::scale_all(&grads, 1.0 / n)?,
            penalty: penalties.then_some(s[1] / n),
            delta: sizing.then_some(s[2] / n),
        })
    }

    /// After the ascent of a step: a gradient the first pass left as this rank's own (local
    /// ascent, and no second pass on this rank) combined over the ranks, in the same single
    /// call a second pass makes, so ranks with and without an ascent stay in step.
    pub(crate) fn settle(&mut self, grads: Vec<Tensor>) -> Result<Vec<Tensor>> {
        let Some(rows) = self.unreduced.take() else { return Ok(grads) };
        let weighted = crate::ops::scale_all(&grads, rows as f64)?;
        let (grads, s) = self.reduce(weighted, [0.0, 0.0, 0.0, rows as f64])?;
        crate::ops::scale_all(&grads, 1.0 / s[3].max(1.0))
    }

    /// Whether the first pass of a step keeps this rank's own gradient.
    pub(crate) fn local_first_pass(&self, two_pass: bool) -> bool {
        two_pass && self.ascent == AscentScope::Local && self.world() > 1
    }

    /// One collective call: the tensors and the four statistics, summed over the ranks.
    fn reduce(&self, mut tensors: Vec<Tensor>, stats: [f64; 4]) -> Result<(Vec<Tensor>, [f64; 4])> {
        tensors.push(Tensor::new(&stats, &Device::Cpu)?);
        let mut out = self.collective.all_reduce_sum(&tensors)?;
        let s = out.pop().ok_or_else(|| Error::Model("the collective returned no statistics".into()))?;
        let s: Vec<f64> = s.to_dtype(DType::F64)?.to_vec1()?;
        Ok((out, [s[0], s[1], s[2], s[3]]))
    }
}

impl super::Optimizer {
    /// Run the steps data-parallel over `collective`'s ranks (default: [`Single`], one
    /// process). Every rank builds the same optimizer, feeds its share of each global
    /// micro-batch, and gets the same update (README "Data-parallel training").
    pub fn set_collective(&mut self, collective: Arc<dyn Collective>) {
        self.dist.collective = collective;
    }
    /// The collective the steps use.
    pub fn collective(&self) -> &Arc<dyn Collective> {
        &self.dist.collective
    }
    /// Which gradient sizes the ascent on W > 1 ranks ([`AscentScope`]; default global).
    pub fn set_ascent_scope(&mut self, ascent: AscentScope) {
        self.dist.ascent = ascent;
    }
    /// For the next steps: per micro-batch, the index in the global micro-batch of this rank's
    /// first example (`rank · B` for equal shares), which keys noise samples and dropout masks
    /// (missing entries: 0). A single process leaves it empty.
    pub fn set_example_offsets(&mut self, offsets: Vec<usize>) {
        self.dist.offsets = offsets;
    }
}
