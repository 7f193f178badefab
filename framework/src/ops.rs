//! Differentiable building blocks (candle's fused `softmax_last_dim` drops gradients, so these
//! are written from primitive ops) and global-norm helpers over parameter lists.

use crate::error::Result;
use candle_core::{DType, Tensor, D};

/// `log softmax` over the last dimension, differentiable. f32 on the CPU runs the fused kernel
/// ([`tram_kernels::log_softmax`]: one pass forward, one backward); every other dtype and device
/// runs [`log_softmax_composed`] (f64 stays composed: the trust regions' radius δ is computed in
/// f64 through it, and its cancellation behaviour is what the golden fixtures pin).
pub fn log_softmax(x: &Tensor) -> Result<Tensor> {
    if fused(x) {
        return Ok(tram_kernels::log_softmax(x)?);
    }
    log_softmax_composed(x)
}

/// `log softmax` over the last dimension from primitive ops; the max shift is a detached
/// constant. The reference for the fused kernel, and the path for f64, half precision and
/// non-CPU devices.
pub fn log_softmax_composed(x: &Tensor) -> Result<Tensor> {
    let max = x.detach().max_keepdim(D::Minus1)?;
    let shifted = x.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(shifted.broadcast_sub(&lse)?)
}

/// Softmax over the last dimension, differentiable.
pub fn softmax(x: &Tensor) -> Result<Tensor> {
    Ok(log_softmax(x)?.exp()?)
}

/// Mean cross-entropy of `[rows, classes]` logits against `[rows]` class ids, in f32. On the CPU
/// one fused kernel ([`tram_kernels::cross_entropy`]: nothing `[rows, classes]`-sized kept for the
/// backward; a class id outside `0..classes` is an error naming its row); other devices run
/// [`cross_entropy_composed`].
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    if logits.device().is_cpu() {
        return Ok(tram_kernels::cross_entropy(&to_f32(logits)?, targets, None)?);
    }
    cross_entropy_composed(logits, targets)
}

/// [`cross_entropy`] from primitive ops (`log_softmax`, `gather`, `mean`).
pub fn cross_entropy_composed(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let logp = log_softmax_composed(&to_f32(logits)?)?;
    let idx = targets.to_dtype(DType::U32)?.unsqueeze(1)?;
    let picked = logp.gather(&idx, 1)?;
    Ok(picked.mean_all()?.neg()?)
}

/// `Σ softmax(p)·(log softmax(p) − log softmax(q))` over every row and class of two logits
/// tensors of one shape `[.., classes]`: the KL divergence `KL(p ‖ q)` summed over rows,
/// differentiable in both. f32 on the CPU and on CUDA runs the fused row kernel
/// ([`tram_kernels::kl_div_rows`]: one pass, no `[rows, classes]` intermediate kept for the
/// backward), and so does f64, with f64 arithmetic throughout: the trust regions' radius δ is an
/// f64 KL of the LM head's logits, the largest tensor a TRAM step reduces (its value moves by
/// ~1e-11 relative against the composed sum; every golden and reference-mode fixture holds),
/// where the composed sum takes a dozen passes over the f64 logits. Other dtypes and devices,
/// and CUDA with its kernels switched off, run [`kl_div_sum_composed`].
///
/// f32 on a device without f64 (Metal: [`device_has_f64`]) runs [`kl_div_sum_compensated`], so
/// that the radius δ, computed in f32 there, keeps its accuracy.
pub fn kl_div_sum(p_logits: &Tensor, q_logits: &Tensor) -> Result<Tensor> {
    let kernel = |x: &Tensor| {
        matches!(x.dtype(), DType::F32 | DType::F64)
            && (x.device().is_cpu() || (x.device().is_cuda() && tram_kernels::cuda_kernels_enabled()))
    };
    if kernel(p_logits) && kernel(q_logits) && p_logits.dtype() == q_logits.dtype() {
        return Ok(tram_kernels::kl_div_rows(p_logits, q_logits)?.sum_all()?);
    }
    if p_logits.dtype() == DType::F32 && !device_has_f64(p_logits.device()) {
        return kl_div_sum_compensated(p_logits, q_logits);
    }
    kl_div_sum_composed(p_logits, q_logits)
}

/// Whether candle computes in f64 on `device`: the CPU and CUDA do, Metal does not (the trust
/// regions' radius δ is computed in f64 where this holds, in f32 through
/// [`kl_div_sum_compensated`] where it does not).
pub fn device_has_f64(device: &candle_core::Device) -> bool {
    !matches!(device, candle_core::Device::Metal(_))
}

/// [`kl_div_sum`] in f32 without cancellation, for devices without f64: accurate to a few f32
/// ulps of the KL itself when the two logits are close (TRAM's δ, where they differ by ~σ·‖W‖
/// and the naive f32 sum `Σ p·(log p − log q)` is rounding noise of either sign). Per row, with
/// `d = q − p` (exact in f32 for close logits), `w = softmax(p)`, `e = d − Σ w·d` and
/// `φ(e) = eᵉ − 1 − e ≥ 0`:
///
/// `KL(p ‖ q) = log Σ w·eᵉ − Σ w·e = log1p(A + B) − B`, with `A = Σ w·φ(e)` and `B = Σ w·e ≈ 0`,
///
/// where `φ` and `log1p(s) − B` take their Taylor series for small arguments, so no term
/// cancels. Differentiable in both (composed candle ops, any device).
pub fn kl_div_sum_compensated(p_logits: &Tensor, q_logits: &Tensor) -> Result<Tensor> {
    let (p, q) = (to_f32(p_logits)?, to_f32(q_logits)?);
    let d = q.sub(&p)?;
    let w = softmax(&p)?;
    let mean = w.mul(&d)?.sum_keepdim(D::Minus1)?;
    let e = d.broadcast_sub(&mean)?;
    // φ(e) = eᵉ − 1 − e: the series e²/2 + e³/6 + e⁴/24 + e⁵/120 below |e| = 1e-2 (relative
    // error < 1e-10), the direct form above (where it no longer cancels much).
    let e2 = e.sqr()?;
    let series = e2.mul(&e.affine(1.0 / 120.0, 1.0 / 24.0)?.mul(&e)?.affine(1.0, 1.0 / 6.0)?.mul(&e)?.affine(1.0, 0.5)?)?;
    let direct = e.exp()?.sub(&e)?.affine(1.0, -1.0)?;
    let phi = e.abs()?.lt(1e-2)?.where_cond(&series, &direct)?;
    let a = w.mul(&phi)?.sum(D::Minus1)?;
    let b = w.mul(&e)?.sum(D::Minus1)?;
    let s = a.add(&b)?;
    // log1p(s) − B = A − s²/2 + s³/3 − s⁴/4 for |s| < 1e-3, log(1 + s) − B above.
    let s2 = s.sqr()?;
    let small = a.add(&s2.mul(&s.affine(-0.25, 1.0 / 3.0)?.mul(&s)?.affine(1.0, -0.5)?)?)?;
    let large = s.affine(1.0, 1.0)?.log()?.sub(&b)?;
    let kl = s.abs()?.lt(1e-3)?.where_cond(&small, &large)?;
    Ok(kl.sum_all()?)
}

/// [`kl_div_sum`] from primitive ops: `exp(lp) · (lp − lq)` summed over everything.
pub fn kl_div_sum_composed(p_logits: &Tensor, q_logits: &Tensor) -> Result<Tensor> {
    let lp = log_softmax_composed(p_logits)?;
    let lq = log_softmax_composed(q_logits)?;
    Ok(lp.exp()?.mul(&lp.sub(&lq)?)?.sum_all()?)
}

/// Whether `x` takes the fused kernels: f32 on the CPU.
fn fused(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32
}

/// Euclidean norm of every row of `[rows, cols]` `x`, as `[rows]`: exact at every scale, with a
/// gradient `x / ‖x‖` that stays finite everywhere.
///
/// No ε is added under the square root (it would shift every small norm: at TRAM's σ = 1e-5 row
/// differences are ~1e-6, and `sqrt(d² + 1e-12)` overstates them by tens of percent). Instead each
/// row is divided by its largest `|entry|`, a detached constant (so value and gradient are exactly
/// those of `‖x‖`), which keeps the squares clear of underflow and overflow; all-zero rows take
/// the value 0 and the zero subgradient through `where`, so no `0 / 0` reaches the gradient.
pub fn row_norm(x: &Tensor) -> Result<Tensor> {
    let m = x.detach().abs()?.max_keepdim(D::Minus1)?;
    let zero = m.eq(0.0)?;
    let m = zero.where_cond(&m.ones_like()?, &m)?;
    let s = x.broadcast_div(&m)?.sqr()?.sum_keepdim(D::Minus1)?;
    let s = zero.where_cond(&s.ones_like()?, &s)?;
    let n = s.sqrt()?.mul(&m)?;
    Ok(zero.where_cond(&n.zeros_like()?, &n)?.squeeze(D::Minus1)?)
}

/// Σ of squares of every tensor, as one f32 scalar tensor (one device sync when read).
pub fn sum_sq(tensors: &[Tensor]) -> Result<Tensor> {
    let parts = tensors.iter().map(|t| to_f32(t)?.sqr()?.sum_all().map_err(Into::into)).collect::<Result<Vec<_>>>()?;
    Ok(Tensor::stack(&parts, 0)?.sum_all()?)
}

/// Global L2 norm over every tensor together: `√(sum_sq)`. For f32 CPU tensors in one pass
/// over each, nothing allocated ([`tram_kernels::reduce::sum_squares`], bit for bit the
/// composed [`sum_sq`]).
pub fn global_norm(tensors: &[Tensor]) -> Result<f64> {
    if tensors.is_empty() {
        return Ok(0.0);
    }
    if let Some(s) = tram_kernels::reduce::sum_squares(tensors)? {
        return Ok((s as f64).sqrt());
    }
    Ok((sum_sq(tensors)?.to_scalar::<f32>()? as f64).sqrt())
}

/// Multiply every tensor by `s`.
pub fn scale_all(tensors: &[Tensor], s: f64) -> Result<Vec<Tensor>> {
    tensors.iter().map(|t| t.affine(s, 0.0).map_err(Into::into)).collect()
}

/// Cast to f32 when needed (distances and norms are computed in f32).
pub(crate) fn to_f32(t: &Tensor) -> Result<Tensor> {
    Ok(if t.dtype() == DType::F32 { t.clone() } else { t.to_dtype(DType::F32)? })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn logits() -> Tensor {
        let v: Vec<f32> = (0..5 * 7).map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.4).collect();
        Tensor::from_vec(v, (5, 7), &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        a.sub(b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    #[test]
    fn the_one_pass_norm_is_the_composed_sum_of_squares_bit_for_bit() {
        // Sizes around candle's 32-element blocks, empty and large tensors, mixed magnitudes.
        let sizes = [0usize, 1, 7, 31, 32, 33, 63, 64, 65, 95, 96, 97, 1000, 4096, 70_001];
        let tensors: Vec<Tensor> = sizes
            .iter()
            .enumerate()
            .map(|(k, &n)| {
                let v: Vec<f32> = (0..n).map(|i| ((i * 7919 + k * 104_729) % 2003) as f32 * 10f32.powi((i % 9) as i32 - 4) - 1.0).collect();
                Tensor::from_vec(v, n, &Device::Cpu).unwrap()
            })
            .collect();
        for k in 0..tensors.len() {
            for set in [&tensors[k..k + 1], &tensors[..k + 1], &tensors[k..]] {
                let fused = tram_kernels::reduce::sum_squares(set).unwrap().unwrap();
                let composed = sum_sq(set).unwrap().to_scalar::<f32>().unwrap();
                assert_eq!(fused.to_bits(), composed.to_bits(), "{} tensors from size {}: {fused} vs {composed}", set.len(), sizes[k]);
            }
        }
        let matrix = Tensor::from_vec((0..6 * 37).map(|i| i as f32 * 0.1).collect::<Vec<_>>(), (6, 37), &Device::Cpu).unwrap();
        let composed = (sum_sq(std::slice::from_ref(&matrix)).unwrap().to_scalar::<f32>().unwrap() as f64).sqrt();
        assert_eq!(global_norm(&[matrix]).unwrap().to_bits(), composed.to_bits());
        // Other dtypes and strided tensors: the composed ops.
        let t = tensors[12].to_dtype(DType::BF16).unwrap();
        assert!(tram_kernels::reduce::sum_squares(std::slice::from_ref(&t)).unwrap().is_none());
        assert!(tram_kernels::reduce::sum_squares(&[tensors[13].reshape((64, 64)).unwrap().t().unwrap()]).unwrap().is_none());
    }

    #[test]
    fn fused_log_softmax_matches_the_composed_one_in_value_and_gradient() {
        let x = Var::from_tensor(&logits()).unwrap();
        let w = logits().affine(0.3, 0.1).unwrap();
        let (fused, composed) = (log_softmax(&x).unwrap(), log_softmax_composed(&x).unwrap());
        assert!(max_diff(&fused, &composed) < 1e-6);
        let gf = fused.mul(&w).unwrap().sum_all().unwrap().backward().unwrap().get(&x).unwrap().clone();
        let gc = composed.mul(&w).unwrap().sum_all().unwrap().backward().unwrap().get(&x).unwrap().clone();
        assert!(max_diff(&gf, &gc) < 1e-6);
    }

    #[test]
    fn fused_cross_entropy_matches_the_composed_one_in_value_and_gradient() {
        let x = Var::from_tensor(&logits()).unwrap();
        let targets = Tensor::new(&[3u32, 0, 6, 2, 2], &Device::Cpu).unwrap();
        let (fused, composed) = (cross_entropy(&x, &targets).unwrap(), cross_entropy_composed(&x, &targets).unwrap());
        assert!((fused.to_scalar::<f32>().unwrap() - composed.to_scalar::<f32>().unwrap()).abs() < 1e-6);
        let gf = fused.backward().unwrap().get(&x).unwrap().clone();
        let gc = composed.backward().unwrap().get(&x).unwrap().clone();
        assert!(max_diff(&gf, &gc) < 1e-7);
    }

    #[test]
    fn fused_kl_sum_matches_the_composed_one_in_value_and_both_gradients() {
        let (p, q) = (Var::from_tensor(&logits()).unwrap(), Var::from_tensor(&logits().affine(-0.7, 0.2).unwrap()).unwrap());
        let (fused, composed) = (kl_div_sum(&p, &q).unwrap(), kl_div_sum_composed(&p, &q).unwrap());
        let (a, b) = (fused.to_scalar::<f32>().unwrap(), composed.to_scalar::<f32>().unwrap());
        assert!(a > 1.0 && (a - b).abs() < 1e-5 * b, "{a} {b}");
        let (gf, gc) = (fused.backward().unwrap(), composed.backward().unwrap());
        for v in [&p, &q] {
            assert!(max_diff(gf.get(v).unwrap(), gc.get(v).unwrap()) < 1e-6);
        }
    }

    /// The radius δ's path: f64 through the kernel, against the composed f64 sum (an independent
    /// formula over primitive ops) in value and both gradients, far below f32's resolution.
    #[test]
    fn f64_kl_sum_matches_the_composed_one_to_f64_precision_in_value_and_both_gradients() {
        let f64v = |t: Tensor| Var::from_tensor(&t.to_dtype(DType::F64).unwrap()).unwrap();
        let (p, q) = (f64v(logits()), f64v(logits().affine(-0.7, 0.2).unwrap()));
        let (fused, composed) = (kl_div_sum(&p, &q).unwrap(), kl_div_sum_composed(&p, &q).unwrap());
        let (a, b) = (fused.to_scalar::<f64>().unwrap(), composed.to_scalar::<f64>().unwrap());
        assert!(a > 1.0 && (a - b).abs() < 1e-12 * b, "{a} {b}");
        let (gf, gc) = (fused.backward().unwrap(), composed.backward().unwrap());
        for v in [&p, &q] {
            let d = gf.get(v).unwrap().sub(gc.get(v).unwrap()).unwrap().abs().unwrap().flatten_all().unwrap();
            let d = d.max(0).unwrap().to_scalar::<f64>().unwrap();
            assert!(d < 1e-12, "gradient differs by {d}");
        }
    }

    #[test]
    fn cross_entropy_names_a_class_id_out_of_range() {
        let targets = Tensor::new(&[3u32, 0, 7, 2, 2], &Device::Cpu).unwrap();
        let e = cross_entropy(&logits(), &targets).unwrap_err().to_string();
        assert!(e.contains("target 7 of row 2") && e.contains("0..7"), "{e}");
    }

    /// The δ regime: current logits a small perturbation of the target's, where the f32 KL
    /// cancels. `scale` is the size of the logits, `eps` that of the perturbation.
    fn close_pair(rows: usize, classes: usize, scale: f32, eps: f32) -> (Tensor, Tensor) {
        let p: Vec<f32> = (0..rows * classes).map(|i| ((i * 7919 % 1013) as f32 / 1013.0 - 0.5) * 2.0 * scale).collect();
        let q: Vec<f32> = p.iter().enumerate().map(|(i, v)| v + ((i * 104729 % 997) as f32 / 997.0 - 0.5) * 2.0 * eps).collect();
        (Tensor::from_vec(p, (rows, classes), &Device::Cpu).unwrap(), Tensor::from_vec(q, (rows, classes), &Device::Cpu).unwrap())
    }

    /// `½ Var_w(q − p)` with `w = softmax(p)`, in f64: KL(p ‖ q) to second order in `q − p`, the
    /// closed form δ's regime falls in (the third-order term is ~|q − p| / 3 relative). At
    /// perturbations this small even the f64 sum `Σ p·(log p − log q)` cancels (2e-3 relative
    /// at 1e-6 on logits of size 8), so this is the reference there.
    fn half_variance_f64(p: &Tensor, q: &Tensor) -> f64 {
        let (p, q) = (p.to_dtype(DType::F64).unwrap(), q.to_dtype(DType::F64).unwrap());
        let w = log_softmax_composed(&p).unwrap().exp().unwrap();
        let d = q.sub(&p).unwrap();
        let e = d.broadcast_sub(&w.mul(&d).unwrap().sum_keepdim(D::Minus1).unwrap()).unwrap();
        w.mul(&e.sqr().unwrap()).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap() / 2.0
    }

    /// The f32 form for devices without f64 against f64 references of the same f32 logits:
    /// within 1e-4 relative from perturbations of 1e-6 (TRAM's σ = 1e-5 regime: δ ~ 1e-13 per
    /// row; reference: the second-order closed form) to 1 (ordinary distances, where the series
    /// give way to the direct forms; reference: the f64 sum), where the naive f32 sum is off by
    /// orders of magnitude at the small end.
    #[test]
    fn compensated_f32_kl_matches_the_f64_kl_where_the_naive_f32_one_is_noise() {
        for (scale, eps) in [(8.0f32, 1e-6f32), (8.0, 1e-5), (3.0, 1e-3), (3.0, 0.05), (2.0, 1.0)] {
            let (p, q) = close_pair(64, 1000, scale, eps);
            let reference = if eps <= 1e-5 {
                half_variance_f64(&p, &q)
            } else {
                kl_div_sum_composed(&p.to_dtype(DType::F64).unwrap(), &q.to_dtype(DType::F64).unwrap()).unwrap().to_scalar::<f64>().unwrap()
            };
            let comp = kl_div_sum_compensated(&p, &q).unwrap().to_scalar::<f32>().unwrap() as f64;
            let naive = kl_div_sum_composed(&p, &q).unwrap().to_scalar::<f32>().unwrap() as f64;
            let (ec, en) = ((comp - reference).abs() / reference, (naive - reference).abs() / reference);
            println!("scale {scale}, perturbation {eps:e}: f64 {reference:.6e}, compensated f32 {comp:.6e} ({ec:.1e}), naive f32 {naive:.6e} ({en:.1e})");
            assert!(ec < 1e-4, "perturbation {eps:e}: compensated f32 KL {comp:e} vs f64 {reference:e} ({ec:.1e})");
            if eps <= 1e-5 {
                assert!(en > 1e-2, "the naive f32 KL should be noise at perturbation {eps:e}: {naive:e} vs {reference:e}");
            }
        }
    }

    /// Its gradients with respect to both logits are those of the f64 KL.
    #[test]
    fn compensated_f32_kl_gradients_match_the_f64_ones() {
        for eps in [1e-3f32, 0.5] {
            let (p, q) = close_pair(6, 50, 3.0, eps);
            let (pv, qv) = (Var::from_tensor(&p).unwrap(), Var::from_tensor(&q).unwrap());
            let g = kl_div_sum_compensated(&pv, &qv).unwrap().backward().unwrap();
            let (p64, q64) =
                (Var::from_tensor(&p.to_dtype(DType::F64).unwrap()).unwrap(), Var::from_tensor(&q.to_dtype(DType::F64).unwrap()).unwrap());
            let g64 = kl_div_sum_composed(&p64, &q64).unwrap().backward().unwrap();
            for (a, b) in [(g.get(&pv).unwrap(), g64.get(&p64).unwrap()), (g.get(&qv).unwrap(), g64.get(&q64).unwrap())] {
                let b = b.to_dtype(DType::F32).unwrap();
                let scale = b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                let err = max_diff(a, &b) / scale;
                assert!(err < 1e-3, "perturbation {eps}: gradient relative error {err:e}");
            }
        }
    }

    #[test]
    fn cpu_and_cuda_compute_in_f64() {
        assert!(device_has_f64(&Device::Cpu));
    }
}
