//! `pretrained`: the trust region around the pretrained function, target `f(x; θ₀)`.
//! TRAM-θ₀ (Sherborne et al., ICLR 2024).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tram::components::region::SnapshotTarget;
use tram::components::state::StateReader;
use tram::compose::registry::{parse_params, Component};
use tram::{Logits, Params, Result, TargetCtx, TrustRegion};

/// `pretrained` has no parameters of its own.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PretrainedConfig {}

/// Keeps a frozen copy of θ₀.
pub struct Pretrained {
    theta0: SnapshotTarget,
}

impl TrustRegion for Pretrained {
    fn name(&self) -> &str {
        NAME
    }
    fn init(&mut self, params: &Params) -> Result<()> {
        self.theta0.init(params)
    }
    fn target(&mut self, ctx: &mut TargetCtx<'_>, _grad: bool) -> Result<Logits> {
        self.theta0.target(ctx)
    }
    fn tracks_current(&self) -> bool {
        false
    }
    fn state(&self, params: &Params) -> Result<Vec<(String, candle_core::Tensor)>> {
        self.theta0.state(params)
    }
    fn load_state(&mut self, params: &Params, state: &StateReader<'_>) -> Result<()> {
        self.theta0.load_state(params, state)
    }
}

fn build(v: &Value) -> Result<Component> {
    let _: PretrainedConfig = parse_params(WHAT, v)?;
    Ok(Component::TrustRegion(Box::new(Pretrained { theta0: SnapshotTarget::new("pretrained", "theta0") })))
}

tram::component! {
    trust_region "pretrained",
    summary: "target f(x; θ₀), the pretrained function (TRAM-θ₀)",
    config: PretrainedConfig {},
    build: build,
}
tram::inventory::submit!(REGISTRATION);
