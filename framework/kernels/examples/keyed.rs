//! CPU cost of the keyed streams (a note, not a test): the counter-based Box–Muller normal and
//! the uniform noise of `tram_kernels::keyed` against the ziggurat normal (rand_distr's
//! `StandardNormal`, the sampler before the device kernel) and rand's f32 uniform over the same
//! keyed rows, at a TRAM-x-sized sample (16 × 512 × 768 embeddings), and the dropout mask.
//!
//!   cargo run --release -p tram-kernels --example keyed [reps]
//!
//! One thread (every sampler here is sequential per row).

use candle_core::Shape;
use rand::Rng;
use std::time::Instant;
use tram_kernels::keyed::{dropout_mask_cpu, noise_cpu, Dist, Key};

fn median(reps: usize, mut f: impl FnMut() -> usize) -> f64 {
    let mut sink = f();
    let mut v: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            sink ^= f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    std::hint::black_box(sink);
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let reps = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(5);
    let (rows, per_row) = (16usize, 512 * 768);
    let shape = Shape::from((rows, 512, 768));
    let key = Key { seed: 1, domain: 0x6e6f697365, draw: 0, offset: 0 };
    let old_normal = median(reps, || {
        let mut v: Vec<f32> = Vec::with_capacity(rows * per_row);
        for r in 0..rows {
            let mut rng = key.row(r);
            v.extend((0..per_row).map(|_| rng.sample::<f32, _>(rand_distr::StandardNormal) * 1e-5));
        }
        v.len() + v[7].to_bits() as usize
    });
    let old_uniform = median(reps, || {
        let mut v: Vec<f32> = Vec::with_capacity(rows * per_row);
        for r in 0..rows {
            let mut rng = key.row(r);
            v.extend((0..per_row).map(|_| rng.random_range(-1.0f32..1.0) * 1e-5));
        }
        v.len() + v[7].to_bits() as usize
    });
    let new_normal = median(reps, || {
        let v = noise_cpu(&shape, key, Dist::Normal, 1e-5);
        v.len() + v[7].to_bits() as usize
    });
    let new_uniform = median(reps, || {
        let v = noise_cpu(&shape, key, Dist::Uniform, 1e-5);
        v.len() + v[7].to_bits() as usize
    });
    let mask = median(reps, || {
        let v = dropout_mask_cpu(&shape, key, 0.9);
        v.len() + v[7].to_bits() as usize
    });
    let n = (rows * per_row) as f64;
    println!("{rows} x 512 x 768 = {n} elements, one thread, median of {reps}:");
    for (what, ms) in [
        ("normal, ziggurat (before)", old_normal),
        ("normal, Box-Muller f64 (now)", new_normal),
        ("uniform, rand f32 (before)", old_uniform),
        ("uniform, 2u - 1 (now)", new_uniform),
        ("dropout mask p = 0.1 (unchanged)", mask),
    ] {
        println!("{what:<34} {ms:8.1} ms  {:5.2} ns/element", ms * 1e6 / n);
    }
}
