//! Embedding lookup (the token / position / segment tables of GPT-2, BERT, XLM-R) whose table
//! gradient is summed in f32, as PyTorch's `embedding_dense_backward` does.
//!
//! candle's `index_select` backward is `index_add` into a zeroed table in the table's dtype: in
//! bf16 every addition rounds to 8 bits, so the gradient of a token seen a few hundred times in
//! a batch is off by percents (a sequential bf16 sum of 300 unit-scale terms: about 2% relative
//! error, 8192 terms: 10%), and on CUDA one thread per column walks every id. Here the rows of
//! one id are summed in f32 (f64 for an f64 table) in position order and rounded once to the
//! table's dtype; f32 results are bit for bit candle's.

use crate::{contiguous_range, on_cpu};
use candle_core::{bail, CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use half::{bf16, f16};

/// `out[i] = table[ids[i]]` with the f32-summed table gradient; the inputs are a contiguous
/// `[vocab, d]` table and contiguous u32 ids `[n]`.
struct Embedding;

/// The table gradient of [`Embedding`] from the output gradient `[n, d]` and the ids `[n]`.
struct EmbeddingGrad {
    vocab: usize,
}

/// Rows of `table` for `ids`, or an error naming the first id outside the table.
fn gather<T: Copy>(table: &[T], ids: &[u32], d: usize) -> Result<Vec<T>> {
    let vocab = table.len().checked_div(d).unwrap_or(0);
    let mut out = Vec::with_capacity(ids.len() * d);
    for (i, &id) in ids.iter().enumerate() {
        if id as usize >= vocab {
            bail!(
                "embedding: id {id} (position {i}) is outside the table's {vocab} rows; the tokenizer or the data has ids this \
                 model has no embeddings for (compare the model's config.json vocabulary size with the tokenizer's)"
            );
        }
        out.extend_from_slice(&table[id as usize * d..(id as usize + 1) * d]);
    }
    Ok(out)
}

/// A table element type and the type its gradient sums accumulate in: f32 and f64 in
/// themselves, bf16 and f16 in f32.
trait Summed: Copy {
    type Acc: Copy + std::ops::AddAssign;
    const ZERO: Self;
    const ACC_ZERO: Self::Acc;
    fn widen(self) -> Self::Acc;
    fn narrow(a: Self::Acc) -> Self;
}

macro_rules! summed {
    ($t:ty, $acc:ty, $zero:expr, $widen:expr, $narrow:expr) => {
        impl Summed for $t {
            type Acc = $acc;
            const ZERO: Self = $zero;
            const ACC_ZERO: $acc = 0.0;
            fn widen(self) -> $acc {
                $widen(self)
            }
            fn narrow(a: $acc) -> Self {
                $narrow(a)
            }
        }
    };
}
summed!(f32, f32, 0.0, |x| x, |a| a);
summed!(f64, f64, 0.0, |x| x, |a| a);
summed!(bf16, f32, bf16::ZERO, bf16::to_f32, bf16::from_f32);
summed!(f16, f32, f16::ZERO, f16::to_f32, f16::from_f32);

/// The table gradient: the rows of `g` `[n, d]` of each id summed in `T::Acc` in position
/// order (ids outside `0..vocab` skipped) and rounded once, the other rows zero.
fn scatter_sum<T: Summed>(g: &[T], ids: &[u32], d: usize, vocab: usize) -> Vec<T> {
    // The accumulator rows, one per distinct id, in order of first appearance.
    let mut slot = vec![u32::MAX; vocab];
    let mut seen: Vec<u32> = Vec::new();
    let mut acc: Vec<T::Acc> = Vec::new();
    for (i, &id) in ids.iter().enumerate() {
        let id = id as usize;
        if id >= vocab {
            continue;
        }
        if slot[id] == u32::MAX {
            slot[id] = seen.len() as u32;
            seen.push(id as u32);
            acc.resize(acc.len() + d, T::ACC_ZERO);
        }
        let s = slot[id] as usize;
        for (a, &v) in acc[s * d..(s + 1) * d].iter_mut().zip(&g[i * d..(i + 1) * d]) {
            *a += v.widen();
        }
    }
    let mut out = vec![T::ZERO; vocab * d];
    for (s, &id) in seen.iter().enumerate() {
        for (o, &a) in out[id as usize * d..(id as usize + 1) * d].iter_mut().zip(&acc[s * d..(s + 1) * d]) {
            *o = T::narrow(a);
        }
    }
    out
}

impl CustomOp2 for Embedding {
    fn name(&self) -> &'static str {
        "tram-embedding"
    }
    fn cpu_fwd(&self, ts: &CpuStorage, tl: &Layout, is: &CpuStorage, il: &Layout) -> Result<(CpuStorage, Shape)> {
        let d = tl.dims()[1];
        let ids = &is.as_slice::<u32>()?[contiguous_range(il, self.name())?];
        let r = contiguous_range(tl, self.name())?;
        let shape = Shape::from((ids.len(), d));
        let s = match ts {
            CpuStorage::F32(t) => CpuStorage::F32(gather(&t[r], ids, d)?),
            CpuStorage::F64(t) => CpuStorage::F64(gather(&t[r], ids, d)?),
            CpuStorage::BF16(t) => CpuStorage::BF16(gather(&t[r], ids, d)?),
            CpuStorage::F16(t) => CpuStorage::F16(gather(&t[r], ids, d)?),
            other => bail!("embedding: the table must be a float tensor, got {:?}", crate::sdt(other)),
        };
        Ok((s, shape))
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        ts: &candle_core::CudaStorage,
        tl: &Layout,
        is: &candle_core::CudaStorage,
        il: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::embedding(ts, tl, is, il)
    }
    fn bwd(&self, table: &Tensor, ids: &Tensor, _out: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = g.to_dtype(table.dtype())?;
        let g = if g.is_contiguous() { g } else { g.contiguous()? };
        let dt = g.apply_op2_no_bwd(ids, &EmbeddingGrad { vocab: table.dim(0)? })?;
        Ok((Some(dt), None))
    }
}

impl CustomOp2 for EmbeddingGrad {
    fn name(&self) -> &'static str {
        "tram-embedding-grad"
    }
    fn cpu_fwd(&self, gs: &CpuStorage, gl: &Layout, is: &CpuStorage, il: &Layout) -> Result<(CpuStorage, Shape)> {
        let d = *gl.dims().last().unwrap_or(&1);
        let ids = &is.as_slice::<u32>()?[contiguous_range(il, self.name())?];
        let r = contiguous_range(gl, self.name())?;
        if r.len() != ids.len() * d {
            bail!("{}: a [{}, {d}] gradient for {} ids", self.name(), r.len() / d.max(1), ids.len());
        }
        let v = self.vocab;
        let s = match gs {
            CpuStorage::F32(g) => CpuStorage::F32(scatter_sum(&g[r], ids, d, v)),
            CpuStorage::F64(g) => CpuStorage::F64(scatter_sum(&g[r], ids, d, v)),
            CpuStorage::BF16(g) => CpuStorage::BF16(scatter_sum(&g[r], ids, d, v)),
            CpuStorage::F16(g) => CpuStorage::F16(scatter_sum(&g[r], ids, d, v)),
            other => bail!("{}: expected a float gradient, got {:?}", self.name(), crate::sdt(other)),
        };
        Ok((s, Shape::from((v, d))))
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        gs: &candle_core::CudaStorage,
        gl: &Layout,
        is: &candle_core::CudaStorage,
        il: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::embedding_grad(gs, gl, is, il, self.vocab)
    }
}

/// Rows of `table` `[vocab, d]` for `ids` of any shape and integer dtype: output
/// `[..ids, d]` in the table's dtype. Differentiable in `table`; its gradient sums the rows of
/// each id in f32 (f64 for f64) in position order and rounds once to the table's dtype (module
/// docs). An id outside `0..vocab` is an error on the CPU naming it; on CUDA (one launch, no
/// read back) its row is NaN, so the loss it feeds fails the engine's finite check. CUDA: the
/// `tram_embedding_*` kernels for f32 and bf16 tables (see [`crate::cuda_kernels_enabled`]);
/// other devices and dtypes: [`crate::composed::embedding`].
pub fn embedding(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    let (_, d) =
        table.dims2().map_err(|_| candle_core::Error::Msg(format!("embedding: the table must be [vocab, dim], got {:?}", table.dims())))?;
    if ids.dtype().is_float() {
        bail!("embedding: ids must be integers, got {:?}", ids.dtype());
    }
    let cuda = crate::on_cuda_kernel(table, DType::F32) && matches!(table.dtype(), DType::F32 | DType::BF16);
    if !on_cpu(table) && !cuda {
        return crate::composed::embedding(table, ids);
    }
    let mut dims = ids.dims().to_vec();
    dims.push(d);
    let flat = ids.flatten_all()?;
    let flat = if flat.dtype() == DType::U32 { flat } else { flat.to_dtype(DType::U32)? };
    let flat = if flat.is_contiguous() { flat } else { flat.contiguous()? };
    let t = if table.is_contiguous() { table.clone() } else { table.contiguous()? };
    t.apply_op2(&flat, Embedding)?.reshape(dims)
}
