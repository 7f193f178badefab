//! Maximum mean discrepancy between the row sets of target and current logits
//! (Gretton et al., 2012), with the inverse multiquadric kernel summed over bandwidths:
//! TRAM-x (MMD), paper Table 14 (Sherborne et al., ICLR 2024).
//! `MMD = mean(K_tt) + mean(K_cc) − 2 mean(K_tc)`.

use candle_core::{Tensor, D};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tram::registry::{param_docs, parse_params, Component, Kind, Registration};
use tram::{Distance, Error, Reduction, Result};

/// Kernel family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kernel {
    /// `(b² + d²)^(-1/2)`.
    Imq,
    /// `(b² + d²)^(-3/2)`.
    Imq3,
    /// `exp(-d² / (2 b²))`.
    Rbf,
}

/// Parameters of the MMD distance.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MmdConfig {
    /// Kernel: `imq`, `imq3` or `rbf`.
    pub kernel: Kernel,
    /// Bandwidths `b` the kernel is summed over.
    pub bandwidths: Vec<f64>,
}

impl Default for MmdConfig {
    fn default() -> Self {
        Self { kernel: Kernel::Imq, bandwidths: vec![0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0] }
    }
}

/// MMD with a multi-bandwidth kernel.
pub struct Mmd {
    config: MmdConfig,
}

impl Mmd {
    /// Squared distances `[n, m]` between rows of `a` and `b`.
    fn sq_dists(a: &Tensor, b: &Tensor) -> Result<Tensor> {
        let a2 = a.sqr()?.sum_keepdim(D::Minus1)?;
        let b2 = b.sqr()?.sum_keepdim(D::Minus1)?.t()?;
        let ab = a.matmul(&b.t()?)?;
        Ok(a2.broadcast_add(&b2)?.sub(&ab.affine(2.0, 0.0)?)?.relu()?)
    }

    fn kernel_mean(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        let d2 = Self::sq_dists(a, b)?;
        let mut total: Option<Tensor> = None;
        for &bw in &self.config.bandwidths {
            let k = match self.config.kernel {
                Kernel::Imq => d2.affine(1.0, bw * bw)?.sqrt()?.recip()?,
                Kernel::Imq3 => {
                    let x = d2.affine(1.0, bw * bw)?;
                    x.mul(&x.sqrt()?)?.recip()?
                }
                Kernel::Rbf => d2.affine(-1.0 / (2.0 * bw * bw), 0.0)?.exp()?,
            };
            total = Some(match total {
                None => k,
                Some(t) => t.add(&k)?,
            });
        }
        Ok(total.ok_or_else(|| Error::Config { component: "distance `mmd`".into(), reason: "bandwidths is empty".into() })?.mean_all()?)
    }
}

impl Distance for Mmd {
    fn name(&self) -> &str {
        "mmd"
    }
    fn distance(&self, target: &Tensor, current: &Tensor, reduction: Reduction, examples: usize) -> Result<Tensor> {
        let tt = self.kernel_mean(target, target)?;
        let cc = self.kernel_mean(current, current)?;
        let tc = self.kernel_mean(target, current)?;
        let mmd = tt.add(&cc)?.sub(&tc.affine(2.0, 0.0)?)?;
        Ok(match reduction {
            Reduction::Mean => mmd,
            Reduction::Reference => mmd.affine(1.0 / examples.max(1) as f64, 0.0)?,
        })
    }
    fn describe(&self) -> Value {
        serde_json::to_value(&self.config).unwrap_or_default()
    }
}

fn build(v: &Value) -> Result<Component> {
    let config: MmdConfig = parse_params("distance `mmd`", v)?;
    if config.bandwidths.is_empty() || config.bandwidths.iter().any(|b| !(b.is_finite() && *b > 0.0)) {
        return Err(Error::Config {
            component: "distance `mmd`".into(),
            reason: "bandwidths must be a non-empty list of positive numbers".into(),
        });
    }
    Ok(Component::Distance(Box::new(Mmd { config })))
}

tram::inventory::submit! {
    Registration {
        kind: Kind::Distance, name: "mmd",
        summary: "maximum mean discrepancy of logit rows, multi-bandwidth IMQ kernel (TRAM-x MMD)",
        params: || param_docs::<MmdConfig>(&[("kernel", "\"imq\", \"imq3\" or \"rbf\""), ("bandwidths", "kernel bandwidths b, summed")]),
        build,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn matches_a_direct_computation_and_vanishes_on_equal_sets() {
        let mmd = Mmd { config: MmdConfig { kernel: Kernel::Imq, bandwidths: vec![1.0] } };
        let t = Tensor::new(&[[0f32], [1.0]], &Device::Cpu).unwrap();
        let c = Tensor::new(&[[0f32], [3.0]], &Device::Cpu).unwrap();
        let k = |d: f32| 1.0 / (1.0 + d * d).sqrt();
        let tt = (k(0.0) * 2.0 + k(1.0) * 2.0) / 4.0;
        let cc = (k(0.0) * 2.0 + k(3.0) * 2.0) / 4.0;
        let tc = (k(0.0) + k(3.0) + k(1.0) + k(2.0)) / 4.0;
        let got = mmd.distance(&t, &c, Reduction::Mean, 2).unwrap().to_scalar::<f32>().unwrap();
        assert!((got - (tt + cc - 2.0 * tc)).abs() < 1e-6, "{got}");
        let same = mmd.distance(&t, &t, Reduction::Mean, 2).unwrap().to_scalar::<f32>().unwrap();
        assert!(same.abs() < 1e-6);
    }
}
