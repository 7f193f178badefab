//! `noise`: the trust region around the current function under input-embedding noise,
//! target `f(x̃; θ)`, `x̃ = embeddings + z`, `z ~ N(0, σ²)` or `U(-σ, σ)`.
//! TRAM-x and TRAM-Fisher (Sherborne et al., ICLR 2024); R3F (Aghajanyan et al., 2021).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tram::check::Range;
use tram::components::region::InputPerturbation;
use tram::components::state::StateReader;
use tram::compose::registry::{parse_params, Component};
use tram::{Logits, NoiseKind, Params, Result, TargetCtx, TrustRegion, Weights};

/// Parameters of the `noise` trust region.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NoiseConfig {
    /// Scale σ of the noise.
    pub sigma: f64,
    /// Distribution: `normal` (N(0, σ²)) or `uniform` (U(-σ, σ)).
    pub sample: NoiseKind,
}

impl Default for NoiseConfig {
    fn default() -> Self {
        Self { sigma: 1e-5, sample: NoiseKind::Normal }
    }
}

/// Evaluates the current parameters on noised input embeddings.
pub struct InputNoise {
    config: NoiseConfig,
}

impl InputNoise {
    fn noised(&self, ctx: &mut TargetCtx<'_>, embeds: &candle_core::Tensor) -> Result<candle_core::Tensor> {
        let z = ctx.noise.get(embeds.shape(), self.config.sample, self.config.sigma, embeds)?;
        Ok(embeds.add(&z)?)
    }
}

/// TRAM-Fisher's first pass: the embeddings plus this step's noise sample.
impl InputPerturbation for InputNoise {
    fn perturb(&mut self, ctx: &mut TargetCtx<'_>, embeds: &candle_core::Tensor) -> Result<candle_core::Tensor> {
        self.noised(ctx, embeds)
    }
}

impl TrustRegion for InputNoise {
    fn name(&self) -> &str {
        NAME
    }
    fn init(&mut self, _params: &Params) -> Result<()> {
        Ok(())
    }
    fn target(&mut self, ctx: &mut TargetCtx<'_>, grad: bool) -> Result<Logits> {
        let params = ctx.model.params();
        let detached = params.detached();
        let w: &dyn Weights = if grad { params } else { &detached };
        let e = ctx.model.embed(w, ctx.batch, ctx.mode)?;
        let x = self.noised(ctx, &e)?;
        ctx.model.forward_embeds(w, &x, ctx.batch, ctx.mode)
    }
    fn tracks_current(&self) -> bool {
        true
    }
    fn input_perturbation(&mut self) -> Option<&mut dyn InputPerturbation> {
        Some(self)
    }
    fn state(&self, _params: &Params) -> Result<Vec<(String, candle_core::Tensor)>> {
        Ok(Vec::new())
    }
    fn load_state(&mut self, _params: &Params, _state: &StateReader<'_>) -> Result<()> {
        Ok(())
    }
    fn describe(&self) -> Value {
        serde_json::to_value(&self.config).unwrap_or_default()
    }
}

/// Valid range of `sigma`: noise far beyond the scale of any embedding (the paper uses 1e-5)
/// only measures the noise, and at 1e39 it overflows f32.
const SIGMA: Range = Range::closed(0.0, 1e3);

fn build(v: &Value) -> Result<Component> {
    let config: NoiseConfig = parse_params(WHAT, v)?;
    SIGMA.check(WHAT, "sigma", config.sigma)?;
    Ok(Component::TrustRegion(Box::new(InputNoise { config })))
}

tram::component! {
    trust_region "noise",
    summary: "target f(x̃; θ) on noised input embeddings (TRAM-x, TRAM-Fisher, R3F)",
    config: NoiseConfig {
        sigma: "noise scale σ, in [0, 1000]",
        sample: "\"normal\" N(0, σ²) or \"uniform\" U(-σ, σ)",
    },
    build: build,
}
tram::inventory::submit!(REGISTRATION);
