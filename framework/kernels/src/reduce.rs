//! Sums of squares without the squared tensor: the `sqr().sum_all()` of candle 0.11's CPU
//! backend, bit for bit, in one pass over the input and nothing allocated (the norms of the
//! engine and the neighborhoods).
//!
//! candle sums a contiguous f32 buffer (`vec_sum`) with, on x86-64 CPUs with AVX2, four 8-lane
//! accumulators over blocks of 32 elements, a fixed pairwise reduction of the lanes and then
//! the remaining elements one by one; elsewhere one by one from zero. [`sum_squares`] repeats
//! that order exactly (each lane as its own f32 accumulator), so its result is the composed
//! one's to the bit; `candle-core` is pinned to one version for this (a test checks the two
//! agree on sizes around every block boundary).

use candle_core::{DType, Result, Storage, Tensor};

/// Whether candle's CPU `vec_sum` takes its AVX2 path on this CPU.
fn candle_uses_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static AVX2: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVX2.get_or_init(|| std::is_x86_feature_detected!("avx2"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// candle's `vec_sum` of `f(x)` over `xs`, in its order of additions.
#[inline(always)]
fn candle_sum(xs: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    if !candle_uses_avx2() {
        let mut s = 0f32;
        for &x in xs {
            s += f(x);
        }
        return s;
    }
    let np = xs.len() & !31;
    let mut acc = [[0f32; 8]; 4];
    for block in xs[..np].chunks_exact(32) {
        for (j, a) in acc.iter_mut().enumerate() {
            for (l, a) in a.iter_mut().enumerate() {
                *a += f(block[j * 8 + l]);
            }
        }
    }
    // `vec_reduce`: x0 += x1, x2 += x3, x0 += x2; the two 128-bit halves added; two `hadd`s.
    let mut x0 = [0f32; 8];
    for l in 0..8 {
        x0[l] = (acc[0][l] + acc[1][l]) + (acc[2][l] + acc[3][l]);
    }
    let t: [f32; 4] = std::array::from_fn(|l| x0[l] + x0[l + 4]);
    let mut s = (t[0] + t[1]) + (t[2] + t[3]);
    for &x in &xs[np..] {
        s += f(x);
    }
    s
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn candle_sum_avx2(xs: &[f32], square: bool) -> f32 {
    if square {
        candle_sum(xs, |x| x * x)
    } else {
        candle_sum(xs, |x| x)
    }
}

fn sum(xs: &[f32], square: bool) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if candle_uses_avx2() {
        // SAFETY: the CPU has AVX2 (checked).
        return unsafe { candle_sum_avx2(xs, square) };
    }
    if square {
        candle_sum(xs, |x| x * x)
    } else {
        candle_sum(xs, |x| x)
    }
}

/// `Σ x²` over every tensor together, bit for bit candle's
/// `stack([t.sqr().sum_all() for t in tensors]).sum_all()` (the composed `tram::ops::sum_sq`),
/// as an f32. `None` where it does not apply (a tensor that is not an f32 contiguous CPU tensor,
/// or no tensors): the caller runs the composed ops.
pub fn sum_squares(tensors: &[Tensor]) -> Result<Option<f32>> {
    if tensors.is_empty() || !tensors.iter().all(|t| t.device().is_cpu() && t.dtype() == DType::F32 && t.is_contiguous()) {
        return Ok(None);
    }
    let mut parts = Vec::with_capacity(tensors.len());
    for t in tensors {
        if t.elem_count() == 0 {
            // candle's `sum_all` of an empty tensor is 0 (no reduction runs).
            parts.push(0.0);
            continue;
        }
        let (storage, layout) = t.storage_and_layout();
        let Storage::Cpu(candle_core::CpuStorage::F32(v)) = &*storage else { return Ok(None) };
        let Some((a, b)) = layout.contiguous_offsets() else { return Ok(None) };
        parts.push(sum(&v[a..b], true));
    }
    Ok(Some(sum(&parts, false)))
}
