//! The MPI [`Collective`] (feature `mpi`), through rsmpi and the system's MPI library:
//! `mpirun -np W …` starts W processes, each builds one [`Mpi`] with [`Mpi::init`].
//!
//! Reductions sum in f64 on the CPU, at rank 0 (`MPI_Reduce`), and broadcast the result
//! (`MPI_Bcast`), so every rank gets bitwise the same sums whatever the MPI library's
//! reduction order. Every call runs under a [`Watchdog`]: a rank that waits longer than the
//! timeout in one call prints which call and for how long, and exits with status 75, which
//! makes `mpirun` end the job (a silent hang is never possible).

use super::watchdog::Watchdog;
use super::{flatten_f64, unflatten_f64, Collective};
use crate::error::{Error, Result};
use candle_core::Tensor;
use mpi::collective::SystemOperation;
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

    /// Sum `values` over the ranks: reduce at rank 0, then broadcast.
    fn sum(&self, op: &'static str, values: &mut [f64]) -> Result<()> {
        let rank = self.rank;
        self.with(op, |w| {
            let root = w.process_at_rank(0);
            if rank == 0 {
                let mut out = vec![0.0f64; values.len()];
                root.reduce_into_root(&values[..], &mut out[..], SystemOperation::sum());
                values.copy_from_slice(&out);
            } else {
                root.reduce_into(&values[..], SystemOperation::sum());
            }
            root.broadcast_into(values);
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
    fn all_reduce_sum(&self, tensors: &[Tensor]) -> Result<Vec<Tensor>> {
        let mut flat = flatten_f64(tensors)?;
        self.sum("the all-reduce of the gradient and step statistics", &mut flat)?;
        unflatten_f64(&flat, tensors)
    }
    fn all_reduce_sum_f64(&self, values: &mut [f64]) -> Result<()> {
        self.sum("an all-reduce of step statistics", values)
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
