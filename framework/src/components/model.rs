//! The model-facing interface the step engine needs: named trainable parameters, parameter
//! snapshots (θ₀, θ_{t-1}, EMA) that a model can be evaluated on without building a graph,
//! and a forward split at the input embeddings so noise can be added there (TRAM-x, R3F).

use crate::error::{Error, Result};
use candle_core::{Tensor, Var};
use std::collections::HashMap;
use std::sync::Arc;

/// Read access to a full set of model weights by Hugging Face-style parameter name.
///
/// Implemented by [`Params`] (the live variables: ops on them are recorded for backprop) and
/// by [`Snapshot`] (plain tensors: no graph is built).
pub trait Weights {
    /// The tensor for parameter `name`.
    fn weight(&self, name: &str) -> Result<Tensor>;
}

/// One trainable parameter.
#[derive(Clone, Debug)]
pub struct Param {
    /// Its name (the checkpoint key).
    pub name: String,
    /// The variable holding its value.
    pub var: Var,
}

/// The trainable parameters of a model, in a fixed order, addressable by name.
#[derive(Clone, Debug)]
pub struct Params {
    list: Vec<Param>,
    index: Arc<HashMap<String, usize>>,
}

impl Params {
    /// Build from `(name, var)` pairs; a repeated name is an error.
    pub fn new(pairs: impl IntoIterator<Item = (String, Var)>) -> Result<Self> {
        let mut list = Vec::new();
        let mut index = HashMap::new();
        for (name, var) in pairs {
            if index.insert(name.clone(), list.len()).is_some() {
                return Err(Error::Model(format!("parameter name `{name}` appears twice")));
            }
            list.push(Param { name, var });
        }
        Ok(Self { list, index: Arc::new(index) })
    }
    /// Number of parameter tensors.
    pub fn len(&self) -> usize {
        self.list.len()
    }
    /// Whether there are no parameters.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
    /// The parameters in order.
    pub fn iter(&self) -> std::slice::Iter<'_, Param> {
        self.list.iter()
    }
    /// Position of `name` in the order, if present.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }
    /// Total number of scalar parameters.
    pub fn elem_count(&self) -> usize {
        self.list.iter().map(|p| p.var.elem_count()).sum()
    }
    /// An exact copy of every value (real copies: `detach` would share storage).
    pub fn snapshot(&self) -> Result<Snapshot> {
        // `detach` first: `copy` of a variable records a backprop op linking the copy to it.
        let tensors = self.list.iter().map(|p| p.var.as_tensor().detach().copy()).collect::<candle_core::Result<_>>()?;
        Ok(Snapshot { tensors, index: self.index.clone() })
    }
    /// The current values as graph-free tensors that share storage with the variables.
    /// Valid only until the variables are next written.
    pub fn detached(&self) -> Snapshot {
        let tensors = self.list.iter().map(|p| p.var.as_detached_tensor()).collect();
        Snapshot { tensors, index: self.index.clone() }
    }
    /// Write `values` (aligned with this order) into the variables, bitwise.
    pub fn assign(&self, values: &[Tensor]) -> Result<()> {
        if values.len() != self.list.len() {
            return Err(Error::Model(format!("{} values for {} parameters", values.len(), self.list.len())));
        }
        for (p, v) in self.list.iter().zip(values) {
            p.var.set(v)?;
        }
        Ok(())
    }
    /// Write a snapshot taken from these parameters back, bitwise.
    pub fn restore(&self, snapshot: &Snapshot) -> Result<()> {
        self.assign(&snapshot.tensors)
    }
}

impl Weights for Params {
    fn weight(&self, name: &str) -> Result<Tensor> {
        match self.index.get(name) {
            Some(&i) => Ok(self.list[i].var.as_tensor().clone()),
            None => Err(Error::Model(format!("model asked for unknown parameter `{name}`"))),
        }
    }
}

/// A set of parameter values aligned with a [`Params`] order, held as plain tensors.
#[derive(Clone, Debug)]
pub struct Snapshot {
    tensors: Vec<Tensor>,
    index: Arc<HashMap<String, usize>>,
}

impl Snapshot {
    /// The tensors, aligned with the parameter order.
    pub fn tensors(&self) -> &[Tensor] {
        &self.tensors
    }
    /// Mutable access, for in-place style updates (EMA).
    pub fn tensors_mut(&mut self) -> &mut [Tensor] {
        &mut self.tensors
    }
    /// Build from tensors aligned with `params` (shapes are checked).
    pub fn from_tensors(params: &Params, tensors: Vec<Tensor>) -> Result<Self> {
        if tensors.len() != params.len() {
            return Err(Error::Model(format!("{} tensors for {} parameters", tensors.len(), params.len())));
        }
        for (p, t) in params.iter().zip(&tensors) {
            if p.var.shape() != t.shape() {
                return Err(Error::Model(format!(
                    "snapshot of `{}` has shape {:?}, the parameter has {:?}",
                    p.name,
                    t.dims(),
                    p.var.dims()
                )));
            }
        }
        Ok(Self { tensors, index: params.index.clone() })
    }
}

impl Weights for Snapshot {
    fn weight(&self, name: &str) -> Result<Tensor> {
        match self.index.get(name) {
            Some(&i) => Ok(self.tensors[i].clone()),
            None => Err(Error::Model(format!("model asked for unknown parameter `{name}`"))),
        }
    }
}

/// One (micro-)batch. Models interpret `inputs` (token ids, pixels, features) themselves.
#[derive(Clone, Debug)]
pub struct Batch {
    /// Model inputs.
    pub inputs: Tensor,
    /// Prediction targets (class ids or next-token ids).
    pub targets: Tensor,
    /// Optional padding / attention mask (1 = real position).
    pub mask: Option<Tensor>,
    /// Optional token type (segment) ids `[batch, seq]` of sentence-pair inputs, as the
    /// tokenizer's pair template assigns them (`[CLS] a [SEP]` 0, `b [SEP]` 1 for BERT). Models
    /// with token-type embeddings read all zeros when absent; models without them refuse them.
    pub token_types: Option<Tensor>,
}

impl Batch {
    /// A batch without a mask or token types.
    pub fn new(inputs: Tensor, targets: Tensor) -> Self {
        Self { inputs, targets, mask: None, token_types: None }
    }
    /// This batch with the attention mask `mask` (1 = real position).
    pub fn with_mask(self, mask: Tensor) -> Self {
        Self { mask: Some(mask), ..self }
    }
    /// This batch with the token type ids `token_types` `[batch, seq]`.
    pub fn with_token_types(self, token_types: Tensor) -> Self {
        Self { token_types: Some(token_types), ..self }
    }
    /// Number of examples (the leading dimension of `inputs`).
    pub fn examples(&self) -> Result<usize> {
        Ok(self.inputs.dim(0)?)
    }
}

/// How a forward pass runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mode {
    /// Training mode: dropout active.
    pub train: bool,
    /// Whether batch-norm style running statistics may be updated (false for second passes
    /// and target evaluations).
    pub update_stats: bool,
}

impl Mode {
    /// Training mode, statistics updated.
    pub const TRAIN: Mode = Mode { train: true, update_stats: true };
    /// Evaluation mode.
    pub const EVAL: Mode = Mode { train: false, update_stats: false };
    /// This mode without statistics updates.
    pub fn frozen(self) -> Mode {
        Mode { update_stats: false, ..self }
    }
}

/// The logits at the prediction rows of a batch (one per example for classification, one per
/// non-padding token for language modelling), with the target class of each row.
#[derive(Clone, Debug)]
pub struct Logits {
    /// `[rows, classes]` logits.
    pub logits: Tensor,
    /// `[rows]` target class ids (u32).
    pub targets: Tensor,
}

impl Logits {
    /// Number of rows.
    pub fn rows(&self) -> Result<usize> {
        Ok(self.logits.dim(0)?)
    }
    /// The same logits cut from the graph (a real copy is not needed: logits are never written).
    pub fn detach(&self) -> Logits {
        Logits { logits: self.logits.detach(), targets: self.targets.clone() }
    }
}

/// A model the step engine can train. Object safe, so trust regions receive `&dyn Model`.
///
/// The forward is a function of the weights it is handed: `w` is the live [`Params`] for a
/// training pass (the graph is recorded) or a [`Snapshot`] (θ₀, θ_{t-1}, EMA: no graph).
pub trait Model {
    /// The trainable parameters.
    fn params(&self) -> &Params;
    /// The input embeddings of `batch` (where TRAM-x / R3F add their noise).
    fn embed(&self, w: &dyn Weights, batch: &Batch, mode: Mode) -> Result<Tensor>;
    /// The index, in the global micro-batch of a data-parallel step, of the first example of
    /// the batches the next passes see (the engine sets it before each micro-batch; 0 in a
    /// single process). A model whose dropout masks are keyed by example (as tram-models')
    /// draws row `j`'s mask from example `offset + j`'s key, so that the masks do not depend on
    /// how the global batch is split over ranks. The default ignores it.
    fn set_example_offset(&self, _offset: usize) -> Result<()> {
        Ok(())
    }
    /// The logits from (possibly perturbed) input embeddings.
    fn forward_embeds(&self, w: &dyn Weights, embeds: &Tensor, batch: &Batch, mode: Mode) -> Result<Logits>;
    /// The logits of a batch.
    fn forward(&self, w: &dyn Weights, batch: &Batch, mode: Mode) -> Result<Logits> {
        let e = self.embed(w, batch, mode)?;
        self.forward_embeds(w, &e, batch, mode)
    }
    /// The base model's representation before the task head, `[examples, dim]` (for CKA).
    fn representation(&self, _w: &dyn Weights, _batch: &Batch, _mode: Mode) -> Result<Tensor> {
        Err(Error::Model("this model does not expose a representation before its task head".into()))
    }
    /// The mean task loss over rows (cross-entropy by default).
    fn loss(&self, logits: &Logits) -> Result<Tensor> {
        crate::ops::cross_entropy(&logits.logits, &logits.targets)
    }
}
