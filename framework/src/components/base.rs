//! Base optimizers: the final update given a gradient. State is keyed by parameter name.

use crate::components::model::Params;
use crate::error::Result;
use candle_core::Tensor;

/// A base optimizer (SGD, Adam, AdamW, ...). The learning rate is passed in per step.
pub trait BaseOptimizer: Send {
    /// Registered name.
    fn name(&self) -> &str;
    /// Apply one update with `grads` aligned with `params`.
    fn update(&mut self, params: &Params, grads: &[Tensor], lr: f64) -> Result<()>;
    /// The state to checkpoint as `(key, tensor)`; keys include parameter names. An error
    /// fails the save (or the step that needed the state for a rollback), never drops a tensor.
    fn state(&self, params: &Params) -> Result<Vec<(String, Tensor)>>;
    /// Restore state written by [`BaseOptimizer::state`].
    fn load_state(&mut self, params: &Params, state: &crate::components::state::StateReader<'_>) -> Result<()>;
    /// Parameters, for reports.
    fn describe(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}
