//! `ball`: the L2 ball of SAM (Foret et al., 2021), `ε = r · g / (‖g‖ + 1e-12)`, and its
//! adaptive form of ASAM (Kwon et al., 2021) and TRAM (Sherborne et al., ICLR 2024),
//! `T = |θ| + η`, `ε = r · T² ⊙ g / (‖T ⊙ g‖ + 1e-12)`. A trust region composed before it
//! sizes the radius with its distance δ (TRAM); otherwise the radius is ρ.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tram::check::Range;
use tram::compose::registry::{parse_params, Component};
use tram::ops::global_norm;
use tram::{Ascent, Neighborhood, Params, RadiusSource, Result};
use tram_kernels::update::affine_owned;

/// How the ascent direction is formed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AscentRule {
    /// The paper's rule, `ε ∝ T² ⊙ g`.
    #[default]
    Paper,
    /// TRAM's reference code, which omits the gradient factor: `ε ∝ T²`.
    Reference,
}

/// Parameters of the ball neighborhood.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BallConfig {
    /// Fixed radius ρ; unset: 0.05 (SAM), 2.0 (adaptive, η = 0), 0.5 (adaptive, ASAM-code style).
    pub rho: Option<f64>,
    /// Adaptive (ASAM) scaling by `|θ| + η`; unset: adaptive exactly when a trust region sizes it.
    pub adaptive: Option<bool>,
    /// η in `T = |θ| + η`.
    pub eta: f64,
    /// Apply `T` to weight matrices only (tensors of rank ≥ 2; others get T = 1), as the ASAM code does.
    pub weights_only: bool,
    /// `paper` or `reference` ascent rule (TRAM reference code omits the gradient factor).
    pub ascent: AscentRule,
}

/// The (adaptive) ball.
pub struct Ball {
    config: BallConfig,
    sized: bool,
}

impl Ball {
    fn adaptive(&self) -> bool {
        self.config.adaptive.unwrap_or(self.sized)
    }
    /// `T` per parameter (`None` = 1).
    fn scaling(&self, params: &Params) -> Result<Vec<Option<Tensor>>> {
        params
            .iter()
            .map(|p| {
                if !self.adaptive() || (self.config.weights_only && p.var.rank() < 2) {
                    Ok(None)
                } else {
                    // `abs` makes a fresh tensor: shift it in place.
                    Ok(Some(affine_owned(p.var.as_tensor().detach().abs()?, 1.0, self.config.eta)?))
                }
            })
            .collect()
    }
}

impl Neighborhood for Ball {
    fn name(&self) -> &str {
        NAME
    }
    fn rho(&self) -> f64 {
        self.config.rho.unwrap_or(match (self.adaptive(), self.config.weights_only || self.config.eta > 0.0) {
            (false, _) => 0.05,
            (true, false) => 2.0,
            (true, true) => 0.5,
        })
    }
    fn radius_source(&self) -> RadiusSource {
        RadiusSource::Region
    }
    fn sized_by_region(&mut self, sized: bool) {
        self.sized = sized;
    }
    fn perturbation(&self, params: &Params, grads: &[Tensor], radius: f64) -> Result<Ascent> {
        let t = self.scaling(params)?;
        let tg = grads
            .iter()
            .zip(&t)
            .map(|(g, t)| {
                Ok(match t {
                    Some(t) => g.mul(t)?,
                    None => g.clone(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let norm = global_norm(&tg)?;
        if !(norm.is_finite() && norm > 0.0) {
            return Ok(Ascent::None);
        }
        let scale = radius / (norm + 1e-12);
        let eps = grads
            .iter()
            .zip(&t)
            .zip(&tg)
            .map(|((g, t), tg)| {
                // A fresh product is scaled in place; the gradient itself is not ours to write.
                Ok(match (self.config.ascent, t) {
                    // T² ⊙ g = T ⊙ (T ⊙ g): reuse the product the norm needed.
                    (AscentRule::Paper, Some(t)) => affine_owned(tg.mul(t)?, scale, 0.0)?,
                    (AscentRule::Paper, None) => g.affine(scale, 0.0)?,
                    (AscentRule::Reference, Some(t)) => affine_owned(t.sqr()?, scale, 0.0)?,
                    (AscentRule::Reference, None) => affine_owned(g.ones_like()?, scale, 0.0)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Ascent::Step(eps))
    }
    fn describe(&self) -> Value {
        serde_json::json!({"rho": self.rho(), "adaptive": self.adaptive(), "eta": self.config.eta, "weights_only": self.config.weights_only, "ascent": self.config.ascent})
    }
}

/// Valid range of `rho`: an ascent far beyond the size of any weight (SAM uses 0.05, ASAM 2)
/// measures nothing of the model, and near 1e38 it overflows f32 and every ascent is dropped.
const RHO: Range = Range::closed(0.0, 1e3);
/// Valid range of `eta` (ASAM uses 0 or 0.01).
const ETA: Range = Range::closed(0.0, 1e3);

fn build(v: &Value) -> Result<Component> {
    let config: BallConfig = parse_params(WHAT, v)?;
    RHO.check_opt(WHAT, "rho", config.rho)?;
    ETA.check(WHAT, "eta", config.eta)?;
    Ok(Component::Neighborhood(Box::new(Ball { config, sized: false })))
}

tram::component! {
    neighborhood "ball",
    summary: "L2 ball (SAM), adaptive |θ|+η scaling (ASAM, TRAM); sized by δ when a trust region precedes it",
    config: BallConfig {
        rho: "fixed radius ρ, in [0, 1000]; unset: 0.05 plain, 2.0 adaptive (η=0), 0.5 adaptive ASAM-code style",
        adaptive: "scale by T = |θ| + η; unset: adaptive iff a trust region sizes the ball",
        eta: "η in T = |θ| + η, in [0, 1000]",
        weights_only: "apply T to rank ≥ 2 tensors only (ASAM code)",
        ascent: "\"paper\" ε ∝ T²⊙g or \"reference\" ε ∝ T² (TRAM reference code)",
    },
    build: build,
}
tram::inventory::submit!(REGISTRATION);

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn params() -> Params {
        Params::new([
            ("w".to_string(), Var::new(&[[1f32, -2.0]], &Device::Cpu).unwrap()),
            ("b".to_string(), Var::new(&[0.5f32], &Device::Cpu).unwrap()),
        ])
        .unwrap()
    }

    #[test]
    fn plain_ball_has_radius_rho_along_the_gradient() {
        let b = Ball { config: BallConfig::default(), sized: false };
        let g = vec![Tensor::new(&[[3f32, 0.0]], &Device::Cpu).unwrap(), Tensor::new(&[4f32], &Device::Cpu).unwrap()];
        let Ascent::Step(e) = b.perturbation(&params(), &g, b.rho()).unwrap() else { panic!() };
        assert!((global_norm(&e).unwrap() - 0.05).abs() < 1e-6);
        assert!((e[0].to_vec2::<f32>().unwrap()[0][0] - 0.03).abs() < 1e-7);
    }

    #[test]
    fn adaptive_ball_scales_by_parameter_magnitude_and_weights_only_skips_biases() {
        let b = Ball { config: BallConfig { adaptive: Some(true), weights_only: true, ..Default::default() }, sized: false };
        let g = vec![Tensor::new(&[[1f32, 1.0]], &Device::Cpu).unwrap(), Tensor::new(&[1f32], &Device::Cpu).unwrap()];
        let Ascent::Step(e) = b.perturbation(&params(), &g, 1.0).unwrap() else { panic!() };
        // T = (1, 2) on w, 1 on b: ‖T⊙g‖ = √6, ε_w = T²g/√6, ε_b = g/√6.
        let n = 6f32.sqrt();
        let w = e[0].to_vec2::<f32>().unwrap();
        assert!((w[0][0] - 1.0 / n).abs() < 1e-6 && (w[0][1] - 4.0 / n).abs() < 1e-6);
        assert!((e[1].to_vec1::<f32>().unwrap()[0] - 1.0 / n).abs() < 1e-6);
        assert_eq!(b.rho(), 0.5);
    }

    #[test]
    fn zero_or_nan_gradient_gives_no_ascent() {
        let b = Ball { config: BallConfig::default(), sized: false };
        let z = vec![
            Tensor::zeros((1, 2), candle_core::DType::F32, &Device::Cpu).unwrap(),
            Tensor::zeros(1, candle_core::DType::F32, &Device::Cpu).unwrap(),
        ];
        assert!(matches!(b.perturbation(&params(), &z, 1.0).unwrap(), Ascent::None));
        let n = vec![Tensor::new(&[[f32::NAN, 0.0]], &Device::Cpu).unwrap(), Tensor::new(&[1f32], &Device::Cpu).unwrap()];
        assert!(matches!(b.perturbation(&params(), &n, 1.0).unwrap(), Ascent::None));
    }

    #[test]
    fn is_adaptive_by_default_only_when_sized_by_a_trust_region() {
        let mut b = Ball { config: BallConfig::default(), sized: false };
        assert!(!b.adaptive());
        b.sized_by_region(true);
        assert!(b.adaptive());
    }
}
