//! Softmax over the last dimension of attention scores, with the scale and the masks folded in.

use crate::math::{dot, max_of, Float};
use crate::par::{for_rows, SyncPtr};
use crate::{compute_dtype, float_dispatch, on_cpu, slice};
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor, D};
use std::sync::Arc;

/// A key padding mask for [`masked_softmax`], built once per batch and shared by every layer:
/// `[batch, seq_k]`, true where the key is a real token.
#[derive(Clone, Debug)]
pub struct KeyMask {
    keep: Arc<Vec<u8>>,
    batch: usize,
    seq_k: usize,
}

impl KeyMask {
    /// From a `[batch, seq_k]` tensor of any dtype (non-zero = attend). One device read.
    pub fn new(mask: &Tensor) -> Result<Self> {
        let (batch, seq_k) =
            mask.dims2().map_err(|_| candle_core::Error::Msg(format!("key mask: expected shape [batch, seq], got {:?}", mask.dims())))?;
        let v = mask.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        Ok(Self { keep: Arc::new(v.iter().map(|x| u8::from(*x != 0.0)).collect()), batch, seq_k })
    }
    /// `[batch, seq_k]`.
    pub fn dims(&self) -> (usize, usize) {
        (self.batch, self.seq_k)
    }
    /// Whether every key is attended (the mask can be dropped).
    pub fn all_kept(&self) -> bool {
        self.keep.iter().all(|k| *k != 0)
    }
    /// The mask as an additive bias `[batch, 1, 1, seq_k]` (0 kept, −1e9 masked), for the
    /// composed path on non-CPU devices.
    pub(crate) fn bias(&self, device: &candle_core::Device) -> Result<Tensor> {
        let v: Vec<f32> = self.keep.iter().map(|k| if *k != 0 { 0.0 } else { -1e9 }).collect();
        Tensor::from_vec(v, (self.batch, 1, 1, self.seq_k), device)
    }
}

/// Which keys row `r` (query `i`) of `[.., seq_q, seq_k]` scores may attend: the first `lim`
/// (causal: `i + seq_k − seq_q + 1`), and of those the ones `keep` marks.
#[derive(Clone)]
pub(crate) struct Masking {
    pub(crate) scale: f64,
    pub(crate) causal: bool,
    pub(crate) mask: Option<KeyMask>,
}

impl Masking {
    pub(crate) fn check(&self, dims: &[usize]) -> Result<(usize, usize, usize)> {
        if dims.len() < 2 {
            bail!("masked_softmax: scores must be [.., seq_q, seq_k], got {dims:?}");
        }
        let (sq, sk) = (dims[dims.len() - 2], dims[dims.len() - 1]);
        let rows: usize = dims[..dims.len() - 1].iter().product();
        if self.causal && sq > sk {
            bail!("masked_softmax: causal masking needs seq_q ≤ seq_k, got scores {dims:?}");
        }
        if let Some(m) = &self.mask {
            if dims.len() < 3 || dims[0] != m.batch || sk != m.seq_k {
                bail!("masked_softmax: key mask [{}, {}] does not fit scores {dims:?} ([batch, .., seq_q, seq_k])", m.batch, m.seq_k);
            }
        }
        Ok((rows, sq, sk))
    }

    /// Softmax rows `range` of `x` into `y`.
    fn forward_rows<T: Float>(&self, x: &[T], y: &mut [T], range: std::ops::Range<usize>, sq: usize, sk: usize, rows_per_batch: usize) {
        let scale = T::of(self.scale);
        for r in range.clone() {
            let xr = &x[r * sk..(r + 1) * sk];
            let yr = &mut y[(r - range.start) * sk..(r - range.start + 1) * sk];
            let lim = if self.causal { (r % sq + sk - sq + 1).min(sk) } else { sk };
            let keep = self.mask.as_ref().map(|m| &m.keep[(r / rows_per_batch) * sk..(r / rows_per_batch + 1) * sk]);
            let any = lim > 0 && keep.is_none_or(|k| k[..lim].iter().any(|v| *v != 0));
            if !any {
                // No key to attend: uniform, as an additive −1e9 bias on every key gives.
                let u = T::ONE / T::of(sk as f64);
                yr.iter_mut().for_each(|v| *v = u);
                continue;
            }
            let (xr, yv) = (&xr[..lim], &mut yr[..lim]);
            let sum = match keep {
                None => {
                    for (o, &v) in yv.iter_mut().zip(xr) {
                        *o = v * scale;
                    }
                    let ms = max_of(yv);
                    let shifted: &mut [T] = yv;
                    for o in shifted.iter_mut() {
                        *o = (*o - ms).exp();
                    }
                    crate::math::sum(shifted)
                }
                Some(k) => {
                    let k = &k[..lim];
                    let mut ms = T::NEG_INF;
                    for (&v, &kk) in xr.iter().zip(k) {
                        if kk != 0 {
                            ms = ms.maxp(v * scale);
                        }
                    }
                    for ((o, &v), &kk) in yv.iter_mut().zip(xr).zip(k) {
                        let e = (v * scale - ms).exp();
                        *o = if kk != 0 { e } else { T::ZERO };
                    }
                    crate::math::sum(yv)
                }
            };
            let inv = T::ONE / sum;
            yv.iter_mut().for_each(|v| *v *= inv);
            yr[lim..].iter_mut().for_each(|v| *v = T::ZERO);
        }
    }
}

struct SoftmaxFwd(Masking);

impl CustomOp1 for SoftmaxFwd {
    fn name(&self) -> &'static str {
        "tram-masked-softmax"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (rows, sq, sk) = self.0.check(l.dims())?;
        let rows_per_batch = if self.0.mask.is_some() { rows / l.dims()[0] } else { rows };
        float_dispatch!(self.name(), crate::sdt(s), T => {
            let x = slice::<T>(s, l, self.name())?;
            let mut y = vec![T::ZERO; x.len()];
            let p = SyncPtr(y.as_mut_ptr());
            for_rows(rows, sk * 8, |_, range| {
                let out = unsafe { p.slice(range.start * sk, range.len() * sk) };
                self.0.forward_rows(x, out, range, sq, sk, rows_per_batch);
            });
            Ok((crate::owned(y), l.shape().clone()))
        })
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &candle_core::CudaStorage, l: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        let (rows, sq, sk) = self.0.check(l.dims())?;
        let keep = self.0.mask.as_ref().map(|m| (m.keep.as_slice(), rows / l.dims()[0]));
        crate::cuda::masked_softmax(s, l, sq, sk, self.0.scale, self.0.causal, keep)
    }
    fn bwd(&self, _x: &Tensor, y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(softmax_backward(y, g, self.0.scale)?))
    }
}

/// `dx = scale · y ⊙ (g − Σ g y)` over the last dimension.
struct SoftmaxBwd(f64);

impl CustomOp2 for SoftmaxBwd {
    fn name(&self) -> &'static str {
        "tram-softmax-bwd"
    }
    fn cpu_fwd(&self, ys: &CpuStorage, yl: &Layout, gs: &CpuStorage, gl: &Layout) -> Result<(CpuStorage, Shape)> {
        let n = *yl.dims().last().unwrap_or(&1);
        float_dispatch!(self.name(), crate::sdt(ys), T => {
            let (y, g) = (slice::<T>(ys, yl, self.name())?, slice::<T>(gs, gl, self.name())?);
            let rows = y.len() / n.max(1);
            let mut dx = vec![T::ZERO; y.len()];
            let p = SyncPtr(dx.as_mut_ptr());
            let scale = T::of(self.0);
            for_rows(rows, n * 4, |_, range| {
                let out = unsafe { p.slice(range.start * n, range.len() * n) };
                for (k, r) in range.enumerate() {
                    let (yr, gr) = (&y[r * n..(r + 1) * n], &g[r * n..(r + 1) * n]);
                    let dot = dot(yr, gr);
                    for ((o, &a), &b) in out[k * n..(k + 1) * n].iter_mut().zip(yr).zip(gr) {
                        *o = scale * a * (b - dot);
                    }
                }
            });
            Ok((crate::owned(dx), yl.shape().clone()))
        })
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        ys: &candle_core::CudaStorage,
        yl: &Layout,
        gs: &candle_core::CudaStorage,
        gl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::softmax_bwd(ys, yl, gs, gl, self.0)
    }
}

fn softmax_backward(y: &Tensor, g: &Tensor, scale: f64) -> Result<Tensor> {
    let cuda_kernel = crate::on_cuda_kernel(y, DType::F32) && matches!(y.dtype(), DType::F32 | DType::BF16);
    if (on_cpu(y) && matches!(y.dtype(), DType::F32 | DType::F64)) || cuda_kernel {
        let g = g.to_dtype(y.dtype())?;
        let g = if g.is_contiguous() { g } else { g.contiguous()? };
        y.apply_op2_no_bwd(&g, &SoftmaxBwd(scale))
    } else {
        let dot = g.mul(y)?.sum_keepdim(D::Minus1)?;
        g.broadcast_sub(&dot)?.mul(y)?.affine(scale, 0.0)
    }
}

/// `softmax(scale · scores)` over the last dimension of `scores` `[batch, .., seq_q, seq_k]`,
/// with keys after query `i` (offset by `seq_k − seq_q`) masked when `causal`, and the keys
/// `mask` marks as padding masked (both get probability 0). A row with no key to attend gets
/// the uniform distribution, as an additive −1e9 bias on every key gives. Differentiable
/// (`dx = scale · p ⊙ (g − Σ g p)`); masked entries get gradient 0. The result has the dtype of
/// `scores` (bf16 / f16 compute in f32). CUDA: the `tram_masked_softmax_f32` / `_bf16` kernels
/// (bf16 in and out, no f32 copy; see [`crate::cuda_kernels_enabled`]); other devices:
/// [`crate::composed::masked_softmax`].
pub fn masked_softmax(scores: &Tensor, scale: f64, causal: bool, mask: Option<&KeyMask>) -> Result<Tensor> {
    let op = "masked_softmax";
    let cd = compute_dtype(scores, op)?;
    let m = Masking { scale, causal, mask: mask.cloned() };
    m.check(scores.dims())?;
    if crate::on_cuda_kernel(scores, cd) && scores.dtype() == DType::BF16 {
        // The bf16 kernel reads and writes bf16 directly (f32 compute): no f32 copy of the
        // scores, and bf16 probabilities kept for the backward.
        let x = if scores.is_contiguous() { scores.clone() } else { scores.contiguous()? };
        return x.apply_op1(SoftmaxFwd(m));
    }
    if !on_cpu(scores) && !crate::on_cuda_kernel(scores, cd) {
        return crate::composed::masked_softmax_checked(scores, &m);
    }
    let x = scores.to_dtype(cd)?;
    let x = if x.is_contiguous() { x } else { x.contiguous()? };
    x.apply_op1(SoftmaxFwd(m))?.to_dtype(scores.dtype())
}

/// The device path ([`crate::composed::masked_softmax`]), on any device.
#[doc(hidden)]
pub fn masked_softmax_composed(scores: &Tensor, scale: f64, causal: bool, mask: Option<&KeyMask>) -> Result<Tensor> {
    crate::composed::masked_softmax(scores, scale, causal, mask)
}
