//! A tiny model for tests: the embedding-input classifier of tram's PyTorch golden fixtures.

use crate::{Batch, Logits, Mode, Model, Params, Result, Weights};
use candle_core::{DType, Device, Tensor, Var};
use std::collections::HashMap;

/// Shape of an [`EmbeddingClassifier`].
#[derive(Clone, Copy, Debug)]
pub struct ClassifierShape {
    /// Vocabulary size.
    pub vocab: usize,
    /// Embedding width.
    pub embed: usize,
    /// Hidden width.
    pub hidden: usize,
    /// Number of hidden layers (each `tanh(W x + b)`).
    pub layers: usize,
    /// Number of classes.
    pub classes: usize,
}

/// `tokens → embedding → mean over positions → [tanh(linear)]×layers → linear → logits`.
///
/// Parameter names: `emb.weight` `[vocab, embed]`, `fc{i}.weight` `[out, in]`, `fc{i}.bias`,
/// for `i = 1..=layers+1` (the last is the classifier). Inputs are `[batch, seq]` u32 token ids.
pub struct EmbeddingClassifier {
    params: Params,
    layers: usize,
    per_token: bool,
}

impl EmbeddingClassifier {
    /// A model from named tensors (e.g. a golden fixture), in canonical order.
    pub fn from_tensors(tensors: &HashMap<String, Tensor>, layers: usize) -> Result<Self> {
        let mut names = vec!["emb.weight".to_string()];
        for i in 1..=layers + 1 {
            names.push(format!("fc{i}.weight"));
            names.push(format!("fc{i}.bias"));
        }
        let pairs = names
            .into_iter()
            .map(|n| {
                let t = tensors.get(&n).ok_or_else(|| crate::Error::Model(format!("missing tensor `{n}`")))?;
                Ok((n, Var::from_tensor(&t.to_dtype(DType::F32)?)?))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { params: Params::new(pairs)?, layers, per_token: false })
    }

    /// A model with deterministic pseudo-random weights (uniform ±1/√fan_in) from `seed`.
    pub fn random(shape: ClassifierShape, seed: u64, device: &Device) -> Result<Self> {
        let mut rng = Lcg(seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407));
        let mut t = HashMap::new();
        let mut mk = |name: String, dims: Vec<usize>, bound: f32| -> Result<()> {
            let v: Vec<f32> = (0..dims.iter().product::<usize>()).map(|_| rng.uniform() * bound).collect();
            t.insert(name, Tensor::from_vec(v, dims, device)?);
            Ok(())
        };
        mk("emb.weight".into(), vec![shape.vocab, shape.embed], 1.0)?;
        let mut fan_in = shape.embed;
        for i in 1..=shape.layers + 1 {
            let out = if i == shape.layers + 1 { shape.classes } else { shape.hidden };
            let b = 1.0 / (fan_in as f32).sqrt();
            mk(format!("fc{i}.weight"), vec![out, fan_in], b)?;
            mk(format!("fc{i}.bias"), vec![out], b)?;
            fan_in = out;
        }
        Self::from_tensors(&t, shape.layers)
    }

    /// The same model with its parameters in `dtype` (rounded to nearest), as new variables:
    /// `to_dtype(DType::BF16)` is a bf16 model for the mixed-precision tests.
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        let pairs = self
            .params
            .iter()
            .map(|p| Ok((p.name.clone(), Var::from_tensor(&p.var.as_detached_tensor().to_dtype(dtype)?.copy()?)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { params: Params::new(pairs)?, layers: self.layers, per_token: self.per_token })
    }

    /// The same parameters, but every token goes through the hidden layers before the mean
    /// pool (as in a transformer, where every position runs through every layer): the matmul
    /// work per step grows with batch × sequence, so matmuls dominate a step (benchmarks).
    pub fn random_per_token(shape: ClassifierShape, seed: u64, device: &Device) -> Result<Self> {
        Ok(Self { per_token: true, ..Self::random(shape, seed, device)? })
    }
}

impl Model for EmbeddingClassifier {
    fn params(&self) -> &Params {
        &self.params
    }
    fn embed(&self, w: &dyn Weights, batch: &Batch, _mode: Mode) -> Result<Tensor> {
        let (b, s) = batch.inputs.dims2()?;
        let ids = batch.inputs.flatten_all()?;
        Ok(w.weight("emb.weight")?.index_select(&ids, 0)?.reshape((b, s, ()))?)
    }
    fn forward_embeds(&self, w: &dyn Weights, embeds: &Tensor, batch: &Batch, _mode: Mode) -> Result<Logits> {
        let mut x = if self.per_token { embeds.clone() } else { embeds.mean(1)? };
        for i in 1..=self.layers + 1 {
            if self.per_token && i == self.layers + 1 {
                x = x.mean(1)?;
            }
            let wt = w.weight(&format!("fc{i}.weight"))?;
            let bias = w.weight(&format!("fc{i}.bias"))?;
            x = x.broadcast_matmul(&wt.t()?)?.broadcast_add(&bias)?;
            if i <= self.layers {
                x = x.tanh()?;
            }
        }
        Ok(Logits { logits: x, targets: batch.targets.clone() })
    }
}

/// A tiny deterministic generator (no dependency on `rand` versions for fixtures).
pub struct Lcg(pub u64);

impl Lcg {
    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    /// Uniform integer in [0, n).
    pub fn below(&mut self, n: usize) -> usize {
        (((self.uniform() + 1.0) * 0.5 * n as f32) as usize).min(n - 1)
    }
}

/// A learnable synthetic task: the label is a function of which half of the vocabulary
/// dominates the first tokens, so losses fall quickly.
pub fn synthetic_batches(
    shape: ClassifierShape,
    n_batches: usize,
    batch: usize,
    seq: usize,
    seed: u64,
    device: &Device,
) -> Result<Vec<Batch>> {
    let mut rng = Lcg(seed ^ 0x9e3779b97f4a7c15);
    (0..n_batches)
        .map(|_| {
            let mut ids = Vec::with_capacity(batch * seq);
            let mut labels = Vec::with_capacity(batch);
            for _ in 0..batch {
                let label = rng.below(shape.classes);
                labels.push(label as u32);
                for j in 0..seq {
                    let bucket = shape.vocab / shape.classes;
                    let tok = if j % 2 == 0 { label * bucket + rng.below(bucket) } else { rng.below(shape.vocab) };
                    ids.push(tok as u32);
                }
            }
            Ok(Batch::new(Tensor::from_vec(ids, (batch, seq), device)?, Tensor::from_vec(labels, batch, device)?))
        })
        .collect()
}

/// Mean loss of `model` over `batches` at its current parameters (eval mode, no graph).
pub fn eval_loss(model: &dyn Model, batches: &[Batch]) -> Result<f64> {
    let w = model.params().detached();
    let mut total = 0.0;
    for b in batches {
        let l = model.forward(&w, b, Mode::EVAL)?;
        total += model.loss(&l)?.to_scalar::<f32>()? as f64;
    }
    Ok(total / batches.len() as f64)
}
