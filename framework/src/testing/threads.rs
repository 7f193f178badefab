//! An in-process [`Collective`]: the W ranks of a data-parallel job as W threads of one test,
//! to check data-parallel code (a component, an evaluation, a step) without MPI.

use crate::distributed::{flatten_f64, unflatten_f64, Collective};
use crate::Result;
use candle_core::Tensor;
use std::sync::{Arc, Barrier, Mutex};

/// One rank of a [`ThreadGroup`]: each collective call deposits its values and every rank sums
/// the deposits in rank order, so every rank gets bitwise the same sums (as the MPI and NCCL
/// collectives give).
///
/// ```
/// use tram::distributed::Collective;
/// use tram::testing::ThreadGroup;
///
/// let sums: Vec<f64> = std::thread::scope(|s| {
///     let ranks = ThreadGroup::new(3);
///     let handles: Vec<_> = ranks
///         .into_iter()
///         .map(|r| s.spawn(move || { let mut v = [r.rank() as f64]; r.all_reduce_sum_f64(&mut v).unwrap(); v[0] }))
///         .collect();
///     handles.into_iter().map(|h| h.join().unwrap()).collect()
/// });
/// assert_eq!(sums, [3.0, 3.0, 3.0]);
/// ```
pub struct ThreadGroup {
    rank: usize,
    world: usize,
    slots: Arc<(Mutex<Vec<Vec<u8>>>, Barrier)>,
}

impl ThreadGroup {
    /// The `world` ranks of one group, rank order; move each to its own thread.
    #[allow(clippy::new_ret_no_self)]
    pub fn new(world: usize) -> Vec<ThreadGroup> {
        let slots = Arc::new((Mutex::new(vec![Vec::new(); world]), Barrier::new(world)));
        (0..world).map(|rank| ThreadGroup { rank, world, slots: slots.clone() }).collect()
    }

    /// Deposit `mine`, wait for every rank, and return every rank's deposit in rank order.
    fn exchange(&self, mine: Vec<u8>) -> Vec<Vec<u8>> {
        self.slots.0.lock().expect("thread group slots")[self.rank] = mine;
        self.slots.1.wait();
        let all = self.slots.0.lock().expect("thread group slots").clone();
        self.slots.1.wait();
        all
    }
}

impl Collective for ThreadGroup {
    fn name(&self) -> &str {
        "threads"
    }
    fn rank(&self) -> usize {
        self.rank
    }
    fn world(&self) -> usize {
        self.world
    }
    fn all_reduce_sum(&self, tensors: &[Tensor]) -> Result<Vec<Tensor>> {
        let mut v = flatten_f64(tensors)?;
        self.all_reduce_sum_f64(&mut v)?;
        unflatten_f64(&v, tensors)
    }
    fn all_reduce_sum_f64(&self, values: &mut [f64]) -> Result<()> {
        let all = self.exchange(values.iter().flat_map(|v| v.to_le_bytes()).collect());
        for (i, v) in values.iter_mut().enumerate() {
            *v = all.iter().map(|r| f64::from_le_bytes(r[8 * i..8 * i + 8].try_into().expect("8 bytes"))).sum();
        }
        Ok(())
    }
    fn broadcast_bytes(&self, bytes: &mut Vec<u8>, root: usize) -> Result<()> {
        let all = self.exchange(bytes.clone());
        *bytes = all[root].clone();
        Ok(())
    }
    fn barrier(&self) -> Result<()> {
        self.slots.1.wait();
        Ok(())
    }
}
