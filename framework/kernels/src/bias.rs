//! Bias addition over the last dimension (every linear layer's `+ b`) with the bias gradient
//! summed over the rows in f32.

use crate::math::Float;
use crate::par::{for_rows, parts, SyncPtr};
use crate::{float_dispatch, on_cpu, slice, tensor_from, with_data};
use candle_core::{bail, CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor, D};
use std::sync::Mutex;

struct AddBias;

impl CustomOp2 for AddBias {
    fn name(&self) -> &'static str {
        "tram-add-bias"
    }
    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout, bs: &CpuStorage, bl: &Layout) -> Result<(CpuStorage, Shape)> {
        let n = *xl.dims().last().unwrap_or(&1);
        float_dispatch!(self.name(), crate::sdt(xs), T => {
            let (x, b) = (slice::<T>(xs, xl, self.name())?, slice::<T>(bs, bl, self.name())?);
            let mut y = vec![T::ZERO; x.len()];
            let p = SyncPtr(y.as_mut_ptr());
            for_rows(x.len() / n.max(1), n, |_, range| {
                let out = unsafe { p.slice(range.start * n, range.len() * n) };
                for (o, xr) in out.chunks_exact_mut(n).zip(x[range.start * n..range.end * n].chunks_exact(n)) {
                    o.iter_mut().zip(xr).zip(b).for_each(|((o, &a), &c)| *o = a + c);
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
        bs: &candle_core::CudaStorage,
        bl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::add_bias(xs, xl, bs, bl)
    }
    fn bwd(&self, _x: &Tensor, b: &Tensor, _y: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let n = b.elem_count();
        #[cfg(feature = "cuda")]
        if g.device().is_cuda() {
            // Column partial sums in f32 (coalesced), added up here and rounded once.
            let g = if g.is_contiguous() { g.clone() } else { g.contiguous()? };
            let db = g.apply_op1_no_bwd(&ColSums)?.sum(0)?.to_dtype(b.dtype())?;
            return Ok((Some(g), Some(db)));
        }
        let db = float_dispatch!(self.name(), g.dtype(), T => {
            let db = with_data::<T, _>(g, self.name(), |g| {
                let rows = g.len() / n.max(1);
                let partial: Vec<Mutex<Vec<T>>> = (0..parts(rows, n)).map(|_| Mutex::new(vec![T::ZERO; n])).collect();
                for_rows(rows, n, |part, range| {
                    let mut acc = partial[part].lock().expect("bias partial sums");
                    for gr in g[range.start * n..range.end * n].chunks_exact(n) {
                        acc.iter_mut().zip(gr).for_each(|(a, &v)| *a += v);
                    }
                });
                let mut it = partial.into_iter().map(|m| m.into_inner().expect("bias partial sums"));
                let mut db = it.next().unwrap_or_else(|| vec![T::ZERO; n]);
                for p in it {
                    db.iter_mut().zip(p).for_each(|(a, v)| *a += v);
                }
                Ok(db)
            })?;
            tensor_from(db, b.shape())
        });
        Ok((Some(g.clone()), Some(db)))
    }
}

/// The column partial sums `[chunks, n]` (f32) of a CUDA gradient `[.., n]`: the bias gradient
/// of [`AddBias`] before the sum over the chunks.
#[cfg(feature = "cuda")]
struct ColSums;

#[cfg(feature = "cuda")]
impl candle_core::CustomOp1 for ColSums {
    fn name(&self) -> &'static str {
        "tram-bias-col-sums"
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        bail!("{}: CUDA only (the CPU backward sums the rows itself)", self.name())
    }
    fn cuda_fwd(&self, s: &candle_core::CudaStorage, l: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::col_sums(s, l)
    }
}

/// `x + bias` with `bias` `[n]` broadcast over the rows of `x` `[.., n]`, one pass, in the dtype
/// of `x` (a bias of another dtype is cast to it). The input gradient is the output gradient
/// itself; the bias gradient is summed over the rows in f32 (f64 for f64) and rounded once to
/// the bias dtype: candle's `broadcast_add` backward sums in the tensor's dtype, which in bf16
/// on the CPU loses 10% over 8192 rows. On the CPU f32 and f64 run here directly and bf16 / f16
/// through f32 (the same single rounding of each sum); CUDA: the `tram_add_bias_*` and
/// `tram_col_sums_*` kernels for f32 and bf16 (see [`crate::cuda_kernels_enabled`]); anything
/// else: [`crate::composed::add_bias`].
pub fn add_bias(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let n = x.dim(D::Minus1)?;
    if bias.dims() != [n] {
        bail!("add_bias: bias {:?} must be [{n}] for input {:?}", bias.dims(), x.dims());
    }
    let dt = x.dtype();
    let cuda = crate::on_cuda_kernel(x, DType::F32) && matches!(dt, DType::F32 | DType::BF16);
    if !on_cpu(x) && !cuda {
        return crate::composed::add_bias(x, bias);
    }
    let c = |t: &Tensor, to: DType| -> Result<Tensor> {
        let t = if t.dtype() == to { t.clone() } else { t.to_dtype(to)? };
        if t.is_contiguous() {
            Ok(t)
        } else {
            t.contiguous()
        }
    };
    if !cuda && matches!(dt, DType::BF16 | DType::F16) {
        return c(x, DType::F32)?.apply_op2(&c(bias, DType::F32)?, AddBias)?.to_dtype(dt);
    }
    if !matches!(dt, DType::F32 | DType::F64 | DType::BF16 | DType::F16) {
        bail!("add_bias: expected a float input, got {dt:?}");
    }
    c(x, dt)?.apply_op2(&c(bias, dt)?, AddBias)
}
