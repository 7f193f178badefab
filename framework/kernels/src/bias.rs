//! Bias addition over the last dimension with a row-accumulated bias gradient.

use crate::math::Float;
use crate::par::{for_rows, parts, SyncPtr};
use crate::{float_dispatch, on_cpu, slice, tensor_from, with_data};
use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor, D};
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
    fn bwd(&self, _x: &Tensor, b: &Tensor, _y: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let n = b.elem_count();
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

/// `x + bias` with `bias` `[n]` broadcast over the rows of `x` `[.., n]`, one pass; the bias
/// gradient is accumulated row by row (candle's broadcast backward reduces over the leading
/// dimensions with a strided loop), the input gradient is the output gradient itself. Both
/// must have one float dtype. Non-CPU devices: [`crate::composed::add_bias`]; non-f32/f64
/// dtypes: `broadcast_add`.
pub fn add_bias(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let n = x.dim(D::Minus1)?;
    if bias.dims() != [n] {
        bail!("add_bias: bias {:?} must be [{n}] for input {:?}", bias.dims(), x.dims());
    }
    if !on_cpu(x) {
        return crate::composed::add_bias(x, bias);
    }
    if x.dtype() != bias.dtype() || !matches!(x.dtype(), candle_core::DType::F32 | candle_core::DType::F64) {
        return x.broadcast_add(bias);
    }
    let x = if x.is_contiguous() { x.clone() } else { x.contiguous()? };
    let b = if bias.is_contiguous() { bias.clone() } else { bias.contiguous()? };
    x.apply_op2(&b, AddBias)
}
