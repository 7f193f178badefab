//! Differentiable transformer building blocks shared by every architecture.
//!
//! candle 0.11 silently drops gradients through `candle_nn::ops::softmax_last_dim`, the fused
//! `layer_norm` / `rms_norm` and `rope`. Layer norm, the attention softmax (scale and masks
//! folded in) and GELU here are the fused custom ops of [`tram_kernels`], which carry their own
//! backward (one pass over memory each way on the CPU; composed candle ops on other devices);
//! the rest is candle primitives. Everything is checked against finite differences in the tests
//! below and against `transformers` in the parity tests.

use candle_core::{DType, Device, Tensor, D};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::sync::Mutex;
use tram::{Error, Result, Weights};

/// `LayerNorm(x) = (x − mean) / sqrt(var + eps) · weight + bias` over the last dimension,
/// computed in f32 and cast back to the input dtype.
/// One fused op ([`tram_kernels::layer_norm`]) with gradients for `x`, `weight` and `bias`.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    Ok(tram_kernels::layer_norm(x, weight, bias, eps)?)
}

/// `x Wᵀ + b` with a PyTorch `nn.Linear` weight `[out, in]`.
///
/// Leading dimensions are folded into one (`[rows, in]`), so the weight gradient is one matrix
/// product instead of a batch of them summed over the batch; the bias is the fused
/// [`tram_kernels::add_bias`].
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let y = matmul_rows(x, &weight.t()?)?;
    Ok(match bias {
        Some(b) => tram_kernels::add_bias(&y, b)?,
        None => y,
    })
}

/// `x W + b` with a GPT-2 `Conv1D` weight `[in, out]` (leading dimensions folded as in
/// [`linear`]).
pub fn conv1d(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    Ok(tram_kernels::add_bias(&matmul_rows(x, weight)?, bias)?)
}

/// `x · w` for `x` `[.., in]` and a matrix `w` `[in, out]`: a contiguous `x` of any rank is
/// multiplied as one `[rows, in]` matrix and reshaped back.
fn matmul_rows(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    Ok(match x.rank() {
        2 => x.matmul(w)?,
        _ if x.is_contiguous() => {
            let mut dims = x.dims().to_vec();
            let inner = dims.pop().unwrap_or(1);
            let rows = dims.iter().product::<usize>();
            dims.push(w.dim(1)?);
            x.reshape((rows, inner))?.matmul(w)?.reshape(dims)?
        }
        _ => x.broadcast_matmul(w)?,
    })
}

/// Rows of an embedding table for `ids` of any shape; output `[..ids, dim]`. The table
/// gradient sums each id's rows in f32 ([`tram_kernels::embedding`]).
pub fn embedding(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    Ok(tram_kernels::embedding(table, ids)?)
}

/// `x + table` for `x` `[batch, ..]` and a `table` of the shape of one example (`[seq, dim]`
/// position embeddings, a `[1, dim]` CLS row), broadcast over the batch: the table's gradient
/// is summed over the batch in f32 ([`tram_kernels::add_bias`] over `[batch, numel]` rows),
/// where `broadcast_add` sums in the tensor's dtype.
pub fn add_per_example(x: &Tensor, table: &Tensor) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let per = table.elem_count();
    if dims.is_empty() || dims[1..].iter().product::<usize>() != per {
        return Err(Error::Model(format!("cannot add a {:?} table to every example of {dims:?}", table.dims())));
    }
    let x2 = if x.is_contiguous() { x.reshape((dims[0], per))? } else { x.contiguous()?.reshape((dims[0], per))? };
    Ok(tram_kernels::add_bias(&x2, &table.flatten_all()?)?.reshape(dims)?)
}

/// Which keys each query may attend, folded into the attention softmax (no bias tensor is
/// built or broadcast): keys after the query when `causal`, and the padding keys of `keys`.
/// Build it once per forward and share it between the layers.
#[derive(Clone, Debug, Default)]
pub struct AttentionMask {
    /// Mask keys after the query (GPT-2).
    pub causal: bool,
    /// Key padding mask `[batch, seq_k]` (BERT, XLM-R); `None` attends every key.
    pub keys: Option<tram_kernels::KeyMask>,
}

impl AttentionMask {
    /// Attend every key.
    pub fn none() -> Self {
        Self::default()
    }
    /// Causal attention.
    pub fn causal() -> Self {
        Self { causal: true, keys: None }
    }
    /// Attend the keys where the `[batch, seq]` padding mask is non-zero (one device read);
    /// an all-ones mask is dropped.
    pub fn padding(mask: &Tensor) -> Result<Self> {
        let keys = tram_kernels::KeyMask::new(mask)?;
        Ok(Self { causal: false, keys: (!keys.all_kept()).then_some(keys) })
    }
}

/// Scaled dot-product attention over heads with the masks folded into a fused softmax
/// ([`tram_kernels::masked_softmax`]): `q, k, v` `[batch, heads, seq, head_dim]`, scores
/// scaled by `scale`, softmax and the attention-probability dropout in f32, the result in
/// `q`'s dtype.
pub fn attention_masked(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &AttentionMask,
    scale: f64,
    dropout: Option<(&Dropout, f64, bool)>,
) -> Result<Tensor> {
    let dtype = q.dtype();
    let scores = q.to_dtype(DType::F32)?.matmul(&k.to_dtype(DType::F32)?.t()?)?;
    let probs = tram_kernels::masked_softmax(&scores, scale, mask.causal, mask.keys.as_ref())?;
    let probs = match dropout {
        Some((d, p, train)) => d.apply_p(&probs, p, train)?,
        None => probs,
    };
    Ok(probs.matmul(&v.to_dtype(DType::F32)?)?.to_dtype(dtype)?)
}

/// Scaled dot-product attention over heads.
///
/// `q, k, v`: `[batch, heads, seq, head_dim]`; `bias`: an additive mask broadcastable to
/// `[batch, heads, seq_q, seq_k]` (0 where attended, a large negative number where masked).
/// The softmax is the fused [`tram_kernels::masked_softmax`], in f32 (prefer
/// [`attention_masked`], which folds the masks in instead of adding a bias tensor).
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, bias: Option<&Tensor>, dropout: Option<(&Dropout, bool)>) -> Result<Tensor> {
    let head_dim = q.dim(D::Minus1)?;
    attention_with(q, k, v, bias, 1.0 / (head_dim as f64).sqrt(), dropout.map(|(d, train)| (d, d.p, train)))
}

/// [`attention`] with an explicit score scale (GPT-2's `scale_attn_weights` /
/// `scale_attn_by_inverse_layer_idx`) and a dropout probability for the attention
/// probabilities that may differ from the stream's own `p` (one stream serves every site).
pub fn attention_with(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: Option<&Tensor>,
    scale: f64,
    dropout: Option<(&Dropout, f64, bool)>,
) -> Result<Tensor> {
    let dtype = q.dtype();
    let scores = q.to_dtype(DType::F32)?.matmul(&k.to_dtype(DType::F32)?.t()?)?;
    let (scores, scale) = match bias {
        Some(b) => (scores.affine(scale, 0.0)?.broadcast_add(&b.to_dtype(DType::F32)?)?, 1.0),
        None => (scores, scale),
    };
    let probs = tram_kernels::masked_softmax(&scores, scale, false, None)?;
    let probs = match dropout {
        Some((d, p, train)) => d.apply_p(&probs, p, train)?,
        None => probs,
    };
    Ok(probs.matmul(&v.to_dtype(DType::F32)?)?.to_dtype(dtype)?)
}

/// `[batch, seq, heads·head_dim] → [batch, heads, seq, head_dim]`.
pub fn split_heads(x: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, s, h) = x.dims3()?;
    Ok(x.reshape((b, s, heads, h / heads))?.transpose(1, 2)?.contiguous()?)
}

/// `[batch, heads, seq, head_dim] → [batch, seq, heads·head_dim]`.
pub fn merge_heads(x: &Tensor) -> Result<Tensor> {
    let (b, n, s, d) = x.dims4()?;
    Ok(x.transpose(1, 2)?.contiguous()?.reshape((b, s, n * d))?)
}

/// Additive attention bias from a `[batch, seq]` padding mask (1 = real token):
/// `[batch, 1, 1, seq]`, 0 where attended and `-1e9`... (f32 min / 2) where padded.
pub fn padding_bias(mask: &Tensor) -> Result<Tensor> {
    let (b, s) = mask.dims2()?;
    let m = mask.to_dtype(DType::F32)?;
    Ok(m.affine(1e9, -1e9)?.reshape((b, 1, 1, s))?)
}

/// Additive causal bias `[1, 1, seq, seq]` (0 on and below the diagonal).
pub fn causal_bias(seq: usize, device: &Device) -> Result<Tensor> {
    let v: Vec<f32> = (0..seq * seq).map(|i| if i % seq <= i / seq { 0.0 } else { -1e9 }).collect();
    Ok(Tensor::from_vec(v, (1, 1, seq, seq), device)?)
}

/// GELU with the exact erf form (BERT, RoBERTa, ViT: `hidden_act = "gelu"`), one fused op
/// ([`tram_kernels::gelu_erf`]).
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    Ok(tram_kernels::gelu_erf(x)?)
}

/// GELU with the tanh approximation (GPT-2: `activation_function = "gelu_new"`), one fused op
/// ([`tram_kernels::gelu_tanh`]).
pub fn gelu_new(x: &Tensor) -> Result<Tensor> {
    Ok(tram_kernels::gelu_tanh(x)?)
}

/// Activation by its Hugging Face name.
pub fn activation(name: &str, x: &Tensor) -> Result<Tensor> {
    match name {
        "gelu" => gelu(x),
        "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => gelu_new(x),
        "relu" => Ok(x.relu()?),
        "tanh" => Ok(x.tanh()?),
        other => {
            Err(tram::Error::Model(format!("unsupported activation `{other}` (supported: gelu, gelu_new, gelu_pytorch_tanh, relu, tanh)")))
        }
    }
}

/// Inverted dropout with its own seeded, checkpointable random masks (candle's CPU RNG cannot
/// be seeded), keyed by example: the `c`-th mask drawn (one per dropout call, in the forward's
/// fixed order) draws row `j` (the leading dimension is the batch) from its own ChaCha8 stream
/// keyed by (seed, c, global example index `offset + j`), so the masks do not depend on how a
/// data-parallel job splits the global batch over ranks ([`Dropout::set_example_offset`]).
/// Masks are drawn where the tensor lives (`tram_kernels::keyed::dropout_mask`): on the CPU from
/// rand_chacha, on CUDA by a ChaCha8 kernel that gives the same mask bit for bit, with no host
/// round trip.
pub struct Dropout {
    /// Drop probability.
    pub p: f64,
    seed: u64,
    /// Masks drawn so far, and the global index of the current batch's first example.
    state: Mutex<(u64, usize)>,
}

/// Stream domain of dropout masks in [`tram::noise::keyed_rng`].
const DROPOUT_DOMAIN: u64 = 0x64726f706f7574; // "dropout"

impl Dropout {
    /// Dropout with probability `p`, masks keyed by `seed`.
    pub fn new(p: f64, seed: u64) -> Self {
        Self { p, seed, state: Mutex::new((0, 0)) }
    }
    /// Apply in train mode; identity in eval mode or when `p = 0`.
    pub fn apply(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.apply_p(x, self.p, train)
    }
    /// Apply with probability `p` instead of `self.p`, as the next mask of the same stream (a
    /// model keeps one stream for its hidden, attention and classifier dropout, so one position
    /// checkpoints it).
    pub fn apply_p(&self, x: &Tensor, p: f64, train: bool) -> Result<Tensor> {
        if !train || p == 0.0 {
            return Ok(x.clone());
        }
        if !(0.0..1.0).contains(&p) {
            return Err(tram::Error::Model(format!("dropout probability {p} is outside [0, 1)")));
        }
        let keep = 1.0 - p;
        let (draw, offset) = {
            let mut s = self.lock()?;
            s.0 += 1;
            (s.0 - 1, s.1)
        };
        let key = tram_kernels::keyed::Key { seed: self.seed, domain: DROPOUT_DOMAIN, draw, offset: offset as u64 };
        let mask = tram_kernels::keyed::dropout_mask(x.shape(), x.dtype(), x.device(), key, keep)?;
        Ok(x.mul(&mask)?)
    }
    fn lock(&self) -> Result<std::sync::MutexGuard<'_, (u64, usize)>> {
        self.state.lock().map_err(|_| tram::Error::Model("dropout RNG poisoned".into()))
    }
    /// The global index (in a data-parallel step's global micro-batch) of the first example
    /// of the batches that follow (0 in a single process).
    pub fn set_example_offset(&self, offset: usize) -> Result<()> {
        self.lock()?.1 = offset;
        Ok(())
    }
    /// The stream position (masks drawn so far), for checkpoints.
    pub fn position(&self) -> Result<u128> {
        Ok(self.lock()?.0 as u128)
    }
    /// Restore a position returned by [`Dropout::position`].
    pub fn set_position(&self, pos: u128) -> Result<()> {
        self.lock()?.0 = u64::try_from(pos).map_err(|_| tram::Error::Model(format!("dropout position {pos} is out of range")))?;
        Ok(())
    }
}

/// Weights under a name prefix (`"h.3."`), so a block reads `w.get("attn.c_attn.weight")`.
pub struct Scoped<'a> {
    /// The full weights.
    pub weights: &'a dyn Weights,
    /// The prefix, ending in `.` (or empty).
    pub prefix: String,
}

impl<'a> Scoped<'a> {
    /// Scope `weights` under `prefix`.
    pub fn new(weights: &'a dyn Weights, prefix: impl Into<String>) -> Self {
        Self { weights, prefix: prefix.into() }
    }
    /// The tensor `prefix + name`.
    pub fn get(&self, name: &str) -> Result<Tensor> {
        self.weights.weight(&format!("{}{name}", self.prefix))
    }
    /// A narrower scope.
    pub fn scope(&self, sub: &str) -> Scoped<'a> {
        Scoped { weights: self.weights, prefix: format!("{}{sub}.", self.prefix) }
    }
}

/// Deterministic initialisation of new weights (heads absent from a checkpoint):
/// `N(0, std²)` from a seeded stream, like Hugging Face's `_init_weights` (std = 0.02).
pub fn init_normal(dims: &[usize], std: f64, seed: u64, dtype: DType, device: &Device) -> Result<Tensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n: usize = dims.iter().product();
    let v: Vec<f32> = (0..n).map(|_| (rng.sample::<f64, _>(rand_distr_normal()) * std) as f32).collect();
    Ok(Tensor::from_vec(v, dims, device)?.to_dtype(dtype)?)
}

fn rand_distr_normal() -> impl rand::distr::Distribution<f64> {
    // Box–Muller on two uniforms: no extra dependency.
    struct Normal;
    impl rand::distr::Distribution<f64> for Normal {
        fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> f64 {
            let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
            let u2: f64 = rng.random();
            (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
        }
    }
    Normal
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    /// Central finite differences of `f` (a scalar function of `x`) against candle's backward.
    fn check_gradient(x: &[f64], shape: &[usize], f: impl Fn(&Tensor) -> Result<Tensor>) {
        let dev = Device::Cpu;
        let var = Var::from_tensor(&Tensor::from_vec(x.to_vec(), shape, &dev).unwrap()).unwrap();
        let y = f(var.as_tensor()).unwrap();
        let g = y.backward().unwrap().get(var.as_tensor()).expect("no gradient").flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let h = 1e-6;
        for i in 0..x.len() {
            let (mut a, mut b) = (x.to_vec(), x.to_vec());
            a[i] += h;
            b[i] -= h;
            let fa = f(&Tensor::from_vec(a, shape, &dev).unwrap()).unwrap().to_scalar::<f64>().unwrap();
            let fb = f(&Tensor::from_vec(b, shape, &dev).unwrap()).unwrap().to_scalar::<f64>().unwrap();
            let fd = (fa - fb) / (2.0 * h);
            assert!((fd - g[i]).abs() < 1e-5 * (1.0 + fd.abs()), "component {i}: finite difference {fd}, backward {}", g[i]);
        }
    }

    fn weights(n: usize, seed: u64) -> Vec<f64> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| rng.random::<f64>() * 2.0 - 1.0).collect()
    }

    fn t(v: Vec<f64>, shape: &[usize]) -> Tensor {
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn layer_norm_gradient_matches_finite_differences() {
        let (w, b, r) = (t(weights(5, 1), &[5]), t(weights(5, 2), &[5]), t(weights(15, 3), &[3, 5]));
        // layer_norm computes in f32 internally: check in f64 by a local f64 copy of the formula path.
        check_gradient(&weights(15, 4), &[3, 5], |x| {
            let mean = x.mean_keepdim(D::Minus1)?;
            let c = x.broadcast_sub(&mean)?;
            let var = c.sqr()?.mean_keepdim(D::Minus1)?;
            let y = c.broadcast_div(&var.affine(1.0, 1e-5)?.sqrt()?)?.broadcast_mul(&w)?.broadcast_add(&b)?;
            Ok(y.mul(&r)?.sum_all()?)
        });
        // And the f32 implementation agrees with that formula.
        let x = t(weights(15, 4), &[3, 5]).to_dtype(DType::F32).unwrap();
        let ours = layer_norm(&x, &w.to_dtype(DType::F32).unwrap(), &b.to_dtype(DType::F32).unwrap(), 1e-5).unwrap();
        let x64 = t(weights(15, 4), &[3, 5]);
        let mean = x64.mean_keepdim(D::Minus1).unwrap();
        let c = x64.broadcast_sub(&mean).unwrap();
        let var = c.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
        let want =
            c.broadcast_div(&var.affine(1.0, 1e-5).unwrap().sqrt().unwrap()).unwrap().broadcast_mul(&w).unwrap().broadcast_add(&b).unwrap();
        let diff = ours.to_dtype(DType::F64).unwrap().sub(&want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
        assert!(diff < 1e-5, "{diff}");
    }

    #[test]
    fn attention_gradient_matches_finite_differences() {
        let k = t(weights(2 * 3 * 4, 5), &[1, 2, 3, 4]);
        let v = t(weights(2 * 3 * 4, 6), &[1, 2, 3, 4]);
        let r = t(weights(2 * 3 * 4, 7), &[1, 2, 3, 4]);
        let bias = causal_bias(3, &Device::Cpu).unwrap().to_dtype(DType::F64).unwrap();
        check_gradient(&weights(24, 8), &[1, 2, 3, 4], |q| {
            let scores = q.matmul(&k.t()?)?.affine(0.5, 0.0)?.broadcast_add(&bias)?;
            let p = tram::ops::softmax(&scores)?;
            Ok(p.matmul(&v)?.mul(&r)?.sum_all()?)
        });
    }

    #[test]
    fn gelu_gradients_match_finite_differences() {
        let x = weights(8, 9).into_iter().map(|v| v * 3.0).collect::<Vec<_>>();
        // candle's gelu backward uses 6-digit constants: 1e-5 relative is the bar.
        check_gradient(&x, &[8], |x| Ok(x.gelu_erf()?.sum_all()?));
        check_gradient(&x, &[8], |x| Ok(x.gelu()?.sum_all()?));
    }

    #[test]
    fn cross_entropy_gradient_matches_finite_differences() {
        let targets = Tensor::new(&[2u32, 0, 1], &Device::Cpu).unwrap();
        check_gradient(&weights(12, 10), &[3, 4], |x| {
            let lp = tram::ops::log_softmax(x)?;
            Ok(lp.gather(&targets.unsqueeze(1)?, 1)?.mean_all()?.neg()?)
        });
    }

    #[test]
    fn attention_masks_padded_keys() {
        let dev = Device::Cpu;
        let q = Tensor::ones((1, 1, 2, 2), DType::F32, &dev).unwrap();
        let k = Tensor::new(&[[[[1f32, 0.0], [5.0, 5.0]]]], &dev).unwrap();
        let v = Tensor::new(&[[[[1f32, 2.0], [100.0, 100.0]]]], &dev).unwrap();
        let mask = Tensor::new(&[[1u32, 0]], &dev).unwrap();
        let out = attention(&q, &k, &v, Some(&padding_bias(&mask).unwrap()), None).unwrap();
        assert_eq!(out.flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![1.0, 2.0, 1.0, 2.0]);
    }

    #[test]
    fn attention_with_default_scale_equals_attention_and_dropout_shares_one_stream() {
        let dev = Device::Cpu;
        let q = t(weights(24, 11), &[1, 2, 3, 4]).to_dtype(DType::F32).unwrap();
        let k = t(weights(24, 12), &[1, 2, 3, 4]).to_dtype(DType::F32).unwrap();
        let v = t(weights(24, 13), &[1, 2, 3, 4]).to_dtype(DType::F32).unwrap();
        let bias = causal_bias(3, &dev).unwrap();
        let a = attention(&q, &k, &v, Some(&bias), None).unwrap();
        let b = attention_with(&q, &k, &v, Some(&bias), 0.5, None).unwrap();
        assert_eq!(a.flatten_all().unwrap().to_vec1::<f32>().unwrap(), b.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        // apply_p uses its own probability but advances the shared stream.
        let x = Tensor::ones(1000, DType::F32, &dev).unwrap();
        let d = Dropout::new(0.0, 3);
        assert_eq!(d.apply(&x, true).unwrap().to_vec1::<f32>().unwrap(), vec![1.0; 1000]);
        assert_eq!(d.position().unwrap(), 0);
        let y = d.apply_p(&x, 0.5, true).unwrap().to_vec1::<f32>().unwrap();
        let zeros = y.iter().filter(|v| **v == 0.0).count();
        assert!((400..600).contains(&zeros), "{zeros}");
        assert!(y.iter().all(|v| *v == 0.0 || *v == 2.0));
        assert!(d.position().unwrap() > 0);
        assert!(d.apply_p(&x, 1.0, true).is_err());
    }

    #[test]
    fn dropout_is_identity_in_eval_and_seeded_in_train() {
        let x = Tensor::ones(1000, DType::F32, &Device::Cpu).unwrap();
        let d = Dropout::new(0.1, 7);
        assert_eq!(d.apply(&x, false).unwrap().to_vec1::<f32>().unwrap(), vec![1.0; 1000]);
        let a = d.apply(&x, true).unwrap().to_vec1::<f32>().unwrap();
        let zeros = a.iter().filter(|v| **v == 0.0).count();
        assert!((50..150).contains(&zeros), "{zeros}");
        let b = Dropout::new(0.1, 7).apply(&x, true).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn dropout_masks_are_rands_f64_draw_of_the_keyed_stream_in_every_dtype() {
        // The CPU path as it was before the device kernel: row r of mask c from
        // keyed_rng(seed, "dropout", c, offset + r), kept where random::<f64>() < keep, the
        // value (1 / keep) as f32 in the tensor's dtype (CUDA reproduces this bit for bit).
        let (p, seed, offset) = (0.3, 5u64, 7usize);
        let keep = 1.0 - p;
        let x = Tensor::ones((3, 2, 9), DType::F32, &Device::Cpu).unwrap();
        let d = Dropout::new(p, seed);
        d.set_example_offset(offset).unwrap();
        for draw in 0..2u64 {
            let mut want = Vec::new();
            for r in 0..3 {
                let mut rng = tram::noise::keyed_rng(seed, DROPOUT_DOMAIN, draw, (offset + r) as u64);
                want.extend((0..18).map(|_| if rng.random::<f64>() < keep { (1.0 / keep) as f32 } else { 0.0 }));
            }
            let dtype = if draw == 0 { DType::F32 } else { DType::BF16 };
            let got = d.apply(&x.to_dtype(dtype).unwrap(), true).unwrap();
            assert_eq!(got.dtype(), dtype);
            let want = Tensor::new(want.as_slice(), &Device::Cpu).unwrap().to_dtype(dtype).unwrap().to_dtype(DType::F32).unwrap();
            let got = got.to_dtype(DType::F32).unwrap().flatten_all().unwrap();
            assert_eq!(got.to_vec1::<f32>().unwrap(), want.to_vec1::<f32>().unwrap(), "draw {draw} {dtype:?}");
        }
    }

    #[test]
    fn dropout_masks_of_a_split_batch_equal_the_whole_batchs_and_resume_at_a_position() {
        let x = Tensor::ones((4, 3, 50), DType::F32, &Device::Cpu).unwrap();
        let whole = Dropout::new(0.3, 11);
        let (r0, r1) = (Dropout::new(0.3, 11), Dropout::new(0.3, 11));
        r1.set_example_offset(2).unwrap();
        for _ in 0..2 {
            let all = whole.apply(&x, true).unwrap();
            let a = r0.apply(&x.narrow(0, 0, 2).unwrap(), true).unwrap();
            let b = r1.apply(&x.narrow(0, 2, 2).unwrap(), true).unwrap();
            let split = Tensor::cat(&[a, b], 0).unwrap();
            assert_eq!(split.flatten_all().unwrap().to_vec1::<f32>().unwrap(), all.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        }
        let resumed = Dropout::new(0.3, 11);
        resumed.set_position(whole.position().unwrap()).unwrap();
        assert_eq!(whole.position().unwrap(), 2);
        let (a, b) = (whole.apply(&x, true).unwrap(), resumed.apply(&x, true).unwrap());
        assert_eq!(a.flatten_all().unwrap().to_vec1::<f32>().unwrap(), b.flatten_all().unwrap().to_vec1::<f32>().unwrap());
    }
}
