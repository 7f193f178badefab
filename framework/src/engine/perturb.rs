//! The ascent θ ← θ + ε of a two-pass step, written into the parameters in place.

use crate::components::model::{Params, Snapshot};
use crate::error::{Error, Result};
use candle_core::Tensor;

/// Write `θ + ε` into every parameter, bit for bit what `params.assign(θ + ε)` with `θ` the
/// values in `snapshot` writes: for f32 CPU parameters one in-place pass
/// ([`tram_kernels::update::add_assign`], nothing allocated), otherwise `snapshot + ε` and
/// `Var::set`. Every `ε` is checked against its parameter (shape, dtype, device) before any
/// parameter is written, so an error leaves the parameters as they were.
pub(crate) fn perturb(params: &Params, snapshot: &Snapshot, eps: &[Tensor]) -> Result<()> {
    if eps.len() != params.len() {
        return Err(Error::Model(format!("{} ascent tensors for {} parameters", eps.len(), params.len())));
    }
    for (p, e) in params.iter().zip(eps) {
        let v = p.var.as_tensor();
        if e.shape() != v.shape() || e.dtype() != v.dtype() || !e.device().same_device(v.device()) {
            return Err(Error::Model(format!(
                "the ascent for parameter `{}` is {:?} {:?} on {:?}, the parameter {:?} {:?} on {:?}; a neighborhood must return one tensor like each parameter",
                p.name,
                e.dtype(),
                e.dims(),
                e.device().location(),
                v.dtype(),
                v.dims(),
                v.device().location()
            )));
        }
    }
    for ((p, theta), e) in params.iter().zip(snapshot.tensors()).zip(eps) {
        if !tram_kernels::update::add_assign(p.var.as_tensor(), e)? {
            p.var.set(&theta.add(e)?)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    fn params(dtype: DType) -> Params {
        // 70 007 elements: several of the kernels' 4096-element chunks and a partial one.
        let w: Vec<f32> = (0..70_007).map(|i| ((i * 7919 % 1013) as f32 - 506.0) * 1e-3).collect();
        let w = Tensor::from_vec(w, (7, 10_001), &Device::Cpu).unwrap();
        let b = Tensor::new(&[0.5f32, -0.0, 3.0], &Device::Cpu).unwrap();
        Params::new([
            ("w".to_string(), Var::from_tensor(&w.to_dtype(dtype).unwrap()).unwrap()),
            ("b".to_string(), Var::from_tensor(&b.to_dtype(dtype).unwrap()).unwrap()),
        ])
        .unwrap()
    }

    fn bits(t: &Tensor) -> Vec<u32> {
        t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap().into_iter().map(f32::to_bits).collect()
    }

    #[test]
    fn the_ascent_in_place_writes_what_snapshot_plus_epsilon_writes_and_restores_bitwise() {
        for dtype in [DType::F32, DType::BF16, DType::F64] {
            let ps = params(dtype);
            let snap = ps.snapshot().unwrap();
            let eps: Vec<Tensor> =
                snap.tensors().iter().map(|t| t.sin().unwrap().affine(1e-3, 0.0).unwrap().to_dtype(dtype).unwrap()).collect();
            let expected: Vec<Tensor> = snap.tensors().iter().zip(&eps).map(|(t, e)| t.add(e).unwrap()).collect();
            perturb(&ps, &snap, &eps).unwrap();
            for (p, x) in ps.iter().zip(&expected) {
                assert_eq!(bits(p.var.as_tensor()), bits(x), "{dtype:?} {}", p.name);
            }
            // The snapshot is a copy: the in-place write did not reach it.
            ps.restore(&snap).unwrap();
            for (p, t) in ps.iter().zip(params(dtype).iter()) {
                assert_eq!(bits(p.var.as_tensor()), bits(t.var.as_tensor()), "{dtype:?} {} restored", p.name);
            }
        }
    }

    #[test]
    fn a_mismatched_ascent_is_an_error_naming_the_parameter_and_writes_nothing() {
        let ps = params(DType::F32);
        let snap = ps.snapshot().unwrap();
        let eps = vec![snap.tensors()[0].ones_like().unwrap(), Tensor::ones(2, DType::F32, &Device::Cpu).unwrap()];
        let e = perturb(&ps, &snap, &eps).unwrap_err().to_string();
        assert!(e.contains("parameter `b`") && e.contains("[2]") && e.contains("[3]"), "{e}");
        for (p, t) in ps.iter().zip(snap.tensors()) {
            assert_eq!(bits(p.var.as_tensor()), bits(t), "{} untouched", p.name);
        }
    }
}
