//! `fisher`: the Fisher-information ellipse of FSAM (Kim et al., 2022) with a diagonal Fisher
//! `F = 1 + η g²`, `ε = ρ (g / F) / sqrt(gᵀ (g / F))`. Composed after the `noise` trust region
//! it is TRAM-Fisher (Sherborne et al., ICLR 2024): the first pass runs on noised inputs.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tram::check::Range;
use tram::compose::registry::{parse_params, Component};
use tram::{Ascent, Neighborhood, Params, RadiusSource, Result};
use tram_kernels::update::affine_owned;

/// Parameters of the Fisher ellipse.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FisherConfig {
    /// Radius ρ.
    pub rho: f64,
    /// η in `F = 1 + η g²`.
    pub eta: f64,
}

impl Default for FisherConfig {
    fn default() -> Self {
        Self { rho: 0.1, eta: 1.0 }
    }
}

/// The diagonal-Fisher ellipse.
pub struct FisherEllipse {
    config: FisherConfig,
}

impl Neighborhood for FisherEllipse {
    fn name(&self) -> &str {
        NAME
    }
    fn rho(&self) -> f64 {
        self.config.rho
    }
    fn radius_source(&self) -> RadiusSource {
        RadiusSource::Fixed
    }
    fn perturbation(&self, _params: &Params, grads: &[Tensor], radius: f64) -> Result<Ascent> {
        // `sqr` and `div` make fresh tensors: the affine steps run on them in place.
        let q = grads.iter().map(|g| Ok(g.div(&affine_owned(g.sqr()?, self.config.eta, 1.0)?)?)).collect::<Result<Vec<_>>>()?;
        let parts = grads.iter().zip(&q).map(|(g, q)| Ok(g.mul(q)?.sum_all()?)).collect::<Result<Vec<_>>>()?;
        let quad = Tensor::stack(&parts, 0)?.sum_all()?.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
        let denom = quad.sqrt();
        if !(denom.is_finite() && denom > 0.0) {
            return Ok(Ascent::None);
        }
        Ok(Ascent::Step(q.into_iter().map(|q| affine_owned(q, radius / denom, 0.0)).collect::<candle_core::Result<_>>()?))
    }
    fn describe(&self) -> Value {
        serde_json::to_value(&self.config).unwrap_or_default()
    }
}

/// Valid range of `rho` (as the ball's: FSAM uses 0.1).
const RHO: Range = Range::closed(0.0, 1e3);
/// Valid range of `eta` (FSAM uses 1): beyond, `η g²` overflows f32 and every ascent is dropped.
const ETA: Range = Range::closed(0.0, 1e6);

fn build(v: &Value) -> Result<Component> {
    let config: FisherConfig = parse_params(WHAT, v)?;
    RHO.check(WHAT, "rho", config.rho)?;
    ETA.check(WHAT, "eta", config.eta)?;
    Ok(Component::Neighborhood(Box::new(FisherEllipse { config })))
}

tram::component! {
    neighborhood "fisher",
    summary: "diagonal Fisher ellipse F = 1 + η g² (FSAM; TRAM-Fisher after `noise`)",
    config: FisherConfig {
        rho: "radius ρ, in [0, 1000]",
        eta: "η in F = 1 + η g², in [0, 1e6]",
    },
    build: build,
}
tram::inventory::submit!(REGISTRATION);

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn matches_the_closed_form_and_lies_on_the_ellipse() {
        let p = Params::new([("w".to_string(), Var::new(&[0f32, 0.0], &Device::Cpu).unwrap())]).unwrap();
        let f = FisherEllipse { config: FisherConfig { rho: 0.1, eta: 1.0 } };
        let g = [Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap()];
        let Ascent::Step(e) = f.perturbation(&p, &g, 0.1).unwrap() else { panic!() };
        // F = (2, 5), g/F = (0.5, 0.4), gᵀ(g/F) = 1.3.
        let e = e[0].to_vec1::<f32>().unwrap();
        let d = 1.3f32.sqrt();
        assert!((e[0] - 0.1 * 0.5 / d).abs() < 1e-7 && (e[1] - 0.1 * 0.4 / d).abs() < 1e-7);
        // εᵀ F ε = ρ² (the ellipse's boundary).
        assert!(((e[0] * e[0] * 2.0 + e[1] * e[1] * 5.0) - 0.01).abs() < 1e-7);
    }
}
