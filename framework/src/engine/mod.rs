//! The step engine (SPEC "Two-pass step"): first pass, radius, ascent, second pass at θ + ε,
//! bitwise restore, clipped base step, trust-region bookkeeping; the one-pass regulariser
//! mode; gradient accumulation; guards against zero / non-finite norms and NaN.

pub mod checkpoint;
mod distributed;
mod masters;
mod perturb;
mod rollback;

use crate::components::base::BaseOptimizer;
use crate::components::distance::Reduction;
use crate::components::model::{Batch, Logits, Mode, Model, Params, Snapshot};
use crate::components::neighborhood::{Ascent, Neighborhood, RadiusSource};
use crate::components::region::{NoiseSamples, NoiseSlot, TargetCtx};
use crate::compose::bind::{bind, Bound, BoundRegion, OptimizerConfig, Penalty};
use crate::compose::grammar::Composition;
use crate::compose::registry::Registry;
use crate::error::{Error, Result};
use crate::noise::{NoiseSource, SeededNoise};
use crate::ops::{global_norm, to_f32};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The setting tables of the old `tram::engine` path (the CLI's `tram list` reads them).
#[doc(hidden)]
pub use crate::compose::bind::{PENALTY_SETTINGS, REGION_SETTINGS};

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
    plan: Plan,
    base: Box<dyn BaseOptimizer>,
    /// Resolved parameters of the neighborhood and the base (see [`Optimizer::describe`]).
    neighborhood_params: Value,
    base_params: Value,
    noise: Box<dyn NoiseSource>,
    /// f32 master weights of a model with bf16 parameters (see `masters`), from `init` on.
    masters: Option<masters::Masters>,
    /// The data-parallel collective and setting (engine/distributed.rs).
    dist: distributed::Dist,
    pub(crate) step: u64,
    pub(crate) skipped: u64,
    pub(crate) no_ascent: u64,
    pub(crate) initialized: bool,
    /// The base optimizer's state before the current update (rollback), buffers reused.
    base_backup: rollback::StateBackup,
}

impl std::fmt::Display for Optimizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.composition.fmt(f)
    }
}

impl Optimizer {
    /// Compose the optimizer `config.name` from `registry`: [`bind`]
    /// builds and checks its components, then the engine starts at step 0. Built-in components
    /// are in `tram_plugins::registry()`; here one is registered by hand.
    ///
    /// ```
    /// use tram::components::base::{Adaptor, SimpleOptimizer};
    /// use tram::{Component, Entry, Kind, Optimizer, OptimizerConfig, Registry};
    ///
    /// struct Descent;
    /// impl SimpleOptimizer for Descent {
    ///     type State = ();
    ///     const SLOTS: &'static [&'static str] = &[];
    ///     fn name(&self) -> &str { "descent" }
    ///     fn step(&self, _t: u64, lr: f64, p: &candle_core::Var, g: &candle_core::Tensor, _: &mut Option<()>) -> tram::Result<()> {
    ///         Ok(p.set(&p.as_tensor().detach().sub(&g.affine(lr, 0.0)?)?)?)
    ///     }
    ///     fn to_tensors(_: &()) -> Vec<candle_core::Tensor> { Vec::new() }
    ///     fn from_tensors(_: Vec<candle_core::Tensor>) -> tram::Result<()> { Ok(()) }
    /// }
    ///
    /// let mut registry = Registry::empty();
    /// registry.register(Entry::new(Kind::Base, "descent", "plain gradient descent", vec![], |_| {
    ///     Ok(Component::Base(Box::new(Adaptor::new(Descent))))
    /// }))?;
    /// let opt = Optimizer::new(&registry, OptimizerConfig::new("descent", 0.1))?;
    /// assert_eq!((opt.to_string(), opt.steps()), ("descent".to_string(), 0));
    ///
    /// // An unknown name is an error listing the valid ones.
    /// let err = Optimizer::new(&registry, OptimizerConfig::new("ball+descent", 0.1)).err().unwrap();
    /// assert!(err.to_string().contains("unknown component `ball`") && err.to_string().contains("descent"));
    /// # Ok::<(), tram::Error>(())
    /// ```
    pub fn new(registry: &Registry, config: OptimizerConfig) -> Result<Optimizer> {
        let Bound { composition, penalties, region, neighborhood, base, neighborhood_params, base_params } = bind(registry, &config)?;
        let plan = Plan::new(&composition, region, neighborhood)?;
        let noise = Box::new(SeededNoise::new(config.seed));
        Ok(Optimizer {
            composition,
            config,
            penalties,
            plan,
            base,
            neighborhood_params,
            base_params,
            noise,
            masters: None,
            dist: Default::default(),
            step: 0,
            skipped: 0,
            no_ascent: 0,
            initialized: false,
            base_backup: rollback::StateBackup::default(),
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
    ///
    /// A component's `params` are what its `describe()` returns, or, when that is `null` (the
    /// trait's default), the parameters it was built with: its config struct with every
    /// default filled in, as [`component!`](crate::component) declared it
    /// ([`Entry::resolve_params`](crate::Entry::resolve_params)). A component thus never has to
    /// implement `describe()` for its parameters to be recorded.
    pub fn describe(&self) -> Value {
        let or = |described: Value, resolved: &Value| if described.is_null() { resolved.clone() } else { described };
        let region = |b: &BoundRegion| {
            serde_json::json!({"name": b.region.name(), "params": or(b.region.describe(), &b.params), "settings": b.settings,
                "distance": {"name": b.distance.name(), "params": or(b.distance.describe(), &b.distance_params)}})
        };
        serde_json::json!({
            "composition": self.composition.to_string(),
            "penalties": self.penalties.iter().map(|p| { let mut v = region(&p.bound); v["penalty"] = serde_json::to_value(&p.settings).unwrap_or_default(); v }).collect::<Vec<_>>(),
            "region": self.plan.region().map(region),
            "neighborhood": self.plan.neighborhood().map(|n| serde_json::json!({"name": n.name(), "params": or(n.describe(), &self.neighborhood_params)})),
            "base": {"name": self.base.name(), "params": or(self.base.describe(), &self.base_params)},
            "lr": self.config.lr, "schedule": self.config.schedule, "max_grad_norm": self.config.max_grad_norm,
        })
    }

    /// Snapshot θ₀ for the trust regions. Called by the first [`Optimizer::step`] if not before.
    ///
    /// bf16 parameters get f32 master weights here ([`Optimizer::master_params`]): the
    /// optimizer state, the trust regions' snapshots, ε and the norms are f32, and the model's
    /// bf16 weights are set from the masters after every change.
    ///
    /// f16 parameters are refused: f16's range needs loss scaling (which this engine does not
    /// do): small gradients underflow to 0 in the backward pass, and without masters Adam's
    /// first update writes NaN into most f16 weights. bf16 has the same size and f32's range.
    pub fn init(&mut self, params: &Params) -> Result<()> {
        if let Some(p) = params.iter().find(|p| p.var.dtype() == candle_core::DType::F16) {
            return Err(Error::Model(format!(
                "parameter `{}` is f16, which the optimizer does not train (f16 needs loss scaling, which tram does not do: small gradients underflow to 0 and Adam's first update writes NaN into most f16 weights); load the model in bf16 (same size, f32's range, trained on f32 master weights) or f32",
                p.name
            )));
        }
        self.masters = masters::Masters::new(params)?;
        let masters = self.masters.as_ref().map(|m| m.params().clone());
        let params = masters.as_ref().unwrap_or(params);
        for b in self.bound_mut() {
            b.region.init(params)?;
        }
        self.initialized = true;
        Ok(())
    }

    /// Set a bf16 model's weights from the f32 masters (rounded to nearest); nothing for f32.
    fn sync_masters(&self, live: &Params) -> Result<()> {
        match &self.masters {
            Some(m) => m.sync(live),
            None => Ok(()),
        }
    }

    pub(crate) fn bound_mut(&mut self) -> impl Iterator<Item = &mut BoundRegion> {
        self.penalties.iter_mut().map(|p| &mut p.bound).chain(self.plan.region_mut())
    }
    pub(crate) fn bound(&self) -> impl Iterator<Item = &BoundRegion> {
        self.penalties.iter().map(|p| &p.bound).chain(self.plan.region())
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

    /// One optimizer step over `batches` (gradient accumulation over micro-batches).
    pub fn step(&mut self, model: &dyn Model, batches: &[Batch]) -> Result<StepReport> {
        if batches.is_empty() {
            return Err(Error::Model("a step needs at least one batch".into()));
        }
        let live = model.params();
        if live.is_empty() {
            return Err(Error::Model("the model has no trainable parameters".into()));
        }
        if !self.initialized {
            self.init(live)?;
        }
        // With bf16 parameters the optimizer works on their f32 masters (`params` below) and
        // the passes see the regions' f32 snapshots in bf16.
        let masters = self.masters.as_ref().map(|m| m.params().clone());
        let params = masters.as_ref().unwrap_or(live);
        let cast;
        let model: &dyn Model = if masters.is_some() {
            cast = masters::CastModel(model);
            &cast
        } else {
            model
        };
        let lr = self.config.lr * self.config.schedule.factor(self.step);
        let mode = if self.config.train_mode { Mode::TRAIN } else { Mode::EVAL };
        let mut scratch = Scratch {
            noise: (0..batches.len()).map(|_| NoiseSamples::new()).collect(),
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
            if let Some(n) = self.plan.neighborhood() {
                // `first.delta` is there exactly when the plan is `Sized`.
                let radius = n.radius(first.delta);
                // The reference code has no guard for δ ≤ 0: with its scaling it perturbs anyway
                // (a negative δ reverses the ascent). Non-finite radii never perturb.
                let unguarded = matches!(&self.plan, Plan::Sized { region, .. } if region.settings.reduction == Reduction::Reference);
                let _ascent = crate::profile::scope("ascent: ε");
                let ascent =
                    if radius.is_finite() && (radius > 0.0 || unguarded) { n.perturbation(params, &grads, radius)? } else { Ascent::None };
                match ascent {
                    Ascent::None => self.no_ascent += 1,
                    Ascent::Step(eps) => {
                        report.ascent = true;
                        report.epsilon_norm = global_norm(&eps)?;
                        crate::profile::mark("ascent: perturb θ + ε");
                        let snap = params.snapshot()?;
                        // θ + ε in place (on the f32 masters when there are any, the model's
                        // bf16 weights then rounded from them), and back bitwise after the pass.
                        perturb::perturb(params, &snap, &eps)?;
                        self.sync_masters(live)?;
                        let second = self.pass(model, batches, mode, false, &mut scratch);
                        crate::profile::mark("ascent: restore θ");
                        params.restore(&snap)?;
                        self.sync_masters(live)?;
                        grads = second?.grads;
                        backup = Some(snap);
                    }
                }
            }
        }
        let _rest = crate::profile::scope("all-reduce");
        grads = self.dist.settle(grads)?;
        crate::profile::mark("norm, clip");
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
        crate::profile::mark("update: backup");
        let theta = match backup.take() {
            Some(b) => b,
            None => params.snapshot()?,
        };
        self.base_backup.save(self.base.state(params)?)?;
        let region_states: Vec<Vec<(String, Tensor)>> = self.bound().map(|b| b.region.state(params)).collect::<Result<_>>()?;
        for b in self.bound_mut() {
            b.region.before_update(params, Some(&theta))?;
        }
        crate::profile::mark("update");
        self.base.update(params, &grads, lr)?;
        crate::profile::mark("update: bf16 sync");
        self.sync_masters(live)?;
        crate::profile::mark("guard: non-finite");
        // On the model's weights: a master that rounds to ±∞ in bf16 is caught too.
        if let Some(name) = made_non_finite(live, &theta)? {
            params.restore(&theta)?;
            self.sync_masters(live)?;
            let origin = "<state before the rolled-back step>";
            let state = self.base_backup.copies()?;
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
        crate::profile::mark("update: regions");
        for b in self.bound_mut() {
            b.region.after_update(params)?;
        }
        self.step += 1;
        Ok(report)
    }

    fn pass(&mut self, model: &dyn Model, batches: &[Batch], mode: Mode, first: bool, s: &mut Scratch) -> Result<PassOut> {
        let params = model.params();
        let mode = if first { mode } else { mode.frozen() };
        let sizing = first && matches!(self.plan, Plan::Sized { .. });
        let k = batches.len();
        let (mut acc, mut loss_sum, mut pen_sum, mut delta_sum, mut rows_total) = (None::<Vec<Tensor>>, 0.0, 0.0, 0.0, 0usize);
        // Phase names of the profile (`tram lm --profile`), per pass.
        let [fwd, tgt, bwd, grd] = if first {
            ["forward 1", "forward 1: targets, δ", "backward 1", "gradients 1"]
        } else {
            ["forward 2", "forward 2: targets", "backward 2", "gradients 2"]
        };
        let _phase = crate::profile::scope(fwd);
        for (i, batch) in batches.iter().enumerate() {
            crate::profile::mark(fwd);
            self.dist.begin_batch(i, model, self.noise.as_mut())?;
            let examples = batch.examples()?;
            let mut embeds = model.embed(params, batch, mode)?;
            if let (true, Plan::Fixed { input: Some(r), .. }) = (first, &mut self.plan) {
                let mut slot = NoiseSlot::new(self.noise.as_mut(), &mut s.noise[i]);
                let mut ctx = TargetCtx { model, batch, mode, noise: &mut slot };
                let name = r.region.name().to_string();
                embeds = r
                    .region
                    .input_perturbation()
                    .ok_or_else(|| Error::Model(format!("trust region `{name}` did not noise the input")))?
                    .perturb(&mut ctx, &embeds)?;
            }
            let logits = model.forward_embeds(params, &embeds, batch, mode)?;
            s.forward += 1;
            let rows = logits.rows()?;
            let task = to_f32(&model.loss(&logits)?)?;
            let mut total = task.clone();
            let mut graph_targets = 0;
            if sizing || !self.penalties.is_empty() {
                crate::profile::mark(tgt);
            }
            for (j, p) in self.penalties.iter_mut().enumerate() {
                let target = match s.targets[i][j].clone() {
                    Some(t) => t,
                    None => {
                        let tmode = p.bound.target_mode(mode);
                        let mut slot = NoiseSlot::new(self.noise.as_mut(), &mut s.noise[i]);
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
            if let (true, Plan::Sized { region: r, .. }) = (first, &mut self.plan) {
                let tmode = r.target_mode(mode);
                let mut slot = NoiseSlot::new(self.noise.as_mut(), &mut s.noise[i]);
                let mut ctx = TargetCtx { model, batch, mode: tmode, noise: &mut slot };
                let target: Logits = r.region.target(&mut ctx, false)?;
                s.forward += 1;
                delta_sum += r.radius(&target.logits, &logits.logits, examples)? * rows as f64;
            }
            loss_sum += task.to_scalar::<f32>()? as f64 * rows as f64;
            rows_total += rows;
            crate::profile::mark(bwd);
            let scaled = if k == 1 { total } else { total.affine(rows as f64, 0.0)? };
            let store = scaled.backward()?;
            crate::profile::mark(grd);
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
            if self.masters.is_some() {
                grads = masters::widen(grads)?;
            }
            acc = Some(match acc {
                None => grads,
                Some(a) => a.iter().zip(&grads).map(|(a, g)| a.add(g)).collect::<candle_core::Result<_>>()?,
            });
        }
        crate::profile::mark("all-reduce");
        if self.dist.collective.reduces() {
            let local = first && self.dist.local_first_pass(!matches!(self.plan, Plan::Descent));
            let sums = [loss_sum, pen_sum, delta_sum];
            let acc = acc.expect("at least one batch");
            return self.dist.finish_pass(local, k, acc, sums, rows_total, !self.penalties.is_empty(), sizing);
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

/// What a step does with the trust region and the neighborhood of its composition, fixed when
/// the optimizer is built (SPEC "Two-pass step").
enum Plan {
    /// No neighborhood: one pass and the base step (penalties, if any, are in the loss).
    Descent,
    /// An ascent of the neighborhood's fixed radius ρ (SAM, ASAM, FSAM). With `input`, the
    /// first pass runs on that region's perturbed input (TRAM-Fisher).
    Fixed { neighborhood: Box<dyn Neighborhood>, input: Option<BoundRegion> },
    /// TRAM: the region's distance δ between its target and the first pass's logits sizes the
    /// ascent ([`Neighborhood::radius`]).
    Sized { neighborhood: Box<dyn Neighborhood>, region: BoundRegion },
}

impl Plan {
    /// The plan of a bound composition. `bind` has checked that a region comes with a
    /// neighborhood and that a fixed-radius neighborhood only takes an input-perturbing region.
    fn new(composition: &Composition, region: Option<BoundRegion>, neighborhood: Option<Box<dyn Neighborhood>>) -> Result<Plan> {
        Ok(match (neighborhood, region) {
            (None, None) => Plan::Descent,
            (None, Some(r)) => {
                return Err(Error::composition(
                    &composition.to_string(),
                    format!("trust region `{}` has no neighborhood to size", r.region.name()),
                ))
            }
            (Some(neighborhood), Some(region)) if neighborhood.radius_source() == RadiusSource::Region => {
                Plan::Sized { neighborhood, region }
            }
            (Some(neighborhood), input) => Plan::Fixed { neighborhood, input },
        })
    }
    fn neighborhood(&self) -> Option<&dyn Neighborhood> {
        match self {
            Plan::Descent => None,
            Plan::Fixed { neighborhood, .. } | Plan::Sized { neighborhood, .. } => Some(neighborhood.as_ref()),
        }
    }
    fn region(&self) -> Option<&BoundRegion> {
        match self {
            Plan::Descent | Plan::Fixed { input: None, .. } => None,
            Plan::Fixed { input: Some(region), .. } | Plan::Sized { region, .. } => Some(region),
        }
    }
    fn region_mut(&mut self) -> Option<&mut BoundRegion> {
        match self {
            Plan::Descent | Plan::Fixed { input: None, .. } => None,
            Plan::Fixed { input: Some(region), .. } | Plan::Sized { region, .. } => Some(region),
        }
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
    noise: Vec<NoiseSamples>,
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
