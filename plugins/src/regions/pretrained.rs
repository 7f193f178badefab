//! `pretrained`: the trust region around the pretrained function, target `f(x; θ₀)`.
//! TRAM-θ₀ (Sherborne et al., ICLR 2024).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tram::registry::{param_docs, parse_params, Component, Kind, Registration};
use tram::state::{load_snapshot, snapshot_state, StateReader};
use tram::{Logits, Params, Result, Snapshot, TargetCtx, TrustRegion};

/// `pretrained` has no parameters of its own.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PretrainedConfig {}

/// Keeps a frozen copy of θ₀.
pub struct Pretrained {
    theta0: Option<Snapshot>,
}

impl TrustRegion for Pretrained {
    fn name(&self) -> &str {
        "pretrained"
    }
    fn init(&mut self, params: &Params) -> Result<()> {
        self.theta0 = Some(params.snapshot()?);
        Ok(())
    }
    fn target(&mut self, ctx: &mut TargetCtx<'_>, _grad: bool) -> Result<Logits> {
        let theta0 = self.theta0.as_ref().ok_or_else(|| tram::Error::Model("`pretrained` used before init".into()))?;
        ctx.model.forward(theta0, ctx.batch, ctx.mode)
    }
    fn tracks_current(&self) -> bool {
        false
    }
    fn state(&self, params: &Params) -> Result<Vec<(String, candle_core::Tensor)>> {
        Ok(self.theta0.as_ref().map(|s| snapshot_state("theta0", params, s)).unwrap_or_default())
    }
    fn load_state(&mut self, params: &Params, state: &StateReader<'_>) -> Result<()> {
        self.theta0 = Some(load_snapshot("theta0", params, state)?);
        Ok(())
    }
}

fn build(v: &Value) -> Result<Component> {
    let _: PretrainedConfig = parse_params("trust region `pretrained`", v)?;
    Ok(Component::TrustRegion(Box::new(Pretrained { theta0: None })))
}

tram::inventory::submit! {
    Registration { kind: Kind::TrustRegion, name: "pretrained", summary: "target f(x; θ₀), the pretrained function (TRAM-θ₀)", params: || param_docs::<PretrainedConfig>(&[]), build }
}
