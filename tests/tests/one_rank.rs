//! An engine that reduces even one rank's gradients (NCCL at W = 1, what the GPU device check
//! runs: `Collective::reduces`): the engine calls it once per pass, and since a sum over one
//! rank is the identity, the steps are bitwise the single-process steps (the CPU half of the
//! device check's NCCL comparison, whose batches have a power-of-two row count as here).

mod common;
use candle_core::Tensor;
use common::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tram::distributed::Collective;
use tram::Model;

/// One rank that reduces anyway, returning its tensors unchanged (ncclAllReduce over one rank),
/// and counts the reductions.
struct OneRank {
    calls: Arc<AtomicUsize>,
}

impl Collective for OneRank {
    fn name(&self) -> &str {
        "one-rank"
    }
    fn rank(&self) -> usize {
        0
    }
    fn world(&self) -> usize {
        1
    }
    fn reduces(&self) -> bool {
        true
    }
    fn all_reduce_sum(&self, tensors: &[Tensor]) -> tram::Result<Vec<Tensor>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(tensors.iter().map(|t| t.copy()).collect::<candle_core::Result<_>>()?)
    }
    fn all_reduce_sum_f64(&self, _values: &mut [f64]) -> tram::Result<()> {
        Ok(())
    }
    fn broadcast_bytes(&self, _bytes: &mut Vec<u8>, _root: usize) -> tram::Result<()> {
        Ok(())
    }
    fn barrier(&self) -> tram::Result<()> {
        Ok(())
    }
}

fn params(m: &dyn Model) -> Vec<Vec<u32>> {
    m.params()
        .iter()
        .map(|p| p.var.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|x| x.to_bits()).collect())
        .collect()
}

#[test]
fn a_collective_that_reduces_one_rank_is_called_every_pass_and_changes_no_bit() {
    let data = batches(3, 7); // 16 examples each
    for composition in ["adam", "sam", "tram-noise", "tram-prev"] {
        let registry = tram_plugins::registry().unwrap();
        let run = |collective: Option<OneRank>| {
            let m = model(1);
            let mut opt = tram::Optimizer::new(&registry, tram::OptimizerConfig::new(composition, lr_for(composition))).unwrap();
            if let Some(c) = collective {
                opt.set_collective(Arc::new(c));
            }
            let mut passes = 0;
            for b in &data {
                let r = opt.step(&m, std::slice::from_ref(b)).unwrap();
                assert!(!r.skipped);
                passes += 1 + usize::from(r.ascent);
            }
            (params(&m), passes)
        };
        let calls = Arc::new(AtomicUsize::new(0));
        let (reduced, passes) = run(Some(OneRank { calls: calls.clone() }));
        // Every pass's gradient (with the step statistics) went through the collective: one
        // per step, two where the step took an ascent (tram-prev's first step has none).
        assert!(passes > data.len() || composition == "adam");
        assert_eq!(calls.load(Ordering::SeqCst), passes, "{composition}");
        assert!(reduced == run(None).0, "{composition}: the one-rank reduction changed the weights");
    }
}
