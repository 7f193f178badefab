//! ε-sharpness (Keskar et al. 2017; paper B.7 with `A = I`):
//!
//! `φ = 100 · (max_{y ∈ C} L(θ + y) − L(θ)) / (1 + L(θ))`,
//! `C = { y : |y_i| ≤ ε (|θ_i| + 1) }`,
//!
//! where `L` is the mean task loss (over prediction rows) of a set of batches in eval mode.
//! The maximum is searched by projected gradient ascent: plain SGD steps `y ← Π_C(y + lr ∇L(θ+y))`
//! from `y = 0`, each step's gradient accumulated over `accumulation` micro-batches taken in
//! order (cycling) from the batches. `max L` is the largest full-set loss over `θ` and the
//! probes evaluated (the final one, and every `eval_every` steps), so `φ ≥ 0`. The parameters
//! are backed up with real copies first and written back bitwise afterwards, also on error.

use crate::error::{Error, Result};
use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};
use tram::{Batch, Mode, Model, Weights};

/// Settings of the ε-sharpness measurement.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SharpnessConfig {
    /// Box size ε: `|y_i| ≤ ε (|θ_i| + 1)` (paper: 1e-3).
    pub epsilon: f64,
    /// Ascent (SGD) steps.
    pub steps: usize,
    /// SGD learning rate of the ascent (the paper's value did not survive in our text; 1e-3
    /// as in common Keskar-sharpness implementations).
    pub lr: f64,
    /// Examples per micro-batch (paper: 32). Used by callers that build the batches
    /// ([`crate::runs`]); [`sharpness`] takes the batches as given.
    pub batch_size: usize,
    /// Micro-batches whose gradients are accumulated into one ascent step (paper: 4).
    pub accumulation: usize,
    /// Also evaluate the full-set loss every this many steps (0: only after the last step).
    pub eval_every: usize,
}

impl Default for SharpnessConfig {
    fn default() -> Self {
        Self { epsilon: 1e-3, steps: 20, lr: 1e-3, batch_size: 32, accumulation: 4, eval_every: 0 }
    }
}

impl SharpnessConfig {
    /// Check the values.
    pub fn validate(&self) -> Result<()> {
        let bad = |k: &str, why: &str| Err(Error::Input(format!("sharpness `{k}`: {why}")));
        if !(self.epsilon.is_finite() && self.epsilon >= 0.0) {
            return bad("epsilon", "must be a finite number >= 0");
        }
        if !(self.lr.is_finite() && self.lr >= 0.0) {
            return bad("lr", "must be a finite number >= 0");
        }
        if self.batch_size == 0 {
            return bad("batch_size", "must be at least 1");
        }
        if self.accumulation == 0 {
            return bad("accumulation", "must be at least 1");
        }
        Ok(())
    }
}

/// The outcome of one ε-sharpness measurement.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sharpness {
    /// `L(θ)`: the mean loss over every prediction row of the batches.
    pub loss: f64,
    /// The largest loss found in the box (≥ `loss`).
    pub max_loss: f64,
    /// `φ = 100 · (max_loss − loss) / (1 + loss)`.
    pub sharpness: f64,
    /// Ascent steps taken.
    pub steps: usize,
    /// The full-set loss at each evaluated probe, in order.
    pub probe_losses: Vec<f64>,
    /// Prediction rows of the batches.
    pub rows: u64,
}

/// `φ = 100 · (max_loss − loss) / (1 + loss)`.
pub fn phi(loss: f64, max_loss: f64) -> f64 {
    100.0 * (max_loss - loss) / (1.0 + loss)
}

/// The mean task loss (`Model::loss`, weighted by prediction rows) of `batches` under
/// `weights`, eval mode, no graph; with the number of rows.
pub fn mean_loss(model: &dyn Model, weights: &dyn Weights, batches: &[Batch]) -> Result<(f64, u64)> {
    let (mut sum, mut rows) = (0f64, 0u64);
    for b in batches {
        let logits = model.forward(weights, b, Mode::EVAL)?;
        let n = logits.rows()?;
        if n == 0 {
            continue;
        }
        let l = model.loss(&logits)?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        sum += l * n as f64;
        rows += n as u64;
    }
    if rows == 0 {
        return Err(Error::Input("the batches have no prediction rows to measure a loss on".into()));
    }
    Ok((sum / rows as f64, rows))
}

/// Measure the ε-sharpness of `model` at its current parameters on `batches` (see the
/// module docs). The parameters are restored bitwise before this returns.
pub fn sharpness(model: &dyn Model, batches: &[Batch], cfg: &SharpnessConfig) -> Result<Sharpness> {
    cfg.validate()?;
    if batches.is_empty() {
        return Err(Error::Input("no batches to measure sharpness on".into()));
    }
    let params = model.params();
    // A real copy (detach().copy()): the variables are written during the ascent.
    let backup = params.snapshot()?;
    let out = ascend(model, batches, cfg, backup.tensors());
    let restored = params.restore(&backup);
    let out = out?;
    restored?;
    Ok(out)
}

fn ascend(model: &dyn Model, batches: &[Batch], cfg: &SharpnessConfig, theta: &[Tensor]) -> Result<Sharpness> {
    let params = model.params();
    let (loss, rows) = mean_loss(model, &params.detached(), batches)?;
    // The box around θ: θ ± ε(|θ| + 1), in each parameter's dtype.
    let bounds = theta
        .iter()
        .map(|t| {
            let r = t.abs()?.affine(cfg.epsilon, cfg.epsilon)?;
            Ok((t.sub(&r)?, t.add(&r)?))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut max_loss = loss;
    let mut probe_losses = Vec::new();
    let mut next = 0usize;
    for step in 1..=cfg.steps {
        // Accumulate ∇L over `accumulation` micro-batches (row-weighted mean).
        let mut acc: Vec<Option<Tensor>> = vec![None; params.len()];
        let mut step_rows = 0usize;
        for _ in 0..cfg.accumulation {
            let b = &batches[next % batches.len()];
            next += 1;
            let logits = model.forward(params, b, Mode::EVAL)?;
            let n = logits.rows()?;
            if n == 0 {
                continue;
            }
            let l = model.loss(&logits)?.to_dtype(DType::F32)?.affine(n as f64, 0.0)?;
            let grads = l.backward()?;
            for (a, p) in acc.iter_mut().zip(params.iter()) {
                if let Some(g) = grads.get(p.var.as_tensor()) {
                    let g = g.detach();
                    *a = Some(match a.take() {
                        Some(prev) => prev.add(&g)?,
                        None => g,
                    });
                }
            }
            step_rows += n;
        }
        if step_rows > 0 {
            let scale = cfg.lr / step_rows as f64;
            for ((p, g), (lo, hi)) in params.iter().zip(&acc).zip(&bounds) {
                // A parameter without a gradient (unused by the loss) stays where it is.
                let Some(g) = g else { continue };
                let cur = p.var.as_detached_tensor();
                let moved = cur.add(&g.to_dtype(cur.dtype())?.affine(scale, 0.0)?)?;
                p.var.set(&moved.maximum(lo)?.minimum(hi)?)?;
            }
        }
        if step == cfg.steps || (cfg.eval_every > 0 && step % cfg.eval_every == 0) {
            let (l, _) = mean_loss(model, &params.detached(), batches)?;
            probe_losses.push(l);
            if l > max_loss {
                max_loss = l;
            }
        }
    }
    Ok(Sharpness { loss, max_loss, sharpness: phi(loss, max_loss), steps: cfg.steps, probe_losses, rows })
}
