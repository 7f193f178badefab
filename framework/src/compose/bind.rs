//! Binding: from an [`OptimizerConfig`] to the components of one optimizer.
//!
//! [`bind`] parses the composition, builds every component from the registry with its
//! parameter table (the `[optimizer.<name>]` table merged with the inline `name(k=v)`
//! parameters, inline winning), and splits off the settings the framework itself reads:
//!
//! - every trust region takes [`RegionSettings`] (`distance`, `scale`, `reduction`,
//!   `radius_precision`, `temperature`, `target_train`; see [`REGION_SETTINGS`]);
//! - a trust region used as a penalty (`reg:<region>`) also takes [`PenaltySettings`]
//!   (`lambda`, `through_target`; see [`PENALTY_SETTINGS`]), in its own table or in a
//!   `[optimizer."reg:<region>"]` table.
//!
//! A table naming a registered component the composition does not use is ignored (one config
//! can serve several compositions); a table naming nothing registered is an error.

use crate::check::Range;
use crate::components::base::BaseOptimizer;
use crate::components::distance::{Distance, Reduction};
use crate::components::model::Mode;
use crate::components::neighborhood::{Neighborhood, RadiusSource};
use crate::components::region::TrustRegion;
use crate::compose::grammar::{Composition, Term};
use crate::compose::registry::{parse_params, reject_nulls, Component, Kind, Registry};
use crate::error::{Error, Result};
use crate::ops::to_f32;
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
    /// The region that produces the target logits.
    pub region: Box<dyn TrustRegion>,
    /// Measures the target against the current logits (`settings.distance`, built with the
    /// `[optimizer.<distance>]` table).
    pub distance: Box<dyn Distance>,
    /// Scale, temperature, reduction and precision applied around the distance.
    pub settings: RegionSettings,
    /// The region's resolved parameters ([`Entry::resolve_params`](crate::Entry::resolve_params)):
    /// what a run records for it when it does not implement `describe()`.
    pub params: Value,
    /// The distance's resolved parameters.
    pub distance_params: Value,
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
    /// (it can even come out negative), in f64 it is accurate. On a device without f64 (Metal)
    /// it is computed in f32, and the KL distance takes its compensated f32 form there
    /// ([`crate::ops::kl_div_sum_compensated`]).
    /// With `radius_precision = "f32"` it is computed in f32 instead, as the reference code does.
    pub fn radius(&self, target: &Tensor, current: &Tensor, examples: usize) -> Result<f64> {
        let precise = self.settings.radius_precision == RadiusPrecision::Exact && crate::ops::device_has_f64(target.device());
        let dtype = if precise { candle_core::DType::F64 } else { candle_core::DType::F32 };
        let (t, c) = (target.detach().to_dtype(dtype)?, current.detach().to_dtype(dtype)?);
        let tau = self.settings.temperature;
        let (t, c) = if tau == 1.0 { (t, c) } else { (t.affine(1.0 / tau, 0.0)?, c.affine(1.0 / tau, 0.0)?) };
        let d = self.distance.distance(&t, &c, self.settings.reduction, examples)?;
        Ok(d.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()? * self.settings.scale * tau * tau)
    }

    /// The mode of the target pass, given the mode of the training pass it belongs to.
    pub(crate) fn target_mode(&self, pass: Mode) -> Mode {
        match self.settings.target_train {
            Some(train) => Mode { train, update_stats: false },
            None if self.region.tracks_current() => pass.frozen(),
            None => Mode::EVAL,
        }
    }
}

/// A trust region used as a penalty `λ·R` added to the loss (`reg:<region>`).
pub struct Penalty {
    /// The region with its distance and settings.
    pub bound: BoundRegion,
    /// Its weight and whether the gradient flows through its target.
    pub settings: PenaltySettings,
}

/// The components of one optimizer, built and checked, in the order the engine runs them.
pub struct Bound {
    /// The canonical composition.
    pub composition: Composition,
    /// Penalties added to the loss, in composition order.
    pub penalties: Vec<Penalty>,
    /// The trust region that sizes the neighborhood (TRAM) or noises its first pass (TRAM-Fisher).
    pub region: Option<BoundRegion>,
    /// The ascent neighborhood.
    pub neighborhood: Option<Box<dyn Neighborhood>>,
    /// The base optimizer.
    pub base: Box<dyn BaseOptimizer>,
    /// The neighborhood's resolved parameters (`null` without a neighborhood).
    pub neighborhood_params: Value,
    /// The base optimizer's resolved parameters.
    pub base_params: Value,
}

/// Build the components of `config.name` from `registry`, with their parameter tables and the
/// framework's settings checked (see the module docs). `Optimizer::new` is this plus the engine.
pub fn bind(registry: &Registry, config: &OptimizerConfig) -> Result<Bound> {
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
                reason: format!("no registered component is called `{key}`; this composition (`{composition}`) uses: {}", known.join(", ")),
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
        let (region, params) = match registry.build_resolved(Kind::TrustRegion, &term.name, &Value::Object(m))? {
            (Component::TrustRegion(r), p) => (r, p),
            _ => return Err(wrong_kind(&term.name, Kind::TrustRegion)),
        };
        let (distance, distance_params) =
            match registry.build_resolved(Kind::Distance, &settings.distance, tables.get(&settings.distance).unwrap_or(&Value::Null))? {
                (Component::Distance(d), p) => (d, p),
                _ => return Err(wrong_kind(&settings.distance, Kind::Distance)),
            };
        let Value::Object(role) = role else { unreachable!("take_keys returns an object") };
        Ok((BoundRegion { region, distance, settings, params, distance_params }, role))
    };
    let mut penalties = Vec::new();
    for t in &composition.penalties {
        let (bound, role) = bind(t, tables.get(&format!("reg:{}", t.name)))?;
        let what = format!("penalty `reg:{}`", t.name);
        let settings: PenaltySettings = parse_params(&what, &Value::Object(role))?;
        LAMBDA_RANGE.check(&what, "lambda", settings.lambda)?;
        // A run-time plugin's target is evaluated by its own copy of candle: its graph cannot
        // join this program's (see `tram::plugin`), so say so now rather than at the first step.
        let origin = &registry.get(Kind::TrustRegion, &t.name)?.origin;
        if settings.through_target && registry.plugins().any(|l| l.path().display().to_string() == *origin) {
            return Err(Error::Config {
                component: what,
                reason: format!(
                    "`through_target = true` differentiates through the target, which a trust region loaded from a run-time plugin ({origin}) cannot do (its graph lives in the plugin's copy of candle); drop `through_target`, or link the plugin crate statically (`register(&mut registry)`)"
                ),
            });
        }
        penalties.push(Penalty { bound, settings });
    }
    let mut region = match &composition.region {
        Some(t) => {
            let (b, role) = bind(t, None)?;
            if !role.is_empty() {
                return Err(Error::Config {
                    component: format!("trust region `{}`", t.name),
                    reason: format!("`lambda` / `through_target` apply to penalties only; write `reg:{}` to use it as a penalty", t.name),
                });
            }
            Some(b)
        }
        None => None,
    };
    let mut neighborhood_params = Value::Null;
    let neighborhood = match &composition.neighborhood {
        Some(t) => {
            let m = merged(tables.get(&t.name), &t.params, &format!("neighborhood `{}`", t.name))?;
            let mut n = match registry.build_resolved(Kind::Neighborhood, &t.name, &Value::Object(m))? {
                (Component::Neighborhood(n), p) => {
                    neighborhood_params = p;
                    n
                }
                _ => return Err(wrong_kind(&t.name, Kind::Neighborhood)),
            };
            if let Some(r) = &mut region {
                if n.radius_source() == RadiusSource::Fixed && r.region.input_perturbation().is_none() {
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
    let (base, base_params) = match registry.build_resolved(Kind::Base, &b.name, &Value::Object(m))? {
        (Component::Base(b), p) => (b, p),
        _ => return Err(wrong_kind(&b.name, Kind::Base)),
    };
    Range::NON_NEGATIVE.check("optimizer", "lr", config.lr)?;
    Range::POSITIVE.check_opt("optimizer", "max_grad_norm", config.max_grad_norm)?;
    config.schedule.check().map_err(|reason| Error::Config { component: "optimizer".into(), reason })?;
    Ok(Bound { composition, penalties, region, neighborhood, base, neighborhood_params, base_params })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(v: Value) -> Vec<String> {
        let Value::Object(m) = v else { panic!("not a table: {v}") };
        let mut k: Vec<String> = m.keys().cloned().collect();
        k.sort();
        k
    }

    fn listed(docs: &[(&str, &str)]) -> Vec<String> {
        let mut k: Vec<String> = docs.iter().map(|(k, _)| k.to_string()).collect();
        k.sort();
        k
    }

    #[test]
    fn every_region_and_penalty_setting_is_listed_with_a_doc() {
        assert_eq!(keys(serde_json::to_value(RegionSettings::default()).unwrap()), listed(REGION_SETTINGS));
        assert_eq!(keys(serde_json::to_value(PenaltySettings::default()).unwrap()), listed(PENALTY_SETTINGS));
        assert!(REGION_SETTINGS.iter().chain(PENALTY_SETTINGS).all(|(_, doc)| !doc.is_empty()));
    }
}
