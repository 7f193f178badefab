//! Keyed random streams drawn where the tensor lives: dropout masks and TRAM-x / R3F noise.
//!
//! Row `r` of draw `draw` comes from its own ChaCha8 stream, [`keyed_rng`]`(seed, domain, draw,
//! offset + r)` (rand_chacha's `ChaCha8Rng` keyed by the four u64s), so the values of a
//! data-parallel rank's rows do not depend on how the global batch is split. On the CPU the
//! stream is read sequentially from rand_chacha; on CUDA one thread computes one ChaCha8 block
//! (16 words: 8 u64s, 8 elements) of one row with `cuda/keyed_rng.cu`, whose arithmetic is in
//! `cuda/keyed_rng.h` (also compiled for the host and checked against this module by
//! `tests/keyed_host.rs`). Element `j` of a row reads u64 number `j` of the row's stream (rand's
//! `next_u64`: words `2j` low, `2j + 1` high), so every element is a function of one block:
//!
//! - [`dropout_mask`]: kept where rand's `random::<f64>() < keep` (`(u >> 11) · 2⁻⁵³`), the value
//!   `(1 / keep) as f32` in the tensor's dtype. CUDA masks are the CPU's bit for bit.
//! - [`noise`]: `N(0, σ²)` by Box–Muller in f64 over pairs (elements `2k`, `2k + 1` from u64s
//!   `a = 2k`, `b = 2k + 1`: `u1 = ((a >> 11) + 1) · 2⁻⁵³ ∈ (0, 1]`, `u2 = (b >> 11) · 2⁻⁵³`,
//!   `r = √(−2 ln u1)`, `θ = 2π u2`, `r cos θ` and `r sin θ`), or `U(−σ, σ)` as
//!   `2 (a >> 11) · 2⁻⁵³ − 1`; each value rounded to f32, then multiplied by `σ as f32`. The
//!   CPU uses the C library's `ln` / `sin` / `cos` (as the host build of the header: bitwise the
//!   same), CUDA its own double-precision ones (≤ 2 ulp in f64): the f32 results agree bitwise
//!   but for an f64 result that lands within a few f64 ulps of an f32 rounding boundary, where
//!   they differ by 1 f32 ulp (`tests/gpu.rs` allows [`NOISE_ULPS`]). Uniform noise is bitwise.

use candle_core::{bail, DType, Device, Result, Shape, Tensor};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The stream of example `example` in draw `draw` of `seed`, for the stream domain `domain`
/// (noise, dropout): `ChaCha8Rng::from_seed` of the little-endian bytes of the four u64s, so no
/// two keys share a stream.
pub fn keyed_rng(seed: u64, domain: u64, draw: u64, example: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    for (i, v) in [seed, domain, draw, example].into_iter().enumerate() {
        key[8 * i..8 * i + 8].copy_from_slice(&v.to_le_bytes());
    }
    ChaCha8Rng::from_seed(key)
}

/// Which rows of which draw: row `r` of the tensor is example `offset + r` of the key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Key {
    /// The run's seed.
    pub seed: u64,
    /// The stream domain (dropout, noise).
    pub domain: u64,
    /// The draw (mask or sample) number.
    pub draw: u64,
    /// Global index of the first row's example.
    pub offset: u64,
}

impl Key {
    /// The stream of row `r`.
    pub fn row(&self, r: usize) -> ChaCha8Rng {
        keyed_rng(self.seed, self.domain, self.draw, self.offset + r as u64)
    }
}

/// The noise distribution of [`noise`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dist {
    /// `N(0, σ²)` (Box–Muller).
    Normal,
    /// `U(−σ, σ)`.
    Uniform,
}

/// Largest difference, in f32 ulps, between a CUDA noise sample and the CPU's (see the module
/// documentation; in practice 1, and bitwise for all but a handful of elements per million).
pub const NOISE_ULPS: u32 = 2;

/// Rows (the leading dimension, 1 for a scalar) and elements per row of `shape`.
fn rows_of(shape: &Shape) -> (usize, usize) {
    let n = shape.elem_count();
    let rows = shape.dims().first().copied().unwrap_or(1).max(1);
    (rows, n / rows)
}

/// The dropout mask of the CPU path as f32: `(1 / keep) as f32` where kept, else 0.
pub fn dropout_mask_cpu(shape: &Shape, key: Key, keep: f64) -> Vec<f32> {
    let (rows, per_row) = rows_of(shape);
    let scale = (1.0 / keep) as f32;
    let mut mask: Vec<f32> = Vec::with_capacity(shape.elem_count());
    for r in 0..rows {
        let mut rng = key.row(r);
        mask.extend((0..per_row).map(|_| if rng.random::<f64>() < keep { scale } else { 0.0 }));
    }
    mask
}

/// The inverted-dropout mask of `shape` in `dtype` on `device` (`keep` = 1 − p in (0, 1]): where
/// element `j` of row `r` is kept, `(1 / keep) as f32` converted to `dtype`, else 0. The CPU draws
/// it with rand_chacha ([`dropout_mask_cpu`]); CUDA with the keyed ChaCha8 kernel, bit for bit
/// the same, without a host round trip.
pub fn dropout_mask(shape: &Shape, dtype: DType, device: &Device, key: Key, keep: f64) -> Result<Tensor> {
    if !(keep > 0.0 && keep <= 1.0) {
        bail!("dropout keep probability {keep} is outside (0, 1]");
    }
    match device {
        _ if shape.elem_count() == 0 => Tensor::zeros(shape, dtype, device),
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => cuda::dropout_mask(dev, shape, dtype, key, keep),
        _ => Tensor::from_vec(dropout_mask_cpu(shape, key, keep), shape.clone(), device)?.to_dtype(dtype),
    }
}

/// The noise of the CPU path (f32): element `j` of row `r` as the module documentation says.
pub fn noise_cpu(shape: &Shape, key: Key, dist: Dist, sigma: f32) -> Vec<f32> {
    let (rows, per_row) = rows_of(shape);
    let mut values: Vec<f32> = Vec::with_capacity(shape.elem_count());
    for r in 0..rows {
        let mut rng = key.row(r);
        match dist {
            Dist::Normal => {
                for k in (0..per_row).step_by(2) {
                    let (z0, z1) = box_muller(rng.next_u64(), rng.next_u64());
                    values.push(z0 * sigma);
                    if k + 1 < per_row {
                        values.push(z1 * sigma);
                    }
                }
            }
            Dist::Uniform => values.extend((0..per_row).map(|_| (2.0 * unit(rng.next_u64()) - 1.0) as f32 * sigma)),
        }
    }
    values
}

/// rand's f64 `StandardUniform` of one u64: `(x >> 11) · 2⁻⁵³`, in [0, 1).
#[inline]
fn unit(x: u64) -> f64 {
    (x >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Box–Muller of the u64s `a`, `b` (as `tram_noise_block` in `cuda/keyed_rng.h`), rounded to f32.
#[inline]
fn box_muller(a: u64, b: u64) -> (f32, f32) {
    let u1 = ((a >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64);
    let r = (-2.0 * u1.ln()).sqrt();
    let t = std::f64::consts::TAU * unit(b);
    ((r * t.cos()) as f32, (r * t.sin()) as f32)
}

/// Noise of `shape` (f32) on `device`, scaled by `sigma`: keyed per row as the module
/// documentation says, on CUDA by the kernel (no host round trip).
pub fn noise(shape: &Shape, device: &Device, key: Key, dist: Dist, sigma: f32) -> Result<Tensor> {
    match device {
        _ if shape.elem_count() == 0 => Tensor::zeros(shape, DType::F32, device),
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => cuda::noise(dev, shape, key, dist, sigma),
        _ => Tensor::from_vec(noise_cpu(shape, key, dist, sigma), shape.clone(), device),
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    //! Launches of `cuda/keyed_rng.cu` (PTX built by build.rs) on candle's CUDA device.
    use super::{rows_of, Dist, Key};
    use candle_core::cuda_backend::cudarc::driver::{CudaSlice, DeviceRepr, LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::{CudaDevice, CudaStorage, CudaStorageSlice, WrapErr};
    use candle_core::op::BackpropOp;
    use candle_core::{bail, CpuStorage, DType, Result, Shape, Storage, Tensor};

    /// The PTX of `cuda/keyed_rng.cu`.
    const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/keyed_rng.ptx"));
    /// Module name under which candle caches the loaded PTX.
    const MODULE: &str = "tram_keyed_rng";

    /// Launch `name` over one thread per (row, 8-element block) of `shape` into `out`, with the
    /// kernel's own two scalar arguments `a`, `b` after the common ones.
    #[allow(clippy::too_many_arguments)]
    fn launch<T: DeviceRepr, A: DeviceRepr, B: DeviceRepr>(
        dev: &CudaDevice,
        name: &str,
        out: &mut CudaSlice<T>,
        shape: &Shape,
        key: Key,
        a: A,
        b: B,
    ) -> Result<()> {
        let (rows, per_row) = rows_of(shape);
        if shape.elem_count() == 0 {
            return Ok(());
        }
        let blocks = per_row.div_ceil(8) as u64;
        let threads = rows as u64 * blocks;
        let threads = u32::try_from(threads).map_err(|_| candle_core::Error::Msg(format!("{name}: {threads} threads are too many")))?;
        let func = dev.get_or_load_custom_func(name, MODULE, PTX)?;
        let (rows, per_row) = (rows as u64, per_row as u64);
        let mut args = func.builder();
        args.arg(out);
        args.arg(&rows);
        args.arg(&per_row);
        args.arg(&blocks);
        args.arg(&key.seed);
        args.arg(&key.domain);
        args.arg(&key.draw);
        args.arg(&key.offset);
        args.arg(&a);
        args.arg(&b);
        // SAFETY: the kernel's parameters are the ones pushed above, in order and of the same
        // widths; it writes `rows * per_row` elements of `out`, which holds that many.
        unsafe { args.launch(LaunchConfig::for_num_elems(threads)) }.w()?;
        Ok(())
    }

    fn wrap(slice: CudaStorageSlice, dev: &CudaDevice, shape: &Shape) -> Tensor {
        Tensor::from_storage(Storage::Cuda(CudaStorage { slice, device: dev.clone() }), shape.clone(), BackpropOp::none(), false)
    }

    /// The bits of `(1 / keep) as f32` in `dtype`, converted as the CPU path converts it.
    fn scale_bits(scale: f32, dtype: DType) -> Result<u64> {
        let t = Tensor::new(&[scale], &candle_core::Device::Cpu)?.to_dtype(dtype)?;
        let (s, _) = t.storage_and_layout();
        Ok(match &*s {
            Storage::Cpu(CpuStorage::F32(v)) => v[0].to_bits() as u64,
            Storage::Cpu(CpuStorage::F64(v)) => v[0].to_bits(),
            Storage::Cpu(CpuStorage::BF16(v)) => v[0].to_bits() as u64,
            Storage::Cpu(CpuStorage::F16(v)) => v[0].to_bits() as u64,
            _ => bail!("dropout mask: unsupported dtype {dtype:?} (f32, f64, bf16 or f16)"),
        })
    }

    pub(super) fn dropout_mask(dev: &CudaDevice, shape: &Shape, dtype: DType, key: Key, keep: f64) -> Result<Tensor> {
        let bits = scale_bits((1.0 / keep) as f32, dtype)?;
        let n = shape.elem_count();
        macro_rules! mask {
            ($variant:ident, $name:literal) => {{
                // SAFETY: every element is written by the kernel before it is read.
                let mut out = unsafe { dev.alloc(n)? };
                launch(dev, $name, &mut out, shape, key, keep, bits)?;
                CudaStorageSlice::$variant(out)
            }};
        }
        let slice = match dtype {
            DType::F32 => mask!(F32, "tram_dropout_mask_b32"),
            DType::F64 => mask!(F64, "tram_dropout_mask_b64"),
            DType::BF16 => mask!(BF16, "tram_dropout_mask_b16"),
            DType::F16 => mask!(F16, "tram_dropout_mask_b16"),
            other => bail!("dropout mask: unsupported dtype {other:?} (f32, f64, bf16 or f16)"),
        };
        Ok(wrap(slice, dev, shape))
    }

    pub(super) fn noise(dev: &CudaDevice, shape: &Shape, key: Key, dist: Dist, sigma: f32) -> Result<Tensor> {
        // SAFETY: every element is written by the kernel before it is read.
        let mut out = unsafe { dev.alloc::<f32>(shape.elem_count())? };
        let normal: i32 = (dist == Dist::Normal) as i32;
        launch(dev, "tram_keyed_noise_f32", &mut out, shape, key, normal, sigma)?;
        Ok(wrap(CudaStorageSlice::F32(out), dev, shape))
    }
}
