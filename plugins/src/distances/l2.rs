//! L2 distance between target and current logits, `mean_rows ‖f_t − f_c‖₂`: TRAM-x (L2),
//! paper Table 14 (Sherborne et al., ICLR 2024). `1e-12` is added under the square root so the
//! gradient stays finite when the logits coincide (penalty use at θ_{-1} = θ₀).

use candle_core::{Tensor, D};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tram::registry::{param_docs, parse_params, Component, Kind, Registration};
use tram::{Distance, Reduction, Result};

/// The L2 distance has no parameters.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct L2Config {}

/// Mean row-wise Euclidean distance.
pub struct L2Distance;

impl Distance for L2Distance {
    fn name(&self) -> &str {
        "l2"
    }
    fn distance(&self, target: &Tensor, current: &Tensor, reduction: Reduction, examples: usize) -> Result<Tensor> {
        let per_row = target.sub(current)?.sqr()?.sum(D::Minus1)?.affine(1.0, 1e-12)?.sqrt()?;
        let denom = match reduction {
            Reduction::Mean => per_row.dim(0)? as f64,
            Reduction::Reference => examples as f64,
        };
        Ok(per_row.sum_all()?.affine(1.0 / denom.max(1.0), 0.0)?)
    }
}

fn build(v: &Value) -> Result<Component> {
    let _: L2Config = parse_params("distance `l2`", v)?;
    Ok(Component::Distance(Box::new(L2Distance)))
}

tram::inventory::submit! {
    Registration { kind: Kind::Distance, name: "l2", summary: "mean row-wise L2 distance of logits (TRAM-x L2)", params: || param_docs::<L2Config>(&[]), build }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn is_the_mean_euclidean_distance_of_rows() {
        let t = Tensor::new(&[[0f32, 0.0], [1.0, 1.0]], &Device::Cpu).unwrap();
        let c = Tensor::new(&[[3f32, 4.0], [1.0, 1.0]], &Device::Cpu).unwrap();
        let d = L2Distance.distance(&t, &c, Reduction::Mean, 2).unwrap().to_scalar::<f32>().unwrap();
        assert!((d - 2.5).abs() < 1e-5, "{d}");
    }
}
