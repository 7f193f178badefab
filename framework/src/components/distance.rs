//! Distances `D(target ‖ current)` between the logits of a trust region's target and the
//! current logits (KL in three directions, MMD, L2, ...), and how they are reduced over rows.

use crate::error::Result;
use candle_core::Tensor;
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
///
/// ```
/// use candle_core::{Device, Tensor};
/// use tram::{Distance, Reduction};
///
/// /// Mean absolute difference of the logits.
/// struct L1;
/// impl Distance for L1 {
///     fn name(&self) -> &str { "l1" }
///     fn distance(&self, t: &Tensor, c: &Tensor, _: Reduction, _: usize) -> tram::Result<Tensor> {
///         Ok(t.sub(c)?.abs()?.sum_all()?.affine(1.0 / t.dim(0)? as f64, 0.0)?)
///     }
/// }
///
/// let t = Tensor::new(&[[1f32, 2.0], [0.0, 0.0]], &Device::Cpu)?;
/// let c = Tensor::new(&[[1f32, 0.0], [1.0, 1.0]], &Device::Cpu)?;
/// assert_eq!(L1.distance(&t, &c, Reduction::Mean, 2)?.to_scalar::<f32>()?, 2.0);
/// # Ok::<(), tram::Error>(())
/// ```
pub trait Distance: Send + Sync {
    /// Registered name.
    fn name(&self) -> &str;
    /// The distance as a scalar tensor; differentiable in the inputs that carry a graph.
    /// `examples` is the number of examples in the batch (for `Reduction::Reference`).
    ///
    /// Called with f32 logits in the loss (a penalty: `current` carries the graph, `target`
    /// too with `through_target = true`) and with detached f64 logits for TRAM's radius δ
    /// (`radius_precision = "exact"`): use ops that work in both dtypes, and the
    /// differentiable ones of [`crate::ops`] (candle's fused softmax drops gradients).
    fn distance(&self, target: &Tensor, current: &Tensor, reduction: Reduction, examples: usize) -> Result<Tensor>;
    /// Parameters, for reports. The default (`null`) records the config the component was
    /// built from ([`crate::compose::registry::resolved`]); override only to record something else.
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
