//! Op-level timings on a device: each `tram-kernels` op (and the step's δ, gradient norm and
//! Adam update) as the training step runs it on that device, forward and forward + backward,
//! at GPT-2 shapes; `scripts/gpu/check.py` times the PyTorch equivalents on the same device
//! and writes the ratios (README "GPU (CUDA)", "The device check").
//!
//! ```text
//! ops --device cuda --dtype bf16 [--batch 16 --seq 512 --heads 12 --embd 768 --vocab 50257
//!     --layers 12 --reps 5 --warmup 2 --only softmax,adam] --out tram-ops.json
//! ```
//!
//! Inputs are deterministic functions of the element index built on the device (no cuRAND);
//! every timing is the median of `--reps` runs after `--warmup`, the device synchronised before
//! and after each. The JSON: `{"device", "dtype", "shape", "ops": {name: {"shape", "fwd_ms",
//! "fwd_bwd_ms"}}}` (`fwd_bwd_ms` null for ops without a backward in the step). On CUDA the ops
//! with a tram-kernels CUDA kernel are timed again with the kernels switched off
//! (`tram_kernels::set_cuda_kernels(false)`): `composed_fwd_ms` / `composed_fwd_bwd_ms`, the
//! composed candle path they replace.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use serde_json::{json, Value};
use std::time::Instant;
use tram::components::base::SimpleOptimizer;
use tram_plugins::base::adam::{AdamConfig, AdamCore};

struct Args {
    device: String,
    dtype: DType,
    batch: usize,
    seq: usize,
    heads: usize,
    embd: usize,
    vocab: usize,
    layers: usize,
    reps: usize,
    warmup: usize,
    only: Vec<String>,
    out: Option<String>,
}

fn args() -> Result<Args> {
    let mut a = Args {
        device: "cpu".into(),
        dtype: DType::F32,
        batch: 16,
        seq: 512,
        heads: 12,
        embd: 768,
        vocab: 50257,
        layers: 12,
        reps: 5,
        warmup: 2,
        only: Vec::new(),
        out: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        if k == "--help" || k == "-h" {
            println!(
                "{}",
                include_str!("ops.rs")
                    .lines()
                    .take_while(|l| l.starts_with("//!"))
                    .map(|l| l.trim_start_matches("//!"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            std::process::exit(0);
        }
        let v = it.next().with_context(|| format!("{k} needs a value"))?;
        let n = || v.parse::<usize>().with_context(|| format!("{k} {v}: expected a whole number"));
        match k.as_str() {
            "--device" => a.device = v.clone(),
            "--dtype" => {
                a.dtype = match v.as_str() {
                    "f32" => DType::F32,
                    "bf16" => DType::BF16,
                    other => bail!("--dtype {other}: expected f32 or bf16"),
                }
            }
            "--batch" => a.batch = n()?,
            "--seq" => a.seq = n()?,
            "--heads" => a.heads = n()?,
            "--embd" => a.embd = n()?,
            "--vocab" => a.vocab = n()?,
            "--layers" => a.layers = n()?,
            "--reps" => a.reps = n()?.max(1),
            "--warmup" => a.warmup = n()?,
            "--only" => a.only = v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect(),
            "--out" => a.out = Some(v.clone()),
            other => bail!("unknown argument {other} (see --help)"),
        }
    }
    Ok(a)
}

fn device(name: &str) -> Result<Device> {
    Ok(match name {
        "cpu" => Device::Cpu,
        "cuda" => Device::new_cuda(0)?,
        s => match s.strip_prefix("cuda:") {
            Some(n) => Device::new_cuda(n.parse().context("cuda:<n>")?)?,
            None => bail!("--device {s}: expected cpu, cuda or cuda:<n>"),
        },
    })
}

/// A deterministic tensor of `shape` on `dev`: `scale · sin(0.618034 · i + phase)` over the
/// element index (no random generator, so no cuRAND on a GPU).
fn wave(shape: &[usize], scale: f64, phase: f64, dtype: DType, dev: &Device) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let i = Tensor::arange(0u32, n as u32, dev)?.to_dtype(DType::F32)?;
    Ok(i.affine(0.618034, phase)?.sin()?.affine(scale, 0.0)?.reshape(shape)?.to_dtype(dtype)?)
}

/// `Ok(())` for a computed value (what the timed closures return).
fn done<T, E: std::error::Error + Send + Sync + 'static>(x: std::result::Result<T, E>) -> Result<()> {
    x.map(|_| ()).map_err(Into::into)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median milliseconds of `f` over `reps` runs after `warmup`, synchronised around each.
fn time(dev: &Device, warmup: usize, reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    let mut out = Vec::with_capacity(reps);
    for i in 0..warmup + reps {
        dev.synchronize()?;
        let t = Instant::now();
        f()?;
        dev.synchronize()?;
        if i >= warmup {
            out.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok(median(out))
}

/// `(y · g).sum()` backpropagated: the forward + backward of an op whose output gets the
/// upstream gradient `g`.
fn backprop(y: &Tensor, g: &Tensor) -> Result<()> {
    let _ = y.mul(g)?.sum_all()?.backward()?;
    Ok(())
}

/// The parameter shapes of GPT-2 (tied head) with `layers` blocks.
fn gpt2_shapes(a: &Args) -> Vec<Vec<usize>> {
    let d = a.embd;
    let mut out = vec![vec![a.vocab, d], vec![1024.max(a.seq), d]];
    for _ in 0..a.layers {
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

/// Times every op `--only` asks for into `ops`; with `composed` (CUDA, kernels switched off)
/// only the ops that have a CUDA kernel, as `composed_*` fields of their entries.
fn measure(a: &Args, dev: &Device, composed: bool, ops: &mut serde_json::Map<String, Value>) -> Result<()> {
    let dev = dev.clone();
    let dt = a.dtype;
    let (b, t, h, d, v) = (a.batch, a.seq, a.heads, a.embd, a.vocab);
    let rows = b * t;
    /// The ops with a CUDA kernel of their own (the rest always run composed on CUDA).
    const KERNELS: [&str; 10] =
        ["softmax", "layer_norm", "gelu", "add_bias", "embedding", "cross_entropy", "log_softmax", "kl_div_rows", "kl_div_sum_f64", "adam"];
    let want = |name: &str| (a.only.is_empty() || a.only.iter().any(|o| o == name)) && (!composed || KERNELS.contains(&name));
    let (w, r) = (a.warmup, a.reps);
    let mut put = |name: &str, shape: &[usize], fwd: f64, fwd_bwd: Option<f64>| {
        eprintln!(
            "ops: {name:<16} {shape:?} fwd {fwd:9.3} ms  fwd+bwd {}{}",
            fwd_bwd.map(|x| format!("{x:9.3} ms")).unwrap_or_else(|| "-".into()),
            if composed { "  (composed path)" } else { "" }
        );
        if composed {
            if let Some(Value::Object(e)) = ops.get_mut(name) {
                e.insert("composed_fwd_ms".into(), json!(fwd));
                e.insert("composed_fwd_bwd_ms".into(), json!(fwd_bwd));
            }
        } else {
            ops.insert(name.to_string(), json!({"shape": shape, "fwd_ms": fwd, "fwd_bwd_ms": fwd_bwd}));
        }
    };

    if want("softmax") {
        // Attention scores [B, H, T, T] with the 1/√(d/H) scale and the causal mask.
        let shape = [b, h, t, t];
        let x = wave(&shape, 3.0, 0.0, dt, &dev)?;
        let g = wave(&shape, 1.0, 1.0, dt, &dev)?;
        let scale = 1.0 / ((d / h) as f64).sqrt();
        let fwd = time(&dev, w, r, || done(tram_kernels::masked_softmax(&x, scale, true, None)))?;
        let xv = Var::from_tensor(&x)?;
        let fb = time(&dev, w, r, || backprop(&tram_kernels::masked_softmax(xv.as_tensor(), scale, true, None)?, &g))?;
        put("softmax", &shape, fwd, Some(fb));
    }
    if want("layer_norm") {
        let shape = [rows, d];
        let x = wave(&shape, 2.0, 0.0, dt, &dev)?;
        let g = wave(&shape, 1.0, 1.0, dt, &dev)?;
        let (wt, bs) =
            (Var::from_tensor(&wave(&[d], 0.1, 2.0, dt, &dev)?.affine(1.0, 1.0)?)?, Var::from_tensor(&wave(&[d], 0.1, 3.0, dt, &dev)?)?);
        let fwd = time(&dev, w, r, || done(tram_kernels::layer_norm(&x, wt.as_tensor(), bs.as_tensor(), 1e-5)))?;
        let xv = Var::from_tensor(&x)?;
        let fb = time(&dev, w, r, || backprop(&tram_kernels::layer_norm(xv.as_tensor(), wt.as_tensor(), bs.as_tensor(), 1e-5)?, &g))?;
        put("layer_norm", &shape, fwd, Some(fb));
    }
    if want("gelu") || want("add_bias") {
        let shape = [rows, 4 * d];
        let x = wave(&shape, 3.0, 0.0, dt, &dev)?;
        let g = wave(&shape, 1.0, 1.0, dt, &dev)?;
        let xv = Var::from_tensor(&x)?;
        if want("gelu") {
            let fwd = time(&dev, w, r, || done(tram_kernels::gelu_tanh(&x)))?;
            let fb = time(&dev, w, r, || backprop(&tram_kernels::gelu_tanh(xv.as_tensor())?, &g))?;
            put("gelu", &shape, fwd, Some(fb));
        }
        if want("add_bias") {
            let bias = Var::from_tensor(&wave(&[4 * d], 0.1, 2.0, dt, &dev)?)?;
            let fwd = time(&dev, w, r, || done(tram_kernels::add_bias(&x, bias.as_tensor())))?;
            let fb = time(&dev, w, r, || backprop(&tram_kernels::add_bias(xv.as_tensor(), bias.as_tensor())?, &g))?;
            put("add_bias", &shape, fwd, Some(fb));
        }
    }
    if want("embedding") {
        // The token embedding [V, D] for B·T ids, half of them 64 frequent ones (as text has):
        // rows forward, the table gradient backward.
        let ids: Vec<u32> = (0..rows as u64).map(|i| if i % 2 == 1 { (i * 7919 % v as u64) as u32 } else { (i % 64) as u32 }).collect();
        let ids = Tensor::from_vec(ids, rows, &dev)?;
        let table = Var::from_tensor(&wave(&[v, d], 0.02, 4.0, dt, &dev)?)?;
        let g = wave(&[rows, d], 1.0, 1.0, dt, &dev)?;
        let fwd = time(&dev, w, r, || done(tram_kernels::embedding(table.as_tensor(), &ids)))?;
        let fb = time(&dev, w, r, || backprop(&tram_kernels::embedding(table.as_tensor(), &ids)?, &g))?;
        put("embedding", &[rows, v, d], fwd, Some(fb));
    }
    let logits_ops = ["cross_entropy", "log_softmax", "kl_div_rows", "kl_div_sum_f64"];
    if logits_ops.iter().any(|o| want(o)) {
        // The LM head's logits [B·T, V]: the largest tensors of a step.
        let shape = [rows, v];
        let x = wave(&shape, 4.0, 0.0, dt, &dev)?;
        let xv = Var::from_tensor(&x)?;
        if want("cross_entropy") {
            let targets: Vec<u32> = (0..rows).map(|i| ((i as u64 * 7919) % v as u64) as u32).collect();
            let targets = Tensor::from_vec(targets, rows, &dev)?;
            let fwd = time(&dev, w, r, || done(tram_kernels::cross_entropy(&x, &targets, None)))?;
            let fb = time(&dev, w, r, || done(tram_kernels::cross_entropy(xv.as_tensor(), &targets, None)?.backward()))?;
            put("cross_entropy", &shape, fwd, Some(fb));
        }
        if want("log_softmax") {
            let g = wave(&shape, 1.0, 1.0, dt, &dev)?;
            let fwd = time(&dev, w, r, || done(tram_kernels::log_softmax(&x)))?;
            let fb = time(&dev, w, r, || backprop(&tram_kernels::log_softmax(xv.as_tensor())?, &g))?;
            put("log_softmax", &shape, fwd, Some(fb));
        }
        let y = wave(&shape, 4.0, 0.5, dt, &dev)?;
        if want("kl_div_rows") {
            // The KL penalty's rows (R3F, TRAM-x's δ in f32), gradient to the current logits.
            let fwd = time(&dev, w, r, || done(tram_kernels::kl_div_rows(&y, &x)))?;
            let fb = time(&dev, w, r, || done(tram_kernels::kl_div_rows(&y, xv.as_tensor())?.sum_all()?.backward()))?;
            put("kl_div_rows", &shape, fwd, Some(fb));
        }
        if want("kl_div_sum_f64") {
            // TRAM's radius δ: the f64 KL sum of the noised and the clean logits, read back.
            let fwd = time(&dev, w, r, || {
                let s = tram::ops::kl_div_sum(&y.to_dtype(DType::F64)?, &x.to_dtype(DType::F64)?)?;
                let _ = s.to_dtype(DType::F64)?.to_scalar::<f64>()?;
                Ok(())
            })?;
            put("kl_div_sum_f64", &shape, fwd, None);
        }
    }
    if want("global_norm") || want("adam") {
        // The parameters of GPT-2 with `--layers` blocks in f32 (bf16 runs keep f32 masters).
        let shapes = gpt2_shapes(a);
        let params = shapes
            .iter()
            .enumerate()
            .map(|(i, s)| Ok(Var::from_tensor(&wave(s, 0.02, i as f64, DType::F32, &dev)?)?))
            .collect::<Result<Vec<_>>>()?;
        let grads = shapes.iter().enumerate().map(|(i, s)| wave(s, 1e-3, 0.5 + i as f64, DType::F32, &dev)).collect::<Result<Vec<_>>>()?;
        let n: usize = shapes.iter().map(|s| s.iter().product::<usize>()).sum();
        if want("global_norm") {
            let fwd = time(&dev, w, r, || done(tram::ops::global_norm(&grads)))?;
            put("global_norm", &[n], fwd, None);
        }
        if want("adam") {
            // The `adam` base's update as the engine runs it on this device (fused in place on
            // the CPU, composed candle ops elsewhere), over every parameter.
            let core = AdamCore::new(AdamConfig::default(), false);
            let mut state = params.iter().map(|_| None).collect::<Vec<_>>();
            let mut step = 0u64;
            let fwd = time(&dev, w, r, || {
                step += 1;
                for ((p, g), s) in params.iter().zip(&grads).zip(&mut state) {
                    core.step(step, 1e-4, p, g, s)?;
                }
                Ok(())
            })?;
            put("adam", &[n], fwd, None);
        }
    }
    Ok(())
}

fn main() -> Result<()> {
    let a = args()?;
    let dev = device(&a.device)?;
    let mut ops = serde_json::Map::new();
    measure(&a, &dev, false, &mut ops)?;
    if dev.is_cuda() {
        // The same ops with tram-kernels' CUDA kernels switched off: the composed candle path
        // each kernel replaced ("composed_fwd_ms", "composed_fwd_bwd_ms"), so the check shows
        // what the kernels gain.
        tram_kernels::set_cuda_kernels(false);
        let measured = measure(&a, &dev, true, &mut ops);
        tram_kernels::set_cuda_kernels(true);
        measured?;
    }
    let (dt, b, t, h, d, v, w, r) = (a.dtype, a.batch, a.seq, a.heads, a.embd, a.vocab, a.warmup, a.reps);
    let report: Value = json!({
        "device": a.device, "dtype": format!("{dt:?}").to_lowercase(),
        "shape": {"batch": b, "seq": t, "heads": h, "embd": d, "vocab": v, "layers": a.layers},
        "warmup": w, "reps": r, "ops": Value::Object(ops),
    });
    let text = serde_json::to_string_pretty(&report)?;
    match &a.out {
        Some(p) => std::fs::write(p, text).with_context(|| format!("writing {p}"))?,
        None => println!("{text}"),
    }
    Ok(())
}
