//! Data-parallel training: the [`Collective`] the engine calls to combine what the ranks of a
//! job computed (README "Data-parallel training").
//!
//! The engine calls it at these points only (SPEC "Two-pass step", with W ranks):
//!
//! - the end of each pass: the gradient, the loss, the penalty, δ and the row count, summed
//!   over the ranks in one call, each rank's gradient weighted by its rows (the weighting of
//!   gradient accumulation), so every rank holds the gradient of the W·B examples;
//! - with [`AscentScope::Local`], the first pass's gradient is not combined (each rank
//!   perturbs with its own), only the scalars and the second pass's gradient are.
//!
//! The single-process [`Single`] is the default and returns its inputs unchanged; [`Threads`]
//! runs the ranks as threads of one process; the MPI engine is behind the `mpi` feature
//! ([`mpi`](self::mpi)), NCCL for GPU tensors behind `nccl`.

#[cfg(feature = "mpi")]
pub mod mpi;
#[cfg(feature = "nccl")]
pub mod nccl;
mod threads;
pub mod watchdog;

pub use threads::Threads;

use crate::error::{Error, Result};
use candle_core::{DType, Device, Storage, Tensor, WithDType};
use serde::{Deserialize, Serialize};

/// What the ranks of a data-parallel job do together. Every rank must make the same calls in
/// the same order (as MPI collectives); a call returns on every rank the same values.
pub trait Collective: Send + Sync {
    /// Name of the engine (`single`, `mpi`, `mpi+nccl`).
    fn name(&self) -> &str;
    /// This process's rank, `0..world()`.
    fn rank(&self) -> usize;
    /// Number of ranks W.
    fn world(&self) -> usize;
    /// The element-wise sums over the ranks of each tensor (same shapes on every rank), each
    /// in its dtype and on its device. Every rank gets bitwise the same sums.
    fn all_reduce_sum(&self, tensors: &[Tensor]) -> Result<Vec<Tensor>>;
    /// The element-wise sums over the ranks of `values` (in place, f64).
    fn all_reduce_sum_f64(&self, values: &mut [f64]) -> Result<()>;
    /// `root`'s `bytes` on every rank (resized to them).
    fn broadcast_bytes(&self, bytes: &mut Vec<u8>, root: usize) -> Result<()>;
    /// Wait until every rank has called it.
    fn barrier(&self) -> Result<()>;
    /// Seconds spent in this engine's calls so far (waiting for the other ranks included), for
    /// the share of a step that data parallelism costs; 0 where not measured.
    fn wait_seconds(&self) -> f64 {
        0.0
    }
    /// Whether the engine combines each pass through this collective: with W > 1 ranks, and
    /// for an engine that reduces even one rank's gradients (NCCL at W = 1 in the GPU device
    /// check, where the all-reduce is the identity).
    fn reduces(&self) -> bool {
        self.world() > 1
    }

    /// The element-wise means over the ranks of each tensor.
    fn all_reduce_mean(&self, tensors: &[Tensor]) -> Result<Vec<Tensor>> {
        let w = self.world() as f64;
        self.all_reduce_sum(tensors)?.iter().map(|t| Ok(t.affine(1.0 / w, 0.0)?)).collect()
    }
    /// The element-wise means over the ranks of `values` (in place).
    fn all_reduce_mean_f64(&self, values: &mut [f64]) -> Result<()> {
        self.all_reduce_sum_f64(values)?;
        let w = self.world() as f64;
        values.iter_mut().for_each(|v| *v /= w);
        Ok(())
    }
    /// `root`'s tensors on every rank (same shapes and dtypes on every rank), on each
    /// tensor's device.
    fn broadcast(&self, tensors: &[Tensor], root: usize) -> Result<Vec<Tensor>> {
        if self.world() == 1 {
            return Ok(tensors.to_vec());
        }
        let mut bytes = if self.rank() == root { flatten_f64(tensors)?.iter().flat_map(|x| x.to_le_bytes()).collect() } else { Vec::new() };
        self.broadcast_bytes(&mut bytes, root)?;
        let values: Vec<f64> = bytes.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes"))).collect();
        unflatten_f64(&values, tensors)
    }
}

/// One process: every reduction is the identity (the default of [`crate::Optimizer`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct Single;

impl Collective for Single {
    fn name(&self) -> &str {
        "single"
    }
    fn rank(&self) -> usize {
        0
    }
    fn world(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, tensors: &[Tensor]) -> Result<Vec<Tensor>> {
        Ok(tensors.to_vec())
    }
    fn all_reduce_sum_f64(&self, _values: &mut [f64]) -> Result<()> {
        Ok(())
    }
    fn broadcast_bytes(&self, _bytes: &mut Vec<u8>, root: usize) -> Result<()> {
        if root != 0 {
            return Err(Error::Model(format!("broadcast from rank {root} in a single-process job (rank 0 only)")));
        }
        Ok(())
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
}

/// Which gradient sizes the ascent of a two-pass step in a data-parallel job (README
/// "Data-parallel training").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AscentScope {
    /// The gradient (and δ) of the whole global batch: every rank takes the same ε, and the
    /// step equals a single-process step on the W·B examples ("global" sharpness).
    #[default]
    Global,
    /// Each rank's own gradient and δ (m-sharpness, Foret et al. §4, m = B): each rank
    /// perturbs by its own ε; only the second pass's gradient is combined. One gradient
    /// all-reduce per step instead of two.
    Local,
}

/// The values of `tensors`, in order, as the engines sum them: f64 tensors in f64, the others
/// (gradients) in f32 — their dtype, or wider for half types — so that a gradient travels in 4
/// bytes per value. [`join_widths`] cuts the sums back into tensors.
pub(crate) fn split_widths(tensors: &[Tensor]) -> Result<(Vec<f32>, Vec<f64>)> {
    let (mut narrow, mut wide) = (Vec::<f32>::new(), Vec::<f64>::new());
    for t in tensors {
        if t.dtype() == DType::F64 {
            append(&mut wide, t)?;
        } else {
            append(&mut narrow, t)?;
        }
    }
    Ok((narrow, wide))
}

/// The tensors of `like`'s shapes, dtypes and devices cut in order from the sums of
/// [`split_widths`]' two vectors.
pub(crate) fn join_widths(narrow: &[f32], wide: &[f64], like: &[Tensor]) -> Result<Vec<Tensor>> {
    let (mut at_narrow, mut at_wide) = (0, 0);
    like.iter().map(|t| if t.dtype() == DType::F64 { take(wide, &mut at_wide, t) } else { take(narrow, &mut at_narrow, t) }).collect()
}

/// `t`'s values appended to `out` (converted to `T`'s dtype; one copy for a contiguous CPU
/// tensor of that dtype).
fn append<T: WithDType>(out: &mut Vec<T>, t: &Tensor) -> Result<()> {
    let t = t.to_dtype(T::DTYPE)?.to_device(&Device::Cpu)?;
    let t = if t.is_contiguous() { t } else { t.contiguous()? };
    let (storage, layout) = t.storage_and_layout();
    match (&*storage, layout.contiguous_offsets()) {
        (Storage::Cpu(c), Some((a, b))) => out.extend_from_slice(&c.as_slice::<T>()?[a..b]),
        _ => {
            drop(storage);
            out.extend(t.flatten_all()?.to_vec1::<T>()?)
        }
    }
    Ok(())
}

/// The tensor of `like`'s shape, dtype and device cut from `values` at `at` (advanced past it).
fn take<T: WithDType>(values: &[T], at: &mut usize, like: &Tensor) -> Result<Tensor> {
    let n = like.elem_count();
    let v = values
        .get(*at..*at + n)
        .ok_or_else(|| Error::Model("a collective returned fewer values than sent: the ranks disagree on the shapes".into()))?;
    *at += n;
    Ok(Tensor::from_slice(v, like.shape(), &Device::Cpu)?.to_dtype(like.dtype())?.to_device(like.device())?)
}

/// The tensors' values, in order, as one f64 vector (on the CPU).
pub fn flatten_f64(tensors: &[Tensor]) -> Result<Vec<f64>> {
    let mut out = Vec::with_capacity(tensors.iter().map(Tensor::elem_count).sum());
    for t in tensors {
        out.extend(t.to_dtype(DType::F64)?.flatten_all()?.to_device(&Device::Cpu)?.to_vec1::<f64>()?);
    }
    Ok(out)
}

/// `values` cut into tensors of `like`'s shapes, dtypes and devices.
pub fn unflatten_f64(values: &[f64], like: &[Tensor]) -> Result<Vec<Tensor>> {
    let total: usize = like.iter().map(Tensor::elem_count).sum();
    if values.len() != total {
        return Err(Error::Model(format!(
            "a collective returned {} values for tensors of {total}: the ranks disagree on the shapes",
            values.len()
        )));
    }
    let mut at = 0;
    like.iter()
        .map(|t| {
            let n = t.elem_count();
            let v = Tensor::from_slice(&values[at..at + n], t.shape(), &Device::Cpu)?.to_dtype(t.dtype())?.to_device(t.device())?;
            at += n;
            Ok(v)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_process_reductions_are_the_identity_and_flatten_round_trips() {
        let a = Tensor::new(&[[1.5f32, -2.0], [0.25, 3.0]], &Device::Cpu).unwrap();
        let b = Tensor::new(&[7.0f64], &Device::Cpu).unwrap();
        let out = Single.all_reduce_mean(&[a.clone(), b.clone()]).unwrap();
        assert_eq!(out[0].to_vec2::<f32>().unwrap(), a.to_vec2::<f32>().unwrap());
        assert_eq!(out[1].dtype(), DType::F64);
        let flat = flatten_f64(&[a.clone(), b.clone()]).unwrap();
        assert_eq!(flat, vec![1.5, -2.0, 0.25, 3.0, 7.0]);
        let back = unflatten_f64(&flat, &[a.clone(), b]).unwrap();
        assert_eq!(back[0].to_vec2::<f32>().unwrap(), a.to_vec2::<f32>().unwrap());
        assert!(unflatten_f64(&flat[2..], &[a]).unwrap_err().to_string().contains("disagree"));
        let mut v = [2.0, 4.0];
        Single.all_reduce_mean_f64(&mut v).unwrap();
        assert_eq!(v, [2.0, 4.0]);
        assert!(Single.broadcast_bytes(&mut Vec::new(), 1).is_err());
    }
}
