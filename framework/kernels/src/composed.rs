//! The device path of every op: the same function composed from candle primitives, which candle
//! runs on any device (CUDA and Metal kernels, candle's autograd for the backward).
//!
//! Each fused op of this crate calls its function here when its input is not on the CPU; the
//! functions are public so that tests can run the device path on the CPU against the fused
//! kernels (`tests/kernels.rs`) and on a GPU against the CPU kernels (`tests/device.rs`, run
//! wherever a GPU is present). Everything stays on the input's device: masks are built there
//! (the causal mask from `arange`, the key mask uploaded once per call), and only
//! [`cross_entropy`] reads anything back (the targets, to validate them and pick the counted
//! rows). Half-precision inputs compute in f32 (f64 stays f64) and are cast back, as on the CPU;
//! [`gelu_tanh`] / [`gelu_erf`] run candle's own GELU kernels in the input's dtype.

use crate::softmax::Masking;
use crate::{compute_dtype, KeyMask};
use candle_core::{DType, Result, Tensor, D};

/// [`crate::masked_softmax`]: `scale · x` plus additive −1e9 biases for the masked keys, then
/// `exp(log_softmax)` (a row with no key to attend becomes uniform, as with the fused kernel).
pub fn masked_softmax(scores: &Tensor, scale: f64, causal: bool, mask: Option<&KeyMask>) -> Result<Tensor> {
    let m = Masking { scale, causal, mask: mask.cloned() };
    m.check(scores.dims())?;
    masked_softmax_checked(scores, &m)
}

pub(crate) fn masked_softmax_checked(scores: &Tensor, m: &Masking) -> Result<Tensor> {
    let dtype = scores.dtype();
    let cd = compute_dtype(scores, "masked_softmax")?;
    let dev = scores.device();
    let mut x = scores.to_dtype(cd)?.affine(m.scale, 0.0)?;
    let dims = x.dims().to_vec();
    let (sq, sk) = (dims[dims.len() - 2], dims[dims.len() - 1]);
    if m.causal {
        // Key j is visible from query i when j ≤ i + sk − sq: built on the device from aranges
        // (exact in f32 for any sequence below 2^24).
        let i = Tensor::arange(0u32, sq as u32, dev)?.to_dtype(cd)?.affine(1.0, (sk - sq) as f64)?.reshape((sq, 1))?;
        let j = Tensor::arange(0u32, sk as u32, dev)?.to_dtype(cd)?.reshape((1, sk))?;
        let visible = j.broadcast_le(&i)?.to_dtype(cd)?;
        x = x.broadcast_add(&visible.affine(1e9, -1e9)?)?;
    }
    if let Some(k) = &m.mask {
        let mut shape = vec![k.dims().0];
        shape.extend(std::iter::repeat_n(1, dims.len() - 2));
        shape.push(k.dims().1);
        x = x.broadcast_add(&k.bias(dev)?.to_dtype(cd)?.reshape(shape)?)?;
    }
    let max = x.detach().max_keepdim(D::Minus1)?;
    let shifted = x.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&lse)?.exp()?.to_dtype(dtype)
}

/// [`crate::layer_norm`]: mean, centring, biased variance, `1 / √(var + eps)`, affine.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let cd = compute_dtype(x, "layer_norm")?;
    let x = x.to_dtype(cd)?;
    let mean = x.mean_keepdim(D::Minus1)?;
    let centred = x.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centred.broadcast_div(&var.affine(1.0, eps)?.sqrt()?)?;
    normed.broadcast_mul(&weight.to_dtype(cd)?)?.broadcast_add(&bias.to_dtype(cd)?)?.to_dtype(dtype)
}

/// [`crate::gelu_tanh`]: candle's `gelu` (the tanh approximation).
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    x.gelu()
}

/// [`crate::gelu_erf`]: candle's `gelu_erf`.
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    x.gelu_erf()
}

/// [`crate::add_bias`]: `broadcast_add` (any dtype; the bias is cast to the input's; half
/// precision adds in f32, see below).
pub fn add_bias(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let bias = if bias.dtype() == x.dtype() { bias.clone() } else { bias.to_dtype(x.dtype())? };
    if matches!(x.dtype(), DType::BF16 | DType::F16) {
        // In f32, so that the bias gradient (candle's sum over the rows) accumulates in f32
        // and rounds once; the sum is rounded once either way.
        return x.to_dtype(DType::F32)?.broadcast_add(&bias.to_dtype(DType::F32)?)?.to_dtype(x.dtype());
    }
    x.broadcast_add(&bias)
}

/// [`crate::embedding`]: `index_select` of the rows; a half-precision table is selected from
/// in f32, so that its gradient (candle's `index_add`) accumulates in f32 and rounds once.
pub fn embedding(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    let mut dims = ids.dims().to_vec();
    dims.push(table.dim(1)?);
    let ids = ids.flatten_all()?.to_dtype(DType::U32)?;
    let rows = match table.dtype() {
        DType::BF16 | DType::F16 => table.to_dtype(DType::F32)?.index_select(&ids, 0)?.to_dtype(table.dtype())?,
        _ => table.index_select(&ids, 0)?,
    };
    rows.reshape(dims)
}

/// [`crate::log_softmax`]: max shift (detached), `exp`, `sum`, `log`.
pub fn log_softmax(x: &Tensor) -> Result<Tensor> {
    let cd = compute_dtype(x, "log_softmax")?;
    let xf = x.to_dtype(cd)?;
    let max = xf.detach().max_keepdim(D::Minus1)?;
    let shifted = xf.broadcast_sub(&max)?;
    let l = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&l)?.to_dtype(x.dtype())
}

/// [`crate::cross_entropy`]: log-softmax, the counted rows picked with `index_select` and their
/// targets with `gather`, negated mean. Validates like the fused op (the targets are read back).
pub fn cross_entropy(logits: &Tensor, targets: &Tensor, ignore_index: Option<i64>) -> Result<Tensor> {
    let (cd, keep, counted) = crate::loss::prepare_targets(logits, targets, ignore_index)?;
    cross_entropy_kept(logits, cd, &keep, counted)
}

pub(crate) fn cross_entropy_kept(logits: &Tensor, cd: DType, keep: &[Option<u32>], counted: usize) -> Result<Tensor> {
    let lp = log_softmax(&logits.to_dtype(cd)?)?;
    let dev = logits.device();
    let lp = if counted == keep.len() {
        lp
    } else {
        let idx: Vec<u32> = keep.iter().enumerate().filter(|(_, k)| k.is_some()).map(|(r, _)| r as u32).collect();
        lp.index_select(&Tensor::from_vec(idx, counted, dev)?, 0)?
    };
    let tg: Vec<u32> = keep.iter().flatten().copied().collect();
    let picked = lp.gather(&Tensor::from_vec(tg, (counted, 1), dev)?, 1)?;
    picked.mean_all()?.neg()
}

/// [`crate::kl_div_rows`]: `Σ exp(lt) · (lt − lc)` over the last dimension of the two
/// log-softmaxes.
pub fn kl_div_rows(target: &Tensor, current: &Tensor) -> Result<Tensor> {
    let cd = compute_dtype(current, "kl_div_rows")?;
    let lt = log_softmax(&target.to_dtype(cd)?)?;
    let lc = log_softmax(&current.to_dtype(cd)?)?;
    lt.exp()?.mul(&lt.sub(&lc)?)?.sum(D::Minus1)
}
