//! `adam`: Adam (Kingma & Ba, 2015), bias-corrected, with optional L2 weight decay added to
//! the gradient — PyTorch's `torch.optim.Adam` rule. [`AdamCore`] is shared with `adamw`.

use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tram::check::Range;
use tram::components::base::{Adaptor, SimpleOptimizer};
use tram::compose::registry::{param_docs, parse_params, Component};
use tram::{Error, Result};
use tram_kernels::update::{adam_update, AdamCoeffs, Decay};

/// Parameters of Adam / AdamW.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdamConfig {
    /// β1, decay of the first moment.
    pub beta1: f64,
    /// β2, decay of the second moment.
    pub beta2: f64,
    /// ε added to the denominator.
    pub eps: f64,
    /// Weight decay: L2 added to the gradient (adam) or decoupled (adamw).
    pub weight_decay: f64,
}

impl AdamConfig {
    /// The defaults with a given weight decay.
    pub fn with_decay(weight_decay: f64) -> Self {
        Self { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay }
    }
    /// Parameter docs.
    pub fn docs(decay_doc: &'static str) -> Vec<tram::ParamDoc> {
        let docs: [(&str, &str); 4] = [
            ("beta1", "β1, first-moment decay, in [0, 1)"),
            ("beta2", "β2, second-moment decay, in [0, 1)"),
            ("eps", "ε in the denominator, in (0, 1]"),
            ("weight_decay", decay_doc),
        ];
        let mut d = param_docs::<AdamConfig>(&docs);
        if let Some(w) = d.iter_mut().find(|p| p.name == "weight_decay") {
            w.doc = format!("{}, in {}", w.doc, Self::WEIGHT_DECAY);
        }
        d
    }
    /// Parse and validate.
    pub fn parse(component: &str, v: &Value, default_decay: f64) -> Result<Self> {
        let mut v = v.clone();
        if let Value::Object(m) = &mut v {
            m.entry("weight_decay").or_insert(Value::from(default_decay));
        }
        let c: AdamConfig = parse_params(component, &v)?;
        Self::BETA.check(component, "beta1", c.beta1)?;
        Self::BETA.check(component, "beta2", c.beta2)?;
        Self::EPS.check(component, "eps", c.eps)?;
        Self::WEIGHT_DECAY.check(component, "weight_decay", c.weight_decay)?;
        Ok(c)
    }
    /// Valid range of `beta1` and `beta2` (at 1 the moment never moves from its first value).
    pub const BETA: Range = Range::closed_open(0.0, 1.0);
    /// Valid range of `eps`: beyond 1 it dominates every normalised step.
    pub const EPS: Range = Range::open_closed(0.0, 1.0);
    /// Valid range of `weight_decay`.
    pub const WEIGHT_DECAY: Range = Range::closed(0.0, 1e3);
}

impl Default for AdamConfig {
    fn default() -> Self {
        Self::with_decay(0.0)
    }
}

/// Adam(W)'s per-parameter math; [`Adaptor`] keeps the moments by parameter name and the
/// step count.
pub struct AdamCore {
    /// Hyper-parameters.
    pub config: AdamConfig,
    /// Decoupled weight decay (AdamW) instead of L2.
    pub decoupled: bool,
}

/// One parameter's Adam moments.
pub struct Moments {
    /// First moment `m` (`exp_avg`).
    pub m: Tensor,
    /// Second moment `v` (`exp_avg_sq`).
    pub v: Tensor,
}

impl AdamCore {
    /// Adam(W) with `config`: AdamW's decoupled decay with `decoupled`, Adam's L2 otherwise.
    pub fn new(config: AdamConfig, decoupled: bool) -> Self {
        Self { config, decoupled }
    }

    /// The fused in-place step; `false` (nothing written) where it does not apply.
    fn step_fused(&self, t: u64, lr: f64, param: &Var, g: &Tensor, state: &mut Option<Moments>) -> Result<bool> {
        let theta = param.as_tensor();
        // The CPU kernels, and with the `cuda` feature the CUDA ones (both bitwise the composed
        // path's CPU result).
        if !(theta.device().is_cpu() || theta.device().is_cuda()) || theta.dtype() != candle_core::DType::F32 || !theta.is_contiguous() {
            return Ok(false);
        }
        let c = &self.config;
        let decay = match (c.weight_decay != 0.0, self.decoupled) {
            (false, _) => Decay::None,
            (true, true) => Decay::Decoupled(1.0 - lr * c.weight_decay),
            (true, false) => Decay::L2(c.weight_decay),
        };
        let coeffs = AdamCoeffs::at(t, lr, c.beta1, c.beta2, c.eps, decay);
        // Zero moments give the composed first step bit for bit (`0 + x` is `x` for every
        // `x = y·(1 − β) + 0`, never −0).
        let fresh = state.is_none();
        let (m, v) = match state {
            Some(s) => (s.m.clone(), s.v.clone()),
            None => (theta.zeros_like()?, theta.zeros_like()?),
        };
        if !adam_update(theta, g, &m, &v, &coeffs)? {
            return Ok(false);
        }
        if fresh {
            *state = Some(Moments { m, v });
        }
        Ok(true)
    }

    /// The composed step (candle ops, new tensors for the parameter value and the moments):
    /// the reference the fused step reproduces, and the path for other devices and dtypes.
    pub fn step_composed(&self, t: u64, lr: f64, param: &Var, g: &Tensor, state: &mut Option<Moments>) -> Result<()> {
        let c = &self.config;
        let bc1 = 1.0 - c.beta1.powi(t as i32);
        let bc2_sqrt = (1.0 - c.beta2.powi(t as i32)).sqrt();
        let mut theta = param.as_tensor().detach();
        let mut g = g.clone();
        if c.weight_decay != 0.0 {
            if self.decoupled {
                theta = theta.affine(1.0 - lr * c.weight_decay, 0.0)?;
            } else {
                g = g.add(&theta.affine(c.weight_decay, 0.0)?)?;
            }
        }
        let m = match state {
            Some(s) => (s.m.affine(c.beta1, 0.0)? + g.affine(1.0 - c.beta1, 0.0)?)?,
            None => g.affine(1.0 - c.beta1, 0.0)?,
        };
        let g2 = g.sqr()?;
        let v = match state {
            Some(s) => (s.v.affine(c.beta2, 0.0)? + g2.affine(1.0 - c.beta2, 0.0)?)?,
            None => g2.affine(1.0 - c.beta2, 0.0)?,
        };
        let denom = v.sqrt()?.affine(1.0 / bc2_sqrt, c.eps)?;
        param.set(&theta.sub(&m.div(&denom)?.affine(lr / bc1, 0.0)?)?)?;
        *state = Some(Moments { m, v });
        Ok(())
    }
}

impl SimpleOptimizer for AdamCore {
    type State = Moments;
    const SLOTS: &'static [&'static str] = &["exp_avg", "exp_avg_sq"];
    const COUNTS_STEPS: bool = true;
    fn name(&self) -> &str {
        if self.decoupled {
            super::adamw::NAME
        } else {
            NAME
        }
    }
    /// On the CPU, and on CUDA with the `cuda` feature, with f32 parameters: one fused in-place
    /// pass ([`tram_kernels::update::adam_update`], bit for bit the composed ops of
    /// [`AdamCore::step_composed`] on the CPU); the moments are then written in place, so a
    /// tensor taken from [`SimpleOptimizer::to_tensors`] sees the next step. Other devices and
    /// dtypes: the composed ops.
    fn step(&self, t: u64, lr: f64, param: &Var, g: &Tensor, state: &mut Option<Moments>) -> Result<()> {
        if self.step_fused(t, lr, param, g, state)? {
            return Ok(());
        }
        self.step_composed(t, lr, param, g, state)
    }
    fn to_tensors(s: &Moments) -> Vec<Tensor> {
        vec![s.m.clone(), s.v.clone()]
    }
    fn from_tensors(t: Vec<Tensor>) -> Result<Moments> {
        let [m, v]: [Tensor; 2] = t.try_into().map_err(|t: Vec<Tensor>| Error::Model(format!("{} Adam state tensors, not 2", t.len())))?;
        // Own copies: the fused step writes the moments in place, and the tensors handed in
        // (a checkpoint's, a rollback backup's) may still be held by the caller.
        Ok(Moments { m: m.copy()?, v: v.copy()? })
    }
    fn describe(&self) -> Value {
        serde_json::to_value(&self.config).unwrap_or_default()
    }
}

/// Adam with L2 weight decay.
pub type Adam = Adaptor<AdamCore>;

fn build(v: &Value) -> Result<Component> {
    Ok(Component::Base(Box::new(Adam::new(AdamCore::new(AdamConfig::parse(WHAT, v, 0.0)?, false)))))
}

tram::component! {
    base "adam",
    summary: "Adam, bias-corrected, L2 weight decay (torch.optim.Adam rule)",
    params: || AdamConfig::docs("L2 penalty added to the gradient"),
    build: build,
}
tram::inventory::submit!(REGISTRATION);
