//! [`TargetHarness`]: a trust region's context outside the engine.

use crate::components::model::{Batch, Logits, Mode, Model};
use crate::components::region::{NoiseSamples, NoiseSlot, TargetCtx, TrustRegion};
use crate::error::{Error, Result};
use crate::noise::{NoiseSource, SeededNoise};
use candle_core::Tensor;

/// Builds the [`TargetCtx`] the engine would hand a trust region, for unit tests of
/// `target()` and of an input perturbation: a model, a micro-batch, the pass's mode (default
/// [`Mode::EVAL`]) and a noise source (default [`SeededNoise`] from seed 0). Noise drawn
/// through the context is kept, as in one engine step, until [`TargetHarness::next_step`].
///
/// ```
/// use candle_core::Device;
/// use tram::testing::{synthetic_batches, ClassifierShape, EmbeddingClassifier, TargetHarness};
/// use tram::{Logits, Model, TargetCtx};
///
/// let shape = ClassifierShape { vocab: 12, embed: 4, hidden: 8, layers: 1, classes: 3 };
/// let model = EmbeddingClassifier::random(shape, 1, &Device::Cpu)?;
/// let batch = synthetic_batches(shape, 1, 5, 6, 2, &Device::Cpu)?.remove(0);
/// let mut h = TargetHarness::new(&model, batch);
/// let logits: Logits = h.with_ctx(|ctx: &mut TargetCtx<'_>| {
///     ctx.model.forward(&ctx.model.params().detached(), ctx.batch, ctx.mode)
/// })?;
/// assert_eq!(logits.logits.dims(), [5, 3]);
/// # Ok::<(), tram::Error>(())
/// ```
pub struct TargetHarness<'m> {
    model: &'m dyn Model,
    batch: Batch,
    mode: Mode,
    source: Box<dyn NoiseSource>,
    samples: NoiseSamples,
}

impl<'m> TargetHarness<'m> {
    /// A harness for `model` on `batch`, in eval mode, with seeded noise (seed 0).
    pub fn new(model: &'m dyn Model, batch: Batch) -> Self {
        Self { model, batch, mode: Mode::EVAL, source: Box::new(SeededNoise::new(0)), samples: NoiseSamples::new() }
    }
    /// The same harness in `mode` (the target pass's mode: what `ctx.mode` holds).
    pub fn with_mode(self, mode: Mode) -> Self {
        Self { mode, ..self }
    }
    /// The same harness drawing noise from `source` (e.g. [`crate::QueuedNoise`] with fixed
    /// samples).
    pub fn with_noise(self, source: Box<dyn NoiseSource>) -> Self {
        Self { source, samples: NoiseSamples::new(), ..self }
    }
    /// The micro-batch.
    pub fn batch(&self) -> &Batch {
        &self.batch
    }
    /// Runs `f` with a context over this harness's model, batch, mode and noise.
    pub fn with_ctx<T>(&mut self, f: impl FnOnce(&mut TargetCtx<'_>) -> T) -> T {
        let mut slot = NoiseSlot::new(self.source.as_mut(), &mut self.samples);
        let mut ctx = TargetCtx::new(self.model, &self.batch, self.mode, &mut slot);
        f(&mut ctx)
    }
    /// `region.target(ctx, grad)`, as the engine calls it.
    pub fn target(&mut self, region: &mut dyn TrustRegion, grad: bool) -> Result<Logits> {
        self.with_ctx(|ctx| region.target(ctx, grad))
    }
    /// The first pass's embeddings for a region in the input role: the model's embeddings of
    /// the batch (at the current parameters) through the region's input perturbation; an error
    /// for a region without one.
    pub fn perturbed_embeddings(&mut self, region: &mut dyn TrustRegion) -> Result<Tensor> {
        let embeds = self.model.embed(self.model.params(), &self.batch, self.mode)?;
        let name = region.name().to_string();
        let p = region
            .input_perturbation()
            .ok_or_else(|| Error::Model(format!("trust region `{name}` has no input perturbation (input_perturbation() is None)")))?;
        self.with_ctx(|ctx| p.perturb(ctx, &embeds))
    }
    /// Distinct noise samples drawn since the harness was made or [`TargetHarness::next_step`].
    pub fn noise_drawn(&self) -> usize {
        self.samples.len()
    }
    /// Start a new step: the next request for noise draws a new sample.
    pub fn next_step(&mut self) {
        self.samples = NoiseSamples::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::noise::NoiseKind;
    use crate::testing::{synthetic_batches, ClassifierShape, EmbeddingClassifier};
    use candle_core::Device;

    const SHAPE: ClassifierShape = ClassifierShape { vocab: 12, embed: 4, hidden: 8, layers: 1, classes: 3 };

    #[test]
    fn noise_drawn_through_the_harness_is_reused_within_a_step_and_redrawn_after_next_step() {
        let model = EmbeddingClassifier::random(SHAPE, 1, &Device::Cpu).unwrap();
        let batch = synthetic_batches(SHAPE, 1, 2, 3, 2, &Device::Cpu).unwrap().remove(0);
        let mut h = TargetHarness::new(&model, batch);
        let like = Tensor::zeros((2, 3, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
        let draw = |h: &mut TargetHarness<'_>| -> Vec<f32> {
            h.with_ctx(|ctx| ctx.noise.get(like.shape(), NoiseKind::Normal, 0.1, &like).unwrap()).flatten_all().unwrap().to_vec1().unwrap()
        };
        let a = draw(&mut h);
        assert_eq!(draw(&mut h), a);
        assert_eq!(h.noise_drawn(), 1);
        h.next_step();
        assert_ne!(draw(&mut h), a);
    }
}
