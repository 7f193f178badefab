//! `adam`: Adam (Kingma & Ba, 2015), bias-corrected, with optional L2 weight decay added to
//! the gradient — PyTorch's `torch.optim.Adam` rule. [`AdamCore`] is shared with `adamw`.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use tram::check::Range;
use tram::registry::{param_docs, parse_params, Component, Kind, Registration};
use tram::state::{scalar_u64, u64_tensor, StateReader};
use tram::{BaseOptimizer, Params, Result};

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

/// Adam moments keyed by parameter name, and the step count.
pub struct AdamCore {
    /// Hyper-parameters.
    pub config: AdamConfig,
    /// Decoupled weight decay (AdamW) instead of L2.
    pub decoupled: bool,
    step: u64,
    m: HashMap<String, Tensor>,
    v: HashMap<String, Tensor>,
}

impl AdamCore {
    /// Fresh state.
    pub fn new(config: AdamConfig, decoupled: bool) -> Self {
        Self { config, decoupled, step: 0, m: HashMap::new(), v: HashMap::new() }
    }

    /// One Adam(W) update.
    pub fn update(&mut self, params: &Params, grads: &[Tensor], lr: f64) -> Result<()> {
        let c = &self.config;
        self.step += 1;
        let bc1 = 1.0 - c.beta1.powi(self.step as i32);
        let bc2_sqrt = (1.0 - c.beta2.powi(self.step as i32)).sqrt();
        for (p, g) in params.iter().zip(grads) {
            let mut theta = p.var.as_tensor().detach();
            let mut g = g.clone();
            if c.weight_decay != 0.0 {
                if self.decoupled {
                    theta = theta.affine(1.0 - lr * c.weight_decay, 0.0)?;
                } else {
                    g = g.add(&theta.affine(c.weight_decay, 0.0)?)?;
                }
            }
            let m = match self.m.get(&p.name) {
                Some(m) => (m.affine(c.beta1, 0.0)? + g.affine(1.0 - c.beta1, 0.0)?)?,
                None => g.affine(1.0 - c.beta1, 0.0)?,
            };
            let g2 = g.sqr()?;
            let v = match self.v.get(&p.name) {
                Some(v) => (v.affine(c.beta2, 0.0)? + g2.affine(1.0 - c.beta2, 0.0)?)?,
                None => g2.affine(1.0 - c.beta2, 0.0)?,
            };
            let denom = v.sqrt()?.affine(1.0 / bc2_sqrt, c.eps)?;
            let new = theta.sub(&m.div(&denom)?.affine(lr / bc1, 0.0)?)?;
            p.var.set(&new)?;
            self.m.insert(p.name.clone(), m);
            self.v.insert(p.name.clone(), v);
        }
        Ok(())
    }

    /// Checkpoint entries.
    pub fn state(&self, params: &Params) -> Result<Vec<(String, Tensor)>> {
        let mut out: Vec<(String, Tensor)> = Vec::new();
        for p in params.iter() {
            if let (Some(m), Some(v)) = (self.m.get(&p.name), self.v.get(&p.name)) {
                out.push((format!("exp_avg/{}", p.name), m.clone()));
                out.push((format!("exp_avg_sq/{}", p.name), v.clone()));
            }
        }
        out.push(("step".into(), u64_tensor(self.step)?));
        Ok(out)
    }

    /// Restore checkpoint entries.
    pub fn load_state(&mut self, params: &Params, state: &StateReader<'_>) -> Result<()> {
        self.step = scalar_u64(&state.require("step")?)?;
        self.m.clear();
        self.v.clear();
        if self.step > 0 {
            for p in params.iter() {
                self.m.insert(p.name.clone(), state.require_like(&format!("exp_avg/{}", p.name), p.var.as_tensor())?);
                self.v.insert(p.name.clone(), state.require_like(&format!("exp_avg_sq/{}", p.name), p.var.as_tensor())?);
            }
        }
        Ok(())
    }
}

/// Adam with L2 weight decay.
pub struct Adam(pub AdamCore);

impl BaseOptimizer for Adam {
    fn name(&self) -> &str {
        "adam"
    }
    fn update(&mut self, params: &Params, grads: &[Tensor], lr: f64) -> Result<()> {
        self.0.update(params, grads, lr)
    }
    fn state(&self, params: &Params) -> Result<Vec<(String, Tensor)>> {
        self.0.state(params)
    }
    fn load_state(&mut self, params: &Params, state: &StateReader<'_>) -> Result<()> {
        self.0.load_state(params, state)
    }
    fn describe(&self) -> Value {
        serde_json::to_value(&self.0.config).unwrap_or_default()
    }
}

fn build(v: &Value) -> Result<Component> {
    Ok(Component::Base(Box::new(Adam(AdamCore::new(AdamConfig::parse("base optimizer `adam`", v, 0.0)?, false)))))
}

tram::inventory::submit! {
    Registration { kind: Kind::Base, name: "adam", summary: "Adam, bias-corrected, L2 weight decay (torch.optim.Adam rule)", params: || AdamConfig::docs("L2 penalty added to the gradient"), build }
}
