//! NCCL for the gradient all-reduce between GPUs (feature `nccl`), one process per GPU,
//! bootstrapped through MPI: rank 0 makes the NCCL unique id and [`Mpi`] broadcasts it; the
//! communicator is built on the stream of the first CUDA tensor it reduces (the model's), at
//! the first reduction, which every rank makes at the same point of the same step.
//!
//! One process not started by an MPI launcher gets a one-rank communicator without MPI
//! ([`Nccl::single`]): the engine still reduces every pass's gradient through
//! `ncclAllReduce` ([`Collective::reduces`]), which over one rank is the identity. That is
//! what the GPU device check runs (its machine has one GPU and no MPI launcher).
//!
//! CUDA tensors are summed by `ncclAllReduce` in their dtype (f32, bf16, f16, f64) on the
//! GPU; CPU tensors, scalars, broadcasts and barriers go through MPI. NCCL's ring all-reduce
//! reduces each chunk once and then copies it, so every rank gets the same sums.
//!
//! Not run in this project's CI (no GPU there): it is type-checked with `--features cuda,nccl`;
//! the GPU device check (scripts/gpu/check.py) runs it with W = 1.

use super::mpi::Mpi;
use super::Collective;
use crate::error::{Error, Result};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::nccl::safe::{Comm, Id, ReduceOp};
use candle_core::cuda_backend::{CudaDType, CudaStorage};
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};
use std::sync::{Arc, Mutex};

/// MPI with NCCL for the CUDA tensors of [`Collective::all_reduce_sum`].
pub struct Nccl {
    /// The MPI job; `None` for the one-rank communicator of [`Nccl::single`].
    mpi: Option<Mpi>,
    id: [std::ffi::c_char; 128],
    comm: Mutex<Option<Arc<Comm>>>,
}

// SAFETY: the communicator is only used from the thread that holds the mutex (one reduction
// at a time; the engine calls the collective from its training thread).
unsafe impl Send for Nccl {}
// SAFETY: as above.
unsafe impl Sync for Nccl {}

impl Nccl {
    /// NCCL over the ranks of `mpi`: rank 0's unique id, broadcast to every rank. The
    /// communicator itself is built at the first reduction of a CUDA tensor.
    pub fn init(mpi: Mpi, device: &candle_core::Device) -> Result<Nccl> {
        if !device.is_cuda() {
            return Err(Error::Model("the NCCL all-reduce needs the model on a CUDA device (device = \"cuda\")".into()));
        }
        let mut bytes = Vec::new();
        if mpi.rank() == 0 {
            let id = Id::new().map_err(|e| Error::Model(format!("creating the NCCL unique id: {e:?}")))?;
            bytes = id.internal().iter().map(|c| *c as u8).collect();
        }
        mpi.broadcast_bytes(&mut bytes, 0)?;
        if bytes.len() != 128 {
            return Err(Error::Model(format!("the broadcast NCCL unique id has {} bytes, not 128", bytes.len())));
        }
        let mut id = [0 as std::ffi::c_char; 128];
        for (d, b) in id.iter_mut().zip(&bytes) {
            *d = *b as std::ffi::c_char;
        }
        Ok(Nccl { mpi: Some(mpi), id, comm: Mutex::new(None) })
    }

    /// NCCL over this process alone (W = 1, no MPI): a unique id of its own. Every reduction
    /// still goes through `ncclAllReduce` on the GPU (the identity over one rank).
    pub fn single(device: &candle_core::Device) -> Result<Nccl> {
        if !device.is_cuda() {
            return Err(Error::Model("the NCCL all-reduce needs the model on a CUDA device (device = \"cuda\")".into()));
        }
        let id = Id::new().map_err(|e| Error::Model(format!("creating the NCCL unique id: {e:?}")))?;
        Ok(Nccl { mpi: None, id: *id.internal(), comm: Mutex::new(None) })
    }

    // The communicator is only used under `self.comm`'s lock and in the reduction that took it.
    #[allow(clippy::arc_with_non_send_sync)]
    fn comm(&self, t: &Tensor) -> Result<Arc<Comm>> {
        let mut c = self.comm.lock().map_err(|_| Error::Model("the NCCL communicator's lock is poisoned".into()))?;
        if let Some(comm) = c.as_ref() {
            return Ok(comm.clone());
        }
        let stream = match t.device() {
            candle_core::Device::Cuda(d) => d.cuda_stream(),
            _ => return Err(Error::Model("NCCL reduces CUDA tensors only".into())),
        };
        let comm = Comm::from_rank(stream, self.rank(), self.world(), Id::uninit(self.id))
            .map_err(|e| Error::Model(format!("initialising NCCL (rank {} of {}): {e:?}", self.rank(), self.world())))?;
        let comm = Arc::new(comm);
        *c = Some(comm.clone());
        Ok(comm)
    }
}

/// `ncclAllReduce(sum)` of one CUDA tensor, as a candle op (no gradient).
struct AllReduce(Arc<Comm>);

impl AllReduce {
    fn sum<T: CudaDType + candle_core::cuda_backend::cudarc::nccl::NcclType + candle_core::cuda_backend::cudarc::driver::DeviceRepr>(
        &self,
        s: &CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<CudaStorage> {
        let dev = s.device().clone();
        let slice = s.as_cuda_slice::<T>()?;
        let slice = match l.contiguous_offsets() {
            Some((a, b)) => slice.slice(a..b),
            None => candle_core::bail!("the NCCL all-reduce needs a contiguous tensor"),
        };
        // SAFETY: every element is written by the all-reduce before it is read.
        let mut dst = unsafe { dev.alloc::<T>(l.shape().elem_count()) }?;
        self.0.all_reduce(&slice, &mut dst, &ReduceOp::Sum).map_err(|e| candle_core::Error::Msg(format!("ncclAllReduce: {e:?}")))?;
        Ok(CudaStorage::wrap_cuda_slice(dst, dev))
    }
}

impl CustomOp1 for AllReduce {
    fn name(&self) -> &'static str {
        "nccl-all-reduce"
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("the NCCL all-reduce takes CUDA tensors only")
    }
    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let out = match s.dtype() {
            DType::F32 => self.sum::<f32>(s, l)?,
            DType::F64 => self.sum::<f64>(s, l)?,
            DType::BF16 => self.sum::<half::bf16>(s, l)?,
            DType::F16 => self.sum::<half::f16>(s, l)?,
            other => candle_core::bail!("the NCCL all-reduce does not sum {other:?} tensors"),
        };
        Ok((out, l.shape().clone()))
    }
}

impl Collective for Nccl {
    fn name(&self) -> &str {
        if self.mpi.is_some() {
            "mpi+nccl"
        } else {
            "nccl"
        }
    }
    fn rank(&self) -> usize {
        self.mpi.as_ref().map_or(0, |m| m.rank())
    }
    fn world(&self) -> usize {
        self.mpi.as_ref().map_or(1, |m| m.world())
    }
    fn reduces(&self) -> bool {
        // Even with one rank: the engine's gradients then go through ncclAllReduce.
        true
    }
    fn all_reduce_sum(&self, tensors: &[Tensor]) -> Result<Vec<Tensor>> {
        // CUDA tensors through NCCL (in order), the others through MPI in one call (one rank
        // without MPI: as they are).
        let cpu: Vec<Tensor> = tensors.iter().filter(|t| !t.device().is_cuda()).cloned().collect();
        let cpu = match &self.mpi {
            Some(mpi) if !cpu.is_empty() => mpi.all_reduce_sum(&cpu)?,
            _ => cpu,
        };
        let mut cpu = cpu.into_iter();
        let mut out = Vec::with_capacity(tensors.len());
        for t in tensors {
            if t.device().is_cuda() {
                let op = AllReduce(self.comm(t)?);
                out.push(t.contiguous()?.apply_op1_no_bwd(&op)?);
            } else {
                out.push(cpu.next().ok_or_else(|| Error::Model("the MPI all-reduce returned too few tensors".into()))?);
            }
        }
        Ok(out)
    }
    fn all_reduce_sum_f64(&self, values: &mut [f64]) -> Result<()> {
        match &self.mpi {
            Some(mpi) => mpi.all_reduce_sum_f64(values),
            None => Ok(()),
        }
    }
    fn broadcast_bytes(&self, bytes: &mut Vec<u8>, root: usize) -> Result<()> {
        match &self.mpi {
            Some(mpi) => mpi.broadcast_bytes(bytes, root),
            None => super::Single.broadcast_bytes(bytes, root),
        }
    }
    fn barrier(&self) -> Result<()> {
        match &self.mpi {
            Some(mpi) => mpi.barrier(),
            None => Ok(()),
        }
    }
    fn wait_seconds(&self) -> f64 {
        self.mpi.as_ref().map_or(0.0, |m| m.wait_seconds())
    }
}
