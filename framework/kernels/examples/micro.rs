//! Forward + backward time of each fused kernel against its composed candle version, at the
//! sizes of the side-by-side benchmark's GPT-2 (batch 8, seq 128, d 128, 4 heads, vocab 4096).
//!
//!   cargo run --release -p tram-kernels --example micro [reps]
//!
//! Set CANDLE_NUM_THREADS / RAYON_NUM_THREADS to choose the thread count.

use candle_core::{Device, Result, Tensor, Var, D};
use std::time::Instant;
use tram_kernels as k;

fn time(reps: usize, f: impl Fn() -> Result<()>) -> Result<f64> {
    f()?;
    let mut v = Vec::new();
    for _ in 0..reps {
        let t = Instant::now();
        f()?;
        v.push(t.elapsed().as_secs_f64() * 1e3);
    }
    v.sort_by(|a, b| a.total_cmp(b));
    Ok(v[v.len() / 2])
}

fn fwd_bwd(vars: &[&Var], f: impl Fn(&[Tensor]) -> Result<Tensor>) -> Result<()> {
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let y = f(&ts)?;
    let g = y.sum_all()?.backward()?;
    for v in vars {
        g.get(v.as_tensor()).expect("gradient");
    }
    Ok(())
}

fn composed_log_softmax(x: &Tensor) -> Result<Tensor> {
    let max = x.detach().max_keepdim(D::Minus1)?;
    let s = x.broadcast_sub(&max)?;
    let l = s.exp()?.sum_keepdim(D::Minus1)?.log()?;
    s.broadcast_sub(&l)
}

fn main() -> Result<()> {
    let reps: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(20);
    let dev = Device::Cpu;
    let scores = Var::from_tensor(&Tensor::randn(0f32, 1.0, (8, 4, 128, 128), &dev)?)?;
    let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (8, 128, 128), &dev)?)?;
    let w = Var::from_tensor(&Tensor::randn(1f32, 0.1, 128, &dev)?)?;
    let b = Var::from_tensor(&Tensor::randn(0f32, 0.1, 128, &dev)?)?;
    let h = Var::from_tensor(&Tensor::randn(0f32, 1.0, (8, 128, 512), &dev)?)?;
    let logits = Var::from_tensor(&Tensor::randn(0f32, 1.0, (1024, 4096), &dev)?)?;
    let targets = Tensor::arange(0u32, 1024, &dev)?;
    let v: Vec<f32> = (0..128 * 128).map(|i| if i % 128 <= i / 128 { 0.0 } else { -1e9 }).collect();
    let bias = Tensor::from_vec(v, (128, 128), &dev)?;
    println!("{:<28} {:>10} {:>10} {:>7}", "op (fwd+bwd)", "fused ms", "composed", "ratio");
    let row = |name: &str, a: f64, c: f64| println!("{name:<28} {a:>10.2} {c:>10.2} {:>7.2}", c / a);
    let a = time(reps, || fwd_bwd(&[&scores], |t| k::masked_softmax(&t[0], 0.17, true, None)))?;
    let c = time(reps, || {
        fwd_bwd(&[&scores], |t| {
            let s = t[0].affine(0.17, 0.0)?.broadcast_add(&bias)?;
            composed_log_softmax(&s)?.exp()
        })
    })?;
    row("causal softmax [8,4,128,128]", a, c);
    let a = time(reps, || fwd_bwd(&[&x, &w, &b], |t| k::layer_norm(&t[0], &t[1], &t[2], 1e-5)))?;
    let c = time(reps, || fwd_bwd(&[&x, &w, &b], |t| k::layer_norm_composed(&t[0], &t[1], &t[2], 1e-5)))?;
    row("layer norm [8,128,128]", a, c);
    let a = time(reps, || fwd_bwd(&[&h], |t| k::gelu_tanh(&t[0])))?;
    let c = time(reps, || fwd_bwd(&[&h], |t| t[0].gelu()))?;
    row("gelu tanh [8,128,512]", a, c);
    let a = time(reps, || fwd_bwd(&[&h], |t| k::gelu_erf(&t[0])))?;
    let c = time(reps, || fwd_bwd(&[&h], |t| t[0].gelu_erf()))?;
    row("gelu erf [8,128,512]", a, c);
    let wb = Var::from_tensor(&w.as_tensor().repeat(4)?)?;
    let a = time(reps, || fwd_bwd(&[&h, &wb], |t| k::add_bias(&t[0], &t[1])))?;
    let c = time(reps, || fwd_bwd(&[&h, &wb], |t| t[0].broadcast_add(&t[1])))?;
    row("add bias [8,128,512]", a, c);
    let a = time(reps, || fwd_bwd(&[&logits], |t| k::cross_entropy(&t[0], &targets, None)))?;
    let c = time(reps, || fwd_bwd(&[&logits], |t| composed_log_softmax(&t[0])?.gather(&targets.unsqueeze(1)?, 1)?.mean_all()?.neg()))?;
    row("cross-entropy [1024,4096]", a, c);
    let a = time(reps, || fwd_bwd(&[&logits], |t| k::log_softmax(&t[0])))?;
    let c = time(reps, || fwd_bwd(&[&logits], |t| composed_log_softmax(&t[0])))?;
    row("log-softmax [1024,4096]", a, c);
    let other = Var::from_tensor(&logits.as_tensor().affine(0.9, 0.1)?)?;
    let a = time(reps, || fwd_bwd(&[&logits, &other], |t| k::kl_div_rows(&t[0], &t[1])))?;
    let c = time(reps, || {
        fwd_bwd(&[&logits, &other], |t| {
            let (lt, lc) = (composed_log_softmax(&t[0])?, composed_log_softmax(&t[1])?);
            lt.exp()?.mul(&lt.sub(&lc)?)?.sum(D::Minus1)
        })
    })?;
    row("kl rows [1024,4096]", a, c);
    Ok(())
}
