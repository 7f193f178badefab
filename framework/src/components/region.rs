//! Trust regions (paper §3): a *target* output produced without gradient (θ_{t-1}, θ₀, noised
//! input, EMA), measured against the current logits by a [`Distance`](crate::Distance).

use crate::components::model::{Batch, Logits, Mode, Model, Params, Snapshot};
use crate::components::state::{load_snapshot, snapshot_state, StateReader};
use crate::error::{Error, Result};
use crate::noise::{NoiseKind, NoiseSource};
use candle_core::{Shape, Tensor};

/// What a trust region sees when it produces a target.
///
/// The engine builds one for every target it asks for; a test builds one with
/// [`TargetCtx::new`] (or `tram::testing::TargetHarness`, behind the `testing` feature).
pub struct TargetCtx<'a> {
    /// The model being trained.
    pub model: &'a dyn Model,
    /// The micro-batch.
    pub batch: &'a Batch,
    /// The mode of the current training pass (for the target's pass:
    /// [`RegionSettings::target_mode`](crate::RegionSettings) already applied, so a region
    /// passes it on to the model unchanged).
    pub mode: Mode,
    /// Per-micro-batch noise, sampled once per step and distribution and reused by every pass
    /// of that step.
    pub noise: &'a mut NoiseSlot<'a>,
}

impl<'a> TargetCtx<'a> {
    /// A context for `model` on `batch` in `mode`, drawing noise through `noise`.
    pub fn new(model: &'a dyn Model, batch: &'a Batch, mode: Mode, noise: &'a mut NoiseSlot<'a>) -> Self {
        Self { model, batch, mode, noise }
    }
}

/// The noise samples drawn for one micro-batch in one step: one per distinct
/// (distribution, σ, shape) that a region asked for, in draw order.
#[derive(Default)]
pub struct NoiseSamples {
    drawn: Vec<(NoiseKind, u64, Vec<usize>, Tensor)>,
}

impl NoiseSamples {
    /// No samples yet (the start of a step).
    pub fn new() -> Self {
        Self::default()
    }
    /// How many distinct samples were drawn.
    pub fn len(&self) -> usize {
        self.drawn.len()
    }
    /// Whether none was drawn.
    pub fn is_empty(&self) -> bool {
        self.drawn.is_empty()
    }
}

/// A lazily drawn noise sample for one micro-batch, shared by the passes of one step.
///
/// A sample is keyed by its distribution, its scale σ and its shape: every pass (and every
/// region) that asks for the same (kind, σ, shape) gets the same tensor, and a request with
/// another distribution or σ gets a sample of its own, drawn when first asked for. Two noise
/// users of different σ in one composition (`reg:noise(sigma=0.1)+noise+ball+adam`) thus
/// never share a sample.
pub struct NoiseSlot<'a> {
    pub(crate) source: &'a mut dyn NoiseSource,
    pub(crate) samples: &'a mut NoiseSamples,
}

impl<'a> NoiseSlot<'a> {
    /// A slot drawing from `source` and keeping what it drew in `samples` (keep one
    /// [`NoiseSamples`] per micro-batch for a step and pass it to every pass).
    pub fn new(source: &'a mut dyn NoiseSource, samples: &'a mut NoiseSamples) -> Self {
        Self { source, samples }
    }

    /// The noise of distribution `kind` and scale `sigma` for embeddings of `shape` (drawn on
    /// first use, then reused), on `like`'s device and in its dtype.
    pub fn get(&mut self, shape: &Shape, kind: NoiseKind, sigma: f64, like: &Tensor) -> Result<Tensor> {
        let key = (kind, sigma.to_bits(), shape.dims());
        if let Some((.., z)) = self.samples.drawn.iter().find(|(k, s, d, _)| (*k, *s, d.as_slice()) == key) {
            return Ok(z.clone());
        }
        let z = self.source.sample(shape, kind, sigma, like.device(), like.dtype())?;
        if z.shape() != shape {
            return Err(Error::Model(format!(
                "the noise source returned a sample of shape {:?} for embeddings of shape {:?}",
                z.dims(),
                shape.dims()
            )));
        }
        self.samples.drawn.push((kind, sigma.to_bits(), shape.dims().to_vec(), z.clone()));
        Ok(z)
    }
}

/// A trust region: produces target logits and owns any parameter history it needs.
///
/// # Where a region is used
///
/// A composition uses a region in one of three roles (see [`crate::compose::bind`]):
///
/// - **penalty** `reg:<region>`: the loss is `L + λ·D(target ‖ current)` in every pass
///   (TRPO, R3F, MESA);
/// - **radius** `<region>+ball+<base>`: `δ = D(target ‖ current)` of the first pass sizes the
///   ascent (TRAM); the target is evaluated in the first pass only;
/// - **input** `<region>+fisher+<base>`: the first pass runs on
///   [`input_perturbation`](TrustRegion::input_perturbation)'s embeddings (TRAM-Fisher).
///
/// # The engine's call order
///
/// [`Optimizer::step`](crate::Optimizer::step) calls a region's methods in this order (SPEC
/// "Two-pass step"); `k` is the number of micro-batches of the step.
///
/// 1. First step only: [`init`](TrustRegion::init) with θ₀ (every region of the composition,
///    penalties first). On resume [`load_state`](TrustRegion::load_state) replaces it.
/// 2. **First pass at θ**, for each of the `k` micro-batches:
///    1. input role: [`InputPerturbation::perturb`] on the clean embeddings;
///    2. penalty role: [`target`](TrustRegion::target)`(ctx, grad = through_target)`. A region
///       whose [`tracks_current`](TrustRegion::tracks_current) is `false` is evaluated once per
///       micro-batch and step, and its (detached) target reused in the second pass;
///    3. radius role: `target(ctx, grad = false)`, measured against the first pass's logits
///       (detached, in f64) for δ.
/// 3. The ascent ε from the gradient (no region call).
/// 4. **Second pass at θ + ε** (only when there is an ascent), per micro-batch: penalty role
///    with `tracks_current() == true` only, `target(ctx, grad = through_target)` again (same
///    noise sample as the first pass). No radius or input call.
/// 5. θ restored bitwise; if the loss, a penalty or the gradient is not finite the step is
///    skipped here and nothing below is called.
/// 6. [`before_update`](TrustRegion::before_update) with θ_t, then the base update, then
///    [`after_update`](TrustRegion::after_update) with θ_{t+1}. If the update made a weight
///    non-finite it is rolled back: [`load_state`](TrustRegion::load_state) gets what
///    [`state`](TrustRegion::state) returned before `before_update`, and `after_update` is
///    not called.
/// 7. Checkpoints call [`state`](TrustRegion::state) at any point between steps.
///
/// # What the context holds
///
/// [`TargetCtx::mode`] is the mode of the *target's* pass: `target_train` when the config
/// sets it, else eval for a region that does not track the current parameters and the
/// current pass's mode (statistics frozen) for one that does. Pass it to the model unchanged.
/// [`TargetCtx::noise`] draws noise: one sample per (distribution, σ, shape) per micro-batch
/// and step, so the first and the second pass of a step, and every region asking for the same
/// distribution, see the same sample ([`NoiseSlot::get`]).
///
/// # Gradients
///
/// With `grad = false` return logits without a graph (evaluate at
/// [`Params::detached`](crate::Params::detached) or a [`Snapshot`]): the engine never
/// backpropagates through them. With `grad = true` (a penalty with `through_target = true`,
/// R3F) evaluate at [`ctx.model.params()`](crate::Model::params) so that the gradient flows
/// through the target branch too. A region loaded as a run-time plugin is refused with
/// `grad = true` (its graph would mix two copies of candle); link it statically instead.
///
/// The [`Distance`](crate::Distance) measuring the target must be differentiable in the
/// current logits (penalties backpropagate through them), in the target too when
/// `through_target = true`, and accept f64 inputs (δ is measured in f64).
///
/// ```
/// use candle_core::{Device, Var};
/// use tram::components::region::SnapshotTarget;
/// use tram::state::StateReader;
/// use tram::{Logits, Params, TargetCtx, TrustRegion};
///
/// /// The function at θ₀ (what `pretrained` does).
/// struct Start(SnapshotTarget);
/// impl TrustRegion for Start {
///     fn name(&self) -> &str { "start" }
///     fn init(&mut self, params: &Params) -> tram::Result<()> { self.0.init(params) }
///     fn target(&mut self, ctx: &mut TargetCtx<'_>, _grad: bool) -> tram::Result<Logits> { self.0.target(ctx) }
///     fn tracks_current(&self) -> bool { false }
///     fn state(&self, params: &Params) -> tram::Result<Vec<(String, candle_core::Tensor)>> { self.0.state(params) }
///     fn load_state(&mut self, params: &Params, state: &StateReader<'_>) -> tram::Result<()> {
///         self.0.load_state(params, state)
///     }
/// }
///
/// let params = Params::new([("w".to_string(), Var::new(&[1f32, 2.0], &Device::Cpu)?)])?;
/// let mut region = Start(SnapshotTarget::new("start", "theta0"));
/// assert!(region.state(&params)?.is_empty(), "nothing before init");
/// region.init(&params)?;
/// let keys: Vec<String> = region.state(&params)?.into_iter().map(|(k, _)| k).collect();
/// assert_eq!(keys, ["theta0/w"]);
/// # Ok::<(), tram::Error>(())
/// ```
pub trait TrustRegion: Send {
    /// Registered name (return the `NAME` that [`component!`](crate::component) defines).
    fn name(&self) -> &str;
    /// Called once, before the first step, with the pretrained parameters θ₀: take any
    /// snapshot the target needs here (not in the constructor, which has no parameters).
    /// Not called on resume, where [`TrustRegion::load_state`] restores the state instead.
    fn init(&mut self, params: &Params) -> Result<()>;
    /// Target logits for `ctx.batch`, in `ctx.mode` (already the target pass's mode).
    ///
    /// With `grad` (a penalty with `through_target = true`) the target keeps its graph through
    /// the current parameters; otherwise it must be evaluated without one. Draw any noise
    /// through `ctx.noise` so that every pass of the step sees the same sample. See the
    /// trait docs for when it is called.
    fn target(&mut self, ctx: &mut TargetCtx<'_>, grad: bool) -> Result<Logits>;
    /// Whether the target depends on the current parameters θ (noise: `f(x̃; θ)`), so that it
    /// must be recomputed at the perturbed point θ + ε of a two-pass step. `false` (a
    /// parameter snapshot: θ_{t-1}, θ₀, EMA) lets the engine evaluate it once per micro-batch
    /// and step, cache it, and run it in eval mode by default.
    fn tracks_current(&self) -> bool;
    /// How this region perturbs the input embeddings, for a region that does (TRAM-Fisher runs
    /// its first pass there, and only such a region composes with a fixed-radius neighborhood);
    /// `None` (the default) for one that does not.
    fn input_perturbation(&mut self) -> Option<&mut dyn InputPerturbation> {
        None
    }
    /// Called with θ_t just before the base update (after both passes); `exact_copy` is a
    /// bitwise copy of θ_t when the engine already has one (the two-pass backup), free to keep
    /// (`prev` keeps it as θ_{t-1}). Not called for a skipped step.
    fn before_update(&mut self, _params: &Params, _exact_copy: Option<&Snapshot>) -> Result<()> {
        Ok(())
    }
    /// Called with θ_{t+1} after the base update (`ema` moves its average here). Not called
    /// for a skipped or rolled-back step.
    fn after_update(&mut self, _params: &Params) -> Result<()> {
        Ok(())
    }
    /// The state to checkpoint, as `(key, tensor)` with keys unique within this region (the
    /// engine prefixes them per region). Everything [`TrustRegion::target`] depends on besides
    /// the parameters and the config must be in it: a resumed run continues bitwise. Empty
    /// before [`TrustRegion::init`].
    fn state(&self, params: &Params) -> Result<Vec<(String, Tensor)>>;
    /// Restore from [`TrustRegion::state`]'s keys: on resume (instead of `init`) and when the
    /// engine rolls back a step. A missing key or a shape that does not match `params` is an
    /// error ([`StateReader`] names it), never a silent default.
    fn load_state(&mut self, params: &Params, state: &StateReader<'_>) -> Result<()>;
    /// Parameters, for reports. The default (`null`) records the config the component was
    /// built from ([`crate::compose::registry::resolved`]), which is what almost every
    /// component wants; override only to record something else (a derived value).
    fn describe(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}

/// A trust region's perturbation of the input embeddings (see
/// [`TrustRegion::input_perturbation`]).
pub trait InputPerturbation {
    /// The perturbed embeddings for `ctx`'s micro-batch (noise drawn through `ctx.noise`, so
    /// every pass of a step sees the same sample).
    fn perturb(&mut self, ctx: &mut TargetCtx<'_>, embeds: &Tensor) -> Result<Tensor>;
}

/// A parameter snapshot a trust region keeps as its target's weights (θ_{t-1}, θ₀, θ_ema):
/// taken at [`TrustRegion::init`], evaluated without a graph, checkpointed as
/// `<key>/<parameter name>`. The `prev`, `pretrained` and `ema` regions are built on it.
pub struct SnapshotTarget {
    region: &'static str,
    key: &'static str,
    theta: Option<Snapshot>,
}

impl SnapshotTarget {
    /// An empty snapshot of trust region `region`, checkpointed under `key`.
    pub const fn new(region: &'static str, key: &'static str) -> Self {
        Self { region, key, theta: None }
    }
    /// Take the snapshot: an exact copy of `params`.
    pub fn init(&mut self, params: &Params) -> Result<()> {
        self.theta = Some(params.snapshot()?);
        Ok(())
    }
    /// Replace the snapshot.
    pub fn set(&mut self, theta: Snapshot) {
        self.theta = Some(theta);
    }
    /// The snapshot; an error before [`SnapshotTarget::init`].
    pub fn get(&self) -> Result<&Snapshot> {
        self.theta.as_ref().ok_or_else(|| self.before_init())
    }
    /// The snapshot, to update it in place (EMA); an error before [`SnapshotTarget::init`].
    pub fn get_mut(&mut self) -> Result<&mut Snapshot> {
        let err = self.before_init();
        self.theta.as_mut().ok_or(err)
    }
    /// The model's logits at the snapshot, for the context's batch and mode.
    pub fn target(&self, ctx: &TargetCtx<'_>) -> Result<Logits> {
        ctx.model.forward(self.get()?, ctx.batch, ctx.mode)
    }
    /// Checkpoint entries `<key>/<parameter name>` (none before [`SnapshotTarget::init`]).
    pub fn state(&self, params: &Params) -> Result<Vec<(String, Tensor)>> {
        Ok(self.theta.as_ref().map(|s| snapshot_state(self.key, params, s)).unwrap_or_default())
    }
    /// Restore from [`SnapshotTarget::state`]'s entries, checking every parameter's shape.
    pub fn load_state(&mut self, params: &Params, state: &StateReader<'_>) -> Result<()> {
        self.theta = Some(load_snapshot(self.key, params, state)?);
        Ok(())
    }
    fn before_init(&self) -> Error {
        Error::Model(format!("`{}` used before init", self.region))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::noise::SeededNoise;
    use candle_core::Device;

    fn draw(slot: &mut NoiseSlot<'_>, dims: &[usize], kind: NoiseKind, sigma: f64) -> Vec<f32> {
        let like = Tensor::zeros(dims, candle_core::DType::F32, &Device::Cpu).unwrap();
        slot.get(&Shape::from_dims(dims), kind, sigma, &like).unwrap().flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn a_noise_sample_is_reused_for_the_same_distribution_and_never_shared_across_sigma_or_kind() {
        let (mut source, mut samples) = (SeededNoise::new(3), NoiseSamples::new());
        let mut slot = NoiseSlot::new(&mut source, &mut samples);
        let small = draw(&mut slot, &[2, 3], NoiseKind::Normal, 1e-3);
        // The same request again (a later pass of the step): the same sample.
        assert_eq!(draw(&mut slot, &[2, 3], NoiseKind::Normal, 1e-3), small);
        // Another σ: a sample of its own, at its own scale (not the first one rescaled or reused).
        let large = draw(&mut slot, &[2, 3], NoiseKind::Normal, 1.0);
        assert_ne!(large, small);
        let max = |v: &[f32]| v.iter().fold(0f32, |m, x| m.max(x.abs()));
        assert!(max(&small) < 1e-2 && max(&large) > 1e-2, "{small:?} {large:?}");
        // Another distribution at the first σ: uniform samples lie in [-σ, σ].
        let uniform = draw(&mut slot, &[2, 3], NoiseKind::Uniform, 1e-3);
        assert_ne!(uniform, small);
        assert!(max(&uniform) <= 1e-3);
        // Another shape: a sample of that shape.
        assert_eq!(draw(&mut slot, &[4], NoiseKind::Normal, 1e-3).len(), 4);
        assert_eq!(samples.len(), 4);
    }
}
