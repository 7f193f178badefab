//! The in-process [`Collective`] (`distributed.engine = "threads"`): the W ranks of a
//! data-parallel job (Foret et al. 2021 §4 and the TRAM paper's data-parallel runs, README
//! "Data-parallel training") as W threads of one process, each rank with its own model replica
//! and optimizer, the same calls and sums as the MPI engine, without MPI.
//!
//! On a CPU this is the faster way to use several cores: W ranks of one candle thread each run
//! every op of the step in parallel, where one rank whose ops are each split over W threads
//! spends much of a small op in the thread pool's fork and join. On the 2-core benchmark machine
//! `tram lm` on the quickstart trained 1.4× as many tokens a second with two ranks as with one
//! rank of two threads (README "Data-parallel training").
//!
//! Sums are those of [`Mpi`](super::mpi) with two ranks: gradients in f32 (f64 tensors in f64),
//! step statistics in f64, each value the sum of the ranks' values in rank order, computed by
//! every rank from the same deposits, so every rank holds bitwise the same values. A rank that
//! fails (an error, a panic) or leaves the job early fails every other rank's current and next
//! call with its reason, and a rank that waits longer than the timeout in one call fails the
//! job naming the call: no hang, never a partial result.

use super::{join_widths, split_widths, Collective};
use crate::error::{Error, Result};
use candle_core::Tensor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// What one rank brings to one call.
#[derive(Default)]
struct Deposit {
    f32s: Vec<f32>,
    f64s: Vec<f64>,
    bytes: Vec<u8>,
}

#[derive(Default)]
struct State {
    /// Calls completed by every rank.
    generation: u64,
    arrived: usize,
    deposits: Vec<Option<Deposit>>,
    /// Every rank's deposit of the last completed call, rank order.
    done: Option<Arc<Vec<Deposit>>>,
    /// Why the job failed: every later call of every rank returns it.
    failed: Option<String>,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

/// One rank of an in-process data-parallel job; [`Threads::group`] makes the W ranks, and each
/// moves to its own thread. Dropping a rank (its thread ended, returned an error or panicked)
/// fails the calls the other ranks make after it.
///
/// ```
/// use tram::distributed::{Collective, Threads};
///
/// let sums: Vec<f64> = std::thread::scope(|s| {
///     let ranks = Threads::group(3, std::time::Duration::from_secs(60));
///     let handles: Vec<_> = ranks
///         .into_iter()
///         .map(|r| s.spawn(move || { let mut v = [r.rank() as f64]; r.all_reduce_sum_f64(&mut v).unwrap(); v[0] }))
///         .collect();
///     handles.into_iter().map(|h| h.join().unwrap()).collect()
/// });
/// assert_eq!(sums, [3.0, 3.0, 3.0]);
/// ```
pub struct Threads {
    rank: usize,
    world: usize,
    shared: Arc<Shared>,
    timeout: Duration,
    /// Nanoseconds spent in calls.
    waited: AtomicU64,
}

impl Threads {
    /// The `world` ranks of one job, rank order, each failing a call that waits longer than
    /// `timeout` for the others.
    pub fn group(world: usize, timeout: Duration) -> Vec<Threads> {
        let world = world.max(1);
        let state = State { deposits: (0..world).map(|_| None).collect(), ..Default::default() };
        let shared = Arc::new(Shared { state: Mutex::new(state), wake: Condvar::new() });
        (0..world).map(|rank| Threads { rank, world, shared: shared.clone(), timeout, waited: AtomicU64::new(0) }).collect()
    }

    /// Fail the job: every rank's current and later calls return an error carrying `why`
    /// (the first reason given is kept).
    pub fn fail(&self, why: &str) {
        let mut st = match self.shared.state.lock() {
            Ok(st) => st,
            Err(poisoned) => poisoned.into_inner(),
        };
        if st.failed.is_none() {
            st.failed = Some(format!("rank {} of {}: {why}", self.rank, self.world));
        }
        self.shared.wake.notify_all();
    }

    fn lock(&self) -> Result<MutexGuard<'_, State>> {
        self.shared.state.lock().map_err(|_| Error::Model("the in-process data-parallel job's state is poisoned (a rank panicked)".into()))
    }

    fn job_failed(&self, op: &str, why: &str) -> Error {
        Error::Model(format!("data-parallel {op} on rank {} of {}: the job failed: {why}", self.rank, self.world))
    }

    /// Deposit `mine`, wait for every rank's deposit of this call, and return them in rank
    /// order.
    fn exchange(&self, op: &'static str, mine: Deposit) -> Result<Arc<Vec<Deposit>>> {
        let started = Instant::now();
        let out = self.exchange_inner(op, mine);
        self.waited.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        out
    }

    fn exchange_inner(&self, op: &'static str, mine: Deposit) -> Result<Arc<Vec<Deposit>>> {
        let mut st = self.lock()?;
        if let Some(why) = &st.failed {
            return Err(self.job_failed(op, why));
        }
        let generation = st.generation;
        st.deposits[self.rank] = Some(mine);
        st.arrived += 1;
        if st.arrived == self.world {
            let all: Vec<Deposit> = st.deposits.iter_mut().map(|d| d.take().unwrap_or_default()).collect();
            let all = Arc::new(all);
            st.done = Some(all.clone());
            st.arrived = 0;
            st.generation += 1;
            self.shared.wake.notify_all();
            return Ok(all);
        }
        let deadline = Instant::now() + self.timeout;
        loop {
            // Completed calls first: a rank that left after the last call does not fail it.
            if st.generation != generation {
                return st.done.clone().ok_or_else(|| Error::Model(format!("data-parallel {op}: a completed call left no result")));
            }
            if let Some(why) = &st.failed {
                return Err(self.job_failed(op, why));
            }
            let now = Instant::now();
            if now >= deadline {
                let why = format!(
                    "waited {} s in {op} for the other ranks (raise distributed.timeout_s if a step is legitimately slower)",
                    self.timeout.as_secs_f64()
                );
                st.failed = Some(format!("rank {} of {}: {why}", self.rank, self.world));
                self.shared.wake.notify_all();
                return Err(Error::Model(format!("data-parallel {op} on rank {} of {}: {why}", self.rank, self.world)));
            }
            st = self
                .shared
                .wake
                .wait_timeout(st, deadline - now)
                .map_err(|_| Error::Model("the in-process data-parallel job's state is poisoned".into()))?
                .0;
        }
    }
}

impl Drop for Threads {
    fn drop(&mut self) {
        let why = if std::thread::panicking() { "panicked" } else { "left the job" };
        self.fail(why);
    }
}

/// The element-wise sums, in rank order, of every rank's `pick`ed values.
fn sum_in_rank_order<T: Copy + std::ops::Add<Output = T>>(all: &[Deposit], pick: impl Fn(&Deposit) -> &[T]) -> Result<Vec<T>> {
    let mut out = pick(&all[0]).to_vec();
    for d in &all[1..] {
        let v = pick(d);
        if v.len() != out.len() {
            return Err(Error::Model(format!(
                "a data-parallel sum got {} values from one rank and {} from another: the ranks disagree on the shapes",
                out.len(),
                v.len()
            )));
        }
        out.iter_mut().zip(v).for_each(|(o, x)| *o = *o + *x);
    }
    Ok(out)
}

impl Collective for Threads {
    fn name(&self) -> &str {
        "threads"
    }
    fn rank(&self) -> usize {
        self.rank
    }
    fn world(&self) -> usize {
        self.world
    }
    /// f64 tensors are summed in f64, the others (gradients) in f32, as the MPI engine does.
    fn all_reduce_sum(&self, tensors: &[Tensor]) -> Result<Vec<Tensor>> {
        let (f32s, f64s) = split_widths(tensors)?;
        let all = self.exchange("all-reduce", Deposit { f32s, f64s, ..Default::default() })?;
        join_widths(&sum_in_rank_order(&all, |d| &d.f32s)?, &sum_in_rank_order(&all, |d| &d.f64s)?, tensors)
    }
    fn all_reduce_sum_f64(&self, values: &mut [f64]) -> Result<()> {
        let all = self.exchange("all-reduce of the step statistics", Deposit { f64s: values.to_vec(), ..Default::default() })?;
        values.copy_from_slice(&sum_in_rank_order(&all, |d| &d.f64s)?);
        Ok(())
    }
    fn broadcast_bytes(&self, bytes: &mut Vec<u8>, root: usize) -> Result<()> {
        if root >= self.world {
            return Err(Error::Model(format!("broadcast from rank {root} in a job of {} ranks", self.world)));
        }
        let mine = if self.rank == root { std::mem::take(bytes) } else { Vec::new() };
        let all = self.exchange("broadcast", Deposit { bytes: mine, ..Default::default() })?;
        *bytes = all[root].bytes.clone();
        Ok(())
    }
    fn barrier(&self) -> Result<()> {
        self.exchange("barrier", Deposit::default()).map(|_| ())
    }
    fn wait_seconds(&self) -> f64 {
        self.waited.load(Ordering::Relaxed) as f64 * 1e-9
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    /// Run `f` on every rank of a `world`-rank group, each on its own thread.
    fn on_ranks<T: Send>(world: usize, timeout: Duration, f: impl Fn(Threads) -> T + Sync) -> Vec<T> {
        std::thread::scope(|s| {
            let handles: Vec<_> = Threads::group(world, timeout).into_iter().map(|r| s.spawn(|| f(r))).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    #[test]
    fn every_rank_gets_bitwise_the_rank_order_sums_in_each_tensors_dtype() {
        let out = on_ranks(3, Duration::from_secs(30), |r| {
            let k = r.rank() as f32;
            let a = Tensor::new(&[[0.1f32 + k, 1e8], [-k, 3.0]], &Device::Cpu).unwrap();
            let b = Tensor::new(&[1e-17f64 * (k as f64 + 1.0), 1.0], &Device::Cpu).unwrap();
            let c = Tensor::new(&[0.5f32 + k], &Device::Cpu).unwrap().to_dtype(DType::BF16).unwrap();
            let s = r.all_reduce_sum(&[a, b, c]).unwrap();
            let mut v = [r.rank() as f64 + 0.25];
            r.all_reduce_sum_f64(&mut v).unwrap();
            (
                s[0].to_vec2::<f32>().unwrap(),
                s[1].to_vec1::<f64>().unwrap(),
                s[2].dtype(),
                s[2].to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap(),
                v[0],
            )
        });
        let want_a = [[((0.1f32 + 0.0) + (0.1 + 1.0)) + (0.1 + 2.0), 3e8], [-3.0, 9.0]];
        for (a, b, dt, c, v) in &out {
            assert_eq!(
                a.iter().flatten().map(|x| x.to_bits()).collect::<Vec<_>>(),
                want_a.iter().flatten().map(|x| x.to_bits()).collect::<Vec<_>>()
            );
            assert_eq!(b, &vec![6e-17, 3.0]);
            assert_eq!(*dt, DType::BF16);
            assert_eq!(c, &vec![4.5]);
            assert_eq!(*v, 3.75);
        }
    }

    #[test]
    fn broadcast_and_barrier_reach_every_rank() {
        let out = on_ranks(3, Duration::from_secs(30), |r| {
            let mut b = if r.rank() == 1 { vec![7u8, 8, 9] } else { vec![r.rank() as u8] };
            r.broadcast_bytes(&mut b, 1).unwrap();
            r.barrier().unwrap();
            let t = r.broadcast(&[Tensor::new(&[r.rank() as f32 + 0.5], &Device::Cpu).unwrap()], 2).unwrap();
            (b, t[0].to_vec1::<f32>().unwrap(), r.name().to_string())
        });
        for (b, t, name) in out {
            assert_eq!((b, t, name.as_str()), (vec![7, 8, 9], vec![2.5], "threads"));
        }
    }

    #[test]
    fn a_rank_that_fails_or_leaves_fails_the_others_calls_at_once_with_its_reason() {
        let started = Instant::now();
        let out = on_ranks(3, Duration::from_secs(60), |r| {
            if r.rank() == 2 {
                r.fail("could not read the data");
                return String::new();
            }
            r.barrier().unwrap_err().to_string()
        });
        assert!(started.elapsed() < Duration::from_secs(10));
        for msg in &out[..2] {
            assert!(msg.contains("rank 2 of 3: could not read the data") && msg.contains("barrier"), "{msg}");
        }
        // A rank that returns (drops its handle) while the others still call.
        let out = on_ranks(2, Duration::from_secs(60), |r| if r.rank() == 0 { Some(r.barrier().unwrap_err().to_string()) } else { None });
        assert!(out[0].as_deref().unwrap().contains("rank 1 of 2: left the job"), "{out:?}");
    }

    #[test]
    fn a_rank_waiting_past_the_timeout_fails_the_job_naming_the_call() {
        let out = on_ranks(2, Duration::from_millis(200), |r| {
            if r.rank() == 1 {
                std::thread::sleep(Duration::from_millis(1500));
                return r.barrier().unwrap_err().to_string();
            }
            let mut v = [1.0];
            r.all_reduce_sum_f64(&mut v).unwrap_err().to_string()
        });
        assert!(
            out[0].contains("waited 0.2 s in all-reduce of the step statistics") && out[0].contains("distributed.timeout_s"),
            "{}",
            out[0]
        );
        assert!(out[1].contains("the job failed") && out[1].contains("rank 0 of 2"), "{}", out[1]);
    }

    #[test]
    fn disagreeing_shapes_are_an_error_not_a_silent_truncation() {
        let out = on_ranks(2, Duration::from_secs(30), |r| {
            let t = Tensor::zeros(1 + r.rank(), DType::F32, &Device::Cpu).unwrap();
            r.all_reduce_sum(&[t]).unwrap_err().to_string()
        });
        assert!(out.iter().all(|m| m.contains("disagree on the shapes")), "{out:?}");
    }
}
