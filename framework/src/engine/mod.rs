//! The step engine (SPEC "Two-pass step"): first pass, radius, ascent, second pass at θ + ε,
//! bitwise restore, clipped base step, trust-region bookkeeping; the one-pass regulariser
//! mode; gradient accumulation; guards against zero / non-finite norms and NaN.

pub mod checkpoint;

use crate::check::Range;
use crate::components::base::BaseOptimizer;
use crate::components::distance::{Distance, Reduction};
use crate::components::model::{Batch, Logits, Mode, Model, Params, Snapshot};
use crate::components::neighborhood::{Ascent, Neighborhood, RadiusSource};
use crate::components::region::{NoiseSlot, TargetCtx, TrustRegion};
use crate::compose::grammar::{Composition, Term};
use crate::compose::registry::{parse_params, reject_nulls, Component, Kind, Registry};
use crate::error::{Error, Result};
use crate::noise::{NoiseSource, SeededNoise};
use crate::ops::{global_norm, to_f32};
use crate::schedule::Schedule;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Optimizer configuration: the composition, the engine settings, and one parameter table
/// per component (keyed by component name, `reg:<name>` for penalty settings).
///
/// In TOML (figment) this is the `[optimizer]` table:
/// ```toml
/// [optimizer]
/// name = "tram-noise"        # or "noise+ball+adam"
/// lr = 1e-4
/// schedule = { kind = "polynomial", warmup = 10000, total = 50000 }
/// [optimizer.noise]
/// sigma = 1e-5
/// ```
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct OptimizerConfig {
    /// A composition string or alias.
    pub name: String,
    /// Base learning rate.
    pub lr: f64,
    /// Learning-rate schedule over steps.
    pub schedule: Schedule,
    /// Clip the final gradient (the one handed to the base optimizer) to this global L2 norm.
    pub max_grad_norm: Option<f64>,
    /// Treat a parameter without gradient as having zero gradient instead of failing.
    pub allow_missing_gradients: bool,
    /// Seed of the noise stream (noise trust region).
    pub seed: u64,
    /// Run training passes in train mode (dropout on).
    pub train_mode: bool,
    /// Parameter tables per component name.
    #[serde(flatten)]
    pub components: BTreeMap<String, Value>,
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        Self {
            name: "adam".into(),
            lr: 1e-3,
            schedule: Schedule::Constant,
            max_grad_norm: None,
            allow_missing_gradients: false,
            seed: 0,
            train_mode: true,
            components: BTreeMap::new(),
        }
    }
}

impl OptimizerConfig {
    /// Defaults for composition `name` at learning rate `lr`.
    pub fn new(name: impl Into<String>, lr: f64) -> Self {
        Self { name: name.into(), lr, ..Self::default() }
    }
    /// Set one component parameter (builder style).
    pub fn with(mut self, component: &str, key: &str, value: impl Into<Value>) -> Self {
        let table = self.components.entry(component.to_string()).or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(m) = table {
            m.insert(key.to_string(), value.into());
        }
        self
    }
}

/// Settings every trust region takes, whatever its target.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RegionSettings {
    /// Name of the registered distance (`kl`, `kl-reverse`, `kl-sym`, `mmd`, `l2`, ...).
    pub distance: String,
    /// Multiplier of the distance (TRAM's `logit_scale`).
    pub scale: f64,
    /// `mean` (per-row mean, the paper) or `reference` (TRAM's reference code scaling; it also
    /// lets a TRAM radius δ ≤ 0 perturb, as the reference code has no guard against it).
    pub reduction: Reduction,
    /// Precision of the TRAM radius δ: `exact` (f64 where the device has it) or `f32`, the
    /// reference code's float32 δ (rounding noise at σ = 1e-5; see the README's reference mode).
    pub radius_precision: RadiusPrecision,
    /// Temperature τ: the distance is `τ² D(f_t/τ ‖ f_c/τ)` (MESA).
    pub temperature: f64,
    /// Dropout mode of the target pass: unset = eval for parameter-history targets, the
    /// current pass's mode for the noise target.
    pub target_train: Option<bool>,
}

/// Valid range of [`RegionSettings::scale`]: a zero scale makes δ and the penalty 0.
pub const SCALE_RANGE: Range = Range::POSITIVE;
/// Valid range of [`RegionSettings::temperature`]: τ = 0 divides the logits by zero.
pub const TEMPERATURE_RANGE: Range = Range::POSITIVE;
/// Valid range of [`PenaltySettings::lambda`].
pub const LAMBDA_RANGE: Range = Range::NON_NEGATIVE;

impl Default for RegionSettings {
    fn default() -> Self {
        Self {
            distance: "kl".into(),
            scale: 1.0,
            reduction: Reduction::Mean,
            radius_precision: RadiusPrecision::Exact,
            temperature: 1.0,
            target_train: None,
        }
    }
}

/// The precision in which a trust region computes TRAM's radius δ.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RadiusPrecision {
    /// f64 where the device has it (Metal: f32): at σ = 1e-5 the first-order terms of KL cancel
    /// and only f64 leaves δ accurate.
    #[default]
    Exact,
    /// float32, as the reference code computes it (KL cast to f32, MMD accumulated in f32): at
    /// σ = 1e-5 δ is then rounding noise, about 10⁵× the exact value and ≤ 0 in about half the
    /// draws. For reproducing the reference code only.
    F32,
}

impl RegionSettings {
    /// Reject settings out of range, naming the key, the value and the valid range (`what`
    /// names the component in the message). `Optimizer::new` calls it for every trust region.
    /// With `reduction = "reference"` any finite `scale` is accepted, zero and negative
    /// included, as the reference code accepts them.
    pub fn validate(&self, what: &str) -> Result<()> {
        if self.reduction == Reduction::Reference {
            Range::FINITE.check(what, "scale", self.scale)?;
        } else {
            SCALE_RANGE.check(what, "scale", self.scale).map_err(|e| match e {
                Error::Config { component, reason } => Error::Config {
                    component,
                    reason: format!(
                        "{reason}; a zero or negative logit_scale is accepted only with reduction = \"reference\", which \
                         reproduces the reference code"
                    ),
                },
                e => e,
            })?;
        }
        TEMPERATURE_RANGE.check(what, "temperature", self.temperature)
    }
}

/// The keys of [`RegionSettings`], with docs (shown by `tram list`).
pub const REGION_SETTINGS: &[(&str, &str)] = &[
    ("distance", "registered distance D(target ‖ current): kl, kl-reverse, kl-sym, mmd, l2, ..."),
    ("scale", "multiplier of the distance (TRAM's logit_scale), in (0, ∞); any finite value with reduction = \"reference\""),
    ("reduction", "\"mean\" over rows (paper) or \"reference\" (TRAM reference-code scaling; a TRAM δ ≤ 0 still perturbs)"),
    ("radius_precision", "TRAM δ in \"exact\" f64 (default) or \"f32\" as the reference code (rounding noise at σ = 1e-5)"),
    ("temperature", "τ: distance is τ² D(f_t/τ ‖ f_c/τ) (MESA), in (0, ∞)"),
    ("target_train", "dropout in the target pass; unset: eval for θ-history targets, current mode for noise"),
];

/// Settings of a trust region used as a penalty (`reg:<region>`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PenaltySettings {
    /// Weight λ of the penalty in `L + λ R`.
    pub lambda: f64,
    /// Let the gradient flow through the target branch too (R3F).
    pub through_target: bool,
}

impl Default for PenaltySettings {
    fn default() -> Self {
        Self { lambda: 1.0, through_target: false }
    }
}

/// The keys of [`PenaltySettings`], with docs.
pub const PENALTY_SETTINGS: &[(&str, &str)] =
    &[("lambda", "weight λ of the penalty in L + λ·R, in [0, ∞)"), ("through_target", "gradient through the target branch too (R3F)")];

/// A trust region with its distance and settings.
pub struct BoundRegion {
    /// The target.
    pub region: Box<dyn TrustRegion>,
    /// The distance.
    pub distance: Box<dyn Distance>,
    /// The settings.
    pub settings: RegionSettings,
}

impl BoundRegion {
    /// `scale · τ² · D(target/τ ‖ current/τ)` as a scalar f32 tensor.
    pub fn measure(&self, target: &Tensor, current: &Tensor, examples: usize) -> Result<Tensor> {
        let tau = self.settings.temperature;
        let (t, c) = (to_f32(target)?, to_f32(current)?);
        let (t, c) = if tau == 1.0 { (t, c) } else { (t.affine(1.0 / tau, 0.0)?, c.affine(1.0 / tau, 0.0)?) };
        let d = self.distance.distance(&t, &c, self.settings.reduction, examples)?;
        let k = self.settings.scale * tau * tau;
        Ok(if k == 1.0 { d } else { d.affine(k, 0.0)? })
    }

    /// The radius δ: [`BoundRegion::measure`] of detached logits, computed in f64 where the
    /// device has it. Target and current logits of a small noise perturbation differ by
    /// ~σ·‖W‖, and the first-order terms of KL cancel: in f32 δ ~ 1e-10 drowns in rounding
    /// (it can even come out negative), in f64 it is accurate.
    /// With `radius_precision = "f32"` it is computed in f32 instead, as the reference code does.
    pub fn radius(&self, target: &Tensor, current: &Tensor, examples: usize) -> Result<f64> {
        let precise = self.settings.radius_precision == RadiusPrecision::Exact && !matches!(target.device(), candle_core::Device::Metal(_));
        let dtype = if precise { candle_core::DType::F64 } else { candle_core::DType::F32 };
        let (t, c) = (target.detach().to_dtype(dtype)?, current.detach().to_dtype(dtype)?);
        let tau = self.settings.temperature;
        let (t, c) = if tau == 1.0 { (t, c) } else { (t.affine(1.0 / tau, 0.0)?, c.affine(1.0 / tau, 0.0)?) };
        let d = self.distance.distance(&t, &c, self.settings.reduction, examples)?;
        Ok(d.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()? * self.settings.scale * tau * tau)
    }

    fn target_mode(&self, pass: Mode) -> Mode {
        match self.settings.target_train {
            Some(train) => Mode { train, update_stats: false },
            None if self.region.tracks_current() => pass.frozen(),
            None => Mode::EVAL,
        }
    }
}

struct Penalty {
    bound: BoundRegion,
    settings: PenaltySettings,
}

/// What one step did.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct StepReport {
    /// Index of this step (0-based).
    pub step: u64,
    /// Learning rate used.
    pub lr: f64,
    /// Mean task loss at θ (first pass), without penalties.
    pub loss: f64,
    /// Mean penalty `λ R` at θ, when the composition has penalties.
    pub penalty: Option<f64>,
    /// Trust-region radius δ, for TRAM compositions.
    pub delta: Option<f64>,
    /// ‖ε‖ of the ascent (0 when none).
    pub epsilon_norm: f64,
    /// Global norm of the final gradient before clipping.
    pub grad_norm: f64,
    /// Forward passes used (targets included).
    pub forward_passes: usize,
    /// Backward passes used: one per forward graph backpropagated through (an R3F penalty,
    /// whose target keeps its graph, adds one).
    pub backward_passes: usize,
    /// Whether an ascent was taken.
    pub ascent: bool,
    /// Whether the step was skipped (non-finite loss, penalty or gradient, or an update that
    /// made a weight non-finite and was rolled back); parameters and optimizer state are as
    /// before the step.
    pub skipped: bool,
}

/// A composed optimizer: penalties, a radius-sizing trust region, a neighborhood, a base.
pub struct Optimizer {
    composition: Composition,
    config: OptimizerConfig,
    penalties: Vec<Penalty>,
    region: Option<BoundRegion>,
    neighborhood: Option<Box<dyn Neighborhood>>,
    base: Box<dyn BaseOptimizer>,
    noise: Box<dyn NoiseSource>,
    pub(crate) step: u64,
    pub(crate) skipped: u64,
    pub(crate) no_ascent: u64,
    pub(crate) initialized: bool,
}

impl std::fmt::Display for Optimizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.composition.fmt(f)
    }
}

fn merged(table: Option<&Value>, inline: &BTreeMap<String, Value>, what: &str) -> Result<Map<String, Value>> {
    let mut m = match table {
        None => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(other) => {
            return Err(Error::Config { component: what.into(), reason: format!("expected a table of parameters, found `{other}`") })
        }
    };
    for (k, v) in inline {
        m.insert(k.clone(), v.clone());
    }
    reject_nulls(what, &Value::Object(m.clone()))?;
    Ok(m)
}

fn take_keys(m: &mut Map<String, Value>, keys: &[(&str, &str)]) -> Value {
    let mut out = Map::new();
    for (k, _) in keys {
        if let Some(v) = m.remove(*k) {
            out.insert(k.to_string(), v);
        }
    }
    Value::Object(out)
}

fn wrong_kind(name: &str, kind: Kind) -> Error {
    Error::Config { component: name.into(), reason: format!("its constructor did not build a {kind}") }
}

impl Optimizer {
    /// Compose the optimizer `config.name` from `registry`.
    pub fn new(registry: &Registry, config: OptimizerConfig) -> Result<Optimizer> {
        let composition = Composition::parse(&config.name, registry)?;
        let tables = &config.components;
        // Every table must belong to a component of this composition.
        let mut known: Vec<String> = composition.penalties.iter().flat_map(|t| [t.name.clone(), format!("reg:{}", t.name)]).collect();
        known.extend(composition.region.iter().chain(composition.neighborhood.iter()).map(|t| t.name.clone()));
        known.push(composition.base.name.clone());
        known.extend(registry.names(Some(Kind::Distance)));
        // Tables of registered components that this composition does not use are ignored (one
        // config can serve several compositions); a table naming nothing registered is an error.
        for key in tables.keys().filter(|k| !known.contains(k)) {
            if registry.find(key.strip_prefix("reg:").unwrap_or(key)).is_none() {
                return Err(Error::Config {
                    component: format!("optimizer table `{key}`"),
                    reason: format!(
                        "no registered component is called `{key}`; this composition (`{composition}`) uses: {}",
                        known.join(", ")
                    ),
                });
            }
            tracing::debug!(table = %key, %composition, "optimizer table not used by this composition");
        }
        let bind = |term: &Term, extra: Option<&Value>| -> Result<(BoundRegion, Map<String, Value>)> {
            let what = format!("trust region `{}`", term.name);
            let mut m = merged(tables.get(&term.name), &term.params, &what)?;
            if let Some(Value::Object(e)) = extra {
                for (k, v) in e {
                    m.entry(k.clone()).or_insert(v.clone());
                }
            }
            let settings: RegionSettings = parse_params(&what, &take_keys(&mut m, REGION_SETTINGS))?;
            settings.validate(&what)?;
            let role = take_keys(&mut m, PENALTY_SETTINGS);
            let region = match registry.build(Kind::TrustRegion, &term.name, &Value::Object(m))? {
                Component::TrustRegion(r) => r,
                _ => return Err(wrong_kind(&term.name, Kind::TrustRegion)),
            };
            let distance =
                match registry.build(Kind::Distance, &settings.distance, tables.get(&settings.distance).unwrap_or(&Value::Null))? {
                    Component::Distance(d) => d,
                    _ => return Err(wrong_kind(&settings.distance, Kind::Distance)),
                };
            let Value::Object(role) = role else { unreachable!("take_keys returns an object") };
            Ok((BoundRegion { region, distance, settings }, role))
        };
        let mut penalties = Vec::new();
        for t in &composition.penalties {
            let (bound, role) = bind(t, tables.get(&format!("reg:{}", t.name)))?;
            let what = format!("penalty `reg:{}`", t.name);
            let settings: PenaltySettings = parse_params(&what, &Value::Object(role))?;
            LAMBDA_RANGE.check(&what, "lambda", settings.lambda)?;
            penalties.push(Penalty { bound, settings });
        }
        let region = match &composition.region {
            Some(t) => {
                let (b, role) = bind(t, None)?;
                if !role.is_empty() {
                    return Err(Error::Config {
                        component: format!("trust region `{}`", t.name),
                        reason: format!(
                            "`lambda` / `through_target` apply to penalties only; write `reg:{}` to use it as a penalty",
                            t.name
                        ),
                    });
                }
                Some(b)
            }
            None => None,
        };
        let neighborhood = match &composition.neighborhood {
            Some(t) => {
                let m = merged(tables.get(&t.name), &t.params, &format!("neighborhood `{}`", t.name))?;
                let mut n = match registry.build(Kind::Neighborhood, &t.name, &Value::Object(m))? {
                    Component::Neighborhood(n) => n,
                    _ => return Err(wrong_kind(&t.name, Kind::Neighborhood)),
                };
                if let Some(r) = &region {
                    if n.radius_source() == RadiusSource::Fixed && !r.region.perturbs_input() {
                        return Err(Error::composition(
                            &config.name,
                            format!(
                                "neighborhood `{}` has a fixed radius; only an input-perturbing trust region (noise: TRAM-Fisher) composes with it, not `{}`",
                                t.name,
                                r.region.name()
                            ),
                        ));
                    }
                }
                n.sized_by_region(region.is_some() && n.radius_source() == RadiusSource::Region);
                Some(n)
            }
            None => None,
        };
        let b = &composition.base;
        let m = merged(tables.get(&b.name), &b.params, &format!("base optimizer `{}`", b.name))?;
        let base = match registry.build(Kind::Base, &b.name, &Value::Object(m))? {
            Component::Base(b) => b,
            _ => return Err(wrong_kind(&b.name, Kind::Base)),
        };
        Range::NON_NEGATIVE.check("optimizer", "lr", config.lr)?;
        Range::POSITIVE.check_opt("optimizer", "max_grad_norm", config.max_grad_norm)?;
        config.schedule.check().map_err(|reason| Error::Config { component: "optimizer".into(), reason })?;
        let noise = Box::new(SeededNoise::new(config.seed));
        Ok(Optimizer {
            composition,
            config,
            penalties,
            region,
            neighborhood,
            base,
            noise,
            step: 0,
            skipped: 0,
            no_ascent: 0,
            initialized: false,
        })
    }

    /// The canonical composition.
    pub fn composition(&self) -> &Composition {
        &self.composition
    }
    /// The configuration it was built from.
    pub fn config(&self) -> &OptimizerConfig {
        &self.config
    }
    /// Steps taken (skipped ones included).
    pub fn steps(&self) -> u64 {
        self.step
    }
    /// Steps skipped because of a non-finite loss, penalty or gradient, or rolled back because
    /// the update made a weight non-finite.
    pub fn skipped_steps(&self) -> u64 {
        self.skipped
    }
    /// Steps where the ascent was dropped (zero or non-finite norm or radius).
    pub fn no_ascent_steps(&self) -> u64 {
        self.no_ascent
    }
    /// Replace the noise source (e.g. to feed fixed samples).
    pub fn set_noise_source(&mut self, noise: Box<dyn NoiseSource>) {
        self.noise = noise;
    }
    /// Every component with its resolved parameters (record this with each run).
    pub fn describe(&self) -> Value {
        let region = |b: &BoundRegion| {
            serde_json::json!({"name": b.region.name(), "params": b.region.describe(), "settings": b.settings,
                "distance": {"name": b.distance.name(), "params": b.distance.describe()}})
        };
        serde_json::json!({
            "composition": self.composition.to_string(),
            "penalties": self.penalties.iter().map(|p| { let mut v = region(&p.bound); v["penalty"] = serde_json::to_value(&p.settings).unwrap_or_default(); v }).collect::<Vec<_>>(),
            "region": self.region.as_ref().map(region),
            "neighborhood": self.neighborhood.as_ref().map(|n| serde_json::json!({"name": n.name(), "params": n.describe()})),
            "base": {"name": self.base.name(), "params": self.base.describe()},
            "lr": self.config.lr, "schedule": self.config.schedule, "max_grad_norm": self.config.max_grad_norm,
        })
    }

    /// Snapshot θ₀ for the trust regions. Called by the first [`Optimizer::step`] if not before.
    ///
    /// f16 parameters are refused: without f32 master weights and loss scaling (which this
    /// engine does not do) Adam's second moment underflows in f16 and its first update turns
    /// most weights into NaN; bf16 has the same size and f32's exponent range.
    pub fn init(&mut self, params: &Params) -> Result<()> {
        if let Some(p) = params.iter().find(|p| p.var.dtype() == candle_core::DType::F16) {
            return Err(Error::Model(format!(
                "parameter `{}` is f16, which the optimizer does not train (no f32 master weights or loss scaling: the first Adam update writes NaN into most f16 weights); load the model in bf16 (same size, f32's range) or f32",
                p.name
            )));
        }
        for b in self.bound_mut() {
            b.region.init(params)?;
        }
        self.initialized = true;
        Ok(())
    }

    pub(crate) fn bound_mut(&mut self) -> impl Iterator<Item = &mut BoundRegion> {
        self.penalties.iter_mut().map(|p| &mut p.bound).chain(self.region.iter_mut())
    }
    pub(crate) fn bound(&self) -> impl Iterator<Item = &BoundRegion> {
        self.penalties.iter().map(|p| &p.bound).chain(self.region.iter())
    }
    pub(crate) fn base(&self) -> &dyn BaseOptimizer {
        self.base.as_ref()
    }
    pub(crate) fn base_mut(&mut self) -> &mut dyn BaseOptimizer {
        self.base.as_mut()
    }
    pub(crate) fn noise(&self) -> &dyn NoiseSource {
        self.noise.as_ref()
    }
    pub(crate) fn noise_mut(&mut self) -> &mut dyn NoiseSource {
        self.noise.as_mut()
    }

    fn sizing_region(&self) -> bool {
        self.region.is_some() && self.neighborhood.as_ref().is_some_and(|n| n.radius_source() == RadiusSource::Region)
    }

    /// One optimizer step over `batches` (gradient accumulation over micro-batches).
    pub fn step(&mut self, model: &dyn Model, batches: &[Batch]) -> Result<StepReport> {
        if batches.is_empty() {
            return Err(Error::Model("a step needs at least one batch".into()));
        }
        let params = model.params();
        if params.is_empty() {
            return Err(Error::Model("the model has no trainable parameters".into()));
        }
        if !self.initialized {
            self.init(params)?;
        }
        let lr = self.config.lr * self.config.schedule.factor(self.step);
        let mode = if self.config.train_mode { Mode::TRAIN } else { Mode::EVAL };
        let mut scratch = Scratch {
            noise: vec![None; batches.len()],
            targets: vec![vec![None; self.penalties.len()]; batches.len()],
            forward: 0,
            backward: 0,
        };
        let mut report = StepReport { step: self.step, lr, ..Default::default() };

        let first = self.pass(model, batches, mode, true, &mut scratch)?;
        report.loss = first.loss;
        report.penalty = first.penalty;
        report.delta = first.delta;
        let mut grads = first.grads;
        let mut backup: Option<Snapshot> = None;
        // The loss handed to backward is `L + Σ λ R`: a non-finite penalty is a non-finite loss
        // (τ = 0 or a NaN target), even where candle drops its gradient.
        let finite_loss = first.loss.is_finite() && first.penalty.is_none_or(f64::is_finite);
        if finite_loss {
            if let Some(n) = &self.neighborhood {
                let radius = if self.sizing_region() { first.delta.unwrap_or(f64::NAN) } else { n.rho() };
                // The reference code has no guard for δ ≤ 0: with its scaling it perturbs anyway
                // (a negative δ reverses the ascent). Non-finite radii never perturb.
                let unguarded = self.sizing_region() && self.region.as_ref().is_some_and(|r| r.settings.reduction == Reduction::Reference);
                let ascent =
                    if radius.is_finite() && (radius > 0.0 || unguarded) { n.perturbation(params, &grads, radius)? } else { Ascent::None };
                match ascent {
                    Ascent::None => self.no_ascent += 1,
                    Ascent::Step(eps) => {
                        report.ascent = true;
                        report.epsilon_norm = global_norm(&eps)?;
                        let snap = params.snapshot()?;
                        let perturbed = snap.tensors().iter().zip(&eps).map(|(t, e)| t.add(e)).collect::<candle_core::Result<Vec<_>>>()?;
                        params.assign(&perturbed)?;
                        let second = self.pass(model, batches, mode, false, &mut scratch);
                        params.restore(&snap)?;
                        grads = second?.grads;
                        backup = Some(snap);
                    }
                }
            }
        }
        report.forward_passes = scratch.forward;
        report.backward_passes = scratch.backward;
        report.grad_norm = global_norm(&grads)?;
        if !finite_loss || !report.grad_norm.is_finite() {
            self.skipped += 1;
            self.step += 1;
            report.skipped = true;
            tracing::warn!(
                step = report.step,
                loss = report.loss,
                penalty = report.penalty,
                grad_norm = report.grad_norm,
                skipped = self.skipped,
                "non-finite loss, penalty or gradient: step skipped, parameters unchanged"
            );
            return Ok(report);
        }
        if let Some(max) = self.config.max_grad_norm {
            if report.grad_norm > max {
                grads = crate::ops::scale_all(&grads, max / (report.grad_norm + 1e-6))?;
            }
        }
        // What a rollback restores: θ_t (the two-pass backup when there is one), the base
        // optimizer's state and the regions' state (`prev` keeps θ_t in `before_update`).
        let theta = match backup.take() {
            Some(b) => b,
            None => params.snapshot()?,
        };
        let base_state = self.base.state(params);
        let region_states: Vec<Vec<(String, Tensor)>> = self.bound().map(|b| b.region.state(params)).collect();
        for b in self.bound_mut() {
            b.region.before_update(params, Some(&theta))?;
        }
        self.base.update(params, &grads, lr)?;
        if let Some(name) = made_non_finite(params, &theta)? {
            params.restore(&theta)?;
            let origin = "<state before the rolled-back step>";
            let state: std::collections::HashMap<String, Tensor> = base_state.into_iter().collect();
            self.base.load_state(params, &crate::components::state::StateReader::in_memory(&state, origin))?;
            for (b, st) in self.bound_mut().zip(region_states) {
                let st: std::collections::HashMap<String, Tensor> = st.into_iter().collect();
                b.region.load_state(params, &crate::components::state::StateReader::in_memory(&st, origin))?;
            }
            self.skipped += 1;
            self.step += 1;
            report.skipped = true;
            tracing::warn!(
                step = report.step,
                parameter = %name,
                skipped = self.skipped,
                "the update made parameter `{name}` non-finite (overflow in its dtype, or a learning rate too large): step rolled back and skipped"
            );
            return Ok(report);
        }
        for b in self.bound_mut() {
            b.region.after_update(params)?;
        }
        self.step += 1;
        Ok(report)
    }

    fn pass(&mut self, model: &dyn Model, batches: &[Batch], mode: Mode, first: bool, s: &mut Scratch) -> Result<PassOut> {
        let params = model.params();
        let mode = if first { mode } else { mode.frozen() };
        let sizing = first && self.sizing_region();
        let noising = first && self.region.is_some() && !self.sizing_region();
        let k = batches.len();
        let (mut acc, mut loss_sum, mut pen_sum, mut delta_sum, mut rows_total) = (None::<Vec<Tensor>>, 0.0, 0.0, 0.0, 0usize);
        for (i, batch) in batches.iter().enumerate() {
            let examples = batch.examples()?;
            let mut embeds = model.embed(params, batch, mode)?;
            if noising {
                let r = self.region.as_mut().expect("noising implies a region");
                let mut slot = NoiseSlot { source: self.noise.as_mut(), sample: &mut s.noise[i] };
                let mut ctx = TargetCtx { model, batch, mode, noise: &mut slot };
                embeds = r
                    .region
                    .noised_embeds(&mut ctx, &embeds)?
                    .ok_or_else(|| Error::Model(format!("trust region `{}` did not noise the input", r.region.name())))?;
            }
            let logits = model.forward_embeds(params, &embeds, batch, mode)?;
            s.forward += 1;
            let rows = logits.rows()?;
            let task = to_f32(&model.loss(&logits)?)?;
            let mut total = task.clone();
            let mut graph_targets = 0;
            for (j, p) in self.penalties.iter_mut().enumerate() {
                let target = match s.targets[i][j].clone() {
                    Some(t) => t,
                    None => {
                        let tmode = p.bound.target_mode(mode);
                        let mut slot = NoiseSlot { source: self.noise.as_mut(), sample: &mut s.noise[i] };
                        let mut ctx = TargetCtx { model, batch, mode: tmode, noise: &mut slot };
                        let t = p.bound.region.target(&mut ctx, p.settings.through_target)?;
                        s.forward += 1;
                        if !p.bound.region.tracks_current() {
                            s.targets[i][j] = Some(t.detach());
                        }
                        t
                    }
                };
                graph_targets += usize::from(p.settings.through_target && p.bound.region.tracks_current());
                let t = if p.settings.through_target { target.logits } else { target.logits.detach() };
                let r = p.bound.measure(&t, &logits.logits, examples)?.affine(p.settings.lambda, 0.0)?;
                pen_sum += r.to_scalar::<f32>()? as f64 * rows as f64;
                total = total.add(&r)?;
            }
            if sizing {
                let r = self.region.as_mut().expect("sizing implies a region");
                let tmode = r.target_mode(mode);
                let mut slot = NoiseSlot { source: self.noise.as_mut(), sample: &mut s.noise[i] };
                let mut ctx = TargetCtx { model, batch, mode: tmode, noise: &mut slot };
                let target: Logits = r.region.target(&mut ctx, false)?;
                s.forward += 1;
                delta_sum += r.radius(&target.logits, &logits.logits, examples)? * rows as f64;
            }
            loss_sum += task.to_scalar::<f32>()? as f64 * rows as f64;
            rows_total += rows;
            let scaled = if k == 1 { total } else { total.affine(rows as f64, 0.0)? };
            let store = scaled.backward()?;
            // A penalty whose target keeps its graph (R3F) backpropagates through a second
            // forward graph: count it as a backward pass of its own (that is what it costs).
            s.backward += 1 + graph_targets;
            let mut grads = Vec::with_capacity(params.len());
            for p in params.iter() {
                match store.get(p.var.as_tensor()) {
                    // Detached: candle's gradient of a variable carries the op graph of the
                    // backward pass (and through it the forward activations); kept in optimizer
                    // state (Adam's moments) it would retain every step's graph.
                    Some(g) => grads.push(g.detach()),
                    None if self.config.allow_missing_gradients => grads.push(p.var.as_tensor().zeros_like()?),
                    None => return Err(Error::MissingGradient(p.name.clone())),
                }
            }
            acc = Some(match acc {
                None => grads,
                Some(a) => a.iter().zip(&grads).map(|(a, g)| a.add(g)).collect::<candle_core::Result<_>>()?,
            });
        }
        let n = rows_total.max(1) as f64;
        let mut grads = acc.expect("at least one batch");
        if k > 1 {
            grads = crate::ops::scale_all(&grads, 1.0 / n)?;
        }
        Ok(PassOut {
            loss: loss_sum / n,
            grads,
            penalty: (!self.penalties.is_empty()).then_some(pen_sum / n),
            delta: sizing.then_some(delta_sum / n),
        })
    }
}

/// The name of the first parameter with more NaN or ±∞ entries than in `before` (θ before the
/// update: a weight that already was non-finite, e.g. an unused embedding row, is not the
/// update's doing). `x − x` is 0 for every finite `x` and NaN otherwise, so one sum per tensor,
/// stacked and read back once (one device sync), finds the candidates; they are counted only
/// when there are any.
fn made_non_finite(params: &Params, before: &Snapshot) -> Result<Option<String>> {
    let sums = params
        .iter()
        .map(|p| {
            let t = p.var.as_tensor();
            t.sub(t)?.sum_all()?.to_dtype(candle_core::DType::F32)
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    let sums = Tensor::stack(&sums, 0)?.to_vec1::<f32>()?;
    let count = |t: &Tensor| -> Result<f64> {
        let d = t.sub(t)?;
        Ok(d.ne(&d)?.to_dtype(candle_core::DType::F32)?.sum_all()?.to_scalar::<f32>()? as f64)
    };
    for ((p, s), old) in params.iter().zip(sums).zip(before.tensors()) {
        if !s.is_finite() && count(p.var.as_tensor())? > count(old)? {
            return Ok(Some(p.name.clone()));
        }
    }
    Ok(None)
}

struct Scratch {
    noise: Vec<Option<Tensor>>,
    targets: Vec<Vec<Option<Logits>>>,
    forward: usize,
    backward: usize,
}

struct PassOut {
    loss: f64,
    grads: Vec<Tensor>,
    penalty: Option<f64>,
    delta: Option<f64>,
}
