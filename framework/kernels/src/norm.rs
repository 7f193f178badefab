//! Layer norm over the last dimension with affine parameters.

use crate::math::Float;
use crate::math::{dot, sum};
use crate::par::{for_rows, parts, SyncPtr};
use crate::{compute_dtype, float_dispatch, on_cpu, slice, tensor_from, with_data};
use candle_core::{bail, CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor, D};
use std::sync::Mutex;

struct LayerNorm {
    eps: f64,
}

/// Mean and 1/√(var + eps) of one row (two passes, biased variance).
#[inline]
fn moments<T: Float>(x: &[T], eps: T) -> (T, T) {
    let n = T::of(x.len() as f64);
    let mean = sum(x) / n;
    let mut acc = [T::ZERO; 8];
    let c = x.chunks_exact(8);
    let mut s = T::ZERO;
    for v in c.remainder() {
        s += (*v - mean) * (*v - mean);
    }
    for v in c {
        for i in 0..8 {
            acc[i] += (v[i] - mean) * (v[i] - mean);
        }
    }
    let var = acc.iter().fold(s, |a, b| a + *b) / n;
    (mean, T::ONE / (var + eps).sqrt())
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "tram-layer-norm"
    }
    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = *xl.dims().last().unwrap_or(&1);
        float_dispatch!(self.name(), crate::sdt(xs), T => {
            let (x, w, b) = (slice::<T>(xs, xl, self.name())?, slice::<T>(ws, wl, self.name())?, slice::<T>(bs, bl, self.name())?);
            let mut y = vec![T::ZERO; x.len()];
            let p = SyncPtr(y.as_mut_ptr());
            let eps = T::of(self.eps);
            for_rows(x.len() / d.max(1), d * 2, |_, range| {
                let out = unsafe { p.slice(range.start * d, range.len() * d) };
                for (k, r) in range.enumerate() {
                    let xr = &x[r * d..(r + 1) * d];
                    let (mean, rstd) = moments(xr, eps);
                    for (((o, &v), &wi), &bi) in out[k * d..(k + 1) * d].iter_mut().zip(xr).zip(w).zip(b) {
                        *o = (v - mean) * rstd * wi + bi;
                    }
                }
            });
            Ok((crate::owned(y), xl.shape().clone()))
        })
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xs: &candle_core::CudaStorage,
        xl: &Layout,
        ws: &candle_core::CudaStorage,
        wl: &Layout,
        bs: &candle_core::CudaStorage,
        bl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::layer_norm(xs, xl, ws, wl, bs, bl, self.eps)
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = x.dim(D::Minus1)?;
        let g = g.to_dtype(x.dtype())?;
        #[cfg(feature = "cuda")]
        if x.device().is_cuda() {
            // The CUDA kernels: dx in one pass; the weight / bias gradients as per-chunk column
            // sums, added up here.
            let g = if g.is_contiguous() { g } else { g.contiguous()? };
            // The sums are f32 (bf16 input: rounded once to the parameters' dtype).
            let dx = x.apply_op3_no_bwd(w, &g, &LayerNormDx { eps: self.eps })?;
            let sums = x.apply_op2_no_bwd(&g, &LayerNormWb { eps: self.eps })?.sum(1)?.to_dtype(w.dtype())?;
            return Ok((Some(dx), Some(sums.get(0)?), Some(sums.get(1)?)));
        }
        float_dispatch!(self.name(), x.dtype(), T => {
            let eps = T::of(self.eps);
            let (dx, dw, db) = with_data::<T, _>(x, self.name(), |x| {
                with_data::<T, _>(w, self.name(), |w| {
                    with_data::<T, _>(&g, self.name(), |g| {
                        let rows = x.len() / d.max(1);
                        let mut dx = vec![T::ZERO; x.len()];
                        let p = SyncPtr(dx.as_mut_ptr());
                        let partial: Vec<Mutex<(Vec<T>, Vec<T>)>> =
                            (0..parts(rows, d * 4)).map(|_| Mutex::new((vec![T::ZERO; d], vec![T::ZERO; d]))).collect();
                        let inv_d = T::ONE / T::of(d as f64);
                        for_rows(rows, d * 4, |part, range| {
                            let out = unsafe { p.slice(range.start * d, range.len() * d) };
                            let mut guard = partial[part].lock().expect("layer-norm partial sums");
                            let (dw, db) = &mut *guard;
                            let (mut xh, mut gw) = (vec![T::ZERO; d], vec![T::ZERO; d]);
                            for (k, r) in range.enumerate() {
                                let (xr, gr) = (&x[r * d..(r + 1) * d], &g[r * d..(r + 1) * d]);
                                let (mean, rstd) = moments(xr, eps);
                                for (h, &v) in xh.iter_mut().zip(xr) {
                                    *h = (v - mean) * rstd;
                                }
                                for ((o, &gi), &wi) in gw.iter_mut().zip(gr).zip(w) {
                                    *o = gi * wi;
                                }
                                let (a, c) = (sum(&gw) * inv_d, dot(&gw, &xh) * inv_d);
                                for ((dwi, &gi), &h) in dw.iter_mut().zip(gr).zip(&xh) {
                                    *dwi += gi * h;
                                }
                                for (dbi, &gi) in db.iter_mut().zip(gr) {
                                    *dbi += gi;
                                }
                                for ((o, &g), &h) in out[k * d..(k + 1) * d].iter_mut().zip(&gw).zip(&xh) {
                                    *o = rstd * (g - a - h * c);
                                }
                            }
                        });
                        let mut parts_iter = partial.into_iter().map(|m| m.into_inner().expect("layer-norm partial sums"));
                        let (mut dw, mut db) = parts_iter.next().unwrap_or_else(|| (vec![T::ZERO; d], vec![T::ZERO; d]));
                        for (pw, pb) in parts_iter {
                            dw.iter_mut().zip(pw).for_each(|(a, b)| *a += b);
                            db.iter_mut().zip(pb).for_each(|(a, b)| *a += b);
                        }
                        Ok((dx, dw, db))
                    })
                })
            })?;
            Ok((Some(tensor_from(dx, x.shape())), Some(tensor_from(dw, d)), Some(tensor_from(db, d))))
        })
    }
}

/// The input gradient of [`LayerNorm`] on CUDA (inputs x, weight, upstream gradient).
#[cfg(feature = "cuda")]
struct LayerNormDx {
    eps: f64,
}

#[cfg(feature = "cuda")]
crate::cuda_only_op3!(LayerNormDx, "tram-layer-norm-dx", |op, xs, xl, ws, wl, gs, gl| crate::cuda::layer_norm_dx(
    xs, xl, ws, wl, gs, gl, op.eps
));

/// The weight / bias gradient partial sums `[2, chunks, d]` of [`LayerNorm`] on CUDA (inputs x,
/// upstream gradient).
#[cfg(feature = "cuda")]
struct LayerNormWb {
    eps: f64,
}

#[cfg(feature = "cuda")]
impl candle_core::CustomOp2 for LayerNormWb {
    fn name(&self) -> &'static str {
        "tram-layer-norm-wb"
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        bail!("{}: CUDA only (the CPU backward is fused into the layer norm op)", self.name())
    }
    fn cuda_fwd(
        &self,
        xs: &candle_core::CudaStorage,
        xl: &Layout,
        gs: &candle_core::CudaStorage,
        gl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::layer_norm_wb(xs, xl, gs, gl, self.eps)
    }
}

/// `LayerNorm(x) = (x − mean) / √(var + eps) · weight + bias` over the last dimension of `x`
/// (biased variance, as PyTorch), computed in f32 (f64 for f64 input) and returned in the
/// input's dtype. `weight` and `bias`: `[hidden]`. Differentiable in all three. CUDA: its own
/// kernels, reading and writing bf16 directly when input, weight and bias are all bf16 (see
/// [`crate::cuda_kernels_enabled`]); other devices: [`crate::composed::layer_norm`].
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let op = "layer_norm";
    let cd = compute_dtype(x, op)?;
    let d = x.dim(D::Minus1)?;
    if weight.dims() != [d] || bias.dims() != [d] {
        bail!("{op}: weight {:?} and bias {:?} must both be [{d}] for input {:?}", weight.dims(), bias.dims(), x.dims());
    }
    if !on_cpu(x) && !crate::on_cuda_kernel(x, cd) {
        return crate::composed::layer_norm(x, weight, bias, eps);
    }
    if crate::on_cuda_kernel(x, cd) && [x, weight, bias].iter().all(|t| t.dtype() == DType::BF16) {
        // The bf16 kernels read and write bf16 (f32 compute): no f32 copy of the input, the
        // output or their gradients.
        let c = |t: &Tensor| if t.is_contiguous() { Ok(t.clone()) } else { t.contiguous() };
        return c(x)?.apply_op3(&c(weight)?, &c(bias)?, LayerNorm { eps });
    }
    let c = |t: &Tensor| -> Result<Tensor> {
        let t = t.to_dtype(cd)?;
        if t.is_contiguous() {
            Ok(t)
        } else {
            t.contiguous()
        }
    };
    c(x)?.apply_op3(&c(weight)?, &c(bias)?, LayerNorm { eps })?.to_dtype(x.dtype())
}

/// The device path ([`crate::composed::layer_norm`]), on any device.
#[doc(hidden)]
pub fn layer_norm_composed(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    crate::composed::layer_norm(x, weight, bias, eps)
}
