//! `ema`: the trust region around an exponential moving average of the iterates,
//! target `f(x; θ_ema)`, `θ_ema ← d·θ_ema + (1-d)·θ` after each step. MESA (Du et al., 2022).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tram::check::Range;
use tram::components::region::SnapshotTarget;
use tram::components::state::StateReader;
use tram::compose::registry::{parse_params, Component};
use tram::{Logits, Params, Result, TargetCtx, TrustRegion};

/// Parameters of the `ema` trust region.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmaConfig {
    /// Decay `d` of the moving average.
    pub decay: f64,
}

impl Default for EmaConfig {
    fn default() -> Self {
        Self { decay: 0.999 }
    }
}

/// Keeps θ_ema, starting at θ₀.
pub struct MovingAverage {
    config: EmaConfig,
    theta: SnapshotTarget,
}

impl TrustRegion for MovingAverage {
    fn name(&self) -> &str {
        NAME
    }
    fn init(&mut self, params: &Params) -> Result<()> {
        self.theta.init(params)
    }
    fn target(&mut self, ctx: &mut TargetCtx<'_>, _grad: bool) -> Result<Logits> {
        self.theta.target(ctx)
    }
    fn tracks_current(&self) -> bool {
        false
    }
    fn after_update(&mut self, params: &Params) -> Result<()> {
        let d = self.config.decay;
        let theta = self.theta.get_mut()?;
        for (e, p) in theta.tensors_mut().iter_mut().zip(params.iter()) {
            *e = (e.affine(d, 0.0)? + p.var.as_tensor().detach().affine(1.0 - d, 0.0)?)?;
        }
        Ok(())
    }
    fn state(&self, params: &Params) -> Result<Vec<(String, candle_core::Tensor)>> {
        self.theta.state(params)
    }
    fn load_state(&mut self, params: &Params, state: &StateReader<'_>) -> Result<()> {
        self.theta.load_state(params, state)
    }
    fn describe(&self) -> Value {
        serde_json::to_value(&self.config).unwrap_or_default()
    }
}

/// Valid range of `decay` (1 keeps θ_ema = θ₀).
const DECAY: Range = Range::UNIT;

fn build(v: &Value) -> Result<Component> {
    let config: EmaConfig = parse_params(WHAT, v)?;
    DECAY.check(WHAT, "decay", config.decay)?;
    Ok(Component::TrustRegion(Box::new(MovingAverage { config, theta: SnapshotTarget::new("ema", "theta_ema") })))
}

tram::component! {
    trust_region "ema",
    summary: "target f(x; θ_ema), a moving average of the iterates (MESA)",
    config: EmaConfig {
        decay: "decay d of θ_ema ← d·θ_ema + (1-d)·θ, in [0, 1]",
    },
    build: build,
}
tram::inventory::submit!(REGISTRATION);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_a_decay_outside_the_unit_interval() {
        let e = build(&serde_json::json!({"decay": 1.5})).err().unwrap();
        assert!(e.to_string().contains("`decay` must be in [0, 1], got 1.5"), "{e}");
    }
}
