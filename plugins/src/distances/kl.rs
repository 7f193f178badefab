//! Kullback–Leibler divergence between the softmax distributions of target and current
//! logits: `kl` forward `D(target ‖ current)` (TRAM's default, Sherborne et al., ICLR 2024),
//! `kl-reverse` `D(current ‖ target)` and `kl-sym` their sum (R3F, Aghajanyan et al., 2021).

use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tram::compose::registry::{parse_params, Component};
use tram::ops::kl_div_sum;
use tram::{Distance, Reduction, Result};

/// The KL distances have no parameters (temperature and scale are trust-region settings).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KlConfig {}

/// Which way round the divergence is taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// `D(target ‖ current)`.
    Forward,
    /// `D(current ‖ target)`.
    Reverse,
    /// Forward + reverse.
    Symmetric,
}

/// KL divergence over rows of logits.
pub struct KlDivergence {
    /// The direction.
    pub direction: Direction,
}

/// `Σ p (log p − log q)` summed over every row and class: fused on f32 CPU logits, composed
/// (exactly as before the kernels) for the f64 radius δ and on other devices.
fn kl_sum(p_logits: &Tensor, q_logits: &Tensor) -> Result<Tensor> {
    kl_div_sum(p_logits, q_logits)
}

impl Distance for KlDivergence {
    fn name(&self) -> &str {
        match self.direction {
            Direction::Forward => forward::NAME,
            Direction::Reverse => reverse::NAME,
            Direction::Symmetric => symmetric::NAME,
        }
    }
    fn distance(&self, target: &Tensor, current: &Tensor, reduction: Reduction, examples: usize) -> Result<Tensor> {
        let total = match self.direction {
            Direction::Forward => kl_sum(target, current)?,
            Direction::Reverse => kl_sum(current, target)?,
            Direction::Symmetric => kl_sum(target, current)?.add(&kl_sum(current, target)?)?,
        };
        let (rows, classes) = target.dims2()?;
        let denom = match reduction {
            Reduction::Mean => rows as f64,
            Reduction::Reference => (rows * classes) as f64 * examples as f64,
        };
        Ok(total.affine(1.0 / denom.max(1.0), 0.0)?)
    }
}

fn builder(direction: Direction) -> impl Fn(&Value) -> Result<Component> {
    move |v| {
        // Every direction names itself `kl` in parameter errors (as it always has).
        let _: KlConfig = parse_params(forward::WHAT, v)?;
        Ok(Component::Distance(Box::new(KlDivergence { direction })))
    }
}

/// `kl`: the forward divergence.
pub mod forward {
    use super::*;
    tram::component! {
        distance "kl",
        summary: "forward KL(p_target ‖ p_current), TRAM's default",
        config: KlConfig {},
        build: |v| builder(Direction::Forward)(v),
    }
    tram::inventory::submit!(REGISTRATION);
}

/// `kl-reverse`: the reverse divergence.
pub mod reverse {
    use super::*;
    tram::component! {
        distance "kl-reverse",
        summary: "reverse KL(p_current ‖ p_target)",
        config: KlConfig {},
        build: |v| builder(Direction::Reverse)(v),
    }
    tram::inventory::submit!(REGISTRATION);
}

/// `kl-sym`: forward plus reverse.
pub mod symmetric {
    use super::*;
    tram::component! {
        distance "kl-sym",
        summary: "symmetric KL, forward + reverse (R3F)",
        config: KlConfig {},
        build: |v| builder(Direction::Symmetric)(v),
    }
    tram::inventory::submit!(REGISTRATION);
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn kl(d: Direction, t: &[f32], c: &[f32], r: Reduction) -> f32 {
        let t = Tensor::from_slice(t, (1, t.len()), &Device::Cpu).unwrap();
        let c = Tensor::from_slice(c, (1, c.len()), &Device::Cpu).unwrap();
        KlDivergence { direction: d }.distance(&t, &c, r, 1).unwrap().to_scalar::<f32>().unwrap()
    }

    #[test]
    fn matches_the_closed_form_for_two_classes() {
        // p = softmax([0, ln 3]) = (1/4, 3/4), q = (1/2, 1/2).
        let (t, c) = ([0.0, 3f32.ln()], [0.0, 0.0]);
        let fwd = 0.25 * (0.5f32).ln() + 0.75 * (1.5f32).ln();
        let rev = 0.5 * (2.0f32).ln() + 0.5 * (0.5f32 / 0.75).ln();
        assert!((kl(Direction::Forward, &t, &c, Reduction::Mean) - fwd).abs() < 1e-6);
        assert!((kl(Direction::Reverse, &t, &c, Reduction::Mean) - rev).abs() < 1e-6);
        assert!((kl(Direction::Symmetric, &t, &c, Reduction::Mean) - fwd - rev).abs() < 1e-6);
        // Reference scaling divides by rows × classes and by the batch size.
        assert!((kl(Direction::Forward, &t, &c, Reduction::Reference) - fwd / 2.0).abs() < 1e-6);
    }

    #[test]
    fn is_zero_for_identical_logits() {
        assert_eq!(kl(Direction::Symmetric, &[1.0, -2.0, 0.5], &[1.0, -2.0, 0.5], Reduction::Mean), 0.0);
    }
}
