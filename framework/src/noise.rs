//! Noise for the `noise` trust region (TRAM-x, R3F): seeded per example and checkpointable,
//! or fed from outside (golden tests feed PyTorch's samples).

use crate::error::{Error, Result};
use candle_core::{DType, Device, Shape, Tensor};
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
    /// The index, in the global micro-batch of a data-parallel step, of the first example of
    /// the samples drawn next (0 in a single process). A source keyed by example (as
    /// [`SeededNoise`]) draws row `j` from the key of example `offset + j`, so that the
    /// samples do not depend on how the global batch is split over ranks. Others ignore it.
    fn set_example_offset(&mut self, _offset: usize) {}
}

/// Seeded noise keyed by example: the `c`-th sample (one per micro-batch, distribution and
/// shape that a step asks for, in the engine's fixed order) draws each example's row from its
/// own ChaCha8 stream, keyed by (seed, c, global example index). The samples are thus the
/// same whether the global micro-batch is drawn in one process or split over W ranks (README
/// "Data-parallel training"). The position saved in optimizer checkpoints is `c`, so a resumed
/// run draws the same samples.
///
/// Counter-based, so that a GPU draws it in parallel where the tensor lives
/// (`tram_kernels::keyed::noise`): element `j` of a row reads u64 `j` of the row's stream;
/// `N(0, σ²)` is Box–Muller in f64 over pairs of elements, `U(−σ, σ)` is `2u − 1` of rand's f64
/// `u`; each value is rounded to f32 and scaled by `σ as f32`, then cast to the dtype. CUDA's
/// samples equal the CPU's within `tram_kernels::keyed::NOISE_ULPS` f32 ulps (uniform: bitwise).
pub struct SeededNoise {
    seed: u64,
    /// Samples drawn so far.
    draws: u64,
    /// Global index of the first example of the next sample.
    offset: usize,
}

/// Checkpoint tag of the keyed, counter-based stream. Older checkpoints hold `keyed:seed:draws`
/// (the same keys, but ziggurat normals and f32 uniforms: other samples) or `seed:word
/// position` of one sequential stream.
const KEYED: &str = "keyed2";

impl SeededNoise {
    /// A stream from `seed`.
    pub fn new(seed: u64) -> Self {
        Self { seed, draws: 0, offset: 0 }
    }
}

/// The ChaCha8 stream of example `example` in draw `draw` of `seed`, for the stream domain
/// `domain` (noise, dropout): the key holds every part, so no two keys share a stream
/// (`tram_kernels::keyed::keyed_rng`, which the CUDA kernels reproduce).
pub fn keyed_rng(seed: u64, domain: u64, draw: u64, example: u64) -> ChaCha8Rng {
    tram_kernels::keyed::keyed_rng(seed, domain, draw, example)
}

/// Stream domain of [`SeededNoise`] in [`keyed_rng`].
pub const NOISE_DOMAIN: u64 = 0x6e6f697365; // "noise"

impl NoiseSource for SeededNoise {
    fn sample(&mut self, shape: &Shape, kind: NoiseKind, sigma: f64, device: &Device, dtype: DType) -> Result<Tensor> {
        let draw = self.draws;
        self.draws += 1;
        let key = tram_kernels::keyed::Key { seed: self.seed, domain: NOISE_DOMAIN, draw, offset: self.offset as u64 };
        let dist = match kind {
            NoiseKind::Normal => tram_kernels::keyed::Dist::Normal,
            NoiseKind::Uniform => tram_kernels::keyed::Dist::Uniform,
        };
        Ok(tram_kernels::keyed::noise(shape, device, key, dist, sigma as f32)?.to_dtype(dtype)?)
    }
    fn save(&self) -> Option<String> {
        Some(format!("{KEYED}:{}:{}", self.seed, self.draws))
    }
    fn load(&mut self, state: &str) -> Result<()> {
        let bad = || {
            Error::Model(format!(
                "noise state `{state}` is not `{KEYED}:seed:draws` (a checkpoint of an older tram holds `keyed:seed:draws`, \
                 ziggurat normal noise, or `seed:position`, one sequential stream: it cannot be resumed with the same samples; \
                 start the run again)"
            ))
        };
        let rest = state.strip_prefix(KEYED).and_then(|r| r.strip_prefix(':')).ok_or_else(bad)?;
        let (seed, draws) = rest.split_once(':').ok_or_else(bad)?;
        self.seed = seed.parse().map_err(|_| bad())?;
        self.draws = draws.parse().map_err(|_| bad())?;
        Ok(())
    }
    fn set_example_offset(&mut self, offset: usize) {
        self.offset = offset;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(noise: &mut SeededNoise, offset: usize, n: usize) -> Vec<Vec<f32>> {
        noise.set_example_offset(offset);
        let t = noise.sample(&Shape::from((n, 2, 3)), NoiseKind::Normal, 0.5, &Device::Cpu, DType::F32).unwrap();
        t.flatten_from(1).unwrap().to_vec2::<f32>().unwrap()
    }

    #[test]
    fn keyed_samples_of_a_split_batch_equal_the_whole_batchs_draw_by_draw() {
        let (mut whole, mut first, mut second) = (SeededNoise::new(9), SeededNoise::new(9), SeededNoise::new(9));
        for _ in 0..3 {
            let all = rows(&mut whole, 0, 4);
            let (a, b) = (rows(&mut first, 0, 2), rows(&mut second, 2, 2));
            assert_eq!([a, b].concat(), all);
        }
        // Another draw and another example differ; the scale is applied.
        let mut n = SeededNoise::new(9);
        let d0 = rows(&mut n, 0, 2);
        let d1 = rows(&mut n, 0, 2);
        assert_ne!(d0, d1);
        assert_ne!(d0[0], d0[1]);
    }

    #[test]
    fn a_restored_position_draws_the_same_samples_and_an_old_format_is_refused() {
        let mut a = SeededNoise::new(4);
        rows(&mut a, 0, 3);
        let saved = a.save().unwrap();
        let next = rows(&mut a, 1, 3);
        let mut b = SeededNoise::new(0);
        b.load(&saved).unwrap();
        assert_eq!(rows(&mut b, 1, 3), next);
        for old in ["4:128", "keyed:4:1"] {
            let err = b.load(old).unwrap_err().to_string();
            assert!(err.contains("keyed2:seed:draws") && err.contains("older") && err.contains(old), "{err}");
        }
        assert_eq!(saved, "keyed2:4:1");
    }

    #[test]
    fn keyed_box_muller_normal_and_uniform_samples_have_the_asked_distribution() {
        let mut n = SeededNoise::new(1);
        let t = n.sample(&Shape::from((64, 256)), NoiseKind::Normal, 0.5, &Device::Cpu, DType::F32).unwrap();
        let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let mean = v.iter().map(|x| *x as f64).sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|x| (*x as f64 - mean).powi(2)).sum::<f64>() / v.len() as f64;
        assert!(mean.abs() < 0.01 && (var.sqrt() - 0.5).abs() < 0.01, "mean {mean} sd {}", var.sqrt());
        // The Box–Muller normal's shape: the fractions within 1, 2 and 3 σ (Φ), and its tails.
        let within = |k: f64| v.iter().filter(|x| (**x as f64).abs() < k * 0.5).count() as f64 / v.len() as f64;
        for (k, phi) in [(1.0, 0.682_689), (2.0, 0.954_500), (3.0, 0.997_300)] {
            assert!((within(k) - phi).abs() < 0.01, "within {k} σ: {} (Φ: {phi})", within(k));
        }
        assert!(v.iter().any(|x| x.abs() > 1.75) && v.iter().all(|x| x.abs() < 0.5 * 8.6), "tails");
        let u = n.sample(&Shape::from((64, 256)), NoiseKind::Uniform, 2.0, &Device::Cpu, DType::F32).unwrap();
        let u = u.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(u.iter().all(|x| x.abs() <= 2.0) && u.iter().any(|x| x.abs() > 1.9));
        let (um, uv) = (
            u.iter().map(|x| *x as f64).sum::<f64>() / u.len() as f64,
            u.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / u.len() as f64,
        );
        assert!(um.abs() < 0.03 && (uv - 4.0 / 3.0).abs() < 0.03, "uniform mean {um} E[x²] {uv}");
    }
}
