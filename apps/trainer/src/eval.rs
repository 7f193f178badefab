//! Evaluation: mean token / example negative log-likelihood, perplexity and top-1 accuracy of
//! a model (eval mode, no dropout, no graph) on an evaluation set.

use crate::error::Result;
use crate::task::EvalSource;
use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};
use tram::distributed::Collective;
use tram::{Mode, Model};

/// The metrics of one evaluation set.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct EvalMetrics {
    /// Mean negative log-likelihood over prediction rows (tokens or examples); non-finite
    /// for a diverged model (written as `"inf"` / `"nan"` in JSON, see [`crate::results::float`]).
    #[serde(with = "crate::results::float")]
    pub loss: f64,
    /// `exp(loss)` (language modelling's perplexity; `inf` when it overflows).
    #[serde(with = "crate::results::float")]
    pub perplexity: f64,
    /// Top-1 accuracy in percent.
    #[serde(with = "crate::results::float")]
    pub accuracy: f64,
    /// Prediction rows evaluated.
    pub rows: u64,
}

impl EvalMetrics {
    /// Whether these metrics are those of a diverged model: a non-finite loss, perplexity or
    /// accuracy (a NaN / infinite loss, or a perplexity that overflowed).
    pub fn diverged(&self) -> bool {
        !(self.loss.is_finite() && self.perplexity.is_finite() && self.accuracy.is_finite())
    }
}

/// Evaluate `model` (at its current parameters) on `source`.
pub fn evaluate(model: &dyn Model, source: &dyn EvalSource) -> Result<EvalMetrics> {
    let (nll, rows, correct) = sums(model, source.batches())?;
    Ok(metrics(nll, rows, correct))
}

/// [`evaluate`] split over the ranks of a data-parallel job: rank r evaluates batches r, r + W,
/// r + 2W, … and the sums (negative log-likelihood, rows, correct predictions) are all-reduced,
/// so every rank gets the metrics of the whole set in 1/W of the time. Every rank must call it
/// (it is a collective). The rows and the accuracy equal the single-process ones exactly; the
/// loss up to the order of its f64 sum (the per-rank sums are added in rank order). One rank:
/// [`evaluate`].
pub fn evaluate_sharded(model: &dyn Model, source: &dyn EvalSource, dist: &dyn Collective) -> Result<EvalMetrics> {
    let (rank, world) = (dist.rank(), dist.world());
    if world <= 1 {
        return evaluate(model, source);
    }
    let (nll, rows, correct) = sums(model, source.shard(rank, world))?;
    // Row and correct counts are integers well below 2^53: exact in f64.
    let mut v = [nll, rows as f64, correct as f64];
    dist.all_reduce_sum_f64(&mut v)?;
    Ok(metrics(v[0], v[1] as u64, v[2] as u64))
}

/// Σ −log p(target), rows and correct top-1 predictions over `batches`.
fn sums<'a>(model: &dyn Model, batches: Box<dyn Iterator<Item = Result<tram::Batch>> + 'a>) -> Result<(f64, u64, u64)> {
    let weights = model.params().detached();
    let (mut nll, mut rows, mut correct) = (0f64, 0u64, 0u64);
    for batch in batches {
        let batch = batch?;
        let logits = model.forward(&weights, &batch, Mode::EVAL)?;
        let n = logits.rows()?;
        if n == 0 {
            continue;
        }
        let l = logits.logits.to_dtype(DType::F32)?;
        let targets = logits.targets.to_dtype(DType::U32)?;
        let logp = tram::ops::log_softmax(&l)?;
        let picked = logp.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)?;
        // Sum in f64 so long test sets do not lose precision.
        nll -= picked.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?;
        let pred = l.argmax(1)?;
        correct += pred.eq(&targets)?.to_dtype(DType::U32)?.sum_all()?.to_scalar::<u32>()? as u64;
        rows += n as u64;
    }
    Ok((nll, rows, correct))
}

fn metrics(nll: f64, rows: u64, correct: u64) -> EvalMetrics {
    if rows == 0 {
        return EvalMetrics { loss: f64::NAN, perplexity: f64::NAN, accuracy: f64::NAN, rows: 0 };
    }
    let loss = nll / rows as f64;
    EvalMetrics { loss, perplexity: loss.exp(), accuracy: 100.0 * correct as f64 / rows as f64, rows }
}

/// Argmax of `[rows, classes]` logits (exposed for apps).
pub fn predictions(logits: &Tensor) -> Result<Vec<u32>> {
    Ok(logits.argmax(1)?.to_vec1::<u32>()?)
}
