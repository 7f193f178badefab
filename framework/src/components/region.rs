//! Trust regions (paper §3): a *target* output produced without gradient (θ_{t-1}, θ₀, noised
//! input, EMA) and a *distance* between target and current logits.

use crate::components::model::{Batch, Logits, Mode, Model, Params, Snapshot};
use crate::error::Result;
use crate::noise::NoiseSource;
use candle_core::{Shape, Tensor};
use serde::{Deserialize, Serialize};

/// How a distance is reduced over rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Reduction {
    /// Per-row mean (the paper's definition).
    #[default]
    Mean,
    /// TRAM's reference code: KL divided by rows × classes and again by the batch size; MMD
    /// and L2 (the per-row *mean* of row norms) divided by the batch size. As TRAM's radius it
    /// also drops the δ ≤ 0 guard, as the reference code has none.
    Reference,
}

/// A distance `D(target ‖ current)` between two `[rows, classes]` logit tensors, in f32.
pub trait Distance: Send + Sync {
    /// Registered name.
    fn name(&self) -> &str;
    /// The distance as a scalar tensor; differentiable in the inputs that carry a graph.
    /// `examples` is the number of examples in the batch (for `Reduction::Reference`).
    fn distance(&self, target: &Tensor, current: &Tensor, reduction: Reduction, examples: usize) -> Result<Tensor>;
    /// Parameters that differ from the defaults, for reports.
    fn describe(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
    /// The distance of detached copies of `target` and `current`, detached, with its gradient
    /// with respect to each. Run-time plugins are differentiated through this: the default body
    /// is compiled into the plugin, so the graph it builds uses only the plugin's copy of candle
    /// (see `tram::plugin`). Do not override.
    #[doc(hidden)]
    fn distance_with_grads(
        &self,
        target: &Tensor,
        current: &Tensor,
        reduction: Reduction,
        examples: usize,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let t = candle_core::Var::from_tensor(&target.detach())?;
        let c = candle_core::Var::from_tensor(&current.detach())?;
        let d = self.distance(t.as_tensor(), c.as_tensor(), reduction, examples)?;
        let grads = d.backward()?;
        let grad = |v: &candle_core::Var| -> Result<Tensor> {
            Ok(match grads.get(v.as_tensor()) {
                Some(g) => g.detach(),
                None => v.as_tensor().zeros_like()?,
            })
        };
        Ok((d.detach(), grad(&t)?, grad(&c)?))
    }
}

/// What a trust region sees when it produces a target.
pub struct TargetCtx<'a> {
    /// The model being trained.
    pub model: &'a dyn Model,
    /// The micro-batch.
    pub batch: &'a Batch,
    /// The mode of the current training pass.
    pub mode: Mode,
    /// Per-micro-batch noise, sampled once per step and reused by every pass of that step.
    pub noise: &'a mut NoiseSlot<'a>,
}

/// A lazily drawn noise sample for one micro-batch, shared by the passes of one step.
pub struct NoiseSlot<'a> {
    pub(crate) source: &'a mut dyn NoiseSource,
    pub(crate) sample: &'a mut Option<Tensor>,
}

impl NoiseSlot<'_> {
    /// The noise for embeddings of `shape` (drawn on first use, then reused).
    pub fn get(&mut self, shape: &Shape, kind: crate::noise::NoiseKind, sigma: f64, like: &Tensor) -> Result<Tensor> {
        if let Some(z) = self.sample.as_ref() {
            if z.shape() != shape {
                return Err(crate::Error::Model(format!(
                    "noise of shape {:?} was drawn for this micro-batch, now embeddings of shape {:?} ask for it: embed() must return the same shape in every pass",
                    z.dims(),
                    shape.dims()
                )));
            }
            return Ok(z.clone());
        }
        let z = self.source.sample(shape, kind, sigma, like.device(), like.dtype())?;
        *self.sample = Some(z.clone());
        Ok(z)
    }
}

/// A trust region: produces target logits and owns any parameter history it needs.
pub trait TrustRegion: Send {
    /// Registered name.
    fn name(&self) -> &str;
    /// Called once before the first step with the pretrained parameters θ₀.
    fn init(&mut self, params: &Params) -> Result<()>;
    /// Target logits for the micro-batch. With `grad` the target keeps its graph (R3F);
    /// otherwise it is evaluated without building one.
    fn target(&mut self, ctx: &mut TargetCtx<'_>, grad: bool) -> Result<Logits>;
    /// Whether the target depends on the current parameters (it must then be recomputed
    /// at the perturbed point of a two-pass step).
    fn tracks_current(&self) -> bool;
    /// The noised input embeddings, for regions that perturb the input (TRAM-Fisher runs
    /// its first pass there). `None` for regions that do not.
    fn noised_embeds(&mut self, _ctx: &mut TargetCtx<'_>, _embeds: &Tensor) -> Result<Option<Tensor>> {
        Ok(None)
    }
    /// Whether [`TrustRegion::noised_embeds`] returns a value.
    fn perturbs_input(&self) -> bool {
        false
    }
    /// Called with θ_t just before the base update; `exact_copy` is a bitwise copy of θ_t
    /// when the engine already has one (the two-pass backup), free to keep.
    fn before_update(&mut self, _params: &Params, _exact_copy: Option<&Snapshot>) -> Result<()> {
        Ok(())
    }
    /// Called after the base update.
    fn after_update(&mut self, _params: &Params) -> Result<()> {
        Ok(())
    }
    /// The state to checkpoint, as `(key, tensor)` with keys unique within this region.
    fn state(&self, params: &Params) -> Vec<(String, Tensor)>;
    /// Restore from [`TrustRegion::state`]'s keys.
    fn load_state(&mut self, params: &Params, state: &crate::components::state::StateReader<'_>) -> Result<()>;
    /// Parameters, for reports and `Display`.
    fn describe(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}
