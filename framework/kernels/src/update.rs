//! In-place optimizer updates that reproduce, bit for bit, the composed candle ops of the
//! project's Adam / AdamW / SGD rules (`tram-plugins`' `adam`, `adamw`, `sgd`), in one pass over
//! memory and without allocating: parameter, gradient and state are each read once and the
//! parameter and state written once.
//!
//! Unlike [`crate::optim`] (PyTorch's single-tensor formulas, its own state), these kernels
//! keep the composed path's order of f32 operations exactly: each candle `affine(x, mul, add)`
//! is `x * (mul as f32) + (add as f32)` (the `+ 0.0` included: it turns a `-0.0` into `+0.0`),
//! each binary op one rounding, no fused multiply-add. The state lives in ordinary candle
//! tensors (checkpointed as they are), written in place through candle's in-place ops, so the
//! caller must keep them unshared: a tensor handle cloned from one (a checkpoint entry, a
//! rollback backup) sees the next update.
//!
//! Each function returns `Ok(false)`, touching nothing, when the fused path does not apply
//! (a device other than the CPU, a dtype other than f32, a non-contiguous tensor): the caller
//! then runs its composed path. With the `cuda` feature, [`adam_update`] and [`sgd_update`] also
//! run on f32 CUDA tensors (the kernels of `cuda/fused.cu`, the same order of f32 operations,
//! so bitwise the CPU's) while [`crate::cuda_kernels_enabled`].

use crate::par::{on_this_thread, SyncPtr};
use candle_core::{bail, CpuStorage, DType, InplaceOp1, InplaceOp2, Layout, Result, Storage, Tensor};
use std::cell::RefCell;

/// Elements per unit of work. The updates run on the calling thread: each is a memory-bound
/// pass of well under a millisecond (the small GPT-2's 1.3 M weights: 0.7 ms for Adam on one
/// core), and waking candle's pool for it cost far more on a shared machine (28 ms for the same
/// update with a second thread at a load average of 7: the caller spins at the pool's barrier
/// while the worker waits for a core).
const CHUNK: usize = 4096;

/// The coefficients of one Adam / AdamW step, as the composed path passes them to candle's
/// `affine` (f64, rounded to f32 the way candle's f32 `affine` does).
#[derive(Clone, Copy, Debug)]
pub struct AdamCoeffs {
    /// β₁ (`m.affine(β₁, 0)`).
    pub beta1: f64,
    /// 1 − β₁ (`g.affine(1 − β₁, 0)`).
    pub one_minus_beta1: f64,
    /// β₂.
    pub beta2: f64,
    /// 1 − β₂.
    pub one_minus_beta2: f64,
    /// 1 / √(1 − β₂ᵗ) (`√v.affine(1/√(1 − β₂ᵗ), ε)`).
    pub inv_bc2_sqrt: f64,
    /// ε.
    pub eps: f64,
    /// lr / (1 − β₁ᵗ) (`(m / denom).affine(lr / (1 − β₁ᵗ), 0)`).
    pub step_size: f64,
    /// Weight decay, if any.
    pub decay: Decay,
}

impl AdamCoeffs {
    /// The coefficients of step `t` (from 1) at learning rate `lr`: the complements of the β and
    /// the bias corrections 1 − β₁ᵗ, 1 − β₂ᵗ derived as the composed path derives them.
    pub fn at(t: u64, lr: f64, beta1: f64, beta2: f64, eps: f64, decay: Decay) -> Self {
        let t = t as i32;
        Self {
            beta1,
            one_minus_beta1: 1.0 - beta1,
            beta2,
            one_minus_beta2: 1.0 - beta2,
            inv_bc2_sqrt: 1.0 / (1.0 - beta2.powi(t)).sqrt(),
            eps,
            step_size: lr / (1.0 - beta1.powi(t)),
            decay,
        }
    }
}

/// Weight decay of an update, with the factor the composed path passes to `affine`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Decay {
    /// None.
    None,
    /// L2 added to the gradient: `g + θ.affine(λ, 0)`.
    L2(f64),
    /// Decoupled (AdamW): `θ.affine(1 − lr·λ, 0)` before the step.
    Decoupled(f64),
}

/// The coefficients of one SGD step (the composed path's `affine` arguments).
#[derive(Clone, Copy, Debug)]
pub struct SgdCoeffs {
    /// Learning rate (`d.affine(lr, 0)`).
    pub lr: f64,
    /// Momentum μ; 0: no buffer.
    pub momentum: f64,
    /// 1 − dampening (`d.affine(1 − dampening, 0)`).
    pub one_minus_dampening: f64,
    /// Nesterov momentum: `d + buf.affine(μ, 0)`.
    pub nesterov: bool,
    /// L2 weight decay (`g + θ.affine(λ, 0)`), 0 for none.
    pub weight_decay: f64,
}

/// candle's f32 `affine`.
#[inline(always)]
fn aff(x: f32, mul: f32, add: f32) -> f32 {
    x * mul + add
}

/// Whether `t` can take the fused path: an f32 contiguous CPU tensor.
fn fusable(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32 && t.is_contiguous()
}

/// Run `f` with mutable access to the f32 elements of `t` (locked for writing meanwhile).
fn with_f32_mut<R>(t: &Tensor, f: impl FnOnce(&mut [f32]) -> Result<R>) -> Result<R> {
    struct Op<F, R>(RefCell<Option<F>>, RefCell<Option<Result<R>>>);
    impl<R, F: FnOnce(&mut [f32]) -> Result<R>> InplaceOp1 for Op<F, R> {
        fn name(&self) -> &'static str {
            "tram-update-state"
        }
        fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> Result<()> {
            let CpuStorage::F32(x) = s else { bail!("fused update: the state must be f32") };
            let Some((a, b)) = l.contiguous_offsets() else { bail!("fused update: the state must be contiguous") };
            let f = self.0.borrow_mut().take().expect("called once");
            *self.1.borrow_mut() = Some(f(&mut x[a..b]));
            Ok(())
        }
    }
    let op = Op(RefCell::new(Some(f)), RefCell::new(None));
    t.inplace_op1(&op)?;
    op.1.into_inner().expect("the op ran")
}

/// The parameter's elements and the gradient's, for the innermost step of an update.
struct ParamOp<F>(RefCell<Option<F>>);
impl<F: FnOnce(&mut [f32], &[f32])> InplaceOp2 for ParamOp<F> {
    fn name(&self) -> &'static str {
        "tram-update-param"
    }
    fn cpu_fwd(&self, ps: &mut CpuStorage, pl: &Layout, gs: &CpuStorage, gl: &Layout) -> Result<()> {
        let (CpuStorage::F32(p), CpuStorage::F32(g)) = (ps, gs) else { bail!("fused update: parameter and gradient must be f32") };
        let (Some((pa, pb)), Some((ga, gb))) = (pl.contiguous_offsets(), gl.contiguous_offsets()) else {
            bail!("fused update: parameter and gradient must be contiguous")
        };
        let f = self.0.borrow_mut().take().expect("called once");
        f(&mut p[pa..pb], &g[ga..gb]);
        Ok(())
    }
}

/// The identity of a tensor's storage on any device: the address of the candle `Storage` it
/// shares with every view and clone of it.
fn storage_id(t: &Tensor) -> usize {
    &*t.storage_and_layout().0 as *const Storage as usize
}

/// Errors when two of the parameter, its gradient and its state share storage (locking one
/// storage twice would deadlock, and the update would read what it wrote).
fn distinct_storage(what: &str, param: &Tensor, grad: &Tensor, state: &[&Tensor]) -> Result<()> {
    let ids: Vec<usize> = [param, grad].into_iter().chain(state.iter().copied()).map(storage_id).collect();
    for (i, a) in ids.iter().enumerate() {
        if ids[i + 1..].contains(a) {
            bail!("{what}: the parameter, its gradient and its state must not share storage (tensor {i} of [parameter, gradient, state…] does)");
        }
    }
    Ok(())
}

/// Shapes checked; whether every tensor takes the CUDA update kernel: f32 contiguous tensors on
/// one CUDA device, the kernels enabled. Tensors sharing storage are an error, as on the CPU.
#[cfg(feature = "cuda")]
fn on_cuda(what: &str, param: &Tensor, grad: &Tensor, state: &[&Tensor]) -> Result<bool> {
    let all: Vec<&Tensor> = [param, grad].into_iter().chain(state.iter().copied()).collect();
    if !crate::cuda_kernels_enabled() || !param.device().is_cuda() {
        return Ok(false);
    }
    if !all.iter().all(|t| t.device().same_device(param.device()) && t.dtype() == DType::F32 && t.is_contiguous()) {
        return Ok(false);
    }
    check_shapes(what, param, grad, state)?;
    distinct_storage(what, param, grad, state)?;
    Ok(true)
}

fn check_shapes(what: &str, param: &Tensor, grad: &Tensor, state: &[&Tensor]) -> Result<()> {
    if grad.dims() != param.dims() {
        bail!("{what}: gradient {:?} does not match the parameter {:?}", grad.dims(), param.dims());
    }
    for s in state {
        if s.dims() != param.dims() {
            bail!("{what}: state {:?} does not match the parameter {:?}", s.dims(), param.dims());
        }
    }
    Ok(())
}

/// Shapes checked; whether every tensor can take the fused path. Tensors sharing storage are
/// an error ([`distinct_storage`]).
fn check(what: &str, param: &Tensor, grad: &Tensor, state: &[&Tensor]) -> Result<bool> {
    check_shapes(what, param, grad, state)?;
    if !(fusable(param) && fusable(grad) && state.iter().all(|s| fusable(s))) {
        return Ok(false);
    }
    distinct_storage(what, param, grad, state)?;
    Ok(true)
}

/// One Adam / AdamW step of `param` (the variable's tensor) with gradient `grad` and moments
/// `m`, `v`, all written in place: the composed path's
/// `θ' = θ.affine(1 − lr·λ, 0)` (decoupled decay) or `g' = g + θ.affine(λ, 0)` (L2),
/// `m = m.affine(β₁, 0) + g'.affine(1 − β₁, 0)`, `v = v.affine(β₂, 0) + g'².affine(1 − β₂, 0)`,
/// `θ = θ' − (m / √v.affine(1/√(1 − β₂ᵗ), ε)).affine(lr/(1 − β₁ᵗ), 0)`, bit for bit. Zero moments
/// give the composed first step (`g'.affine(1 − β₁, 0)`) exactly. `Ok(false)`: not fusable
/// (see the module doc), nothing written. Errors: mismatched shapes, or state sharing storage
/// with the parameter or the gradient.
pub fn adam_update(param: &Tensor, grad: &Tensor, m: &Tensor, v: &Tensor, c: &AdamCoeffs) -> Result<bool> {
    #[cfg(feature = "cuda")]
    if on_cuda("adam_update", param, grad, &[m, v])? {
        crate::cuda::adam_update(param, grad, m, v, c)?;
        return Ok(true);
    }
    if !check("adam_update", param, grad, &[m, v])? {
        return Ok(false);
    }
    let (b1, omb1, b2, omb2) = (c.beta1 as f32, c.one_minus_beta1 as f32, c.beta2 as f32, c.one_minus_beta2 as f32);
    let (ibc2, eps, step) = (c.inv_bc2_sqrt as f32, c.eps as f32, c.step_size as f32);
    let decay = c.decay;
    with_f32_mut(m, |ms| {
        with_f32_mut(v, |vs| {
            let (mp, vp) = (SyncPtr(ms.as_mut_ptr()), SyncPtr(vs.as_mut_ptr()));
            let op = ParamOp(RefCell::new(Some(|p: &mut [f32], g: &[f32]| {
                let n = p.len();
                let pp = SyncPtr(p.as_mut_ptr());
                on_this_thread(n.div_ceil(CHUNK), |_, rows| {
                    let (a, b) = (rows.start * CHUNK, (rows.end * CHUNK).min(n));
                    // SAFETY: `[a, b)` is within the n elements of each buffer (all of the
                    // parameter's shape, checked) and no other part of the split touches it.
                    let (p, m, v) = unsafe { (pp.slice(a, b - a), mp.slice(a, b - a), vp.slice(a, b - a)) };
                    let g = &g[a..b];
                    match decay {
                        Decay::None => adam_chunk(p, m, v, g, |th, gi| (th, gi), [b1, omb1, b2, omb2, ibc2, eps, step]),
                        Decay::L2(wd) => {
                            let wd = wd as f32;
                            adam_chunk(p, m, v, g, |th, gi| (th, gi + aff(th, wd, 0.0)), [b1, omb1, b2, omb2, ibc2, eps, step])
                        }
                        Decay::Decoupled(f) => {
                            let f = f as f32;
                            adam_chunk(p, m, v, g, |th, gi| (aff(th, f, 0.0), gi), [b1, omb1, b2, omb2, ibc2, eps, step])
                        }
                    }
                });
            })));
            param.inplace_op2(grad, &op)
        })
    })?;
    Ok(true)
}

#[inline(always)]
fn adam_chunk(p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32], decay: impl Fn(f32, f32) -> (f32, f32), k: [f32; 7]) {
    let [b1, omb1, b2, omb2, ibc2, eps, step] = k;
    let n = p.len();
    let (m, v, g) = (&mut m[..n], &mut v[..n], &g[..n]);
    for i in 0..n {
        let (th, gi) = decay(p[i], g[i]);
        let mi = aff(m[i], b1, 0.0) + aff(gi, omb1, 0.0);
        let vi = aff(v[i], b2, 0.0) + aff(gi * gi, omb2, 0.0);
        let denom = aff(vi.sqrt(), ibc2, eps);
        p[i] = th - aff(mi / denom, step, 0.0);
        m[i] = mi;
        v[i] = vi;
    }
}

/// One SGD step of `param` with gradient `grad` in place; `buf` is the momentum buffer (needed
/// when `c.momentum` ≠ 0), `first` whether this is its first step (the buffer then becomes the
/// gradient, whatever it held). The composed path's `d = g + θ.affine(λ, 0)`,
/// `buf = first ? d : buf.affine(μ, 0) + d.affine(1 − dampening, 0)`,
/// `d = nesterov ? d + buf.affine(μ, 0) : buf`, `θ = θ − d.affine(lr, 0)`, bit for bit.
/// `Ok(false)`: not fusable, nothing written.
pub fn sgd_update(param: &Tensor, grad: &Tensor, buf: Option<&Tensor>, first: bool, c: &SgdCoeffs) -> Result<bool> {
    let state: Vec<&Tensor> = buf.into_iter().collect();
    if c.momentum != 0.0 && state.is_empty() {
        bail!("sgd_update: momentum {} needs a buffer", c.momentum);
    }
    #[cfg(feature = "cuda")]
    if on_cuda("sgd_update", param, grad, &state)? {
        crate::cuda::sgd_update(param, grad, buf, first, c)?;
        return Ok(true);
    }
    if !check("sgd_update", param, grad, &state)? {
        return Ok(false);
    }
    let (lr, mu, omd, wd, nesterov) = (c.lr as f32, c.momentum as f32, c.one_minus_dampening as f32, c.weight_decay as f32, c.nesterov);
    let l2 = c.weight_decay != 0.0;
    let run = |bp: Option<SyncPtr<f32>>| {
        let op = ParamOp(RefCell::new(Some(|p: &mut [f32], g: &[f32]| {
            let n = p.len();
            let pp = SyncPtr(p.as_mut_ptr());
            on_this_thread(n.div_ceil(CHUNK), |_, rows| {
                let (a, b) = (rows.start * CHUNK, (rows.end * CHUNK).min(n));
                // SAFETY: as in `adam_update`: disjoint in-bounds ranges.
                let p = unsafe { pp.slice(a, b - a) };
                let g = &g[a..b];
                let k = SgdK { wd, mu, omd, lr };
                match bp.as_ref().map(|bp| unsafe { bp.slice(a, b - a) }) {
                    // One loop per case, so that each vectorises without per-element branches.
                    Some(bs) => match (l2, first, nesterov) {
                        (false, false, false) => sgd_chunk::<false, false, false>(p, g, bs, k),
                        (false, false, true) => sgd_chunk::<false, false, true>(p, g, bs, k),
                        (false, true, false) => sgd_chunk::<false, true, false>(p, g, bs, k),
                        (false, true, true) => sgd_chunk::<false, true, true>(p, g, bs, k),
                        (true, false, false) => sgd_chunk::<true, false, false>(p, g, bs, k),
                        (true, false, true) => sgd_chunk::<true, false, true>(p, g, bs, k),
                        (true, true, false) => sgd_chunk::<true, true, false>(p, g, bs, k),
                        (true, true, true) => sgd_chunk::<true, true, true>(p, g, bs, k),
                    },
                    None if l2 => sgd_plain::<true>(p, g, k),
                    None => sgd_plain::<false>(p, g, k),
                }
            });
        })));
        param.inplace_op2(grad, &op)
    };
    match (c.momentum != 0.0, state.first()) {
        (true, Some(b)) => with_f32_mut(b, |bs| run(Some(SyncPtr(bs.as_mut_ptr()))))?,
        _ => run(None)?,
    }
    Ok(true)
}

#[derive(Clone, Copy)]
struct SgdK {
    wd: f32,
    mu: f32,
    omd: f32,
    lr: f32,
}

#[inline(always)]
fn sgd_chunk<const L2: bool, const FIRST: bool, const NESTEROV: bool>(p: &mut [f32], g: &[f32], bs: &mut [f32], k: SgdK) {
    let n = p.len();
    let (g, bs) = (&g[..n], &mut bs[..n]);
    for i in 0..n {
        let th = p[i];
        let d = if L2 { g[i] + aff(th, k.wd, 0.0) } else { g[i] };
        let bi = if FIRST { d } else { aff(bs[i], k.mu, 0.0) + aff(d, k.omd, 0.0) };
        bs[i] = bi;
        let d = if NESTEROV { d + aff(bi, k.mu, 0.0) } else { bi };
        p[i] = th - aff(d, k.lr, 0.0);
    }
}

#[inline(always)]
fn sgd_plain<const L2: bool>(p: &mut [f32], g: &[f32], k: SgdK) {
    let g = &g[..p.len()];
    for (p, &g) in p.iter_mut().zip(g) {
        let d = if L2 { g + aff(*p, k.wd, 0.0) } else { g };
        *p -= aff(d, k.lr, 0.0);
    }
}

/// `dst ← dst + src` in place, one f32 addition per element (what candle's `dst.add(src)`
/// computes, written back into `dst`'s storage): the engine's `θ + ε` of an ascent.
/// `Ok(false)`, nothing written, where the fused path does not apply (not both f32 contiguous
/// CPU tensors, or `src` sharing `dst`'s storage). Mismatched shapes are an error.
pub fn add_assign(dst: &Tensor, src: &Tensor) -> Result<bool> {
    if dst.dims() != src.dims() {
        bail!("add_assign: {:?} added to {:?}", src.dims(), dst.dims());
    }
    if !(fusable(dst) && fusable(src)) || storage_id(dst) == storage_id(src) {
        return Ok(false);
    }
    let op = ParamOp(RefCell::new(Some(|d: &mut [f32], s: &[f32]| {
        let n = d.len();
        let dp = SyncPtr(d.as_mut_ptr());
        on_this_thread(n.div_ceil(CHUNK), |_, rows| {
            let (a, b) = (rows.start * CHUNK, (rows.end * CHUNK).min(n));
            // SAFETY: as in `adam_update`: disjoint in-bounds ranges.
            let d = unsafe { dp.slice(a, b - a) };
            for (d, s) in d.iter_mut().zip(&s[a..b]) {
                *d += *s;
            }
        });
    })));
    dst.inplace_op2(src, &op)?;
    Ok(true)
}

/// `t ← t · mul + add` in place (candle's f32 `affine(mul, add)`, written back into `t`'s
/// storage): for a tensor its caller just made and holds alone (a scaling's intermediate), so
/// the affine step allocates nothing. `Ok(false)`, nothing written, where the fused path does
/// not apply (not an f32 contiguous CPU tensor).
pub fn affine_assign(t: &Tensor, mul: f64, add: f64) -> Result<bool> {
    if !fusable(t) {
        return Ok(false);
    }
    let (mul, add) = (mul as f32, add as f32);
    with_f32_mut(t, |x| {
        let n = x.len();
        let xp = SyncPtr(x.as_mut_ptr());
        on_this_thread(n.div_ceil(CHUNK), |_, rows| {
            let (a, b) = (rows.start * CHUNK, (rows.end * CHUNK).min(n));
            // SAFETY: as in `adam_update`: disjoint in-bounds ranges.
            for v in unsafe { xp.slice(a, b - a) } {
                *v = aff(*v, mul, add);
            }
        });
        Ok(())
    })?;
    Ok(true)
}

/// [`affine_assign`] where it applies, candle's `affine` (a new tensor) elsewhere: `t` must be
/// a tensor no one else holds (it is written in place on the fused path).
pub fn affine_owned(t: Tensor, mul: f64, add: f64) -> Result<Tensor> {
    if affine_assign(&t, mul, add)? {
        Ok(t)
    } else {
        t.affine(mul, add)
    }
}
