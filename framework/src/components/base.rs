//! Base optimizers: the final update given a gradient.
//!
//! Most base optimizers are per-parameter math: write that as a [`SimpleOptimizer`] and wrap
//! it in an [`Adaptor`], which owns everything else (state keyed by parameter name, checkpoint
//! keys `<slot>/<parameter name>`, moving restored state to the parameter's device and dtype).
//! Implement [`BaseOptimizer`] directly only for an update that couples parameters.

use crate::components::model::Params;
use crate::components::state::{scalar_u64, u64_tensor, StateReader};
use crate::error::Result;
use candle_core::{Tensor, Var};
use std::collections::HashMap;

/// A base optimizer (SGD, Adam, AdamW, ...). The learning rate is passed in per step.
///
/// ```
/// use tram::components::base::{Adaptor, BaseOptimizer, SimpleOptimizer};
/// use candle_core::{Device, Tensor, Var};
///
/// /// Plain gradient descent: no state.
/// struct Descent;
/// impl SimpleOptimizer for Descent {
///     type State = ();
///     const SLOTS: &'static [&'static str] = &[];
///     fn name(&self) -> &str { "descent" }
///     fn step(&self, _t: u64, lr: f64, param: &Var, grad: &Tensor, _: &mut Option<()>) -> tram::Result<()> {
///         Ok(param.set(&param.as_tensor().detach().sub(&grad.affine(lr, 0.0)?)?)?)
///     }
///     fn to_tensors(_: &()) -> Vec<Tensor> { Vec::new() }
///     fn from_tensors(_: Vec<Tensor>) -> tram::Result<()> { Ok(()) }
/// }
///
/// let w = Var::new(&[1f32, 2.0], &Device::Cpu)?;
/// let params = tram::Params::new([("w".to_string(), w.clone())])?;
/// let mut opt = Adaptor::new(Descent);
/// opt.update(&params, &[Tensor::new(&[1f32, -1.0], &Device::Cpu)?], 0.5)?;
/// assert_eq!(w.as_tensor().to_vec1::<f32>()?, [0.5, 2.5]);
/// assert!(opt.state(&params)?.is_empty());
/// # Ok::<(), tram::Error>(())
/// ```
pub trait BaseOptimizer: Send {
    /// Registered name.
    fn name(&self) -> &str;
    /// Apply one update with `grads` aligned with `params`.
    fn update(&mut self, params: &Params, grads: &[Tensor], lr: f64) -> Result<()>;
    /// The state to checkpoint as `(key, tensor)`; keys include parameter names. An error
    /// fails the save (or the step that needed the state for a rollback), never drops a tensor.
    fn state(&self, params: &Params) -> Result<Vec<(String, Tensor)>>;
    /// Restore state written by [`BaseOptimizer::state`].
    fn load_state(&mut self, params: &Params, state: &StateReader<'_>) -> Result<()>;
    /// Parameters, for reports. The default (`null`) records the config the component was
    /// built from ([`crate::compose::registry::resolved`]); override only to record something else.
    fn describe(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}

/// The per-parameter math of a base optimizer (burn's `SimpleOptimizer`): how one parameter
/// and its own state change given its gradient. [`Adaptor`] makes it a [`BaseOptimizer`].
///
/// [`SimpleOptimizer::step`] writes the parameter and the state itself, so an implementation
/// may update both in place (a fused kernel, as the built-in `adam`, `adamw` and `sgd` do on the
/// CPU with `tram_kernels::update`) instead of allocating new tensors. The tensors of
/// [`SimpleOptimizer::to_tensors`] may then be the live buffers: the engine copies them for its
/// rollback of a non-finite update, and an in-place rule's [`SimpleOptimizer::from_tensors`]
/// takes its own copies (what it is given may still be held by the caller).
pub trait SimpleOptimizer: Send {
    /// One parameter's state (moments, a momentum buffer); `()` for none.
    type State: Send;
    /// The checkpoint key of each state tensor, in [`SimpleOptimizer::to_tensors`] order:
    /// tensor `i` of parameter `p` is saved as `<SLOTS[i]>/<p>`.
    const SLOTS: &'static [&'static str];
    /// Whether the rule uses the step index `t` (Adam's bias corrections). The adaptor then
    /// checkpoints the step count as `step`, and a checkpoint written after the first step must
    /// hold every parameter's state. Otherwise a parameter's state is optional (SGD without
    /// momentum keeps none) and `t` restarts from 1 on resume.
    const COUNTS_STEPS: bool = false;
    /// Registered name.
    fn name(&self) -> &str;
    /// Update `param` (its value, and `state`: `None` before its first step) with `grad` at
    /// learning rate `lr`; `t` is the 1-based index of this step.
    fn step(&self, t: u64, lr: f64, param: &Var, grad: &Tensor, state: &mut Option<Self::State>) -> Result<()>;
    /// The state tensors, aligned with [`SimpleOptimizer::SLOTS`].
    fn to_tensors(state: &Self::State) -> Vec<Tensor>;
    /// A state from tensors aligned with [`SimpleOptimizer::SLOTS`] (already checked against
    /// the parameter's shape and moved to its device and dtype).
    fn from_tensors(tensors: Vec<Tensor>) -> Result<Self::State>;
    /// Parameters, for reports. The default (`null`) records the config the component was
    /// built from ([`crate::compose::registry::resolved`]); override only to record something else.
    fn describe(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}

/// A [`SimpleOptimizer`] as a [`BaseOptimizer`]: it counts steps, keeps each parameter's state
/// by name, and writes and reads the checkpoint keys (`<slot>/<parameter name>`, and `step`
/// for a rule that counts steps).
pub struct Adaptor<R: SimpleOptimizer> {
    rule: R,
    step: u64,
    state: HashMap<String, Option<R::State>>,
}

impl<R: SimpleOptimizer> Adaptor<R> {
    /// `rule` with no state yet.
    pub fn new(rule: R) -> Self {
        Self { rule, step: 0, state: HashMap::new() }
    }
    /// The per-parameter rule.
    pub fn rule(&self) -> &R {
        &self.rule
    }
}

impl<R: SimpleOptimizer> BaseOptimizer for Adaptor<R> {
    fn name(&self) -> &str {
        self.rule.name()
    }
    fn update(&mut self, params: &Params, grads: &[Tensor], lr: f64) -> Result<()> {
        self.step += 1;
        for (p, g) in params.iter().zip(grads) {
            let state = self.state.entry(p.name.clone()).or_insert(None);
            self.rule.step(self.step, lr, &p.var, g, state)?;
        }
        Ok(())
    }
    fn state(&self, params: &Params) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        for p in params.iter() {
            if let Some(Some(s)) = self.state.get(&p.name) {
                out.extend(R::SLOTS.iter().zip(R::to_tensors(s)).map(|(slot, t)| (format!("{slot}/{}", p.name), t)));
            }
        }
        if R::COUNTS_STEPS {
            out.push(("step".into(), u64_tensor(self.step)?));
        }
        Ok(out)
    }
    fn load_state(&mut self, params: &Params, state: &StateReader<'_>) -> Result<()> {
        if R::COUNTS_STEPS {
            self.step = scalar_u64(&state.require("step")?)?;
        }
        self.state.clear();
        // A rule that counts steps has state for every parameter after its first step and for
        // none before it.
        if R::SLOTS.is_empty() || (R::COUNTS_STEPS && self.step == 0) {
            return Ok(());
        }
        for p in params.iter() {
            if !R::COUNTS_STEPS && state.get(&format!("{}/{}", R::SLOTS[0], p.name)).is_none() {
                continue;
            }
            let tensors = R::SLOTS
                .iter()
                .map(|slot| state.require_like(&format!("{slot}/{}", p.name), p.var.as_tensor()))
                .collect::<Result<Vec<_>>>()?;
            self.state.insert(p.name.clone(), Some(R::from_tensors(tensors)?));
        }
        Ok(())
    }
    fn describe(&self) -> serde_json::Value {
        self.rule.describe()
    }
}
