//! GELU, tanh approximation (`gelu_new`) and exact (erf).

use crate::math::Float;
use crate::par::{for_rows, SyncPtr};
use crate::{compute_dtype, float_dispatch, on_cpu, slice};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};

#[derive(Clone, Copy)]
enum Kind {
    Tanh,
    Erf,
}

const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
const COEF: f64 = 0.044_715;

#[inline(always)]
fn value<T: Float>(k: Kind, x: T) -> T {
    let half = T::of(0.5);
    match k {
        Kind::Tanh => half * x * (T::ONE + (T::of(SQRT_2_OVER_PI) * (x + T::of(COEF) * x * x * x)).tanh()),
        Kind::Erf => half * x * (T::ONE + (x * T::of(std::f64::consts::FRAC_1_SQRT_2)).erf()),
    }
}

#[inline(always)]
fn derivative<T: Float>(k: Kind, x: T) -> T {
    let half = T::of(0.5);
    match k {
        Kind::Tanh => {
            let x2 = x * x;
            let t = (T::of(SQRT_2_OVER_PI) * (x + T::of(COEF) * x2 * x)).tanh();
            half * (T::ONE + t) + half * x * (T::ONE - t * t) * T::of(SQRT_2_OVER_PI) * (T::ONE + T::of(3.0 * COEF) * x2)
        }
        Kind::Erf => {
            // 0.5 (1 + erf(x/√2)) + x φ(x), φ(x) = e^{−x²/2} / √(2π)
            let phi = (-half * x * x).exp() * T::of(0.398_942_280_401_432_7);
            half * (T::ONE + (x * T::of(std::f64::consts::FRAC_1_SQRT_2)).erf()) + x * phi
        }
    }
}

const CHUNK: usize = 4096;

struct Gelu(Kind);

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        match self.0 {
            Kind::Tanh => "tram-gelu-tanh",
            Kind::Erf => "tram-gelu-erf",
        }
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let k = self.0;
        float_dispatch!(self.name(), crate::sdt(s), T => {
            let x = slice::<T>(s, l, self.name())?;
            let mut y = vec![T::ZERO; x.len()];
            let p = SyncPtr(y.as_mut_ptr());
            let n = x.len();
            for_rows(n.div_ceil(CHUNK), CHUNK * 4, |_, range| {
                let (a, b) = (range.start * CHUNK, (range.end * CHUNK).min(n));
                let out = unsafe { p.slice(a, b - a) };
                match k {
                    Kind::Tanh => out.iter_mut().zip(&x[a..b]).for_each(|(o, &v)| *o = value(Kind::Tanh, v)),
                    Kind::Erf => out.iter_mut().zip(&x[a..b]).for_each(|(o, &v)| *o = value(Kind::Erf, v)),
                }
            });
            Ok((crate::owned(y), l.shape().clone()))
        })
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &candle_core::CudaStorage, l: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::gelu(s, l, self.0 as i32)
    }
    fn bwd(&self, x: &Tensor, _y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let g = g.to_dtype(x.dtype())?;
        let g = if g.is_contiguous() { g } else { g.contiguous()? };
        Ok(Some(x.apply_op2_no_bwd(&g, &GeluBwd(self.0))?))
    }
}

/// `dx = g · gelu'(x)`.
struct GeluBwd(Kind);

impl CustomOp2 for GeluBwd {
    fn name(&self) -> &'static str {
        "tram-gelu-bwd"
    }
    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout, gs: &CpuStorage, gl: &Layout) -> Result<(CpuStorage, Shape)> {
        let k = self.0;
        float_dispatch!(self.name(), crate::sdt(xs), T => {
            let (x, g) = (slice::<T>(xs, xl, self.name())?, slice::<T>(gs, gl, self.name())?);
            let mut dx = vec![T::ZERO; x.len()];
            let p = SyncPtr(dx.as_mut_ptr());
            let n = x.len();
            for_rows(n.div_ceil(CHUNK), CHUNK * 6, |_, range| {
                let (a, b) = (range.start * CHUNK, (range.end * CHUNK).min(n));
                let out = unsafe { p.slice(a, b - a) };
                let it = out.iter_mut().zip(&x[a..b]).zip(&g[a..b]);
                match k {
                    Kind::Tanh => it.for_each(|((o, &v), &gv)| *o = gv * derivative(Kind::Tanh, v)),
                    Kind::Erf => it.for_each(|((o, &v), &gv)| *o = gv * derivative(Kind::Erf, v)),
                }
            });
            Ok((crate::owned(dx), xl.shape().clone()))
        })
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xs: &candle_core::CudaStorage,
        xl: &Layout,
        gs: &candle_core::CudaStorage,
        gl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::gelu_bwd(xs, xl, gs, gl, self.0 as i32)
    }
}

fn apply(x: &Tensor, k: Kind, op: &str) -> Result<Tensor> {
    let cd = compute_dtype(x, op)?;
    if crate::on_cuda_kernel(x, cd) && matches!(x.dtype(), candle_core::DType::F32 | candle_core::DType::BF16) {
        // The CUDA kernels read and write f32 or bf16 directly (f32 compute).
        let xc = if x.is_contiguous() { x.clone() } else { x.contiguous()? };
        return xc.apply_op1(Gelu(k));
    }
    if !on_cpu(x) {
        return match k {
            Kind::Tanh => crate::composed::gelu_tanh(x),
            Kind::Erf => crate::composed::gelu_erf(x),
        };
    }
    let xc = x.to_dtype(cd)?;
    let xc = if xc.is_contiguous() { xc } else { xc.contiguous()? };
    let y = xc.apply_op1(Gelu(k))?;
    if x.dtype() == cd {
        Ok(y)
    } else {
        y.to_dtype(x.dtype())
    }
}

/// GELU with the tanh approximation, `0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³)))`
/// (`transformers`' `gelu_new` / `gelu_pytorch_tanh`), differentiable; computed in f32 (f64 for
/// f64 input). CUDA: its own kernels, f32 or bf16 in and out (see
/// [`crate::cuda_kernels_enabled`]); other devices: [`crate::composed::gelu_tanh`] (candle's `gelu`).
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    apply(x, Kind::Tanh, "gelu_tanh")
}

/// Exact GELU, `0.5 x (1 + erf(x / √2))`, differentiable; computed in f32 (f64 for f64 input).
/// CUDA: its own kernels, f32 or bf16 in and out; other devices: [`crate::composed::gelu_erf`]
/// (candle's `gelu_erf`).
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    apply(x, Kind::Erf, "gelu_erf")
}
