//! `prev`: the trust region around the previous iterate, target `f(x; θ_{t-1})`.
//! TRAM-θ_{t-1} (Sherborne et al., ICLR 2024) and TRPO's penalty (Schulman et al., 2015).
//! `θ_{t-1}` is the parameters just before the latest base update; `θ_{-1} = θ₀`.
//!
//! Two readings exist. The paper's (implemented here): the target is re-snapshotted before every
//! base update, so δ measures the last step. The published reference code
//! (tomsherborne/tram_optimizer) never calls its target's `update()`, so its TRAM-θ_{t-1} keeps
//! θ₀ throughout: it is TRAM-θ₀ (`pretrained` here). Calling `update()` right after each step
//! instead makes δ ≡ 0 there (target and current coincide), i.e. plain Adam.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tram::components::region::SnapshotTarget;
use tram::components::state::StateReader;
use tram::compose::registry::{parse_params, Component};
use tram::{Logits, Params, Result, Snapshot, TargetCtx, TrustRegion};

/// `prev` has no parameters of its own (distance settings are common to every region).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrevConfig {}

/// Keeps θ_{t-1} and evaluates the model there without a graph.
pub struct PreviousIterate {
    theta: SnapshotTarget,
}

impl PreviousIterate {
    /// Before init: no snapshot yet.
    pub fn new() -> Self {
        Self { theta: SnapshotTarget::new("prev", "theta") }
    }
}

impl Default for PreviousIterate {
    fn default() -> Self {
        Self::new()
    }
}

impl TrustRegion for PreviousIterate {
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
    fn before_update(&mut self, params: &Params, exact_copy: Option<&Snapshot>) -> Result<()> {
        match exact_copy {
            Some(s) => self.theta.set(s.clone()),
            None => self.theta.init(params)?,
        }
        Ok(())
    }
    fn describe(&self) -> Value {
        serde_json::json!({ "target": READING })
    }
    fn state(&self, params: &Params) -> Result<Vec<(String, candle_core::Tensor)>> {
        self.theta.state(params)
    }
    fn load_state(&mut self, params: &Params, state: &StateReader<'_>) -> Result<()> {
        self.theta.load_state(params, state)
    }
}

/// Which reading of TRAM-θ_{t-1} this is, for `tram explain`.
const READING: &str = "θ_{t-1}: θ snapshotted just before each base update (the paper's definition). \
The published reference code never updates its target, so its TRAM-θ_{t-1} is TRAM-θ₀: use `pretrained` to reproduce it";

fn build(v: &Value) -> Result<Component> {
    let _: PrevConfig = parse_params(WHAT, v)?;
    Ok(Component::TrustRegion(Box::new(PreviousIterate::new())))
}

tram::component! {
    trust_region "prev",
    summary: "target f(x; θ_{t-1}), θ before each update (paper; the published code's prev stays θ₀) (TRAM-θ_{t-1}, TRPO)",
    config: PrevConfig {},
    build: build,
}
tram::inventory::submit!(REGISTRATION);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_which_reading_of_theta_t_minus_1_it_implements() {
        let d = PreviousIterate::new().describe().to_string();
        assert!(d.contains("before each base update") && d.contains("TRAM-θ₀") && d.contains("pretrained"), "{d}");
    }

    #[test]
    fn rejects_unknown_parameters() {
        assert!(build(&serde_json::json!({"decay": 0.5})).is_err());
    }
}
