//! Maximum mean discrepancy between the row sets of target and current logits
//! (Gretton et al., 2012), with a kernel summed over bandwidths: TRAM-x (MMD), paper Table 14
//! (Sherborne et al., ICLR 2024). `MMD = mean(K_tt) + mean(K_cc) − 2 mean(K_tc)`.
//!
//! The kernels `imq`, `imq2` (the default), `imq3` and `rbf` are the reference code's
//! (`kl.py` of tomsherborne/tram_optimizer), under its names and with its formulas, `d` being the
//! squared distance of two rows and `b` a bandwidth. `imq-three-halves` and `gaussian` are not in
//! the reference code and have names of their own.

use candle_core::{Tensor, D};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tram::compose::registry::{parse_params, Component};
use tram::{Distance, Error, Reduction, Result};

/// Kernel family, summed over the bandwidths `b`; `d = ‖a − a'‖²`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kernel {
    /// Reference code's `imq`: `b / (b + d)`.
    Imq,
    /// Reference code's `imq2`, its default: `(b² + d)^(-1/2)`, the inverse multiquadric.
    Imq2,
    /// Reference code's `imq3`: `b² / (b² + d)`.
    Imq3,
    /// Reference code's `rbf`: `exp(−d / (2b))` (`b` plays the role of a variance).
    Rbf,
    /// Not in the reference code: `(b² + d)^(-3/2)`.
    #[serde(rename = "imq-three-halves")]
    ImqThreeHalves,
    /// Not in the reference code: the Gaussian with standard deviation `b`, `exp(−d / (2b²))`
    /// (`rbf` with bandwidths `b²`).
    Gaussian,
}

impl Kernel {
    /// Every kernel, with its registered name.
    pub const ALL: [(Kernel, &'static str); 6] = [
        (Kernel::Imq, "imq"),
        (Kernel::Imq2, "imq2"),
        (Kernel::Imq3, "imq3"),
        (Kernel::Rbf, "rbf"),
        (Kernel::ImqThreeHalves, "imq-three-halves"),
        (Kernel::Gaussian, "gaussian"),
    ];

    /// The kernel at bandwidth `b` of squared distances `d`.
    fn eval(self, d: &Tensor, b: f64) -> Result<Tensor> {
        Ok(match self {
            Kernel::Imq => d.affine(1.0 / b, 1.0)?.recip()?,
            Kernel::Imq2 => d.affine(1.0, b * b)?.sqrt()?.recip()?,
            Kernel::Imq3 => d.affine(1.0 / (b * b), 1.0)?.recip()?,
            Kernel::Rbf => d.affine(-1.0 / (2.0 * b), 0.0)?.exp()?,
            Kernel::ImqThreeHalves => {
                let x = d.affine(1.0, b * b)?;
                x.mul(&x.sqrt()?)?.recip()?
            }
            Kernel::Gaussian => d.affine(-1.0 / (2.0 * b * b), 0.0)?.exp()?,
        })
    }
}

/// Parameters of the MMD distance.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MmdConfig {
    /// Kernel: `imq2` (default), `imq`, `imq3`, `rbf` (the reference code's), `imq-three-halves`
    /// or `gaussian`.
    pub kernel: Kernel,
    /// Bandwidths `b` the kernel is summed over.
    pub bandwidths: Vec<f64>,
}

impl Default for MmdConfig {
    fn default() -> Self {
        Self { kernel: Kernel::Imq2, bandwidths: vec![0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0] }
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
            let k = self.config.kernel.eval(&d2, bw)?;
            total = Some(match total {
                None => k,
                Some(t) => t.add(&k)?,
            });
        }
        Ok(total.ok_or_else(|| Error::Config { component: WHAT.into(), reason: "bandwidths is empty".into() })?.mean_all()?)
    }
}

impl Distance for Mmd {
    fn name(&self) -> &str {
        NAME
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
    let config: MmdConfig = parse_params(WHAT, v)?;
    if config.bandwidths.is_empty() {
        return Err(Error::Config {
            component: WHAT.into(),
            reason: "`bandwidths` is empty; give at least one bandwidth, each finite and > 0 (default [0.1, 0.2, 0.5, 1, 2, 5, 10])".into(),
        });
    }
    if let Some(b) = config.bandwidths.iter().find(|b| !(b.is_finite() && **b > 0.0)) {
        return Err(Error::Config {
            component: WHAT.into(),
            reason: format!("bandwidth {b} in `bandwidths` is out of range; every bandwidth must be finite and > 0"),
        });
    }
    Ok(Component::Distance(Box::new(Mmd { config })))
}

tram::component! {
    distance "mmd",
    summary: "maximum mean discrepancy of logit rows, multi-bandwidth kernel, default imq2 (TRAM-x MMD)",
    config: MmdConfig {
        kernel: "d = squared row distance: \"imq2\" (b²+d)^-½ (default), \"imq\" b/(b+d), \"imq3\" b²/(b²+d), \"rbf\" exp(−d/2b) \
                        (the reference code's), \"imq-three-halves\" (b²+d)^-3/2, \"gaussian\" exp(−d/2b²)",
        bandwidths: "kernel bandwidths b, summed; each finite and > 0",
    },
    build: build,
}
tram::inventory::submit!(REGISTRATION);

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use serde_json::json;

    fn value(kernel: Kernel, bandwidths: &[f64], t: &Tensor, c: &Tensor) -> f64 {
        let mmd = Mmd { config: MmdConfig { kernel, bandwidths: bandwidths.to_vec() } };
        mmd.distance(t, c, Reduction::Mean, 2).unwrap().to_scalar::<f64>().unwrap()
    }

    #[test]
    fn matches_a_direct_computation_and_vanishes_on_equal_sets() {
        let t = Tensor::new(&[[0f32], [1.0]], &Device::Cpu).unwrap();
        let c = Tensor::new(&[[0f32], [3.0]], &Device::Cpu).unwrap();
        let mmd = Mmd { config: MmdConfig { kernel: Kernel::Imq2, bandwidths: vec![1.0] } };
        let k = |d: f32| 1.0 / (1.0 + d * d).sqrt();
        let tt = (k(0.0) * 2.0 + k(1.0) * 2.0) / 4.0;
        let cc = (k(0.0) * 2.0 + k(3.0) * 2.0) / 4.0;
        let tc = (k(0.0) + k(3.0) + k(1.0) + k(2.0)) / 4.0;
        let got = mmd.distance(&t, &c, Reduction::Mean, 2).unwrap().to_scalar::<f32>().unwrap();
        assert!((got - (tt + cc - 2.0 * tc)).abs() < 1e-6, "{got}");
        let same = mmd.distance(&t, &t, Reduction::Mean, 2).unwrap().to_scalar::<f32>().unwrap();
        assert!(same.abs() < 1e-6);
    }

    #[test]
    fn every_kernel_has_the_formula_of_its_name() {
        // Two 1-d rows each, in f64: squared distances d ∈ {0, 1, 4, 9} as in the test above.
        let t = Tensor::new(&[[0f64], [1.0]], &Device::Cpu).unwrap();
        let c = Tensor::new(&[[0f64], [3.0]], &Device::Cpu).unwrap();
        let bws = [0.5, 2.0];
        type Formula = fn(f64, f64) -> f64;
        let formulas: [(Kernel, Formula); 6] = [
            (Kernel::Imq, |d, b| b / (b + d)),
            (Kernel::Imq2, |d, b| (b * b + d).powf(-0.5)),
            (Kernel::Imq3, |d, b| b * b / (b * b + d)),
            (Kernel::Rbf, |d, b| (-d / (2.0 * b)).exp()),
            (Kernel::ImqThreeHalves, |d, b| (b * b + d).powf(-1.5)),
            (Kernel::Gaussian, |d, b| (-d / (2.0 * b * b)).exp()),
        ];
        for (kernel, f) in formulas {
            let k = |x: f64, y: f64| bws.iter().map(|&b| f((x - y) * (x - y), b)).sum::<f64>();
            let mean =
                |a: [f64; 2], b: [f64; 2]| a.iter().flat_map(|&x| b.iter().map(move |&y| (x, y))).map(|(x, y)| k(x, y)).sum::<f64>() / 4.0;
            let want = mean([0.0, 1.0], [0.0, 1.0]) + mean([0.0, 3.0], [0.0, 3.0]) - 2.0 * mean([0.0, 1.0], [0.0, 3.0]);
            let got = value(kernel, &bws, &t, &c);
            assert!((got - want).abs() < 1e-12 * want.abs().max(1.0), "{kernel:?}: {got} vs {want}");
        }
    }

    #[test]
    fn kernels_parse_under_their_names_and_imq2_is_the_default() {
        for (kernel, name) in Kernel::ALL {
            let c: MmdConfig = serde_json::from_value(json!({ "kernel": name })).unwrap();
            assert_eq!(c.kernel, kernel, "{name}");
        }
        assert_eq!(MmdConfig::default().kernel, Kernel::Imq2);
        let err = build(&json!({ "kernel": "laplace" })).err().expect("unknown kernel").to_string();
        assert!(err.contains("laplace") && err.contains("imq2") && err.contains("gaussian"), "{err}");
    }

    #[test]
    fn bandwidths_out_of_range_are_rejected_with_the_valid_range() {
        for bad in [json!([]), json!([1.0, 0.0]), json!([-0.5]), json!([1.0, -0.0])] {
            let err = build(&json!({ "bandwidths": bad })).err().expect("rejected").to_string();
            assert!(err.contains("bandwidth") && (err.contains("> 0") || err.contains("empty")), "{bad}: {err}");
        }
    }
}
