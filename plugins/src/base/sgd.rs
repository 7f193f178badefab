//! `sgd`: stochastic gradient descent with momentum, optional Nesterov, and L2 weight decay
//! added to the gradient — PyTorch's `torch.optim.SGD` rule (Sutskever et al., 2013).

use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tram::check::Range;
use tram::components::base::{Adaptor, SimpleOptimizer};
use tram::compose::registry::{parse_params, Component};
use tram::{Error, Result};
use tram_kernels::update::{sgd_update, SgdCoeffs};

/// Parameters of SGD.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SgdConfig {
    /// Momentum μ (0 disables the buffer).
    pub momentum: f64,
    /// Dampening of the gradient in the momentum buffer.
    pub dampening: f64,
    /// Nesterov momentum.
    pub nesterov: bool,
    /// L2 weight decay added to the gradient.
    pub weight_decay: f64,
}

impl Default for SgdConfig {
    fn default() -> Self {
        Self { momentum: 0.9, dampening: 0.0, nesterov: false, weight_decay: 0.0 }
    }
}

/// SGD's per-parameter math; [`Adaptor`] keeps the momentum buffers by parameter name.
pub struct SgdRule {
    config: SgdConfig,
}

impl SgdRule {
    /// SGD with `config` (checked by the registry's builder, not here).
    pub fn new(config: SgdConfig) -> Self {
        Self { config }
    }

    /// The fused in-place step; `false` (nothing written) where it does not apply.
    fn step_fused(&self, lr: f64, param: &Var, g: &Tensor, buffer: &mut Option<Tensor>) -> Result<bool> {
        let theta = param.as_tensor();
        // The CPU kernels, and with the `cuda` feature the CUDA ones (both bitwise the composed
        // path's CPU result).
        if !(theta.device().is_cpu() || theta.device().is_cuda()) || theta.dtype() != candle_core::DType::F32 || !theta.is_contiguous() {
            return Ok(false);
        }
        let c = &self.config;
        let coeffs = SgdCoeffs {
            lr,
            momentum: c.momentum,
            one_minus_dampening: 1.0 - c.dampening,
            nesterov: c.nesterov,
            weight_decay: c.weight_decay,
        };
        let first = buffer.is_none();
        let buf = match (c.momentum != 0.0, buffer.as_ref()) {
            (false, _) => None,
            (true, Some(b)) => Some(b.clone()),
            (true, None) => Some(theta.zeros_like()?),
        };
        if !sgd_update(theta, g, buf.as_ref(), first, &coeffs)? {
            return Ok(false);
        }
        if first && buf.is_some() {
            *buffer = buf;
        }
        Ok(true)
    }

    /// The composed step (candle ops, new tensors): the reference the fused step reproduces,
    /// and the path for other devices and dtypes.
    pub fn step_composed(&self, lr: f64, param: &Var, g: &Tensor, buffer: &mut Option<Tensor>) -> Result<()> {
        let c = &self.config;
        let theta = param.as_tensor().detach();
        let mut d = if c.weight_decay != 0.0 { g.add(&theta.affine(c.weight_decay, 0.0)?)? } else { g.clone() };
        if c.momentum != 0.0 {
            let buf = match buffer {
                Some(b) => (b.affine(c.momentum, 0.0)? + d.affine(1.0 - c.dampening, 0.0)?)?,
                None => d.copy()?,
            };
            d = if c.nesterov { d.add(&buf.affine(c.momentum, 0.0)?)? } else { buf.clone() };
            *buffer = Some(buf);
        }
        param.set(&theta.sub(&d.affine(lr, 0.0)?)?)?;
        Ok(())
    }
}

/// SGD with momentum buffers keyed by parameter name.
pub type Sgd = Adaptor<SgdRule>;

impl SimpleOptimizer for SgdRule {
    /// The momentum buffer (none while `momentum` is 0).
    type State = Tensor;
    const SLOTS: &'static [&'static str] = &["momentum"];
    fn name(&self) -> &str {
        NAME
    }
    /// On the CPU, and on CUDA with the `cuda` feature, with f32 parameters: one fused in-place
    /// pass ([`tram_kernels::update::sgd_update`], bit for bit the composed ops of
    /// [`SgdRule::step_composed`] on the CPU); the momentum buffer is then written in place.
    /// Other devices and dtypes: the composed ops.
    fn step(&self, _t: u64, lr: f64, param: &Var, g: &Tensor, buffer: &mut Option<Tensor>) -> Result<()> {
        if self.step_fused(lr, param, g, buffer)? {
            return Ok(());
        }
        self.step_composed(lr, param, g, buffer)
    }
    fn to_tensors(buffer: &Tensor) -> Vec<Tensor> {
        vec![buffer.clone()]
    }
    fn from_tensors(t: Vec<Tensor>) -> Result<Tensor> {
        // An own copy: the fused step writes the buffer in place, and the tensor handed in (a
        // checkpoint's, a rollback backup's) may still be held by the caller.
        Ok(t.into_iter().next().ok_or_else(|| Error::Model("no SGD momentum tensor".into()))?.copy()?)
    }
    fn describe(&self) -> Value {
        serde_json::to_value(&self.config).unwrap_or_default()
    }
}

/// Valid range of `momentum`: at 1 or above the buffer never forgets and the steps grow.
const MOMENTUM: Range = Range::closed_open(0.0, 1.0);
/// Valid range of `dampening` (a fraction of the gradient kept out of the buffer).
const DAMPENING: Range = Range::UNIT;
/// Valid range of `weight_decay`.
pub const WEIGHT_DECAY: Range = Range::closed(0.0, 1e3);

fn build(v: &Value) -> Result<Component> {
    let config: SgdConfig = parse_params(WHAT, v)?;
    MOMENTUM.check(WHAT, "momentum", config.momentum)?;
    DAMPENING.check(WHAT, "dampening", config.dampening)?;
    WEIGHT_DECAY.check(WHAT, "weight_decay", config.weight_decay)?;
    if config.nesterov && (config.momentum <= 0.0 || config.dampening != 0.0) {
        return Err(Error::Config { component: WHAT.into(), reason: "nesterov needs momentum > 0 and dampening = 0".into() });
    }
    Ok(Component::Base(Box::new(Sgd::new(SgdRule::new(config)))))
}

tram::component! {
    base "sgd",
    summary: "SGD with momentum, Nesterov, L2 weight decay (torch.optim.SGD rule)",
    config: SgdConfig {
        momentum: "momentum μ, in [0, 1)",
        dampening: "momentum dampening, in [0, 1]",
        nesterov: "Nesterov momentum",
        weight_decay: "L2 penalty added to the gradient, in [0, 1000]",
    },
    build: build,
}
tram::inventory::submit!(REGISTRATION);
