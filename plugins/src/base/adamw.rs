//! `adamw`: Adam with decoupled weight decay (Loshchilov & Hutter, 2019) —
//! PyTorch's `torch.optim.AdamW` rule, `θ ← θ(1 − lr·λ)` before the Adam step.

use super::adam::{AdamConfig, AdamCore};
use candle_core::Tensor;
use serde_json::Value;
use tram::registry::{Component, Kind, Registration};
use tram::state::StateReader;
use tram::{BaseOptimizer, Params, Result};

/// AdamW's default weight decay (PyTorch's).
pub const DEFAULT_WEIGHT_DECAY: f64 = 0.01;

/// Adam with decoupled weight decay.
pub struct AdamW(pub AdamCore);

impl BaseOptimizer for AdamW {
    fn name(&self) -> &str {
        "adamw"
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
    Ok(Component::Base(Box::new(AdamW(AdamCore::new(AdamConfig::parse("base optimizer `adamw`", v, DEFAULT_WEIGHT_DECAY)?, true)))))
}

fn docs() -> Vec<tram::ParamDoc> {
    let mut d = AdamConfig::docs("decoupled decay: θ ← θ(1 − lr·λ)");
    if let Some(w) = d.iter_mut().find(|p| p.name == "weight_decay") {
        w.default = DEFAULT_WEIGHT_DECAY.to_string();
    }
    d
}

tram::inventory::submit! {
    Registration { kind: Kind::Base, name: "adamw", summary: "AdamW, decoupled weight decay (torch.optim.AdamW rule)", params: docs, build }
}
