//! Log-softmax, cross-entropy with ignored rows, and the row-wise KL of the trust regions.

use crate::math::{dot, logsumexp, max_of, sum, Float};
use crate::par::{for_rows, SyncPtr};
use crate::{compute_dtype, float_dispatch, on_cpu, slice, tensor_from, with_data};
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor, D};
use std::sync::Arc;

fn rows_of(l: &Layout, op: &str) -> Result<(usize, usize)> {
    let d = l.dims();
    if d.is_empty() {
        bail!("{op}: expected at least one dimension, got a scalar");
    }
    let n = d[d.len() - 1];
    Ok((d.iter().product::<usize>() / n.max(1), n))
}

// ---------------------------------------------------------------------------------------------
// log-softmax

struct LogSoftmax;

impl CustomOp1 for LogSoftmax {
    fn name(&self) -> &'static str {
        "tram-log-softmax"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (rows, n) = rows_of(l, self.name())?;
        float_dispatch!(self.name(), crate::sdt(s), T => {
            let x = slice::<T>(s, l, self.name())?;
            let mut y = vec![T::ZERO; x.len()];
            let p = SyncPtr(y.as_mut_ptr());
            for_rows(rows, n * 4, |_, range| {
                let out = unsafe { p.slice(range.start * n, range.len() * n) };
                for (k, r) in range.enumerate() {
                    let xr = &x[r * n..(r + 1) * n];
                    let o = &mut out[k * n..(k + 1) * n];
                    let shift = logsumexp(xr, o);
                    o.iter_mut().zip(xr).for_each(|(o, &v)| *o = v - shift);
                }
            });
            Ok((crate::owned(y), l.shape().clone()))
        })
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &candle_core::CudaStorage, l: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::log_softmax(s, l)
    }
    fn bwd(&self, _x: &Tensor, y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let g = g.to_dtype(y.dtype())?;
        let g = if g.is_contiguous() { g } else { g.contiguous()? };
        Ok(Some(y.apply_op2_no_bwd(&g, &LogSoftmaxBwd)?))
    }
}

/// `dx = g − exp(y) Σ g` per row.
struct LogSoftmaxBwd;

impl CustomOp2 for LogSoftmaxBwd {
    fn name(&self) -> &'static str {
        "tram-log-softmax-bwd"
    }
    fn cpu_fwd(&self, ys: &CpuStorage, yl: &Layout, gs: &CpuStorage, gl: &Layout) -> Result<(CpuStorage, Shape)> {
        let (rows, n) = rows_of(yl, self.name())?;
        float_dispatch!(self.name(), crate::sdt(ys), T => {
            let (y, g) = (slice::<T>(ys, yl, self.name())?, slice::<T>(gs, gl, self.name())?);
            let mut dx = vec![T::ZERO; y.len()];
            let p = SyncPtr(dx.as_mut_ptr());
            for_rows(rows, n * 4, |_, range| {
                let out = unsafe { p.slice(range.start * n, range.len() * n) };
                for (k, r) in range.enumerate() {
                    let (yr, gr) = (&y[r * n..(r + 1) * n], &g[r * n..(r + 1) * n]);
                    let s = sum(gr);
                    out[k * n..(k + 1) * n].iter_mut().zip(yr).zip(gr).for_each(|((o, &a), &b)| *o = b - a.exp() * s);
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
        crate::cuda::log_softmax_bwd(ys, yl, gs, gl)
    }
}

/// `log softmax` over the last dimension, differentiable (`dx = g − softmax · Σ g`), computed in
/// f32 (f64 for f64 input) and returned in the input's dtype. CUDA: its own kernels (see
/// [`crate::cuda_kernels_enabled`]); other devices: [`crate::composed::log_softmax`] (max
/// shift, `exp`, `sum`, `log`).
pub fn log_softmax(x: &Tensor) -> Result<Tensor> {
    let cd = compute_dtype(x, "log_softmax")?;
    if !on_cpu(x) && !crate::on_cuda_kernel(x, cd) {
        return crate::composed::log_softmax(x);
    }
    let xc = x.to_dtype(cd)?;
    let xc = if xc.is_contiguous() { xc } else { xc.contiguous()? };
    xc.apply_op1(LogSoftmax)?.to_dtype(x.dtype())
}

// ---------------------------------------------------------------------------------------------
// cross-entropy

struct CrossEntropy {
    /// Class id per row, `None` for an ignored row.
    targets: Arc<Vec<Option<u32>>>,
    counted: usize,
}

impl CustomOp1 for CrossEntropy {
    fn name(&self) -> &'static str {
        "tram-cross-entropy"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (rows, n) = rows_of(l, self.name())?;
        float_dispatch!(self.name(), crate::sdt(s), T => {
            let x = slice::<T>(s, l, self.name())?;
            let mut per_row = vec![T::ZERO; rows];
            let p = SyncPtr(per_row.as_mut_ptr());
            for_rows(rows, n * 2, |_, range| {
                let out = unsafe { p.slice(range.start, range.len()) };
                let mut scratch = vec![T::ZERO; n];
                for (k, r) in range.enumerate() {
                    if let Some(t) = self.targets[r] {
                        let xr = &x[r * n..(r + 1) * n];
                        out[k] = logsumexp(xr, &mut scratch) - xr[t as usize];
                    }
                }
            });
            let total = per_row.iter().fold(T::ZERO, |a, b| a + *b);
            Ok((crate::owned(vec![total / T::of(self.counted as f64)]), Shape::from(())))
        })
    }
    fn bwd(&self, x: &Tensor, _y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let n = x.dim(D::Minus1)?;
        let g = g.to_dtype(DType::F64)?.to_scalar::<f64>()? / self.counted as f64;
        float_dispatch!(self.name(), x.dtype(), T => {
            let dx = with_data::<T, _>(x, self.name(), |x| {
                let rows = x.len() / n.max(1);
                let mut dx = vec![T::ZERO; x.len()];
                let p = SyncPtr(dx.as_mut_ptr());
                let g = T::of(g);
                for_rows(rows, n * 3, |_, range| {
                    let out = unsafe { p.slice(range.start * n, range.len() * n) };
                    for (k, r) in range.enumerate() {
                        let Some(t) = self.targets[r] else { continue };
                        let xr = &x[r * n..(r + 1) * n];
                        let o = &mut out[k * n..(k + 1) * n];
                        let m = max_of(xr);
                        crate::math::exp_shifted(xr, m, o);
                        let f = g / sum(o);
                        o.iter_mut().for_each(|v| *v *= f);
                        o[t as usize] -= g;
                    }
                });
                Ok(dx)
            })?;
            Ok(Some(tensor_from(dx, x.shape())))
        })
    }
}

/// Validates `logits` / `targets` for [`cross_entropy`]: the compute dtype, the class id of each
/// row (`None`: ignored) and the number of counted rows.
pub(crate) fn prepare_targets(logits: &Tensor, targets: &Tensor, ignore_index: Option<i64>) -> Result<(DType, Vec<Option<u32>>, usize)> {
    let op = "cross_entropy";
    let cd = compute_dtype(logits, op)?;
    let (rows, classes) =
        logits.dims2().map_err(|_| candle_core::Error::Msg(format!("{op}: logits must be [rows, classes], got {:?}", logits.dims())))?;
    if targets.dims() != [rows] {
        bail!("{op}: targets must be [{rows}] (one class id per logits row), got {:?}", targets.dims());
    }
    if targets.dtype().is_float() {
        bail!("{op}: targets must be integer class ids, got {:?}", targets.dtype());
    }
    let ids = targets.to_dtype(DType::I64)?.to_vec1::<i64>()?;
    let mut keep = Vec::with_capacity(rows);
    for (r, &t) in ids.iter().enumerate() {
        if Some(t) == ignore_index {
            keep.push(None);
        } else if t < 0 || t as usize >= classes {
            bail!("{op}: target {t} of row {r} is outside the classes 0..{classes} (and is not the ignore index {ignore_index:?})");
        } else {
            keep.push(Some(t as u32));
        }
    }
    let counted = keep.iter().filter(|k| k.is_some()).count();
    if counted == 0 {
        bail!("{op}: every one of the {rows} rows has the ignore index {ignore_index:?}: no target to average over");
    }
    Ok((cd, keep, counted))
}

/// Mean cross-entropy `−log softmax(logits)[row, target]` over the rows of `logits`
/// `[rows, classes]` whose `targets` `[rows]` (an integer tensor) is not `ignore_index`
/// (PyTorch's `F.cross_entropy(..., ignore_index=...)`). Differentiable in `logits` (one fused
/// pass each way, nothing `[rows, classes]`-sized kept between them); computed in f32 (f64 for
/// f64 logits), returned as an f32 (f64) scalar. Errors name a target outside `0..classes` and
/// a batch where every row is ignored. CUDA: per-row kernels (see
/// [`crate::cuda_kernels_enabled`]) and a mean; other devices:
/// [`crate::composed::cross_entropy`].
pub fn cross_entropy(logits: &Tensor, targets: &Tensor, ignore_index: Option<i64>) -> Result<Tensor> {
    let (cd, keep, counted) = prepare_targets(logits, targets, ignore_index)?;
    #[cfg(feature = "cuda")]
    if crate::on_cuda_kernel(logits, cd) {
        // bf16 logits are read as they are (the bf16 kernels; the gradient comes back in bf16).
        let x = if logits.dtype() == DType::BF16 { logits.clone() } else { logits.to_dtype(cd)? };
        let x = if x.is_contiguous() { x } else { x.contiguous()? };
        let ids: Vec<u32> = keep.iter().map(|k| k.unwrap_or(u32::MAX)).collect();
        let ids = Tensor::from_vec(ids, keep.len(), logits.device())?;
        return x.apply_op2(&ids, CrossEntropyRows)?.sum_all()?.affine(1.0 / counted as f64, 0.0);
    }
    if !on_cpu(logits) {
        return crate::composed::cross_entropy_kept(logits, cd, &keep, counted);
    }
    let x = logits.to_dtype(cd)?;
    let x = if x.is_contiguous() { x } else { x.contiguous()? };
    x.apply_op1(CrossEntropy { targets: Arc::new(keep), counted })
}

/// Per-row f32 cross-entropy `[rows]` on CUDA (inputs: f32 or bf16 logits, u32 targets with
/// `u32::MAX` for an ignored row, whose loss and gradient are 0; the gradient in the logits'
/// dtype).
#[cfg(feature = "cuda")]
struct CrossEntropyRows;

#[cfg(feature = "cuda")]
impl CustomOp2 for CrossEntropyRows {
    fn name(&self) -> &'static str {
        "tram-cross-entropy-rows"
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        bail!("{}: CUDA only (the CPU path is the fused cross-entropy op)", self.name())
    }
    fn cuda_fwd(
        &self,
        xs: &candle_core::CudaStorage,
        xl: &Layout,
        ts: &candle_core::CudaStorage,
        tl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::cross_entropy_rows(xs, xl, ts, tl)
    }
    fn bwd(&self, x: &Tensor, t: &Tensor, _y: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = g.to_dtype(DType::F32)?;
        let g = if g.is_contiguous() { g } else { g.contiguous()? };
        Ok((Some(x.apply_op3_no_bwd(t, &g, &CrossEntropyRowsBwd)?), None))
    }
}

#[cfg(feature = "cuda")]
struct CrossEntropyRowsBwd;

#[cfg(feature = "cuda")]
crate::cuda_only_op3!(CrossEntropyRowsBwd, "tram-cross-entropy-rows-bwd", |_op, xs, xl, ts, tl, gs, gl| {
    crate::cuda::cross_entropy_rows_bwd(xs, xl, ts, tl, gs, gl)
});

// ---------------------------------------------------------------------------------------------
// KL

struct KlRows;

impl CustomOp2 for KlRows {
    fn name(&self) -> &'static str {
        "tram-kl-rows"
    }
    fn cpu_fwd(&self, ts: &CpuStorage, tl: &Layout, cs: &CpuStorage, cl: &Layout) -> Result<(CpuStorage, Shape)> {
        let (rows, n) = rows_of(tl, self.name())?;
        float_dispatch!(self.name(), crate::sdt(ts), T => {
            let (t, c) = (slice::<T>(ts, tl, self.name())?, slice::<T>(cs, cl, self.name())?);
            let mut out = vec![T::ZERO; rows];
            let p = SyncPtr(out.as_mut_ptr());
            for_rows(rows, n * 4, |_, range| {
                let o = unsafe { p.slice(range.start, range.len()) };
                let (mut s1, mut s2) = (vec![T::ZERO; n], vec![T::ZERO; n]);
                for (k, r) in range.enumerate() {
                    o[k] = kl_row(&t[r * n..(r + 1) * n], &c[r * n..(r + 1) * n], &mut s1, &mut s2).0;
                }
            });
            let mut shape = tl.dims().to_vec();
            shape.pop();
            Ok((crate::owned(out), Shape::from(shape)))
        })
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        ts: &candle_core::CudaStorage,
        tl: &Layout,
        cs: &candle_core::CudaStorage,
        cl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::kl_rows(ts, tl, cs, cl)
    }
    fn bwd(&self, t: &Tensor, c: &Tensor, _y: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let n = t.dim(D::Minus1)?;
        let g = g.to_dtype(t.dtype())?;
        #[cfg(feature = "cuda")]
        if t.device().is_cuda() {
            let g = if g.is_contiguous() { g } else { g.contiguous()? };
            let both = t.apply_op3_no_bwd(c, &g, &KlRowsBwd)?;
            return Ok((Some(both.get(0)?.reshape(t.shape())?), Some(both.get(1)?.reshape(t.shape())?)));
        }
        float_dispatch!(self.name(), t.dtype(), T => {
            let (dt, dc) = with_data::<T, _>(t, self.name(), |t| {
                with_data::<T, _>(c, self.name(), |c| {
                    with_data::<T, _>(&g, self.name(), |g| {
                        let rows = t.len() / n.max(1);
                        let (mut dt, mut dc) = (vec![T::ZERO; t.len()], vec![T::ZERO; t.len()]);
                        let (pt, pc) = (SyncPtr(dt.as_mut_ptr()), SyncPtr(dc.as_mut_ptr()));
                        for_rows(rows, n * 6, |_, range| {
                            let (ot, oc) = unsafe { (pt.slice(range.start * n, range.len() * n), pc.slice(range.start * n, range.len() * n)) };
                            let (mut s1, mut s2) = (vec![T::ZERO; n], vec![T::ZERO; n]);
                            for (k, r) in range.enumerate() {
                                let (tr, cr) = (&t[r * n..(r + 1) * n], &c[r * n..(r + 1) * n]);
                                // s1 = p_t, s2 = log p_t − log p_c
                                let (kl, _, sc) = kl_row(tr, cr, &mut s1, &mut s2);
                                let gr = g[r];
                                let (otr, ocr) = (&mut ot[k * n..(k + 1) * n], &mut oc[k * n..(k + 1) * n]);
                                for ((o, &pa), &d) in otr.iter_mut().zip(&s1).zip(&s2) {
                                    *o = gr * pa * (d - kl);
                                }
                                for ((o, &pa), &cv) in ocr.iter_mut().zip(&s1).zip(cr) {
                                    *o = gr * ((cv - sc).exp() - pa);
                                }
                            }
                        });
                        Ok((dt, dc))
                    })
                })
            })?;
            Ok((Some(tensor_from(dt, t.shape())), Some(tensor_from(dc, t.shape()))))
        })
    }
}

/// Both gradients of [`KlRows`] on CUDA as `[2, rows, n]` (inputs target, current, upstream).
#[cfg(feature = "cuda")]
struct KlRowsBwd;

#[cfg(feature = "cuda")]
crate::cuda_only_op3!(KlRowsBwd, "tram-kl-rows-bwd", |_op, ts, tl, cs, cl, gs, gl| crate::cuda::kl_rows_bwd(ts, tl, cs, cl, gs, gl));

/// KL(softmax t ‖ softmax c) of one row, with `p_t` left in `s1` and `log p_t − log p_c` in
/// `s2`; also returns both log-normalisers.
#[inline(always)]
fn kl_row<T: Float>(t: &[T], c: &[T], s1: &mut [T], s2: &mut [T]) -> (T, T, T) {
    let st = logsumexp(t, s1);
    let sc = logsumexp(c, s2);
    let shift = sc - st;
    for ((d, &a), &b) in s2.iter_mut().zip(t).zip(c) {
        *d = a - b + shift;
    }
    for (p, &a) in s1.iter_mut().zip(t) {
        *p = (a - st).exp();
    }
    (dot(s1, s2), st, sc)
}

/// Row-wise `KL(softmax(target) ‖ softmax(current))` over the last dimension of two logits
/// tensors of one shape `[.., classes]`, as `[..]`: the trust regions' KL distance before its
/// reduction (`F.kl_div(log_softmax(current), log_softmax(target), log_target=True,
/// reduction="none").sum(-1)`). Differentiable in both (`∂/∂current = p_c − p_t`,
/// `∂/∂target = p_t ⊙ (log p_t − log p_c − KL)`); computed in f32 (f64 for f64 input) and
/// returned in that dtype. CUDA: its own kernels, f32 and f64 (see
/// [`crate::cuda_kernels_enabled`]); other devices: [`crate::composed::kl_div_rows`].
pub fn kl_div_rows(target: &Tensor, current: &Tensor) -> Result<Tensor> {
    let op = "kl_div_rows";
    let cd = compute_dtype(current, op)?;
    if target.dims() != current.dims() {
        bail!("{op}: target {:?} and current {:?} logits must have one shape", target.dims(), current.dims());
    }
    if target.rank() == 0 {
        bail!("{op}: expected logits [.., classes], got a scalar");
    }
    // CUDA: the f32 kernels, and the f64 ones for f64 input (the radius δ).
    if !on_cpu(current) && !crate::on_cuda_kernel(current, DType::F32) {
        return crate::composed::kl_div_rows(target, current);
    }
    let c = |t: &Tensor| -> Result<Tensor> {
        let t = t.to_dtype(cd)?;
        if t.is_contiguous() {
            Ok(t)
        } else {
            t.contiguous()
        }
    };
    c(target)?.apply_op2(&c(current)?, KlRows)
}
