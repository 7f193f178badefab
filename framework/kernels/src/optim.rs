//! Fused in-place optimizer updates: each parameter is read and written once per step, with
//! its gradient and moments, and nothing is allocated after the first step (PyTorch's
//! single-tensor `Adam` / `AdamW` / `SGD` formulas, in f32).
//!
//! On the CPU the parameter's storage is updated in place ([`candle_core::InplaceOp2`]) and the
//! moments are plain `Vec<f32>`s; an f32 parameter is required there (the caller keeps master
//! weights in f32). On other devices the same formulas run as candle ops and the new value is
//! written with [`Var::set`] (moments as device tensors).

use crate::par::{for_rows, SyncPtr};
use candle_core::{bail, CpuStorage, DType, InplaceOp2, Layout, Result, Tensor, Var};
use std::sync::Mutex;

/// Adam / AdamW hyper-parameters (PyTorch names and defaults: β = (0.9, 0.999), ε = 1e-8).
#[derive(Clone, Copy, Debug)]
pub struct AdamConfig {
    /// Learning rate.
    pub lr: f64,
    /// β₁.
    pub beta1: f64,
    /// β₂.
    pub beta2: f64,
    /// ε, added to `√v̂`.
    pub eps: f64,
    /// Weight decay: L2 (added to the gradient) for Adam, decoupled (`θ ← θ (1 − lr·wd)`) for
    /// AdamW.
    pub weight_decay: f64,
    /// AdamW (decoupled weight decay) instead of Adam.
    pub decoupled: bool,
}

impl Default for AdamConfig {
    fn default() -> Self {
        Self { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0, decoupled: false }
    }
}

enum Moments {
    Cpu(Vec<f32>, Vec<f32>),
    Device(Tensor, Tensor),
}

/// The moments and step count of one parameter, created on its first update.
#[derive(Default)]
pub struct AdamState {
    moments: Option<Moments>,
    /// Updates taken so far.
    pub step: u64,
}

impl AdamState {
    /// No moments yet.
    pub fn new() -> Self {
        Self::default()
    }
    /// The first and second moments, as f32 tensors on the CPU (for checkpoints and tests).
    pub fn moments(&self, shape: &[usize]) -> Result<Option<(Tensor, Tensor)>> {
        Ok(match &self.moments {
            None => None,
            Some(Moments::Cpu(m, v)) => {
                Some((Tensor::from_slice(m, shape, &candle_core::Device::Cpu)?, Tensor::from_slice(v, shape, &candle_core::Device::Cpu)?))
            }
            Some(Moments::Device(m, v)) => Some((m.to_device(&candle_core::Device::Cpu)?, v.to_device(&candle_core::Device::Cpu)?)),
        })
    }
}

struct AdamCpu<'a> {
    m: Mutex<&'a mut Vec<f32>>,
    v: Mutex<&'a mut Vec<f32>>,
    c: AdamConfig,
    step: u64,
}

impl InplaceOp2 for AdamCpu<'_> {
    fn name(&self) -> &'static str {
        "tram-adam-step"
    }
    fn cpu_fwd(&self, ps: &mut CpuStorage, pl: &Layout, gs: &CpuStorage, gl: &Layout) -> Result<()> {
        let (CpuStorage::F32(p), CpuStorage::F32(g)) = (ps, gs) else {
            bail!("adam_step: the fused CPU update needs an f32 parameter and gradient");
        };
        let (Some((pa, pb)), Some((ga, gb))) = (pl.contiguous_offsets(), gl.contiguous_offsets()) else {
            bail!("adam_step: parameter and gradient must be contiguous");
        };
        let (p, g) = (&mut p[pa..pb], &g[ga..gb]);
        let mut m = self.m.lock().expect("adam moments");
        let mut v = self.v.lock().expect("adam moments");
        let c = self.c;
        let t = self.step as i32;
        let (b1, b2) = (c.beta1 as f32, c.beta2 as f32);
        let step_size = (c.lr / (1.0 - c.beta1.powi(t))) as f32;
        let bc2_sqrt = (1.0 - c.beta2.powi(t)).sqrt() as f32;
        let (eps, wd, decay) = (c.eps as f32, c.weight_decay as f32, (1.0 - c.lr * c.weight_decay) as f32);
        let (l2, decoupled) = (c.weight_decay != 0.0 && !c.decoupled, c.weight_decay != 0.0 && c.decoupled);
        const CHUNK: usize = 4096;
        let n = p.len();
        let (pp, mp, vp) = (SyncPtr(p.as_mut_ptr()), SyncPtr(m.as_mut_ptr()), SyncPtr(v.as_mut_ptr()));
        for_rows(n.div_ceil(CHUNK), CHUNK * 4, |_, range| {
            let (a, b) = (range.start * CHUNK, (range.end * CHUNK).min(n));
            let (p, m, v) = unsafe { (pp.slice(a, b - a), mp.slice(a, b - a), vp.slice(a, b - a)) };
            for i in 0..b - a {
                let mut gi = g[a + i];
                let mut pi = p[i];
                if l2 {
                    gi += wd * pi;
                }
                if decoupled {
                    pi *= decay;
                }
                let mi = m[i] + (1.0 - b1) * (gi - m[i]);
                let vi = b2 * v[i] + (1.0 - b2) * gi * gi;
                m[i] = mi;
                v[i] = vi;
                p[i] = pi - step_size * mi / (vi.sqrt() / bc2_sqrt + eps);
            }
        });
        Ok(())
    }
}

/// One Adam / AdamW step of `param` with gradient `grad`, in place: PyTorch's single-tensor
/// formula (`m ← m + (1−β₁)(g − m)`, `v ← β₂ v + (1−β₂) g²`,
/// `θ ← θ − lr/(1−β₁ᵗ) · m / (√v / √(1−β₂ᵗ) + ε)`, weight decay as [`AdamConfig`] says), in one
/// pass over memory on the CPU. `state` is created on the first call and must stay with this
/// parameter. Errors name a shape or dtype mismatch.
pub fn adam_step(param: &Var, grad: &Tensor, state: &mut AdamState, c: &AdamConfig) -> Result<()> {
    if grad.dims() != param.dims() {
        bail!("adam_step: gradient {:?} does not match the parameter {:?}", grad.dims(), param.dims());
    }
    state.step += 1;
    let n = param.elem_count();
    if param.device().is_cpu() {
        if param.dtype() != DType::F32 {
            bail!("adam_step: the fused CPU update needs an f32 parameter, got {:?} (keep f32 master weights)", param.dtype());
        }
        if !param.is_contiguous() {
            bail!("adam_step: the parameter must be contiguous");
        }
        let moments = state.moments.get_or_insert_with(|| Moments::Cpu(vec![0.0; n], vec![0.0; n]));
        let Moments::Cpu(m, v) = moments else { bail!("adam_step: the state was created on another device") };
        let g = grad.to_dtype(DType::F32)?;
        let g = if g.is_contiguous() { g } else { g.contiguous()? };
        return param.as_tensor().inplace_op2(&g, &AdamCpu { m: Mutex::new(m), v: Mutex::new(v), c: *c, step: state.step });
    }
    adam_composed(param, grad, state, c)
}

/// The composed path of [`adam_step`] (other devices), on any device (for the tests).
#[doc(hidden)]
pub fn adam_step_composed(param: &Var, grad: &Tensor, state: &mut AdamState, c: &AdamConfig) -> Result<()> {
    state.step += 1;
    adam_composed(param, grad, state, c)
}

fn adam_composed(param: &Var, grad: &Tensor, state: &mut AdamState, c: &AdamConfig) -> Result<()> {
    let p = param.as_detached_tensor();
    let moments = match state.moments.take() {
        Some(m) => m,
        None => Moments::Device(p.zeros_like()?.to_dtype(DType::F32)?, p.zeros_like()?.to_dtype(DType::F32)?),
    };
    let Moments::Device(m, v) = moments else { bail!("adam_step: the state was created on another device") };
    let mut pf = p.to_dtype(DType::F32)?;
    let mut g = grad.detach().to_dtype(DType::F32)?;
    if c.weight_decay != 0.0 && !c.decoupled {
        g = (g + pf.affine(c.weight_decay, 0.0)?)?;
    }
    if c.weight_decay != 0.0 && c.decoupled {
        pf = pf.affine(1.0 - c.lr * c.weight_decay, 0.0)?;
    }
    let m = (&m + (g.sub(&m)?.affine(1.0 - c.beta1, 0.0)?))?;
    let v = (v.affine(c.beta2, 0.0)? + g.sqr()?.affine(1.0 - c.beta2, 0.0)?)?;
    let t = state.step as i32;
    let denom = v.sqrt()?.affine(1.0 / (1.0 - c.beta2.powi(t)).sqrt(), c.eps)?;
    let new = (pf - m.div(&denom)?.affine(c.lr / (1.0 - c.beta1.powi(t)), 0.0)?)?;
    param.set(&new.to_dtype(param.dtype())?)?;
    state.moments = Some(Moments::Device(m, v));
    Ok(())
}

/// SGD hyper-parameters (PyTorch's `torch.optim.SGD`).
#[derive(Clone, Copy, Debug, Default)]
pub struct SgdConfig {
    /// Learning rate.
    pub lr: f64,
    /// Momentum (0: plain SGD, no buffer).
    pub momentum: f64,
    /// Dampening of the gradient added to the buffer.
    pub dampening: f64,
    /// L2 weight decay added to the gradient.
    pub weight_decay: f64,
    /// Nesterov momentum.
    pub nesterov: bool,
}

struct SgdCpu<'a> {
    buf: Mutex<&'a mut Vec<f32>>,
    first: bool,
    c: SgdConfig,
}

impl InplaceOp2 for SgdCpu<'_> {
    fn name(&self) -> &'static str {
        "tram-sgd-step"
    }
    fn cpu_fwd(&self, ps: &mut CpuStorage, pl: &Layout, gs: &CpuStorage, gl: &Layout) -> Result<()> {
        let (CpuStorage::F32(p), CpuStorage::F32(g)) = (ps, gs) else {
            bail!("sgd_step: the fused CPU update needs an f32 parameter and gradient");
        };
        let (Some((pa, pb)), Some((ga, gb))) = (pl.contiguous_offsets(), gl.contiguous_offsets()) else {
            bail!("sgd_step: parameter and gradient must be contiguous");
        };
        let (p, g) = (&mut p[pa..pb], &g[ga..gb]);
        let mut buf = self.buf.lock().expect("sgd momentum");
        let c = self.c;
        let (lr, mu, damp, wd) = (c.lr as f32, c.momentum as f32, c.dampening as f32, c.weight_decay as f32);
        let momentum = c.momentum != 0.0;
        for i in 0..p.len() {
            let mut gi = g[i];
            if wd != 0.0 {
                gi += wd * p[i];
            }
            if momentum {
                let b = if self.first { gi } else { mu * buf[i] + (1.0 - damp) * gi };
                buf[i] = b;
                gi = if c.nesterov { gi + mu * b } else { b };
            }
            p[i] -= lr * gi;
        }
        Ok(())
    }
}

/// One SGD step in place (PyTorch's formula: the momentum buffer starts as the first
/// gradient; `state` holds it). CPU: one pass over memory; other devices: candle ops and
/// [`Var::set`].
pub fn sgd_step(param: &Var, grad: &Tensor, state: &mut AdamState, c: &SgdConfig) -> Result<()> {
    if grad.dims() != param.dims() {
        bail!("sgd_step: gradient {:?} does not match the parameter {:?}", grad.dims(), param.dims());
    }
    state.step += 1;
    let first = state.step == 1;
    if param.device().is_cpu() {
        if param.dtype() != DType::F32 {
            bail!("sgd_step: the fused CPU update needs an f32 parameter, got {:?} (keep f32 master weights)", param.dtype());
        }
        let n = param.elem_count();
        let moments = state.moments.get_or_insert_with(|| Moments::Cpu(vec![0.0; n], Vec::new()));
        let Moments::Cpu(buf, _) = moments else { bail!("sgd_step: the state was created on another device") };
        let g = grad.to_dtype(DType::F32)?;
        let g = if g.is_contiguous() { g } else { g.contiguous()? };
        return param.as_tensor().inplace_op2(&g, &SgdCpu { buf: Mutex::new(buf), first, c: *c });
    }
    sgd_composed(param, grad, state, c)
}

/// The composed path of [`sgd_step`] (other devices), on any device (for the tests).
#[doc(hidden)]
pub fn sgd_step_composed(param: &Var, grad: &Tensor, state: &mut AdamState, c: &SgdConfig) -> Result<()> {
    state.step += 1;
    sgd_composed(param, grad, state, c)
}

fn sgd_composed(param: &Var, grad: &Tensor, state: &mut AdamState, c: &SgdConfig) -> Result<()> {
    let first = state.step == 1;
    let p = param.as_detached_tensor().to_dtype(DType::F32)?;
    let mut g = grad.detach().to_dtype(DType::F32)?;
    if c.weight_decay != 0.0 {
        g = (g + p.affine(c.weight_decay, 0.0)?)?;
    }
    if c.momentum != 0.0 {
        let b = match state.moments.take() {
            Some(Moments::Device(b, _)) if !first => (b.affine(c.momentum, 0.0)? + g.affine(1.0 - c.dampening, 0.0)?)?,
            _ => g.clone(),
        };
        g = if c.nesterov { (g + b.affine(c.momentum, 0.0)?)? } else { b.clone() };
        state.moments = Some(Moments::Device(b.clone(), b));
    }
    param.set(&(p - g.affine(c.lr, 0.0)?)?.to_dtype(param.dtype())?)
}
