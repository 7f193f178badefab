//! The MPI [`Collective`] (feature `mpi`), through rsmpi and the system's MPI library:
//! `mpirun -np W …` starts W processes, each builds one [`Mpi`] with [`Mpi::init`].
//!
//! Reductions run on the CPU, gradients in f32 (4 bytes a value on the wire) and f64 values
//! (step statistics) in f64, and every rank gets bitwise the same sums whatever the MPI
//! library's reduction order: two ranks exchange and add with `MPI_Allreduce` (one addition
//! per value, the same in either order), more ranks sum at rank 0 (`MPI_Reduce`) and broadcast
//! its sums (`MPI_Bcast`). Every call runs under a [`Watchdog`]: a rank that waits longer than
//! the timeout in one call prints which call and for how long, and exits with status 75, which
//! makes `mpirun` end the job (a silent hang is never possible).

use super::watchdog::Watchdog;
use super::{join_widths, split_widths, Collective};
use crate::error::{Error, Result};
use candle_core::Tensor;
use mpi::collective::SystemOperation;
use mpi::datatype::Equivalence;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use std::sync::Mutex;
use std::time::Duration;

/// Exit status of a rank whose watchdog fired.
pub const TIMEOUT_EXIT: i32 = 75;

struct Inner {
    world: SimpleCommunicator,
    /// Kept so that MPI is finalized when the collective is dropped.
    _universe: mpi::environment::Universe,
}

/// An MPI job's ranks (`MPI_COMM_WORLD`).
pub struct Mpi {
    inner: Mutex<Inner>,
    rank: usize,
    world: usize,
    watchdog: Watchdog,
    /// Nanoseconds spent in calls.
    waited: std::sync::atomic::AtomicU64,
}

// SAFETY: MPI is initialised with `Threading::Serialized` and every MPI call goes through the
// mutex, so no two threads call MPI at once; the handles themselves are plain integers or
// pointers owned by the MPI library for the whole job.
unsafe impl Send for Mpi {}
// SAFETY: as above: every use of the handles is serialised by the mutex.
unsafe impl Sync for Mpi {}

impl Mpi {
    /// Initialise MPI (once per process) with a watchdog of `timeout` per call. MPI is
    /// finalized when the returned value is dropped; keep it until the job's last collective.
    pub fn init(timeout: Duration) -> Result<Mpi> {
        let (universe, _) = mpi::initialize_with_threading(mpi::Threading::Serialized).ok_or_else(|| {
            Error::Model("MPI is already initialised in this process (build one `tram::distributed::mpi::Mpi` per process)".into())
        })?;
        let world = universe.world();
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        let watchdog = Watchdog::new(timeout, move |msg| {
            eprintln!("tram: error: rank {rank} of {size}: {msg} (raise distributed.timeout_s if a step is legitimately slower)");
            // SAFETY: `_exit` ends the process at once; no Rust or MPI state is used after it.
            // (No `exit`: its handlers could block in the MPI library the other ranks left.)
            unsafe { libc::_exit(TIMEOUT_EXIT) }
        });
        Ok(Mpi { inner: Mutex::new(Inner { world, _universe: universe }), rank, world: size, watchdog, waited: Default::default() })
    }

    fn with<T>(&self, op: &'static str, f: impl FnOnce(&SimpleCommunicator) -> T) -> Result<T> {
        let inner = self.inner.lock().map_err(|_| Error::Model("the MPI communicator's lock is poisoned".into()))?;
        let _guard = self.watchdog.guard(op);
        let started = std::time::Instant::now();
        let out = f(&inner.world);
        self.waited.fetch_add(started.elapsed().as_nanos() as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(out)
    }

    /// The element-wise sums of `values` over the ranks, bitwise the same on every rank. Two
    /// ranks: `MPI_Allreduce`, where each sum is one addition of the two ranks' values, which
    /// IEEE arithmetic makes the same in either order (so whatever the library's algorithm);
    /// both ranks exchange and add at once. More ranks: `MPI_Reduce` at rank 0 (whose order
    /// the library picks), then `MPI_Bcast` of rank 0's sums.
    fn sum<T: Equivalence + Copy + Default>(&self, op: &'static str, values: &[T]) -> Result<Vec<T>> {
        let (rank, world) = (self.rank, self.world);
        self.with(op, |w| {
            let mut out = vec![T::default(); values.len()];
            if world == 2 {
                w.all_reduce_into(values, &mut out[..], SystemOperation::sum());
                return out;
            }
            let root = w.process_at_rank(0);
            if rank == 0 {
                root.reduce_into_root(values, &mut out[..], SystemOperation::sum());
            } else {
                root.reduce_into(values, SystemOperation::sum());
            }
            root.broadcast_into(&mut out[..]);
            out
        })
    }
}

impl Collective for Mpi {
    fn name(&self) -> &str {
        "mpi"
    }
    fn rank(&self) -> usize {
        self.rank
    }
    fn world(&self) -> usize {
        self.world
    }
    /// f64 tensors are summed in f64, the others (gradients) in f32 — their dtype, or wider for
    /// half types — so the gradient travels in 4 bytes per value.
    fn all_reduce_sum(&self, tensors: &[Tensor]) -> Result<Vec<Tensor>> {
        let (narrow, wide) = split_widths(tensors)?;
        let op = "the all-reduce of the gradient and step statistics";
        let narrow = if narrow.is_empty() { narrow } else { self.sum(op, &narrow)? };
        let wide = if wide.is_empty() { wide } else { self.sum(op, &wide)? };
        join_widths(&narrow, &wide, tensors)
    }
    fn all_reduce_sum_f64(&self, values: &mut [f64]) -> Result<()> {
        let sums = self.sum("an all-reduce of step statistics", values)?;
        values.copy_from_slice(&sums);
        Ok(())
    }
    fn broadcast_bytes(&self, bytes: &mut Vec<u8>, root: usize) -> Result<()> {
        if root >= self.world {
            return Err(Error::Model(format!("broadcast from rank {root} in a job of {} ranks", self.world)));
        }
        self.with("a broadcast", |w| {
            let r = w.process_at_rank(root as i32);
            let mut len = [bytes.len() as u64];
            r.broadcast_into(&mut len[..]);
            bytes.resize(len[0] as usize, 0);
            r.broadcast_into(&mut bytes[..]);
        })
    }
    fn barrier(&self) -> Result<()> {
        self.with("a barrier", |w| w.barrier())
    }
    fn wait_seconds(&self) -> f64 {
        self.waited.load(std::sync::atomic::Ordering::Relaxed) as f64 * 1e-9
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensors_of_any_layout_and_dtype_go_out_in_order_and_come_back_in_their_own() {
        let t = Tensor::new(&[[1.5f32, -2.0, 3.0], [0.25, 4.0, -8.0]], &Device::Cpu).unwrap();
        let strided = t.t().unwrap(); // not contiguous: [[1.5, 0.25], [-2, 4], [3, -8]]
        let narrowed = t.narrow(1, 1, 2).unwrap(); // [[-2, 3], [4, -8]]
        let half = Tensor::new(&[0.5f32, -1.0], &Device::Cpu).unwrap().to_dtype(DType::BF16).unwrap();
        let mut out = Vec::<f32>::new();
        for x in [&strided, &narrowed, &half] {
            append(&mut out, x).unwrap();
        }
        assert_eq!(out, vec![1.5, 0.25, -2.0, 4.0, 3.0, -8.0, -2.0, 3.0, 4.0, -8.0, 0.5, -1.0]);
        let mut at = 0;
        let back: Vec<Tensor> = [&strided, &narrowed, &half].iter().map(|x| take(&out, &mut at, x).unwrap()).collect();
        assert_eq!(back[0].to_vec2::<f32>().unwrap(), strided.to_vec2::<f32>().unwrap());
        assert_eq!(back[1].to_vec2::<f32>().unwrap(), narrowed.to_vec2::<f32>().unwrap());
        assert_eq!(back[2].dtype(), DType::BF16);
        assert!(take(&out, &mut at, &half).unwrap_err().to_string().contains("disagree"));
    }
}
