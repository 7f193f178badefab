//! Rényi divergence of order α between the softmax distributions of target and current logits
//! (A. Rényi, "On measures of entropy and information", 1961), as a distance for the trust
//! regions of TRAM (Sherborne et al., "TRAM: Bridging Trust Regions and Sharpness Aware
//! Minimization", ICLR 2024): `noise(distance=renyi)+ball+adam` is TRAM-x with δ = D_α.
//!
//! D_α(p_t ‖ p_c) = 1/(α−1) · log Σ_c p_t^α p_c^(1−α), computed per row in log space as
//! logsumexp_c(α log p_t + (1−α) log p_c) / (α−1), then reduced over rows like `kl`.
//! α → 1 is KL(p_t ‖ p_c), returned exactly at α = 1. Near α = 1 the quotient amplifies
//! rounding: prefer f64 there (the engine measures δ in f64).

use candle_core::{Tensor, D};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tram::compose::registry::{param_docs, parse_params, Component};
use tram::ops::log_softmax;
use tram::plugin::Registrar;
use tram::{Distance, Error, ParamDoc, Reduction, Result};
#[cfg(test)]
use tram::{Entry, Kind};

/// Parameters of the `renyi` distance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RenyiConfig {
    /// Order α of the divergence, a finite number > 0: 1 is KL(p_target ‖ p_current), 0.5 is
    /// −2 log of the Bhattacharyya coefficient, large α approaches the max-divergence.
    pub alpha: f64,
}

impl Default for RenyiConfig {
    fn default() -> Self {
        Self { alpha: 2.0 }
    }
}

/// The Rényi divergence D_α(target ‖ current) over rows of logits.
#[derive(Clone, Debug)]
pub struct RenyiDivergence {
    alpha: f64,
}

impl RenyiDivergence {
    /// D_α; an α that is not a finite number > 0 is an error.
    pub fn new(alpha: f64) -> Result<Self> {
        if alpha.is_finite() && alpha > 0.0 {
            Ok(Self { alpha })
        } else {
            Err(Error::Config { component: "distance `renyi`".into(), reason: format!("alpha must be a finite number > 0, got {alpha}") })
        }
    }

    /// The order α.
    pub fn alpha(&self) -> f64 {
        self.alpha
    }

    /// Σ over rows of D_α(row of p_t ‖ row of p_c).
    fn sum_over_rows(&self, target: &Tensor, current: &Tensor) -> Result<Tensor> {
        let (lp, lq) = (log_softmax(target)?, log_softmax(current)?);
        if self.alpha == 1.0 {
            return Ok(lp.exp()?.mul(&lp.sub(&lq)?)?.sum_all()?);
        }
        let a = self.alpha;
        let z = lp.affine(a, 0.0)?.add(&lq.affine(1.0 - a, 0.0)?)?;
        // logsumexp over classes; the shift is detached (the gradient is exactly softmax(z)).
        let m = z.detach().max_keepdim(D::Minus1)?;
        let lse = z.broadcast_sub(&m)?.exp()?.sum_keepdim(D::Minus1)?.log()?.add(&m)?;
        Ok(lse.sum_all()?.affine(1.0 / (a - 1.0), 0.0)?)
    }
}

impl Distance for RenyiDivergence {
    fn name(&self) -> &str {
        NAME
    }
    fn distance(&self, target: &Tensor, current: &Tensor, reduction: Reduction, examples: usize) -> Result<Tensor> {
        let total = self.sum_over_rows(target, current)?;
        let (rows, classes) = target.dims2()?;
        let denom = match reduction {
            Reduction::Mean => rows as f64,
            Reduction::Reference => (rows * classes) as f64 * examples as f64,
        };
        Ok(total.affine(1.0 / denom.max(1.0), 0.0)?)
    }
    fn describe(&self) -> Value {
        if self.alpha == RenyiConfig::default().alpha {
            Value::Null
        } else {
            serde_json::json!({ "alpha": self.alpha })
        }
    }
}

fn docs() -> Vec<ParamDoc> {
    param_docs::<RenyiConfig>(&[("alpha", "order α > 0 of D_α(p_target ‖ p_current); 1 is KL")])
}

fn build(params: &Value) -> Result<Component> {
    let c: RenyiConfig = parse_params(WHAT, params)?;
    Ok(Component::Distance(Box::new(RenyiDivergence::new(c.alpha)?)))
}

tram::component! {
    distance "renyi",
    summary: "Rényi divergence D_α(p_target ‖ p_current) (Rényi, 1961); α → 1 is KL",
    params: docs,
    build: build,
}

/// Registers the distance `renyi` (the same declaration a linked crate would submit to
/// `inventory`).
pub fn register(r: &mut dyn Registrar) -> Result<()> {
    r.register(REGISTRATION.entry())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    fn logits(rows: &[&[f64]]) -> Tensor {
        let classes = rows[0].len();
        let flat: Vec<f64> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Tensor::from_vec(flat, (rows.len(), classes), &Device::Cpu).unwrap()
    }

    fn d(alpha: f64, t: &Tensor, c: &Tensor, r: Reduction, examples: usize) -> f64 {
        RenyiDivergence::new(alpha).unwrap().distance(t, c, r, examples).unwrap().to_scalar::<f64>().unwrap()
    }

    fn kl(p: &[f64], q: &[f64]) -> f64 {
        p.iter().zip(q).map(|(p, q)| p * (p / q).ln()).sum()
    }

    /// D_α by its definition, from probabilities.
    fn renyi(alpha: f64, p: &[f64], q: &[f64]) -> f64 {
        p.iter().zip(q).map(|(p, q)| p.powf(alpha) * q.powf(1.0 - alpha)).sum::<f64>().ln() / (alpha - 1.0)
    }

    fn softmax(x: &[f64]) -> Vec<f64> {
        let s: f64 = x.iter().map(|v| v.exp()).sum();
        x.iter().map(|v| v.exp() / s).collect()
    }

    #[test]
    fn matches_the_closed_form_for_two_classes() {
        // p = softmax([0, ln 3]) = (1/4, 3/4), q = (1/2, 1/2).
        let (t, c) = (logits(&[&[0.0, 3f64.ln()]]), logits(&[&[0.0, 0.0]]));
        // α = 2: log Σ p²/q = log(1/8 + 9/8) = log 5/4.
        assert!((d(2.0, &t, &c, Reduction::Mean, 1) - 1.25f64.ln()).abs() < 1e-12);
        // α = 1/2: −2 log Σ √(pq) = −2 log(√(1/8) + √(3/8)).
        let half = -2.0 * ((0.125f64).sqrt() + (0.375f64).sqrt()).ln();
        assert!((d(0.5, &t, &c, Reduction::Mean, 1) - half).abs() < 1e-12);
    }

    #[test]
    fn matches_the_closed_form_for_three_classes_and_averages_rows() {
        // Row 1: p = (1/2, 1/4, 1/4), q = (1/4, 1/4, 1/2); α = 3: log(Σ p³/q²)/2 = log(2 + 1/4 + 1/16)/2.
        // Row 2: identical distributions, D = 0. The mean halves row 1.
        let t = logits(&[&[2f64.ln(), 0.0, 0.0], &[0.3, -1.0, 2.0]]);
        let c = logits(&[&[0.0, 0.0, 2f64.ln()], &[0.3, -1.0, 2.0]]);
        let row1 = (2.0 + 0.25 + 0.0625f64).ln() / 2.0;
        assert!((row1 - renyi(3.0, &[0.5, 0.25, 0.25], &[0.25, 0.25, 0.5])).abs() < 1e-12);
        assert!((d(3.0, &t, &c, Reduction::Mean, 2) - row1 / 2.0).abs() < 1e-12);
    }

    #[test]
    fn alpha_one_is_exactly_kl() {
        let (t, c) = (logits(&[&[0.0, 3f64.ln()]]), logits(&[&[0.0, 0.0]]));
        let expected = kl(&[0.25, 0.75], &[0.5, 0.5]);
        assert!((d(1.0, &t, &c, Reduction::Mean, 1) - expected).abs() < 1e-12);
    }

    #[test]
    fn converges_to_kl_as_alpha_tends_to_one() {
        let (tx, cx) = ([0.2, -0.4, 0.5], [0.0, 0.1, -0.2]);
        let (t, c) = (logits(&[&tx]), logits(&[&cx]));
        let expected = kl(&softmax(&tx), &softmax(&cx));
        for alpha in [1.0 - 1e-3, 1.0 + 1e-3] {
            let got = d(alpha, &t, &c, Reduction::Mean, 1);
            assert!(((got - expected) / expected).abs() < 1e-3, "α = {alpha}: {got} vs KL {expected}");
            assert!((got - renyi(alpha, &softmax(&tx), &softmax(&cx))).abs() < 1e-9);
        }
        // D_α is non-decreasing in α.
        assert!(d(1.0 - 1e-3, &t, &c, Reduction::Mean, 1) <= d(1.0 + 1e-3, &t, &c, Reduction::Mean, 1));
    }

    #[test]
    fn is_zero_for_identical_logits() {
        let t = logits(&[&[1.0, -2.0, 0.5]]);
        for alpha in [0.5, 1.0, 2.0, 10.0] {
            assert!(d(alpha, &t, &t, Reduction::Mean, 1).abs() < 1e-12, "α = {alpha}");
        }
    }

    #[test]
    fn reference_reduction_divides_by_rows_classes_and_batch() {
        let (t, c) = (logits(&[&[0.0, 3f64.ln()], &[0.0, 3f64.ln()]]), logits(&[&[0.0, 0.0], &[0.0, 0.0]]));
        let mean = d(2.0, &t, &c, Reduction::Mean, 4);
        // Sum over rows is 2·mean; reference divides it by rows·classes = 4 and the batch, 4.
        assert!((d(2.0, &t, &c, Reduction::Reference, 4) - 2.0 * mean / 16.0).abs() < 1e-12);
    }

    #[test]
    fn works_in_f32() {
        let t = logits(&[&[0.0, 3f64.ln()]]).to_dtype(DType::F32).unwrap();
        let c = logits(&[&[0.0, 0.0]]).to_dtype(DType::F32).unwrap();
        let v = RenyiDivergence::new(2.0).unwrap().distance(&t, &c, Reduction::Mean, 1).unwrap();
        assert_eq!(v.dtype(), DType::F32);
        assert!((v.to_scalar::<f32>().unwrap() - 1.25f32.ln()).abs() < 1e-6);
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let tx = [0.3, -0.2, 0.9];
        let cx = [-0.5, 0.4, 0.1];
        let t = logits(&[&tx]);
        for alpha in [0.5, 1.0, 2.0] {
            let c = Var::from_tensor(&logits(&[&cx])).unwrap();
            let div = RenyiDivergence::new(alpha).unwrap();
            let g = div.distance(&t, c.as_tensor(), Reduction::Mean, 1).unwrap().backward().unwrap();
            let g = g.get(c.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
            for k in 0..3 {
                let (mut up, mut down) = (cx, cx);
                up[k] += 1e-6;
                down[k] -= 1e-6;
                let fd = (d(alpha, &t, &logits(&[&up]), Reduction::Mean, 1) - d(alpha, &t, &logits(&[&down]), Reduction::Mean, 1)) / 2e-6;
                assert!((g[k] - fd).abs() < 1e-7, "α = {alpha}, class {k}: {} vs {fd}", g[k]);
            }
        }
    }

    #[test]
    fn builds_from_its_documented_defaults_and_refuses_bad_parameters() {
        let e = Entry::new(Kind::Distance, "renyi", "", docs(), build);
        assert_eq!(e.params.len(), 1);
        assert_eq!((e.params[0].name.as_str(), e.params[0].default.as_str()), ("alpha", "2.0"));
        assert!(!e.params[0].doc.is_empty());
        assert!(build(&Value::Null).is_ok());
        assert!(build(&serde_json::json!({"alpha": 0.5})).is_ok());
        for bad in [serde_json::json!({"alpha": 0.0}), serde_json::json!({"alpha": -1.0})] {
            let err = build(&bad).err().unwrap().to_string();
            assert!(err.contains("alpha must be a finite number > 0"), "{err}");
        }
        let err = build(&serde_json::json!({"no_such_key": 1})).err().unwrap().to_string();
        assert!(err.contains("no_such_key"), "{err}");
    }
}
