//! Learning-rate schedules (SPEC: constant; linear warmup then polynomial decay to 0; cosine).

use serde::{Deserialize, Serialize};

/// A learning-rate schedule, evaluated at the 0-based step index.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Schedule {
    /// The base rate at every step.
    #[default]
    Constant,
    /// Linear warmup over `warmup` steps, then `(1 - progress)^power` decay to 0 at `total`
    /// (Hugging Face's `get_polynomial_decay_schedule_with_warmup` with `lr_end = 0`).
    Polynomial {
        /// Warmup steps.
        warmup: u64,
        /// Total steps.
        total: u64,
        /// Decay power (1 = linear).
        #[serde(default = "one")]
        power: f64,
    },
    /// `0.5 (1 + cos(π t / total))`, no warmup, no restarts.
    Cosine {
        /// Total steps.
        total: u64,
    },
}

fn one() -> f64 {
    1.0
}

impl Schedule {
    /// The multiplier of the base learning rate at step `t`.
    pub fn factor(&self, t: u64) -> f64 {
        match *self {
            Schedule::Constant => 1.0,
            Schedule::Polynomial { warmup, total, power } => {
                if t < warmup {
                    t as f64 / warmup.max(1) as f64
                } else if t >= total {
                    0.0
                } else {
                    let remaining = (total - t) as f64 / (total - warmup).max(1) as f64;
                    remaining.powf(power)
                }
            }
            Schedule::Cosine { total } => {
                let p = (t.min(total) as f64) / total.max(1) as f64;
                0.5 * (1.0 + (std::f64::consts::PI * p).cos())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polynomial_warms_up_linearly_then_decays_to_zero() {
        let s = Schedule::Polynomial { warmup: 10, total: 50, power: 1.0 };
        assert_eq!(s.factor(0), 0.0);
        assert!((s.factor(5) - 0.5).abs() < 1e-12);
        assert!((s.factor(10) - 1.0).abs() < 1e-12);
        assert!((s.factor(30) - 0.5).abs() < 1e-12);
        assert_eq!(s.factor(50), 0.0);
        let sq = Schedule::Polynomial { warmup: 0, total: 10, power: 2.0 };
        assert!((sq.factor(5) - 0.25).abs() < 1e-12);
    }

    #[test]
    fn cosine_starts_at_one_and_ends_at_zero() {
        let s = Schedule::Cosine { total: 100 };
        assert!((s.factor(0) - 1.0).abs() < 1e-12);
        assert!((s.factor(50) - 0.5).abs() < 1e-12);
        assert!(s.factor(100).abs() < 1e-12);
        assert_eq!(Schedule::Constant.factor(1234), 1.0);
    }
}
