//! Data-parallel steps (README "Data-parallel training") without MPI: two ranks on two threads
//! of this process, summing through an in-process [`Collective`] (`tram::distributed::Threads`). With the global ascent, two
//! ranks of 8 examples take the single-process step of the 16 (noise compositions included:
//! the samples are keyed by global example); the ranks agree bitwise; with the local ascent each
//! rank perturbs by its own gradient, which equals the global step when both ranks hold the
//! same examples and differs from it when they do not.

mod common;
use common::*;
use std::sync::Arc;
use tram::distributed::Threads;
use tram::distributed::{AscentScope, Collective};
use tram::{Batch, Model};

/// The composition with noise of σ = 0.5: large enough that the samples move the weights
/// (at the tests' σ = 1e-3 the ascent of tram-noise is below f32 resolution).
fn opt(composition: &str) -> tram::Optimizer {
    let cfg = tram::OptimizerConfig::new(composition, lr_for(composition)).with("noise", "sigma", 0.5);
    tram::Optimizer::new(&tram_plugins::registry().unwrap(), cfg).unwrap()
}

fn rows(b: &Batch, start: usize, n: usize) -> Batch {
    Batch::new(b.inputs.narrow(0, start, n).unwrap(), b.targets.narrow(0, start, n).unwrap())
}

fn params(m: &dyn Model) -> Vec<Vec<f32>> {
    m.params().iter().map(|p| p.var.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap()).collect()
}

/// Parameters after `steps` steps of `composition` on one process over `data`.
fn single(composition: &str, data: &[Batch], steps: usize) -> Vec<Vec<f32>> {
    let (m, mut opt) = (model(1), opt(composition));
    for s in 0..steps {
        assert!(!opt.step(&m, std::slice::from_ref(&data[s % data.len()])).unwrap().skipped);
    }
    params(&m)
}

/// Per rank, the parameters after `steps` steps on two ranks, rank `r` training on
/// `share(r, batch)` (which returns its rows and the global index of its first one).
fn two_ranks(
    composition: &str,
    data: &[Batch],
    steps: usize,
    ascent: AscentScope,
    share: fn(usize, &Batch) -> (Batch, usize),
) -> Vec<Vec<Vec<f32>>> {
    let handles: Vec<_> = Threads::group(2, std::time::Duration::from_secs(600))
        .into_iter()
        .map(|c| {
            let (composition, data) = (composition.to_string(), data.to_vec());
            std::thread::spawn(move || {
                let rank = c.rank();
                let (m, mut opt) = (model(1), opt(&composition));
                opt.set_collective(Arc::new(c));
                opt.set_ascent_scope(ascent);
                for s in 0..steps {
                    let (b, offset) = share(rank, &data[s % data.len()]);
                    opt.set_example_offsets(vec![offset]);
                    let r = opt.step(&m, &[b]).unwrap();
                    assert!(!r.skipped && r.forward_passes > 0);
                }
                params(&m)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

fn halves(rank: usize, b: &Batch) -> (Batch, usize) {
    (rows(b, 8 * rank, 8), 8 * rank)
}

fn first_half_twice(_rank: usize, b: &Batch) -> (Batch, usize) {
    (rows(b, 0, 8), 0)
}

/// Largest |a − b| relative to the largest |a|.
fn distance(a: &[Vec<f32>], b: &[Vec<f32>]) -> f64 {
    let max = a.iter().flatten().fold(0f64, |m, x| m.max((*x as f64).abs()));
    // A NaN is an infinite difference (`max` would skip it).
    let diff = a.iter().flatten().zip(b.iter().flatten()).fold(0f64, |m, (x, y)| {
        let e = (*x as f64 - *y as f64).abs();
        m.max(if e.is_nan() { f64::INFINITY } else { e })
    });
    diff / max
}

#[test]
fn two_ranks_of_8_examples_take_the_single_process_step_of_16_and_agree_bitwise() {
    let data = batches(3, 5); // 16 examples each
    for c in ["adam", "sam", "tram-prev", "tram-noise", "tram-fisher", "r3f", "tram-pretrained"] {
        let one = single(c, &data, 3);
        let ranks = two_ranks(c, &data, 3, AscentScope::Global, halves);
        assert_eq!(ranks[0], ranks[1], "{c}: the ranks disagree");
        let d = distance(&one, &ranks[0]);
        eprintln!("{c}: two ranks vs one process: {d:e}");
        assert!(d < 1e-5, "{c}: two ranks differ from one process by {d:e}");
        // Noise keyed by example: without the offsets both halves draw the first 8 examples'
        // noise, and the step is another.
        if c == "tram-noise" || c == "r3f" {
            let unkeyed = two_ranks(c, &data, 3, AscentScope::Global, |r, b| (halves(r, b).0, 0));
            assert_ne!(unkeyed[0], ranks[0], "{c}: the example offset changed nothing");
        }
    }
}

#[test]
fn local_ascent_perturbs_each_rank_by_its_own_gradient() {
    let data = batches(3, 5);
    for c in ["sam", "tram-prev"] {
        // Both ranks on the same 8 examples: their own gradient is the global one.
        let same = two_ranks(c, &data, 3, AscentScope::Local, first_half_twice);
        let first: Vec<Batch> = data.iter().map(|b| rows(b, 0, 8)).collect();
        assert!(distance(&single(c, &first, 3), &same[0]) < 1e-5, "{c}");
        // Different examples: the ranks perturb differently, the update is still shared.
        let local = two_ranks(c, &data, 3, AscentScope::Local, halves);
        let global = two_ranks(c, &data, 3, AscentScope::Global, halves);
        assert_eq!(local[0], local[1], "{c}: the ranks disagree");
        // (Rounding alone moves the weights by about 1e-7 of the largest: see the test above.)
        let d = distance(&global[0], &local[0]);
        eprintln!("{c}: local vs global ascent: {d:e}");
        assert!(d > 3e-6, "{c}: the local ascent took the global step (difference {d:e})");
    }
}
