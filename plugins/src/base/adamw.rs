//! `adamw`: Adam with decoupled weight decay (Loshchilov & Hutter, 2019) —
//! PyTorch's `torch.optim.AdamW` rule, `θ ← θ(1 − lr·λ)` before the Adam step.

use super::adam::{AdamConfig, AdamCore};
use serde_json::Value;
use tram::components::base::Adaptor;
use tram::compose::registry::Component;
use tram::Result;

/// AdamW's default weight decay (PyTorch's).
pub const DEFAULT_WEIGHT_DECAY: f64 = 0.01;

/// Adam with decoupled weight decay.
pub type AdamW = Adaptor<AdamCore>;

fn build(v: &Value) -> Result<Component> {
    Ok(Component::Base(Box::new(AdamW::new(AdamCore::new(AdamConfig::parse(WHAT, v, DEFAULT_WEIGHT_DECAY)?, true)))))
}

fn docs() -> Vec<tram::ParamDoc> {
    let mut d = AdamConfig::docs("decoupled decay: θ ← θ(1 − lr·λ)");
    if let Some(w) = d.iter_mut().find(|p| p.name == "weight_decay") {
        w.default = DEFAULT_WEIGHT_DECAY.to_string();
    }
    d
}

tram::component! {
    base "adamw",
    summary: "AdamW, decoupled weight decay (torch.optim.AdamW rule)",
    params: docs,
    build: build,
}
tram::inventory::submit!(REGISTRATION);
