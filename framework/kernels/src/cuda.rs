//! The CUDA path of the fused ops: the f32 kernels of `cuda/fused.cu` (compiled to PTX by
//! build.rs with the `cuda` feature), launched on candle's CUDA device and stream. Each op's
//! `cuda_fwd` (softmax.rs, norm.rs, loss.rs) calls one function here. The wrappers send f32
//! compute on a CUDA device here while [`kernels_enabled`] (the default), everything else to
//! [`crate::composed`]; `tests/device.rs` checks both paths against the CPU kernels wherever a
//! GPU is present.

use crate::contiguous_range as range;
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaStorage, WrapErr};
use candle_core::{bail, CudaDevice, Layout, Result, Shape};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/fused.ptx"));
const MODULE: &str = "tram-kernels-fused";

/// Threads per block of the warp-per-row kernels (8 rows per block).
const ROW_WARPS_BLOCK: u32 = 256;
/// Threads per block of the block-per-row kernels (vocabulary-wide rows).
const ROW_BLOCK: u32 = 512;

/// The f32 data of contiguous `s` / `l`, or an error naming `op`.
pub(crate) fn view<'a>(s: &'a CudaStorage, l: &Layout, op: &str) -> Result<CudaView<'a, f32>> {
    Ok(s.as_cuda_slice::<f32>()?.slice(range(l, op)?))
}

/// Device data of f32 or bf16 elements (the kernels with a `_bf16` twin), or of f32 or f64
/// ones (the KL kernels: f64 for the radius δ).
enum Data<'a> {
    F32(CudaView<'a, f32>),
    Bf16(CudaView<'a, half::bf16>),
    F64(CudaView<'a, f64>),
}

impl<'a> Data<'a> {
    /// f32 or bf16 data.
    fn of(s: &'a CudaStorage, l: &Layout, op: &str) -> Result<Self> {
        let r = range(l, op)?;
        match s.dtype() {
            candle_core::DType::F32 => Ok(Self::F32(s.as_cuda_slice::<f32>()?.slice(r))),
            candle_core::DType::BF16 => Ok(Self::Bf16(s.as_cuda_slice::<half::bf16>()?.slice(r))),
            other => bail!("{op}: the CUDA kernel takes f32 or bf16, got {other:?}"),
        }
    }
    /// f32 or f64 data.
    fn of_wide(s: &'a CudaStorage, l: &Layout, op: &str) -> Result<Self> {
        let r = range(l, op)?;
        match s.dtype() {
            candle_core::DType::F32 => Ok(Self::F32(s.as_cuda_slice::<f32>()?.slice(r))),
            candle_core::DType::F64 => Ok(Self::F64(s.as_cuda_slice::<f64>()?.slice(r))),
            other => bail!("{op}: the CUDA kernel takes f32 or f64, got {other:?}"),
        }
    }
    /// The kernel of this dtype: `<base>_f32`, `<base>_bf16` or `<base>_f64`.
    fn kernel(&self, base: &str) -> String {
        match self {
            Self::F32(_) => format!("{base}_f32"),
            Self::Bf16(_) => format!("{base}_bf16"),
            Self::F64(_) => format!("{base}_f64"),
        }
    }
    fn push<'b>(&'b self, b: &mut candle_core::cuda_backend::cudarc::driver::LaunchArgs<'b>) {
        match self {
            Self::F32(v) => b.arg(v),
            Self::Bf16(v) => b.arg(v),
            Self::F64(v) => b.arg(v),
        };
    }
    /// A new uninitialised buffer of `n` elements of this dtype.
    fn alloc_like(&self, dev: &CudaDevice, n: usize) -> Result<Buf> {
        // SAFETY: every element is written by the kernel that follows.
        Ok(match self {
            Self::F32(_) => Buf::F32(unsafe { dev.alloc::<f32>(n.max(1))? }),
            Self::Bf16(_) => Buf::Bf16(unsafe { dev.alloc::<half::bf16>(n.max(1))? }),
            Self::F64(_) => Buf::F64(unsafe { dev.alloc::<f64>(n.max(1))? }),
        })
    }
    /// A new zeroed buffer of `n` elements of this dtype.
    fn zeros_like(&self, dev: &CudaDevice, n: usize) -> Result<Buf> {
        Ok(match self {
            Self::F32(_) => Buf::F32(dev.alloc_zeros::<f32>(n.max(1))?),
            Self::Bf16(_) => Buf::Bf16(dev.alloc_zeros::<half::bf16>(n.max(1))?),
            Self::F64(_) => Buf::F64(dev.alloc_zeros::<f64>(n.max(1))?),
        })
    }
}

/// An output buffer of f32, bf16 or f64 elements.
enum Buf {
    F32(CudaSlice<f32>),
    Bf16(CudaSlice<half::bf16>),
    F64(CudaSlice<f64>),
}

impl Buf {
    fn push<'b>(&'b self, b: &mut candle_core::cuda_backend::cudarc::driver::LaunchArgs<'b>) {
        match self {
            Self::F32(v) => b.arg(v),
            Self::Bf16(v) => b.arg(v),
            Self::F64(v) => b.arg(v),
        };
    }
    fn storage(self, dev: &CudaDevice, shape: impl Into<Shape>) -> (CudaStorage, Shape) {
        let s = match self {
            Self::F32(v) => CudaStorage::wrap_cuda_slice(v, dev.clone()),
            Self::Bf16(v) => CudaStorage::wrap_cuda_slice(v, dev.clone()),
            Self::F64(v) => CudaStorage::wrap_cuda_slice(v, dev.clone()),
        };
        (s, shape.into())
    }
}

fn view_u32<'a>(s: &'a CudaStorage, l: &Layout, op: &str) -> Result<CudaView<'a, u32>> {
    Ok(s.as_cuda_slice::<u32>()?.slice(range(l, op)?))
}

fn u32_of(v: usize, what: &str, op: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| candle_core::Error::Msg(format!("{op}: {what} {v} exceeds the CUDA kernels' 32-bit index range")))
}

/// Launch config of a warp-per-row kernel over `rows` rows.
fn warp_rows(rows: u32) -> LaunchConfig {
    let per_block = ROW_WARPS_BLOCK / 32;
    LaunchConfig { grid_dim: (rows.div_ceil(per_block).max(1), 1, 1), block_dim: (ROW_WARPS_BLOCK, 1, 1), shared_mem_bytes: 0 }
}

/// Launch config of a block-per-row kernel over `rows` rows.
fn block_rows(rows: u32) -> LaunchConfig {
    LaunchConfig { grid_dim: (rows.max(1), 1, 1), block_dim: (ROW_BLOCK, 1, 1), shared_mem_bytes: 0 }
}

fn alloc(dev: &CudaDevice, n: usize) -> Result<CudaSlice<f32>> {
    // SAFETY: every element is written by the kernel that follows.
    unsafe { dev.alloc::<f32>(n.max(1)) }
}

fn out(slice: CudaSlice<f32>, dev: &CudaDevice, shape: impl Into<Shape>) -> (CudaStorage, Shape) {
    (CudaStorage::wrap_cuda_slice(slice, dev.clone()), shape.into())
}

/// `(rows, width)` of a row-major layout (rows = all but the last dimension).
fn rows_width(l: &Layout, op: &str) -> Result<(u32, u32)> {
    let dims = l.dims();
    let Some(&w) = dims.last() else { bail!("{op}: expected at least one dimension, got a scalar") };
    let n = l.shape().elem_count();
    Ok((u32_of(n / w.max(1), "row count", op)?, u32_of(w, "row width", op)?))
}

/// The masked attention softmax (`tram_masked_softmax_f32` / `_bf16`, in the scores' dtype);
/// `keep` is the key mask as `[batch · seq_k]` bytes, uploaded for the call, with the rows per
/// batch.
#[allow(clippy::too_many_arguments)]
pub(crate) fn masked_softmax(
    s: &CudaStorage,
    l: &Layout,
    sq: usize,
    sk: usize,
    scale: f64,
    causal: bool,
    keep: Option<(&[u8], usize)>,
) -> Result<(CudaStorage, Shape)> {
    let op = "masked_softmax";
    let dev = s.device();
    let x = Data::of(s, l, op)?;
    let (rows, _) = rows_width(l, op)?;
    let y = x.alloc_like(dev, l.shape().elem_count())?;
    let keep_buf: CudaSlice<u8> = match keep {
        Some((k, _)) => {
            // SAFETY: filled by the copy that follows.
            let mut b = unsafe { dev.alloc::<u8>(k.len().max(1))? };
            dev.memcpy_htod(k, &mut b)?;
            b
        }
        None => dev.alloc_zeros::<u8>(1)?,
    };
    let (sq, sk) = (u32_of(sq, "seq_q", op)?, u32_of(sk, "seq_k", op)?);
    let (scale, causal, has_keep) = (scale as f32, i32::from(causal), i32::from(keep.is_some()));
    let rows_per_batch = u32_of(keep.map_or(rows as usize, |(_, r)| r), "rows per batch", op)?;
    let func = dev.get_or_load_custom_func(&x.kernel("tram_masked_softmax"), MODULE, PTX)?;
    let mut b = func.builder();
    x.push(&mut b);
    y.push(&mut b);
    b.arg(&rows).arg(&sq).arg(&sk).arg(&scale).arg(&causal).arg(&keep_buf).arg(&has_keep).arg(&rows_per_batch);
    // SAFETY: arguments match the kernel's signature; buffers hold rows · seq_k elements.
    unsafe { b.launch(warp_rows(rows)) }.w()?;
    drop(b);
    Ok(y.storage(dev, l.shape().clone()))
}

/// `dx = scale · y ⊙ (g − Σ g y)` (`tram_softmax_bwd_f32` / `_bf16`; y and g of one dtype).
pub(crate) fn softmax_bwd(ys: &CudaStorage, yl: &Layout, gs: &CudaStorage, gl: &Layout, scale: f64) -> Result<(CudaStorage, Shape)> {
    let op = "softmax backward";
    let dev = ys.device();
    same_dtype(op, &[("probabilities", ys), ("gradient", gs)])?;
    let (y, g) = (Data::of(ys, yl, op)?, Data::of(gs, gl, op)?);
    let (rows, n) = rows_width(yl, op)?;
    let dx = y.alloc_like(dev, yl.shape().elem_count())?;
    let scale = scale as f32;
    let func = dev.get_or_load_custom_func(&y.kernel("tram_softmax_bwd"), MODULE, PTX)?;
    let mut b = func.builder();
    y.push(&mut b);
    g.push(&mut b);
    dx.push(&mut b);
    b.arg(&rows).arg(&n).arg(&scale);
    // SAFETY: as above.
    unsafe { b.launch(warp_rows(rows)) }.w()?;
    drop(b);
    Ok(dx.storage(dev, yl.shape().clone()))
}

/// That the named inputs of `op` share one dtype, or an error listing theirs.
fn same_dtype(op: &str, what: &[(&str, &CudaStorage)]) -> Result<()> {
    let dt = what[0].1.dtype();
    if what.iter().any(|(_, s)| s.dtype() != dt) {
        let got: Vec<String> = what.iter().map(|(n, s)| format!("{n} {:?}", s.dtype())).collect();
        bail!("{op}: {} must have one dtype", got.join(", "));
    }
    Ok(())
}

/// Layer norm forward (`tram_layer_norm_f32` / `_bf16`, in the input's dtype).
#[allow(clippy::too_many_arguments)]
pub(crate) fn layer_norm(
    xs: &CudaStorage,
    xl: &Layout,
    ws: &CudaStorage,
    wl: &Layout,
    bs: &CudaStorage,
    bl: &Layout,
    eps: f64,
) -> Result<(CudaStorage, Shape)> {
    let op = "layer_norm";
    let dev = xs.device();
    same_dtype(op, &[("input", xs), ("weight", ws), ("bias", bs)])?;
    let (x, w, bias) = (Data::of(xs, xl, op)?, Data::of(ws, wl, op)?, Data::of(bs, bl, op)?);
    let (rows, d) = rows_width(xl, op)?;
    let y = x.alloc_like(dev, xl.shape().elem_count())?;
    let eps = eps as f32;
    let func = dev.get_or_load_custom_func(&x.kernel("tram_layer_norm"), MODULE, PTX)?;
    let mut b = func.builder();
    x.push(&mut b);
    w.push(&mut b);
    bias.push(&mut b);
    y.push(&mut b);
    b.arg(&rows).arg(&d).arg(&eps);
    // SAFETY: as above.
    unsafe { b.launch(warp_rows(rows)) }.w()?;
    drop(b);
    Ok(y.storage(dev, xl.shape().clone()))
}

/// Layer norm input gradient (`tram_layer_norm_bwd_f32` / `_bf16`): inputs x, weight,
/// upstream g, of one dtype.
#[allow(clippy::too_many_arguments)]
pub(crate) fn layer_norm_dx(
    xs: &CudaStorage,
    xl: &Layout,
    ws: &CudaStorage,
    wl: &Layout,
    gs: &CudaStorage,
    gl: &Layout,
    eps: f64,
) -> Result<(CudaStorage, Shape)> {
    let op = "layer_norm backward";
    let dev = xs.device();
    same_dtype(op, &[("input", xs), ("weight", ws), ("gradient", gs)])?;
    let (x, w, g) = (Data::of(xs, xl, op)?, Data::of(ws, wl, op)?, Data::of(gs, gl, op)?);
    let (rows, d) = rows_width(xl, op)?;
    let dx = x.alloc_like(dev, xl.shape().elem_count())?;
    let eps = eps as f32;
    let func = dev.get_or_load_custom_func(&x.kernel("tram_layer_norm_bwd"), MODULE, PTX)?;
    let mut b = func.builder();
    x.push(&mut b);
    w.push(&mut b);
    g.push(&mut b);
    dx.push(&mut b);
    b.arg(&rows).arg(&d).arg(&eps);
    // SAFETY: as above.
    unsafe { b.launch(warp_rows(rows)) }.w()?;
    drop(b);
    Ok(dx.storage(dev, xl.shape().clone()))
}

/// Rows per block of the weight / bias gradient partial sums (at least; more when the rows
/// would need over 65535 blocks, CUDA's limit on the grid's second dimension).
const LN_WB_CHUNK: u32 = 64;

/// Layer norm weight and bias gradient partial sums `[2, chunks, d]` in f32
/// (`tram_layer_norm_wb_*`, after `tram_layer_norm_moments_*`): inputs x and upstream g of one
/// dtype; the caller sums dim 1.
pub(crate) fn layer_norm_wb(xs: &CudaStorage, xl: &Layout, gs: &CudaStorage, gl: &Layout, eps: f64) -> Result<(CudaStorage, Shape)> {
    let op = "layer_norm backward";
    let dev = xs.device();
    same_dtype(op, &[("input", xs), ("gradient", gs)])?;
    let (x, g) = (Data::of(xs, xl, op)?, Data::of(gs, gl, op)?);
    let (rows, d) = rows_width(xl, op)?;
    let moments = alloc(dev, 2 * rows as usize)?;
    let eps = eps as f32;
    let func = dev.get_or_load_custom_func(&x.kernel("tram_layer_norm_moments"), MODULE, PTX)?;
    let mut b = func.builder();
    x.push(&mut b);
    b.arg(&moments).arg(&rows).arg(&d).arg(&eps);
    // SAFETY: as above.
    unsafe { b.launch(warp_rows(rows)) }.w()?;
    drop(b);
    let chunk = LN_WB_CHUNK.max(rows.div_ceil(65535));
    let chunks = rows.div_ceil(chunk).max(1);
    let part = alloc(dev, 2 * chunks as usize * d as usize)?;
    let func = dev.get_or_load_custom_func(&x.kernel("tram_layer_norm_wb"), MODULE, PTX)?;
    let mut b = func.builder();
    x.push(&mut b);
    g.push(&mut b);
    b.arg(&moments).arg(&part).arg(&rows).arg(&d).arg(&chunk);
    let cfg = LaunchConfig { grid_dim: (d.div_ceil(256).max(1), chunks, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: as above; `part` holds 2 · chunks · d elements.
    unsafe { b.launch(cfg) }.w()?;
    drop(b);
    Ok(out(part, dev, (2, chunks as usize, d as usize)))
}

/// Log-softmax over rows (`tram_log_softmax_f32`).
pub(crate) fn log_softmax(s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
    let op = "log_softmax";
    let dev = s.device();
    let x = view(s, l, op)?;
    let (rows, n) = rows_width(l, op)?;
    let y = alloc(dev, l.shape().elem_count())?;
    let func = dev.get_or_load_custom_func("tram_log_softmax_f32", MODULE, PTX)?;
    let mut b = func.builder();
    b.arg(&x).arg(&y).arg(&n);
    // SAFETY: as above.
    unsafe { b.launch(block_rows(rows)) }.w()?;
    Ok(out(y, dev, l.shape().clone()))
}

/// `dx = g − exp(y) Σ g` (`tram_log_softmax_bwd_f32`).
pub(crate) fn log_softmax_bwd(ys: &CudaStorage, yl: &Layout, gs: &CudaStorage, gl: &Layout) -> Result<(CudaStorage, Shape)> {
    let op = "log_softmax backward";
    let dev = ys.device();
    let (y, g) = (view(ys, yl, op)?, view(gs, gl, op)?);
    let (rows, n) = rows_width(yl, op)?;
    let dx = alloc(dev, yl.shape().elem_count())?;
    let func = dev.get_or_load_custom_func("tram_log_softmax_bwd_f32", MODULE, PTX)?;
    let mut b = func.builder();
    b.arg(&y).arg(&g).arg(&dx).arg(&n);
    // SAFETY: as above.
    unsafe { b.launch(block_rows(rows)) }.w()?;
    Ok(out(dx, dev, yl.shape().clone()))
}

/// Per-row cross-entropy `[rows]` in f32 (`tram_cross_entropy_rows_f32` / `_bf16` for the
/// logits' dtype); `targets` are u32 class ids, `u32::MAX` for an ignored row (loss 0).
pub(crate) fn cross_entropy_rows(xs: &CudaStorage, xl: &Layout, ts: &CudaStorage, tl: &Layout) -> Result<(CudaStorage, Shape)> {
    let op = "cross_entropy";
    let dev = xs.device();
    let (x, t) = (Data::of(xs, xl, op)?, view_u32(ts, tl, op)?);
    let (rows, n) = rows_width(xl, op)?;
    let loss = alloc(dev, rows as usize)?;
    let func = dev.get_or_load_custom_func(&x.kernel("tram_cross_entropy_rows"), MODULE, PTX)?;
    let mut b = func.builder();
    x.push(&mut b);
    b.arg(&t).arg(&loss).arg(&n);
    // SAFETY: as above.
    unsafe { b.launch(block_rows(rows)) }.w()?;
    drop(b);
    Ok(out(loss, dev, rows as usize))
}

/// `dx = g_row · (softmax(x_row) − onehot(t))` in the logits' dtype
/// (`tram_cross_entropy_rows_bwd_f32` / `_bf16`); `g` is f32 `[rows]`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn cross_entropy_rows_bwd(
    xs: &CudaStorage,
    xl: &Layout,
    ts: &CudaStorage,
    tl: &Layout,
    gs: &CudaStorage,
    gl: &Layout,
) -> Result<(CudaStorage, Shape)> {
    let op = "cross_entropy backward";
    let dev = xs.device();
    let (x, t, g) = (Data::of(xs, xl, op)?, view_u32(ts, tl, op)?, view(gs, gl, op)?);
    let (rows, n) = rows_width(xl, op)?;
    let dx = x.alloc_like(dev, xl.shape().elem_count())?;
    let func = dev.get_or_load_custom_func(&x.kernel("tram_cross_entropy_rows_bwd"), MODULE, PTX)?;
    let mut b = func.builder();
    x.push(&mut b);
    b.arg(&t).arg(&g);
    dx.push(&mut b);
    b.arg(&n);
    // SAFETY: as above.
    unsafe { b.launch(block_rows(rows)) }.w()?;
    drop(b);
    Ok(dx.storage(dev, xl.shape().clone()))
}

/// Row-wise KL of two logits tensors `[.., n]` → `[..]` (`tram_kl_rows_f32` / `_f64`, in the
/// inputs' dtype).
pub(crate) fn kl_rows(ts: &CudaStorage, tl: &Layout, cs: &CudaStorage, cl: &Layout) -> Result<(CudaStorage, Shape)> {
    let op = "kl_div_rows";
    let dev = ts.device();
    same_dtype(op, &[("target", ts), ("current", cs)])?;
    let (t, c) = (Data::of_wide(ts, tl, op)?, Data::of_wide(cs, cl, op)?);
    let (rows, n) = rows_width(tl, op)?;
    let kl = t.alloc_like(dev, rows as usize)?;
    let func = dev.get_or_load_custom_func(&t.kernel("tram_kl_rows"), MODULE, PTX)?;
    let mut b = func.builder();
    t.push(&mut b);
    c.push(&mut b);
    kl.push(&mut b);
    b.arg(&n);
    // SAFETY: as above.
    unsafe { b.launch(block_rows(rows)) }.w()?;
    drop(b);
    let mut shape = tl.dims().to_vec();
    shape.pop();
    Ok(kl.storage(dev, shape))
}

/// Both KL gradients as `[2, rows, n]` (`tram_kl_rows_bwd_f32` / `_f64`): inputs target,
/// current and the upstream `[rows]` gradient, of one dtype.
#[allow(clippy::too_many_arguments)]
pub(crate) fn kl_rows_bwd(
    ts: &CudaStorage,
    tl: &Layout,
    cs: &CudaStorage,
    cl: &Layout,
    gs: &CudaStorage,
    gl: &Layout,
) -> Result<(CudaStorage, Shape)> {
    let op = "kl_div_rows backward";
    let dev = ts.device();
    same_dtype(op, &[("target", ts), ("current", cs), ("gradient", gs)])?;
    let (t, c, g) = (Data::of_wide(ts, tl, op)?, Data::of_wide(cs, cl, op)?, Data::of_wide(gs, gl, op)?);
    let (rows, n) = rows_width(tl, op)?;
    let o = t.alloc_like(dev, 2 * tl.shape().elem_count())?;
    let func = dev.get_or_load_custom_func(&t.kernel("tram_kl_rows_bwd"), MODULE, PTX)?;
    let mut b = func.builder();
    t.push(&mut b);
    c.push(&mut b);
    g.push(&mut b);
    o.push(&mut b);
    b.arg(&rows).arg(&n);
    // SAFETY: as above; `o` holds 2 · rows · n elements.
    unsafe { b.launch(block_rows(rows)) }.w()?;
    drop(b);
    Ok(o.storage(dev, (2, rows as usize, n as usize)))
}

/// Launch config of the grid-stride elementwise kernels over `n` elements.
fn elementwise(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(256).clamp(1, 1 << 20) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}

/// GELU of `kind` (0 tanh approximation, 1 erf) on f32 or bf16, in the input's dtype
/// (`tram_gelu_f32` / `tram_gelu_bf16`, f32 compute).
pub(crate) fn gelu(s: &CudaStorage, l: &Layout, kind: i32) -> Result<(CudaStorage, Shape)> {
    let op = "gelu";
    let dev = s.device().clone();
    let r = range(l, op)?;
    let n = r.len() as u64;
    let cfg = elementwise(r.len());
    match s.dtype() {
        candle_core::DType::F32 => {
            let x = s.as_cuda_slice::<f32>()?.slice(r.clone());
            let y = alloc(&dev, r.len())?;
            let func = dev.get_or_load_custom_func("tram_gelu_f32", MODULE, PTX)?;
            let mut b = func.builder();
            b.arg(&x).arg(&y).arg(&n).arg(&kind);
            // SAFETY: as above.
            unsafe { b.launch(cfg) }.w()?;
            Ok(out(y, &dev, l.shape().clone()))
        }
        candle_core::DType::BF16 => {
            let x = s.as_cuda_slice::<half::bf16>()?.slice(r.clone());
            // SAFETY: every element is written by the kernel.
            let y = unsafe { dev.alloc::<half::bf16>(r.len().max(1))? };
            let func = dev.get_or_load_custom_func("tram_gelu_bf16", MODULE, PTX)?;
            let mut b = func.builder();
            b.arg(&x).arg(&y).arg(&n).arg(&kind);
            // SAFETY: as above.
            unsafe { b.launch(cfg) }.w()?;
            Ok((CudaStorage::wrap_cuda_slice(y, dev), l.shape().clone()))
        }
        other => bail!("{op}: the CUDA kernel takes f32 or bf16, got {other:?}"),
    }
}

/// `dx = g · gelu'(x)` in the dtype of `x` (f32 or bf16; `g` has the same dtype).
pub(crate) fn gelu_bwd(xs: &CudaStorage, xl: &Layout, gs: &CudaStorage, gl: &Layout, kind: i32) -> Result<(CudaStorage, Shape)> {
    let op = "gelu backward";
    let dev = xs.device().clone();
    let (rx, rg) = (range(xl, op)?, range(gl, op)?);
    if rx.len() != rg.len() {
        bail!("{op}: input and gradient sizes differ ({} vs {})", rx.len(), rg.len());
    }
    let n = rx.len() as u64;
    let cfg = elementwise(rx.len());
    match (xs.dtype(), gs.dtype()) {
        (candle_core::DType::F32, candle_core::DType::F32) => {
            let (x, g) = (xs.as_cuda_slice::<f32>()?.slice(rx.clone()), gs.as_cuda_slice::<f32>()?.slice(rg));
            let dx = alloc(&dev, rx.len())?;
            let func = dev.get_or_load_custom_func("tram_gelu_bwd_f32", MODULE, PTX)?;
            let mut b = func.builder();
            b.arg(&x).arg(&g).arg(&dx).arg(&n).arg(&kind);
            // SAFETY: as above.
            unsafe { b.launch(cfg) }.w()?;
            Ok(out(dx, &dev, xl.shape().clone()))
        }
        (candle_core::DType::BF16, candle_core::DType::BF16) => {
            let (x, g) = (xs.as_cuda_slice::<half::bf16>()?.slice(rx.clone()), gs.as_cuda_slice::<half::bf16>()?.slice(rg));
            // SAFETY: every element is written by the kernel.
            let dx = unsafe { dev.alloc::<half::bf16>(rx.len().max(1))? };
            let func = dev.get_or_load_custom_func("tram_gelu_bwd_bf16", MODULE, PTX)?;
            let mut b = func.builder();
            b.arg(&x).arg(&g).arg(&dx).arg(&n).arg(&kind);
            // SAFETY: as above.
            unsafe { b.launch(cfg) }.w()?;
            Ok((CudaStorage::wrap_cuda_slice(dx, dev), xl.shape().clone()))
        }
        (a, b) => bail!("{op}: the CUDA kernel takes f32 or bf16 input and gradient of one dtype, got {a:?} and {b:?}"),
    }
}

/// The device address of the f32 elements `l` describes in `s`, for `f`; the storage is held
/// (and its stream use recorded) while `f` runs.
fn with_address<R>(s: &mut CudaStorage, l: &Layout, op: &str, f: impl FnOnce(u64) -> Result<R>) -> Result<R> {
    use candle_core::cuda_backend::cudarc::driver::DevicePtrMut;
    let r = range(l, op)?;
    let stream = s.device().cuda_stream();
    let mut view = s.as_cuda_slice_mut::<f32>()?.slice_mut(r);
    let (ptr, _record) = view.device_ptr_mut(&stream);
    f(ptr)
}

/// Runs `f` with the device address of CUDA tensor `t`'s f32 elements, `t` locked for writing
/// (candle's in-place op) meanwhile.
pub(crate) fn with_f32_mut<R>(t: &candle_core::Tensor, f: impl FnOnce(u64) -> Result<R>) -> Result<R> {
    use std::cell::RefCell;
    struct Op<F, R>(RefCell<Option<F>>, RefCell<Option<Result<R>>>);
    impl<R, F: FnOnce(u64) -> Result<R>> candle_core::InplaceOp1 for Op<F, R> {
        fn name(&self) -> &'static str {
            "tram-update-state-cuda"
        }
        fn cpu_fwd(&self, _: &mut candle_core::CpuStorage, _: &Layout) -> Result<()> {
            bail!("{}: CUDA only", self.name())
        }
        fn cuda_fwd(&self, s: &mut CudaStorage, l: &Layout) -> Result<()> {
            let f = self.0.borrow_mut().take().expect("called once");
            *self.1.borrow_mut() = Some(with_address(s, l, self.name(), f));
            Ok(())
        }
    }
    let op = Op(RefCell::new(Some(f)), RefCell::new(None));
    t.inplace_op1(&op)?;
    op.1.into_inner().expect("the op ran")
}

/// A scalar kernel argument of [`update_param`].
enum Arg {
    U64(u64),
    I32(i32),
    F32(f32),
}

/// Launches update `kernel(param, grad, extra…)` over `n` elements, `param` written in place.
fn update_param(param: &candle_core::Tensor, grad: &candle_core::Tensor, kernel: &'static str, n: usize, extra: Vec<Arg>) -> Result<()> {
    struct Op {
        kernel: &'static str,
        n: usize,
        extra: Vec<Arg>,
    }
    impl candle_core::InplaceOp2 for Op {
        fn name(&self) -> &'static str {
            "tram-update-param-cuda"
        }
        fn cpu_fwd(&self, _: &mut candle_core::CpuStorage, _: &Layout, _: &candle_core::CpuStorage, _: &Layout) -> Result<()> {
            bail!("{}: CUDA only", self.name())
        }
        fn cuda_fwd(&self, ps: &mut CudaStorage, pl: &Layout, gs: &CudaStorage, gl: &Layout) -> Result<()> {
            use candle_core::cuda_backend::cudarc::driver::DevicePtr;
            let dev = ps.device().clone();
            let stream = dev.cuda_stream();
            let g = gs.as_cuda_slice::<f32>()?.slice(range(gl, self.name())?);
            let (gp, _record) = g.device_ptr(&stream);
            with_address(ps, pl, self.name(), |pp| {
                let func = dev.get_or_load_custom_func(self.kernel, MODULE, PTX)?;
                let mut b = func.builder();
                b.arg(&pp).arg(&gp);
                for a in &self.extra {
                    match a {
                        Arg::U64(v) => b.arg(v),
                        Arg::I32(v) => b.arg(v),
                        Arg::F32(v) => b.arg(v),
                    };
                }
                // SAFETY: the arguments follow the kernel's signature; every buffer holds `n`
                // elements (shapes checked by the caller).
                unsafe { b.launch(elementwise(self.n)) }.w()?;
                Ok(())
            })
        }
    }
    param.inplace_op2(grad, &Op { kernel, n, extra })
}

/// [`crate::update::adam_update`] on CUDA f32 tensors (shapes checked by the caller).
pub(crate) fn adam_update(
    param: &candle_core::Tensor,
    grad: &candle_core::Tensor,
    m: &candle_core::Tensor,
    v: &candle_core::Tensor,
    c: &crate::update::AdamCoeffs,
) -> Result<()> {
    use crate::update::Decay;
    let n = param.elem_count();
    let (kind, decay) = match c.decay {
        Decay::None => (0i32, 0f32),
        Decay::L2(wd) => (1, wd as f32),
        Decay::Decoupled(f) => (2, f as f32),
    };
    with_f32_mut(m, |mp| {
        with_f32_mut(v, |vp| {
            let mut extra = vec![Arg::U64(mp), Arg::U64(vp), Arg::U64(n as u64), Arg::I32(kind), Arg::F32(decay)];
            extra.extend(
                [c.beta1, c.one_minus_beta1, c.beta2, c.one_minus_beta2, c.inv_bc2_sqrt, c.eps, c.step_size].map(|x| Arg::F32(x as f32)),
            );
            update_param(param, grad, "tram_adam_update_f32", n, extra)
        })
    })
}

/// [`crate::update::sgd_update`] on CUDA f32 tensors (shapes checked by the caller).
pub(crate) fn sgd_update(
    param: &candle_core::Tensor,
    grad: &candle_core::Tensor,
    buf: Option<&candle_core::Tensor>,
    first: bool,
    c: &crate::update::SgdCoeffs,
) -> Result<()> {
    let n = param.elem_count();
    let has_buf = buf.is_some() && c.momentum != 0.0;
    let run = |bp: u64| {
        let mut extra = vec![Arg::U64(bp), Arg::U64(n as u64)];
        extra.extend([has_buf, c.weight_decay != 0.0, first, c.nesterov].map(|f| Arg::I32(i32::from(f))));
        extra.extend([c.weight_decay, c.momentum, c.one_minus_dampening, c.lr].map(|x| Arg::F32(x as f32)));
        update_param(param, grad, "tram_sgd_update_f32", n, extra)
    };
    match buf {
        Some(t) if has_buf => with_f32_mut(t, run),
        // No buffer: the kernel never reads it.
        _ => run(0),
    }
}

/// Embedding rows `[n, d]` of `table` `[vocab, d]` (f32 or bf16) for u32 `ids` `[n]`
/// (`tram_embedding_f32` / `_bf16`; an out-of-range id gives a NaN row).
pub(crate) fn embedding(ts: &CudaStorage, tl: &Layout, is: &CudaStorage, il: &Layout) -> Result<(CudaStorage, Shape)> {
    let op = "embedding";
    let dev = ts.device();
    let ids = view_u32(is, il, op)?;
    let (vocab, d) = rows_width(tl, op)?;
    let n = u32_of(il.shape().elem_count(), "id count", op)?;
    let cfg = LaunchConfig { grid_dim: (n.max(1), 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    let r = range(tl, op)?;
    let total = n as usize * d as usize;
    // The rows are copied as bits: f32 as u32, bf16 as its u16 storage.
    match ts.dtype() {
        candle_core::DType::F32 => {
            let t = ts.as_cuda_slice::<f32>()?.slice(r);
            let y = alloc(dev, total)?;
            let func = dev.get_or_load_custom_func("tram_embedding_f32", MODULE, PTX)?;
            let mut b = func.builder();
            b.arg(&t).arg(&ids).arg(&y).arg(&d).arg(&vocab);
            // SAFETY: the arguments follow the kernel's signature (f32 passed as its bits); `y`
            // holds n · d elements, every one written.
            unsafe { b.launch(cfg) }.w()?;
            Ok(out(y, dev, (n as usize, d as usize)))
        }
        candle_core::DType::BF16 => {
            let t = ts.as_cuda_slice::<half::bf16>()?.slice(r);
            // SAFETY: every element is written by the kernel.
            let y = unsafe { dev.alloc::<half::bf16>(total.max(1))? };
            let func = dev.get_or_load_custom_func("tram_embedding_bf16", MODULE, PTX)?;
            let mut b = func.builder();
            b.arg(&t).arg(&ids).arg(&y).arg(&d).arg(&vocab);
            // SAFETY: as above.
            unsafe { b.launch(cfg) }.w()?;
            Ok((CudaStorage::wrap_cuda_slice(y, dev.clone()), (n as usize, d as usize).into()))
        }
        other => bail!("{op}: the CUDA kernel takes an f32 or bf16 table, got {other:?}"),
    }
}

/// The table gradient `[vocab, d]` of [`embedding`] from the output gradient `g` `[n, d]`
/// (f32 or bf16, the table's dtype): `tram_embedding_order` sorts the ids stably, then
/// `tram_embedding_grad_f32` / `_bf16` sums each id's rows in f32 in position order into a
/// zeroed table.
pub(crate) fn embedding_grad(gs: &CudaStorage, gl: &Layout, is: &CudaStorage, il: &Layout, vocab: usize) -> Result<(CudaStorage, Shape)> {
    let op = "embedding backward";
    let dev = gs.device();
    let g = Data::of(gs, gl, op)?;
    let ids = view_u32(is, il, op)?;
    let (rows, d) = rows_width(gl, op)?;
    let n = u32_of(il.shape().elem_count(), "id count", op)?;
    if rows != n {
        bail!("{op}: {rows} gradient rows for {n} ids");
    }
    let vocab32 = u32_of(vocab, "vocabulary size", op)?;
    let order = dev.alloc_zeros::<u32>(n.max(1) as usize)?;
    let func = dev.get_or_load_custom_func("tram_embedding_order", MODULE, PTX)?;
    let mut b = func.builder();
    b.arg(&ids).arg(&order).arg(&n);
    let cfg = LaunchConfig { grid_dim: (n.div_ceil(256).max(1), 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: the arguments follow the kernel's signature; `order` holds n elements, and the
    // ranks are a permutation of 0..n.
    unsafe { b.launch(cfg) }.w()?;
    drop(b);
    let total = vocab * d as usize;
    let table = g.zeros_like(dev, total)?;
    if n > 0 {
        let func = dev.get_or_load_custom_func(&g.kernel("tram_embedding_grad"), MODULE, PTX)?;
        let mut b = func.builder();
        g.push(&mut b);
        b.arg(&ids).arg(&order);
        table.push(&mut b);
        b.arg(&n).arg(&d).arg(&vocab32);
        let cfg = LaunchConfig { grid_dim: (n, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: as above; `table` holds vocab · d elements and only rows below vocab are written.
        unsafe { b.launch(cfg) }.w()?;
    }
    Ok(table.storage(dev, (vocab, d as usize)))
}

/// `x + b` over the rows of `x` (`tram_add_bias_f32` / `_bf16`; x and b of one dtype).
pub(crate) fn add_bias(xs: &CudaStorage, xl: &Layout, bs: &CudaStorage, bl: &Layout) -> Result<(CudaStorage, Shape)> {
    let op = "add_bias";
    let dev = xs.device();
    same_dtype(op, &[("input", xs), ("bias", bs)])?;
    let (x, bias) = (Data::of(xs, xl, op)?, Data::of(bs, bl, op)?);
    let (_, n) = rows_width(xl, op)?;
    let total = xl.shape().elem_count();
    let y = x.alloc_like(dev, total)?;
    let total64 = total as u64;
    let func = dev.get_or_load_custom_func(&x.kernel("tram_add_bias"), MODULE, PTX)?;
    let mut b = func.builder();
    x.push(&mut b);
    bias.push(&mut b);
    y.push(&mut b);
    b.arg(&total64).arg(&n);
    // SAFETY: as above; `y` holds every element of x.
    unsafe { b.launch(elementwise(total)) }.w()?;
    drop(b);
    Ok(y.storage(dev, xl.shape().clone()))
}

/// Rows per block of the column partial sums (at least; more when the rows would need over
/// 65535 blocks, CUDA's limit on the grid's second dimension).
const COL_SUM_CHUNK: u32 = 64;

/// Column partial sums `[chunks, n]` in f32 of `g` `[.., n]` (f32 or bf16;
/// `tram_col_sums_f32` / `_bf16`); the caller sums dim 0.
pub(crate) fn col_sums(gs: &CudaStorage, gl: &Layout) -> Result<(CudaStorage, Shape)> {
    let op = "bias backward";
    let dev = gs.device();
    let g = Data::of(gs, gl, op)?;
    let (rows, n) = rows_width(gl, op)?;
    let chunk = COL_SUM_CHUNK.max(rows.div_ceil(65535));
    let chunks = rows.div_ceil(chunk).max(1);
    let part = alloc(dev, chunks as usize * n as usize)?;
    let func = dev.get_or_load_custom_func(&g.kernel("tram_col_sums"), MODULE, PTX)?;
    let mut b = func.builder();
    g.push(&mut b);
    b.arg(&part).arg(&rows).arg(&n).arg(&chunk);
    let cfg = LaunchConfig { grid_dim: (n.div_ceil(256).max(1), chunks, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: as above; `part` holds chunks · n elements, each written once (rows ≥ 1 per
    // chunk since chunks = ⌈rows / chunk⌉; with no rows, the one chunk sums nothing to 0).
    unsafe { b.launch(cfg) }.w()?;
    drop(b);
    Ok(out(part, dev, (chunks as usize, n as usize)))
}
