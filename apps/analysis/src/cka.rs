//! Linear centred kernel alignment (Kornblith et al. 2019; paper B.8) between two models'
//! representations of the same examples.
//!
//! With column-centred `X ∈ R^{n×d₁}`, `Y ∈ R^{n×d₂}` (one row per example):
//! `CKA(X, Y) = ‖Yᵀ X‖²_F / (‖Xᵀ X‖_F · ‖Yᵀ Y‖_F)`, computed in f64. It is 1 for identical
//! representations and invariant to orthogonal transforms and isotropic scaling of either.

use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor};
use tram::{Batch, Mode, Model, Weights};

/// Linear CKA of two `[n, d]` representation matrices of the same `n` examples (the feature
/// dimensions may differ). Computed on `x`'s device (`y` is moved there), in f64 where the device
/// has it (CPU, CUDA; f32 on Metal: [`tram::ops::device_has_f64`]); when `n` is smaller than the feature
/// dimensions the `n × n` Gram form is used (`‖YᵀX‖²_F = ⟨XXᵀ, YYᵀ⟩_F`), which is the same
/// number. `NaN` when either representation is constant over the examples (zero variance).
pub fn linear_cka(x: &Tensor, y: &Tensor) -> Result<f64> {
    let (n, dx) = x.dims2().map_err(|_| Error::Input(format!("CKA needs [examples, dim] matrices, got {:?}", x.dims())))?;
    let (m, dy) = y.dims2().map_err(|_| Error::Input(format!("CKA needs [examples, dim] matrices, got {:?}", y.dims())))?;
    if n != m {
        return Err(Error::Input(format!("CKA of representations of {n} and {m} examples: both must be of the same examples")));
    }
    if n < 2 {
        return Err(Error::Input(format!("CKA needs at least 2 examples, got {n}")));
    }
    let device = x.device();
    let dtype = if tram::ops::device_has_f64(device) { DType::F64 } else { DType::F32 };
    let x = centred(x, device, dtype)?;
    let y = centred(y, device, dtype)?;
    let scalar = |t: Tensor| -> Result<f64> { Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?) };
    let fro2 = |t: &Tensor| -> Result<f64> { scalar(t.sqr()?.sum_all()?) };
    let (cross, xx, yy) = if n < dx.max(dy) {
        let k = x.matmul(&x.t()?)?;
        let l = y.matmul(&y.t()?)?;
        (scalar((&k * &l)?.sum_all()?)?, fro2(&k)?, fro2(&l)?)
    } else {
        let yx = y.t()?.matmul(&x)?;
        (fro2(&yx)?, fro2(&x.t()?.matmul(&x)?)?, fro2(&y.t()?.matmul(&y)?)?)
    };
    let den = xx.sqrt() * yy.sqrt();
    if den == 0.0 || !den.is_finite() {
        return Ok(f64::NAN);
    }
    Ok(cross / den)
}

/// Column-centred copy in `dtype` on `device`.
fn centred(t: &Tensor, device: &Device, dtype: DType) -> Result<Tensor> {
    let t = t.to_device(device)?.to_dtype(dtype)?.contiguous()?;
    Ok(t.broadcast_sub(&t.mean_keepdim(0)?)?)
}

/// Linear CKA of plain row-major f64 matrices (`x`: `n × dx`, `y`: `n × dy`).
pub fn linear_cka_rows(x: &[f64], y: &[f64], n: usize) -> Result<f64> {
    if n == 0 || x.len() % n != 0 || y.len() % n != 0 {
        return Err(Error::Input(format!("CKA: {} and {} values are not {n} rows", x.len(), y.len())));
    }
    let xt = Tensor::from_slice(x, (n, x.len() / n), &Device::Cpu)?;
    let yt = Tensor::from_slice(y, (n, y.len() / n), &Device::Cpu)?;
    linear_cka(&xt, &yt)
}

/// The representations (`Model::representation`, before the task head; eval mode, no graph)
/// of every batch, stacked: `[examples, dim]` in f32 on the model's device.
pub fn representations(model: &dyn Model, weights: &dyn Weights, batches: &[Batch]) -> Result<Tensor> {
    if batches.is_empty() {
        return Err(Error::Input("no batches to compute representations on".into()));
    }
    let reps = batches
        .iter()
        .map(|b| Ok(model.representation(weights, b, Mode::EVAL)?.detach().to_dtype(DType::F32)?))
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::cat(&reps, 0)?)
}

/// Linear CKA between the representations of `a` and `b` (e.g. the pretrained and the
/// fine-tuned model) on the same batches, each at its current parameters.
pub fn representation_cka(a: &dyn Model, b: &dyn Model, batches: &[Batch]) -> Result<f64> {
    let x = representations(a, &a.params().detached(), batches)?;
    let y = representations(b, &b.params().detached(), batches)?;
    linear_cka(&x, &y)
}
