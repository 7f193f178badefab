//! Micro-benchmark: one base-optimizer update over the parameters of the side-by-side
//! benchmark's small GPT-2 (4 layers, d = 128, vocab 4096; 1.3 M f32 weights), fused in-place
//! (what `adam` / `adamw` / `sgd` run on the CPU) against the composed candle ops they reproduce.
//!
//! `cargo run --release -p tram-plugins --example optimizer_step [steps]` (median ms per update).

use candle_core::{Device, Tensor, Var};
use std::time::Instant;
use tram::components::base::SimpleOptimizer;
use tram_plugins::base::adam::{AdamConfig, AdamCore};
use tram_plugins::base::sgd::{SgdConfig, SgdRule};

fn shapes() -> Vec<Vec<usize>> {
    let (d, v, s) = (128, 4096, 128);
    let mut out = vec![vec![v, d], vec![s, d]];
    for _ in 0..4 {
        out.extend([
            vec![d],
            vec![d],
            vec![d, 3 * d],
            vec![3 * d],
            vec![d, d],
            vec![d],
            vec![d],
            vec![d],
            vec![d, 4 * d],
            vec![4 * d],
            vec![4 * d, d],
            vec![d],
        ]);
    }
    out.extend([vec![d], vec![d]]);
    out
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn run<S>(steps: usize, mut f: impl FnMut(u64, &Var, &Tensor, &mut Option<S>)) -> f64 {
    let params: Vec<Var> = shapes().iter().map(|s| Var::randn(0f32, 0.02, s.as_slice(), &Device::Cpu).unwrap()).collect();
    let grads: Vec<Tensor> = params.iter().map(|p| p.as_tensor().randn_like(0.0, 1e-3).unwrap()).collect();
    let mut state: Vec<Option<S>> = params.iter().map(|_| None).collect();
    let mut times = Vec::new();
    for t in 1..=steps as u64 + 2 {
        let start = Instant::now();
        for ((p, g), s) in params.iter().zip(&grads).zip(&mut state) {
            f(t, p, g, s);
        }
        if t > 2 {
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    median(times)
}

fn main() {
    let steps: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(20);
    let n: usize = shapes().iter().map(|s| s.iter().product::<usize>()).sum();
    println!("{n} f32 weights, median of {steps} updates after 2 warm-ups, ms per update");
    for (name, core) in
        [("adam", AdamCore::new(AdamConfig::default(), false)), ("adamw", AdamCore::new(AdamConfig::with_decay(0.01), true))]
    {
        let fused = run(steps, |t, p, g, s| core.step(t, 1e-3, p, g, s).unwrap());
        let composed = run(steps, |t, p, g, s| core.step_composed(t, 1e-3, p, g, s).unwrap());
        println!("{name:6} fused {fused:7.2}  composed {composed:7.2}  ({:.1}x)", composed / fused);
    }
    let rule = SgdRule::new(SgdConfig::default());
    let fused = run(steps, |t, p, g, s| rule.step(t, 1e-3, p, g, s).unwrap());
    let composed = run(steps, |_, p, g, s| rule.step_composed(1e-3, p, g, s).unwrap());
    println!("sgd    fused {fused:7.2}  composed {composed:7.2}  ({:.1}x)", composed / fused);
}
