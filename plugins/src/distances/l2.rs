//! L2 distance between target and current logits, `mean_rows ‖f_t − f_c‖₂`: TRAM-x (L2),
//! paper Table 14 (Sherborne et al., ICLR 2024). The row norms are exact at every scale (no ε
//! under the square root: at σ = 1e-5 that would inflate δ) and their gradient is finite where the
//! logits coincide (penalty use at θ_{-1} = θ₀): see [`tram::ops::row_norm`].

use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tram::compose::registry::{parse_params, Component};
use tram::ops::row_norm;
use tram::{Distance, Reduction, Result};

/// The L2 distance has no parameters.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct L2Config {}

/// Mean row-wise Euclidean distance.
pub struct L2Distance;

impl Distance for L2Distance {
    fn name(&self) -> &str {
        NAME
    }
    /// `mean_rows ‖f_t − f_c‖₂`; with `Reduction::Reference` that per-row mean is divided by the
    /// batch size again, as the reference code's `_l2(x, y) / x.size(0)` does.
    fn distance(&self, target: &Tensor, current: &Tensor, reduction: Reduction, examples: usize) -> Result<Tensor> {
        let per_row = row_norm(&target.sub(current)?)?;
        let rows = per_row.dim(0)?.max(1) as f64;
        let denom = match reduction {
            Reduction::Mean => rows,
            Reduction::Reference => rows * examples.max(1) as f64,
        };
        Ok(per_row.sum_all()?.affine(1.0 / denom, 0.0)?)
    }
}

fn build(v: &Value) -> Result<Component> {
    let _: L2Config = parse_params(WHAT, v)?;
    Ok(Component::Distance(Box::new(L2Distance)))
}

tram::component! {
    distance "l2",
    summary: "mean row-wise L2 distance of logits (TRAM-x L2)",
    config: L2Config {},
    build: build,
}
tram::inventory::submit!(REGISTRATION);

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    fn l2(t: &Tensor, c: &Tensor, r: Reduction, examples: usize) -> f64 {
        L2Distance.distance(t, c, r, examples).unwrap().to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
    }

    #[test]
    fn is_the_mean_euclidean_distance_of_rows() {
        let t = Tensor::new(&[[0f32, 0.0], [1.0, 1.0]], &Device::Cpu).unwrap();
        let c = Tensor::new(&[[3f32, 4.0], [1.0, 1.0]], &Device::Cpu).unwrap();
        assert!((l2(&t, &c, Reduction::Mean, 2) - 2.5).abs() < 1e-6);
    }

    #[test]
    fn reference_reduction_divides_the_per_row_mean_by_the_batch_size() {
        // Six rows (per-token rows of two examples): the reference code's `_l2(x, y) / x.size(0)`
        // is the per-row mean over the batch size, not the row sum over it.
        let t = Tensor::zeros((6, 2), DType::F64, &Device::Cpu).unwrap();
        let c = Tensor::new(&[[3f64, 4.0], [0.0, 1.0], [1.0, 0.0], [0.0, 0.0], [6.0, 8.0], [0.0, 2.0]], &Device::Cpu).unwrap();
        let mean = (5.0 + 1.0 + 1.0 + 0.0 + 10.0 + 2.0) / 6.0;
        assert!((l2(&t, &c, Reduction::Mean, 2) - mean).abs() < 1e-12);
        assert!((l2(&t, &c, Reduction::Reference, 2) - mean / 2.0).abs() < 1e-12);
    }

    #[test]
    fn is_exact_at_small_and_tiny_distances() {
        // σ = 1e-5 noise gives row differences ~1e-6: an ε of 1e-12 under the root would report
        // sqrt(1e-12 + 1e-12) = 1.41e-6 for a true 1e-6.
        for (scale, dtype) in [(1e-6, DType::F64), (1e-6, DType::F32), (1e-30, DType::F64), (1e-20, DType::F32), (1e150, DType::F64)] {
            let d = Tensor::new(&[[3.0 * scale, 4.0 * scale], [0.0, scale]], &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
            let zero = d.zeros_like().unwrap();
            let got = l2(&zero, &d, Reduction::Mean, 2);
            let want = 3.0 * scale;
            let tol = if dtype == DType::F32 { 1e-6 } else { 1e-14 };
            assert!(((got - want) / want).abs() < tol, "{dtype:?} at {scale:e}: {got:e} vs {want:e}");
        }
    }

    #[test]
    fn gradient_is_finite_and_zero_where_the_logits_coincide() {
        let t = Tensor::new(&[[1f32, 2.0], [0.5, -1.0]], &Device::Cpu).unwrap();
        let c = Var::from_tensor(&Tensor::new(&[[1f32, 2.0], [3.5, 3.0]], &Device::Cpu).unwrap()).unwrap();
        let d = L2Distance.distance(&t, c.as_tensor(), Reduction::Mean, 2).unwrap();
        let g = d.backward().unwrap().get(c.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
        // Row 0 coincides: zero subgradient. Row 1: (c − t) / ‖c − t‖ / rows = (3, 4) / 5 / 2.
        assert_eq!(g[0], [0.0, 0.0]);
        assert!((g[1][0] - 0.3).abs() < 1e-6 && (g[1][1] - 0.4).abs() < 1e-6, "{g:?}");
    }

    #[test]
    fn gradient_matches_finite_differences_near_zero_distance() {
        // Central differences in f64 on rows 1e-7 and 5e-8 long, the regime of σ = 1e-5 noise
        // (target at 0 so the differences carry no cancellation), one entry exactly 0.
        let t = Tensor::zeros((2, 3), DType::F64, &Device::Cpu).unwrap();
        let c0 = [[2e-7f64, -1e-7, 2e-7], [-3e-8, 0.0, 4e-8]];
        let c = Var::from_tensor(&Tensor::new(&c0, &Device::Cpu).unwrap()).unwrap();
        let d = L2Distance.distance(&t, c.as_tensor(), Reduction::Reference, 3).unwrap();
        let g = d.backward().unwrap().get(c.as_tensor()).unwrap().to_vec2::<f64>().unwrap();
        let h = 1e-12;
        for i in 0..2 {
            for j in 0..3 {
                let at = |dx: f64| {
                    let mut x = c0;
                    x[i][j] += dx;
                    l2(&t, &Tensor::new(&x, &Device::Cpu).unwrap(), Reduction::Reference, 3)
                };
                let fd = (at(h) - at(-h)) / (2.0 * h);
                assert!(
                    (fd - g[i][j]).abs() < 1e-5 * g[i][j].abs().max(1e-3),
                    "[{i}][{j}]: autograd {} vs finite difference {fd}",
                    g[i][j]
                );
            }
        }
    }
}
