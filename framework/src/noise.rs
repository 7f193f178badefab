//! Noise for the `noise` trust region (TRAM-x, R3F): seeded and checkpointable, or fed from
//! outside (golden tests feed PyTorch's samples).

use crate::error::{Error, Result};
use candle_core::{DType, Device, Shape, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// The noise distribution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NoiseKind {
    /// `N(0, σ²)`.
    #[default]
    Normal,
    /// `U(-σ, σ)`.
    Uniform,
}

/// A source of noise samples.
pub trait NoiseSource: Send {
    /// A sample of `shape` scaled by `sigma`.
    fn sample(&mut self, shape: &Shape, kind: NoiseKind, sigma: f64, device: &Device, dtype: DType) -> Result<Tensor>;
    /// Serialised position, for checkpoints (`None`: not checkpointable).
    fn save(&self) -> Option<String>;
    /// Restore a position written by [`NoiseSource::save`].
    fn load(&mut self, state: &str) -> Result<()>;
}

/// ChaCha8 noise from a seed; its stream position is saved in optimizer checkpoints so a
/// resumed run draws the same samples.
pub struct SeededNoise {
    seed: u64,
    rng: ChaCha8Rng,
}

impl SeededNoise {
    /// A stream from `seed`.
    pub fn new(seed: u64) -> Self {
        Self { seed, rng: ChaCha8Rng::seed_from_u64(seed) }
    }
}

impl NoiseSource for SeededNoise {
    fn sample(&mut self, shape: &Shape, kind: NoiseKind, sigma: f64, device: &Device, dtype: DType) -> Result<Tensor> {
        let n = shape.elem_count();
        let values: Vec<f32> = match kind {
            NoiseKind::Normal => (0..n).map(|_| self.rng.sample::<f32, _>(rand_distr::StandardNormal) * sigma as f32).collect(),
            NoiseKind::Uniform => (0..n).map(|_| self.rng.random_range(-1.0f32..1.0) * sigma as f32).collect(),
        };
        Ok(Tensor::from_vec(values, shape.clone(), device)?.to_dtype(dtype)?)
    }
    fn save(&self) -> Option<String> {
        Some(format!("{}:{}", self.seed, self.rng.get_word_pos()))
    }
    fn load(&mut self, state: &str) -> Result<()> {
        let bad = || Error::Model(format!("noise state `{state}` is not `seed:position`"));
        let (seed, pos) = state.split_once(':').ok_or_else(bad)?;
        let seed: u64 = seed.parse().map_err(|_| bad())?;
        let pos: u128 = pos.parse().map_err(|_| bad())?;
        self.seed = seed;
        self.rng = ChaCha8Rng::seed_from_u64(seed);
        self.rng.set_word_pos(pos);
        Ok(())
    }
}

/// Noise fed from a queue of tensors (in draw order), e.g. PyTorch's samples in golden tests.
#[derive(Default)]
pub struct QueuedNoise {
    queue: VecDeque<Tensor>,
}

impl QueuedNoise {
    /// A source that hands out `samples` in order.
    pub fn new(samples: impl IntoIterator<Item = Tensor>) -> Self {
        Self { queue: samples.into_iter().collect() }
    }
}

impl NoiseSource for QueuedNoise {
    fn sample(&mut self, shape: &Shape, _kind: NoiseKind, _sigma: f64, device: &Device, dtype: DType) -> Result<Tensor> {
        let z = self.queue.pop_front().ok_or_else(|| Error::Model("the noise queue is empty".into()))?;
        if z.shape() != shape {
            return Err(Error::Model(format!("queued noise has shape {:?}, the embeddings have {:?}", z.dims(), shape.dims())));
        }
        Ok(z.to_device(device)?.to_dtype(dtype)?)
    }
    fn save(&self) -> Option<String> {
        None
    }
    fn load(&mut self, _state: &str) -> Result<()> {
        Err(Error::Model("queued noise cannot be restored from a checkpoint".into()))
    }
}
