//! # tram-kernels
//!
//! Fused, differentiable kernels for candle 0.11 as custom ops with a real backward:
//!
//! - [`masked_softmax`]: softmax over the last dimension of attention scores with the score
//!   scale, the causal mask and a key padding mask folded in (no bias tensor is built);
//! - [`layer_norm`]: layer norm over the last dimension with gradients for the input, the
//!   weight and the bias;
//! - [`gelu_tanh`] (`gelu_new`) and [`gelu_erf`];
//! - [`add_bias`]: a bias added over the last dimension, its gradient summed over the rows in
//!   f32;
//! - [`embedding`]: rows of an embedding table, the table gradient summed in f32 per id;
//! - [`cross_entropy`]: mean log-softmax cross-entropy over rows, with ignored rows;
//! - [`log_softmax`] and [`kl_div_rows`]: the log-softmax / KL distances of the trust regions;
//! - [`optim`]: fused in-place Adam / AdamW / SGD-momentum updates (one pass over memory);
//! - [`update`]: the same updates reproducing the composed candle ops of `tram-plugins`' rules
//!   bit for bit, on state held in candle tensors (what the `adam`, `adamw` and `sgd`
//!   components run on the CPU);
//! - [`reduce::sum_squares`]: candle's `sqr().sum_all()` bit for bit without the squared tensor;
//! - [`keyed`]: the keyed random streams (dropout masks, TRAM-x / R3F noise) drawn where the
//!   tensor lives: on CUDA by the ChaCha8 kernel of `cuda/keyed_rng.cu` (feature `cuda`), the
//!   masks bit for bit the CPU's.
//!
//! candle's own fused `softmax_last_dim`, `layer_norm` and `rms_norm` drop gradients, so models
//! that need gradients compose them from primitive ops: a pass over memory (and an allocation)
//! per primitive, forward and backward. Each op here is one pass forward and one or two
//! backward.
//!
//! On the CPU the kernels compute in f32 (f64 inputs in f64; bf16 / f16 inputs are cast to f32
//! and the result back, as the composed versions do); `exp`, `tanh` and `erf` are branch-free
//! f32 approximations within a few ulp that the compiler vectorises. Rows are split over
//! candle's thread pool only above [`par::PAR_MIN_ELEMS`] elements. On any other device (CUDA,
//! Metal) every op runs its [`composed`] path: the same function from candle primitives, which
//! candle's CUDA / Metal kernels and autograd run without leaving the device (the fused Adam /
//! SGD updates likewise: [`optim::adam_step_composed`]), except that with the `cuda` feature the
//! masked softmax, layer norm, log-softmax and cross-entropy run their own CUDA kernels
//! (`cuda/fused.cu`, f32 compute, one pass forward and one or two backward) while
//! [`cuda_kernels_enabled`]. `tests/device.rs` checks each device path against the CPU kernel
//! wherever a GPU is present.

pub mod composed;
pub mod keyed;
pub mod math;
pub mod optim;
pub mod par;
pub mod reduce;
pub mod update;

mod bias;
#[cfg(feature = "cuda")]
mod cuda;
mod embedding;
mod gelu;
mod loss;
mod norm;
mod softmax;

pub use bias::add_bias;
pub use embedding::embedding;
pub use gelu::{gelu_erf, gelu_tanh};
pub use loss::{cross_entropy, kl_div_rows, log_softmax};
pub use norm::{layer_norm, layer_norm_composed};
pub use softmax::{masked_softmax, masked_softmax_composed, KeyMask};

use candle_core::backend::BackendStorage;
use candle_core::op::BackpropOp;
use candle_core::{bail, CpuStorage, DType, Layout, Result, Shape, Storage, Tensor};
use math::Float;

/// The element range of a contiguous layout, or an error naming `op`.
pub(crate) fn contiguous_range(l: &Layout, op: &str) -> Result<std::ops::Range<usize>> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(a..b),
        None => bail!("{op}: the input must be contiguous (call .contiguous() first)"),
    }
}

/// The contiguous slice of `s` that `l` describes, or an error naming `op`.
pub(crate) fn slice<'a, T: Float>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [T]> {
    Ok(&s.as_slice::<T>()?[contiguous_range(l, op)?])
}

/// Run `f` on the contiguous CPU data of `t` (made contiguous first when it is not).
pub(crate) fn with_data<T: Float, R>(t: &Tensor, op: &str, f: impl FnOnce(&[T]) -> Result<R>) -> Result<R> {
    let t = if t.is_contiguous() { t.clone() } else { t.contiguous()? };
    let (s, l) = t.storage_and_layout();
    match &*s {
        Storage::Cpu(c) => f(slice::<T>(c, l, op)?),
        _ => bail!("{op}: CPU kernel called on a {:?} tensor", t.device().location()),
    }
}

/// A graph-free CPU tensor owning `v`.
pub(crate) fn tensor_from<T: Float>(v: Vec<T>, shape: impl Into<Shape>) -> Tensor {
    Tensor::from_storage(Storage::Cpu(crate::owned(v)), shape, BackpropOp::none(), false)
}

/// Whether the fused CPU kernels handle `t` (on the CPU; half types go through f32).
pub(crate) fn on_cpu(t: &Tensor) -> bool {
    t.device().is_cpu()
}

static CUDA_KERNELS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Whether the ops with a CUDA kernel use it on CUDA tensors (the default) rather than their
/// [`composed`] path. Only meaningful with the `cuda` feature.
pub fn cuda_kernels_enabled() -> bool {
    CUDA_KERNELS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Switch the CUDA kernels on or off for the whole process (off: every op on CUDA runs its
/// [`composed`] path), e.g. to compare the two paths in a benchmark or a parity test.
pub fn set_cuda_kernels(enabled: bool) {
    CUDA_KERNELS.store(enabled, std::sync::atomic::Ordering::Relaxed)
}

/// Whether `t`, computing in `cd`, runs this crate's CUDA kernel: a CUDA tensor, f32 compute,
/// the `cuda` feature, and [`cuda_kernels_enabled`].
pub(crate) fn on_cuda_kernel(t: &Tensor, cd: DType) -> bool {
    cfg!(feature = "cuda") && t.device().is_cuda() && cd == DType::F32 && cuda_kernels_enabled()
}

/// Implements candle's `CustomOp3` for `$ty`, an op that runs only on CUDA (a piece of a fused
/// op's CUDA backward): on the CPU an error naming it; on CUDA `$body` with `$op` the op and the
/// three storages and layouts.
#[cfg(feature = "cuda")]
macro_rules! cuda_only_op3 {
    ($ty:ty, $name:literal, |$op:ident, $a:ident, $al:ident, $b:ident, $bl:ident, $c:ident, $cl:ident| $body:expr) => {
        impl candle_core::CustomOp3 for $ty {
            fn name(&self) -> &'static str {
                $name
            }
            fn cpu_fwd(
                &self,
                _: &candle_core::CpuStorage,
                _: &candle_core::Layout,
                _: &candle_core::CpuStorage,
                _: &candle_core::Layout,
                _: &candle_core::CpuStorage,
                _: &candle_core::Layout,
            ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
                candle_core::bail!("{}: a CUDA-only op (on the CPU its work is fused into the op it belongs to)", $name)
            }
            fn cuda_fwd(
                &self,
                $a: &candle_core::CudaStorage,
                $al: &candle_core::Layout,
                $b: &candle_core::CudaStorage,
                $bl: &candle_core::Layout,
                $c: &candle_core::CudaStorage,
                $cl: &candle_core::Layout,
            ) -> candle_core::Result<(candle_core::CudaStorage, candle_core::Shape)> {
                let $op = self;
                $body
            }
        }
    };
}
#[cfg(feature = "cuda")]
pub(crate) use cuda_only_op3;

/// The compute dtype of a float tensor: f64 stays f64, everything else computes in f32.
pub(crate) fn compute_dtype(t: &Tensor, op: &str) -> Result<DType> {
    match t.dtype() {
        DType::F64 => Ok(DType::F64),
        DType::F32 | DType::BF16 | DType::F16 => Ok(DType::F32),
        other => bail!("{op}: expected a float tensor (f32, f64, bf16 or f16), got {other:?}"),
    }
}

/// Dispatch `$body` with `$T` bound to f32 or f64 by the storage's dtype.
macro_rules! float_dispatch {
    ($op:expr, $dtype:expr, $T:ident => $body:expr) => {
        match $dtype {
            candle_core::DType::F32 => {
                type $T = f32;
                $body
            }
            candle_core::DType::F64 => {
                type $T = f64;
                $body
            }
            other => candle_core::bail!("{}: unsupported dtype {other:?} (the wrapper casts to f32)", $op),
        }
    };
}
pub(crate) use float_dispatch;

/// CPU storage owning `v`.
pub(crate) fn owned<T: Float>(v: Vec<T>) -> CpuStorage {
    T::to_cpu_storage_owned(v)
}

/// The dtype of CPU storage.
pub(crate) fn sdt(s: &CpuStorage) -> DType {
    s.dtype()
}
