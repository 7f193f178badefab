//! Delegating wrappers around the components a run-time plugin builds: they keep the plugin's
//! library loaded, re-label every tensor the plugin returns in this program's tensor-id space,
//! differentiate a plugin distance inside the plugin, and turn plugin errors into plain data.

use super::library::PluginLibrary;
use crate::components::base::BaseOptimizer;
use crate::components::distance::{Distance, Reduction};
#[cfg(test)]
use crate::components::model::{Batch, Mode};
use crate::components::model::{Logits, Params, Snapshot};
use crate::components::neighborhood::{Ascent, Neighborhood, RadiusSource};
use crate::components::region::{InputPerturbation, TargetCtx, TrustRegion};
use crate::compose::registry::{BuildFn, Component};
use crate::error::{Error, Result};
use candle_core::Tensor;
use serde_json::Value;
use std::sync::Arc;

/// A plugin's constructor with the library it lives in. `inner` is declared (so dropped) first.
pub(super) struct PluginBuild {
    pub(super) inner: Arc<BuildFn>,
    pub(super) library: Arc<PluginLibrary>,
}

impl PluginBuild {
    pub(super) fn build(&self, params: &Value) -> Result<Component> {
        let lib = &self.library;
        Ok(match (self.inner)(params).map_err(launder)? {
            Component::TrustRegion(inner) => Component::TrustRegion(Box::new(PluginTrustRegion { inner, library: lib.clone() })),
            Component::Distance(inner) => Component::Distance(Box::new(PluginDistance { inner, _library: lib.clone() })),
            Component::Neighborhood(inner) => Component::Neighborhood(Box::new(PluginNeighborhood { inner, _library: lib.clone() })),
            Component::Base(inner) => Component::Base(Box::new(PluginBase { inner, _library: lib.clone() })),
        })
    }
}

/// A plugin's parameter resolver with the library it lives in.
pub(super) struct PluginResolve {
    pub(super) inner: Arc<crate::compose::registry::ResolveFn>,
    pub(super) _library: Arc<PluginLibrary>,
}

impl PluginResolve {
    /// The plugin's resolved parameters, copied into values this program allocated.
    pub(super) fn resolve(&self, params: &Value) -> Result<Value> {
        let v = (self.inner)(params).map_err(launder)?;
        Ok(v.clone())
    }
}

/// An error from plugin code, rebuilt from plain data (candle and io errors may hold boxed
/// trait objects whose code lives in the library).
fn launder(e: Error) -> Error {
    match e {
        Error::Candle(c) => Error::Candle(candle_core::Error::Msg(c.to_string())),
        Error::Io { context, source } => Error::Io { context, source: std::io::Error::new(source.kind(), source.to_string()) },
        other => other,
    }
}

/// A tensor made by plugin code, re-labelled with a tensor id of this program's candle (a
/// zero-copy view; any graph is cut). A plugin's candle numbers tensors from its own counter,
/// and two tensors with one id in one graph would share a gradient slot.
fn adopt(t: &Tensor) -> Result<Tensor> {
    Ok(if t.track_op() { t.detach() } else { t.unsqueeze(0)?.squeeze(0)? })
}

fn adopt_all(v: Vec<(String, Tensor)>) -> Result<Vec<(String, Tensor)>> {
    v.into_iter().map(|(k, t)| Ok((k, adopt(&t)?))).collect()
}

/// A plugin distance. Without a graph in its inputs it is called directly; with one, it is
/// differentiated inside the plugin and re-attached with `D + Σ g_t·(t − t̄) + Σ g_c·(c − c̄)`
/// (bars: detached): the value is exactly `D` and the gradient exactly `(g_t, g_c)`.
struct PluginDistance {
    inner: Box<dyn Distance>,
    _library: Arc<PluginLibrary>,
}

impl Distance for PluginDistance {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn distance(&self, target: &Tensor, current: &Tensor, reduction: Reduction, examples: usize) -> Result<Tensor> {
        if !target.track_op() && !current.track_op() {
            return adopt(&self.inner.distance(target, current, reduction, examples).map_err(launder)?);
        }
        let (d, g_t, g_c) = self.inner.distance_with_grads(target, current, reduction, examples).map_err(launder)?;
        let d = adopt(&d)?;
        let mut lin: Option<Tensor> = None;
        for (x, g) in [(target, g_t), (current, g_c)] {
            if x.track_op() {
                let term = x.mul(&adopt(&g)?)?.sum_all()?;
                lin = Some(match lin {
                    Some(l) => l.add(&term)?,
                    None => term,
                });
            }
        }
        let lin = lin.expect("one input tracks a graph");
        Ok(lin.sub(&lin.detach())?.reshape(d.shape())?.add(&d)?)
    }
    fn describe(&self) -> Value {
        self.inner.describe()
    }
}

/// A plugin trust region.
struct PluginTrustRegion {
    inner: Box<dyn TrustRegion>,
    library: Arc<PluginLibrary>,
}

impl TrustRegion for PluginTrustRegion {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn init(&mut self, params: &Params) -> Result<()> {
        self.inner.init(params).map_err(launder)
    }
    fn target(&mut self, ctx: &mut TargetCtx<'_>, grad: bool) -> Result<Logits> {
        if grad {
            return Err(Error::Plugin {
                path: self.library.path().display().to_string(),
                reason: format!(
                    "trust region `{}` is a run-time plugin and cannot be differentiated through (through_target=true): its graph would mix two copies of candle; link the crate and register it with `register(&mut registry)` instead",
                    self.inner.name()
                ),
            });
        }
        let l = self.inner.target(ctx, false).map_err(launder)?;
        Ok(Logits { logits: adopt(&l.logits)?, targets: adopt(&l.targets)? })
    }
    fn tracks_current(&self) -> bool {
        self.inner.tracks_current()
    }
    fn input_perturbation(&mut self) -> Option<&mut dyn InputPerturbation> {
        match self.inner.input_perturbation() {
            Some(_) => Some(self),
            None => None,
        }
    }
    fn before_update(&mut self, params: &Params, exact_copy: Option<&Snapshot>) -> Result<()> {
        self.inner.before_update(params, exact_copy).map_err(launder)
    }
    fn after_update(&mut self, params: &Params) -> Result<()> {
        self.inner.after_update(params).map_err(launder)
    }
    fn state(&self, params: &Params) -> Result<Vec<(String, Tensor)>> {
        adopt_all(self.inner.state(params).map_err(launder)?)
    }
    fn load_state(&mut self, params: &Params, state: &crate::components::state::StateReader<'_>) -> Result<()> {
        self.inner.load_state(params, state).map_err(launder)
    }
    fn describe(&self) -> Value {
        self.inner.describe()
    }
}

/// A plugin trust region's input perturbation: the plugin perturbs detached embeddings, and
/// the result is re-attached as `embeddings + perturbation`.
impl InputPerturbation for PluginTrustRegion {
    fn perturb(&mut self, ctx: &mut TargetCtx<'_>, embeds: &Tensor) -> Result<Tensor> {
        let name = self.inner.name().to_string();
        let inner =
            self.inner.input_perturbation().ok_or_else(|| Error::Model(format!("trust region `{name}` did not noise the input")))?;
        let noised = adopt(&inner.perturb(ctx, &embeds.detach()).map_err(launder)?)?;
        // Value exactly the plugin's; gradient to the clean embeddings unchanged.
        Ok(if embeds.track_op() { noised.add(&embeds.sub(&embeds.detach())?)? } else { noised })
    }
}

/// A plugin neighborhood.
struct PluginNeighborhood {
    inner: Box<dyn Neighborhood>,
    _library: Arc<PluginLibrary>,
}

impl Neighborhood for PluginNeighborhood {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn rho(&self) -> f64 {
        self.inner.rho()
    }
    fn radius_source(&self) -> RadiusSource {
        self.inner.radius_source()
    }
    fn sized_by_region(&mut self, sized: bool) {
        self.inner.sized_by_region(sized)
    }
    fn radius(&self, delta: Option<f64>) -> f64 {
        self.inner.radius(delta)
    }
    fn perturbation(&self, params: &Params, grads: &[Tensor], radius: f64) -> Result<Ascent> {
        Ok(match self.inner.perturbation(params, grads, radius).map_err(launder)? {
            Ascent::Step(eps) => Ascent::Step(eps.iter().map(adopt).collect::<Result<_>>()?),
            Ascent::None => Ascent::None,
        })
    }
    fn describe(&self) -> Value {
        self.inner.describe()
    }
}

/// A plugin base optimizer.
struct PluginBase {
    inner: Box<dyn BaseOptimizer>,
    _library: Arc<PluginLibrary>,
}

impl BaseOptimizer for PluginBase {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn update(&mut self, params: &Params, grads: &[Tensor], lr: f64) -> Result<()> {
        self.inner.update(params, grads, lr).map_err(launder)
    }
    fn state(&self, params: &Params) -> Result<Vec<(String, Tensor)>> {
        adopt_all(self.inner.state(params).map_err(launder)?)
    }
    fn load_state(&mut self, params: &Params, state: &crate::components::state::StateReader<'_>) -> Result<()> {
        self.inner.load_state(params, state).map_err(launder)
    }
    fn describe(&self) -> Value {
        self.inner.describe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    mod wrappers {
        use super::*;
        use crate::components::model::{Model, Weights};
        use crate::components::region::{NoiseSamples, NoiseSlot};
        use crate::noise::SeededNoise;
        use crate::plugin::loader::some_library;
        use candle_core::{Device, Var};

        /// Doubles the input embeddings; its target is the embeddings themselves.
        struct Doubling;
        impl TrustRegion for Doubling {
            fn name(&self) -> &str {
                "doubling"
            }
            fn init(&mut self, _: &Params) -> Result<()> {
                Ok(())
            }
            fn target(&mut self, ctx: &mut TargetCtx<'_>, _grad: bool) -> Result<Logits> {
                Ok(Logits { logits: ctx.batch.inputs.clone(), targets: ctx.batch.targets.clone() })
            }
            fn tracks_current(&self) -> bool {
                false
            }
            fn input_perturbation(&mut self) -> Option<&mut dyn InputPerturbation> {
                Some(self)
            }
            fn state(&self, _: &Params) -> Result<Vec<(String, Tensor)>> {
                Ok(Vec::new())
            }
            fn load_state(&mut self, _: &Params, _: &crate::components::state::StateReader<'_>) -> Result<()> {
                Ok(())
            }
        }

        impl InputPerturbation for Doubling {
            fn perturb(&mut self, _: &mut TargetCtx<'_>, embeds: &Tensor) -> Result<Tensor> {
                Ok(embeds.affine(2.0, 0.0)?)
            }
        }

        struct Identity(Params);
        impl Model for Identity {
            fn params(&self) -> &Params {
                &self.0
            }
            fn embed(&self, _: &dyn Weights, b: &Batch, _: Mode) -> Result<Tensor> {
                Ok(b.inputs.clone())
            }
            fn forward_embeds(&self, _: &dyn Weights, x: &Tensor, b: &Batch, _: Mode) -> Result<Logits> {
                Ok(Logits { logits: x.clone(), targets: b.targets.clone() })
            }
        }

        fn with_ctx<T>(f: impl FnOnce(&mut TargetCtx<'_>) -> T) -> T {
            let dev = Device::Cpu;
            let model = Identity(Params::new(Vec::new()).unwrap());
            let batch = Batch::new(Tensor::new(&[[1f32, 2.0]], &dev).unwrap(), Tensor::new(&[0u32], &dev).unwrap());
            let (mut source, mut samples) = (SeededNoise::new(0), NoiseSamples::new());
            let mut slot = NoiseSlot::new(&mut source, &mut samples);
            let mut ctx = TargetCtx { model: &model, batch: &batch, mode: Mode::EVAL, noise: &mut slot };
            f(&mut ctx)
        }

        fn region() -> PluginTrustRegion {
            PluginTrustRegion { inner: Box::new(Doubling), library: some_library() }
        }

        #[test]
        fn a_plugin_target_is_relabelled_and_differentiating_through_it_is_refused() {
            let mut r = region();
            with_ctx(|ctx| {
                let t = r.target(ctx, false).unwrap();
                assert_ne!(t.logits.id(), ctx.batch.inputs.id(), "a fresh id of this program's candle");
                assert_eq!(t.logits.to_vec2::<f32>().unwrap(), [[1.0, 2.0]]);
                let err = r.target(ctx, true).unwrap_err().to_string();
                assert!(err.contains("through_target=true") && err.contains("doubling"), "{err}");
            });
        }

        #[test]
        fn plugin_noised_embeddings_keep_their_value_and_pass_the_gradient_through() {
            let mut r = region();
            let x = Var::new(&[[1f32, -3.0]], &Device::Cpu).unwrap();
            let noised = with_ctx(|ctx| r.input_perturbation().unwrap().perturb(ctx, x.as_tensor()).unwrap());
            assert_eq!(noised.to_vec2::<f32>().unwrap(), [[2.0, -6.0]]);
            let g = noised.sum_all().unwrap().backward().unwrap();
            assert_eq!(g.get(x.as_tensor()).unwrap().to_vec2::<f32>().unwrap(), [[1.0, 1.0]]);
        }

        struct Half;
        impl Neighborhood for Half {
            fn name(&self) -> &str {
                "half"
            }
            fn rho(&self) -> f64 {
                0.5
            }
            fn radius_source(&self) -> RadiusSource {
                RadiusSource::Fixed
            }
            fn perturbation(&self, _: &Params, grads: &[Tensor], _: f64) -> Result<Ascent> {
                Ok(Ascent::Step(grads.to_vec()))
            }
        }

        #[test]
        fn plugin_ascent_steps_are_relabelled_and_unchanged() {
            let n = PluginNeighborhood { inner: Box::new(Half), _library: some_library() };
            let g = Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap();
            let params = Params::new(Vec::new()).unwrap();
            let Ascent::Step(eps) = n.perturbation(&params, std::slice::from_ref(&g), 1.0).unwrap() else { panic!("no step") };
            assert_ne!(eps[0].id(), g.id());
            assert_eq!(eps[0].to_vec1::<f32>().unwrap(), [1.0, 2.0]);
            assert_eq!((n.name(), n.rho(), n.radius_source()), ("half", 0.5, RadiusSource::Fixed));
        }
    }
}
