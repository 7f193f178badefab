//! Gradient checks against finite differences, like PyTorch's `torch.autograd.gradcheck`.

use crate::components::distance::{Distance, Reduction};
use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor, Var};

/// Step and tolerances of [`gradcheck`] (PyTorch's defaults).
#[derive(Clone, Copy, Debug)]
pub struct GradcheckOptions {
    /// Finite-difference step (central differences, in f64).
    pub eps: f64,
    /// Absolute tolerance.
    pub atol: f64,
    /// Relative tolerance (of the numerical gradient).
    pub rtol: f64,
}

impl Default for GradcheckOptions {
    fn default() -> Self {
        Self { eps: 1e-6, atol: 1e-5, rtol: 1e-3 }
    }
}

/// What a passing [`gradcheck`] compared.
#[derive(Clone, Debug, PartialEq)]
pub struct GradcheckReport {
    /// Gradient entries compared.
    pub checked: usize,
    /// Largest `|analytic − numerical|`.
    pub max_abs_error: f64,
}

/// Checks the gradient of the scalar function `f` at `inputs`: the analytic gradient (candle's
/// backward through `f`) of every input against central finite differences
/// `(f(x + eps·e_j) − f(x − eps·e_j)) / 2eps`, entry by entry, requiring
/// `|analytic − numerical| ≤ atol + rtol·|numerical|`.
///
/// Inputs are copied to f64 on the CPU (the check needs f64's precision), so `f` must work in
/// f64. An error names the first failing input and entry with both values: a wrong backward
/// (or an op that drops the gradient: `candle_nn`'s fused softmax) fails here.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use tram::testing::{gradcheck, GradcheckOptions};
///
/// let x = Tensor::new(&[[0.5f64, -1.0], [2.0, 0.1]], &Device::Cpu)?;
/// let report = gradcheck(|v| Ok(v[0].sqr()?.sin()?.sum_all()?), &[x], GradcheckOptions::default())?;
/// assert_eq!(report.checked, 4);
/// # Ok::<(), tram::Error>(())
/// ```
pub fn gradcheck(f: impl Fn(&[Tensor]) -> Result<Tensor>, inputs: &[Tensor], options: GradcheckOptions) -> Result<GradcheckReport> {
    let fail = |reason: String| Error::Model(format!("gradcheck: {reason}"));
    let xs: Vec<Tensor> = inputs.iter().map(|x| x.to_device(&Device::Cpu)?.to_dtype(DType::F64)).collect::<candle_core::Result<_>>()?;
    let vars: Vec<Var> = xs.iter().map(Var::from_tensor).collect::<candle_core::Result<_>>()?;
    let tracked: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let out = f(&tracked)?;
    if out.elem_count() != 1 {
        return Err(fail(format!("the function must return a scalar, it returned shape {:?}", out.dims())));
    }
    let grads = out.sum_all()?.backward()?;
    let value = |args: &[Tensor]| -> Result<f64> { Ok(f(args)?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?) };
    let (mut checked, mut max_abs_error) = (0, 0f64);
    for (i, (x, var)) in xs.iter().zip(&vars).enumerate() {
        let analytic: Vec<f64> = match grads.get(var.as_tensor()) {
            Some(g) => g.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?,
            None => vec![0.0; x.elem_count()],
        };
        let flat: Vec<f64> = x.flatten_all()?.to_vec1()?;
        for j in 0..flat.len() {
            let at = |delta: f64| -> Result<f64> {
                let mut v = flat.clone();
                v[j] += delta;
                let mut args = xs.clone();
                args[i] = Tensor::from_vec(v, x.shape(), &Device::Cpu)?;
                value(&args)
            };
            let numerical = (at(options.eps)? - at(-options.eps)?) / (2.0 * options.eps);
            let err = (analytic[j] - numerical).abs();
            // Written so that a NaN on either side fails.
            let within = err <= options.atol + options.rtol * numerical.abs();
            if !within {
                return Err(fail(format!(
                    "input {i}, entry {j} (of shape {:?}): analytic gradient {:.6e}, numerical {:.6e} (|difference| {err:.2e} > atol {:.0e} + rtol {:.0e} · |numerical|): the backward of the function is wrong, or an op in it drops the gradient",
                    x.dims(),
                    analytic[j],
                    numerical,
                    options.atol,
                    options.rtol
                )));
            }
            max_abs_error = max_abs_error.max(err);
            checked += 1;
        }
    }
    Ok(GradcheckReport { checked, max_abs_error })
}

/// [`gradcheck`] of a distance `D(target ‖ current)` in both inputs (`[rows, classes]`
/// logits), as the engine differentiates it (penalties: in `current`, and in `target` with
/// `through_target = true`).
pub fn gradcheck_distance(
    distance: &dyn Distance,
    target: &Tensor,
    current: &Tensor,
    reduction: Reduction,
    examples: usize,
    options: GradcheckOptions,
) -> Result<GradcheckReport> {
    gradcheck(|v| distance.distance(&v[0], &v[1], reduction, examples), &[target.clone(), current.clone()], options)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{CpuStorage, CustomOp1, Layout, Shape};

    /// x², with a backward that is right (2x·g) or deliberately wrong (x·g).
    struct Square {
        right_backward: bool,
    }

    impl CustomOp1 for Square {
        fn name(&self) -> &'static str {
            "square-for-gradcheck"
        }
        fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
            let CpuStorage::F64(v) = storage else { candle_core::bail!("f64 only") };
            let (start, end) = layout.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg("contiguous only".into()))?;
            Ok((CpuStorage::F64(v[start..end].iter().map(|x| x * x).collect()), layout.shape().clone()))
        }
        fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
            let k = if self.right_backward { 2.0 } else { 1.0 };
            Ok(Some(arg.affine(k, 0.0)?.mul(grad_res)?))
        }
    }

    fn x() -> Tensor {
        Tensor::new(&[[0.5f64, -1.5, 2.0], [0.25, 1.0, -0.75]], &Device::Cpu).unwrap()
    }

    #[test]
    fn gradcheck_passes_a_right_backward() {
        let report =
            gradcheck(|v| Ok(v[0].apply_op1(Square { right_backward: true })?.sum_all()?), &[x()], GradcheckOptions::default()).unwrap();
        assert_eq!(report.checked, 6);
        assert!(report.max_abs_error < 1e-6, "{report:?}");
    }

    #[test]
    fn gradcheck_catches_a_wrong_backward_naming_the_entry_and_both_values() {
        let err = gradcheck(|v| Ok(v[0].apply_op1(Square { right_backward: false })?.sum_all()?), &[x()], GradcheckOptions::default())
            .unwrap_err()
            .to_string();
        // Entry 0: x = 0.5, analytic 0.5 (wrong), numerical 1.0.
        assert!(err.contains("input 0, entry 0") && err.contains("5.000000e-1") && err.contains("1.000000e0"), "{err}");
    }

    #[test]
    fn gradcheck_catches_an_op_that_drops_the_gradient() {
        // The value depends on x, the graph does not: the analytic gradient is 0.
        let err = gradcheck(|v| Ok(v[0].detach().sqr()?.sum_all()?), &[x()], GradcheckOptions::default()).unwrap_err().to_string();
        assert!(err.contains("analytic gradient 0.000000e0"), "{err}");
    }

    #[test]
    fn gradcheck_refuses_a_non_scalar_function() {
        let err = gradcheck(|v| Ok(v[0].sqr()?), &[x()], GradcheckOptions::default()).unwrap_err().to_string();
        assert!(err.contains("scalar") && err.contains("[2, 3]"), "{err}");
    }

    /// Squared L2 of the logits (mean over rows): 2(t − c)/rows in `target`, the negative in `current`.
    struct SqL2;
    impl Distance for SqL2 {
        fn name(&self) -> &str {
            "sq-l2"
        }
        fn distance(&self, t: &Tensor, c: &Tensor, _: Reduction, _: usize) -> Result<Tensor> {
            Ok(t.sub(c)?.sqr()?.sum_all()?.affine(1.0 / t.dim(0)? as f64, 0.0)?)
        }
    }

    #[test]
    fn a_distance_is_checked_in_both_inputs() {
        let t = x();
        let c = x().affine(0.5, 0.1).unwrap();
        let r = gradcheck_distance(&SqL2, &t, &c, Reduction::Mean, 2, GradcheckOptions::default()).unwrap();
        assert_eq!(r.checked, 12);
    }
}
