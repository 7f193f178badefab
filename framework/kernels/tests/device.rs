//! The device path of every op (`tram_kernels::composed`, which candle runs on CUDA / Metal)
//! against the fused CPU kernel, values and gradients, f32 and bf16:
//!
//! - on the CPU, always: the composed functions called directly;
//! - on CUDA, wherever a GPU is present (a `--features cuda` build on a machine with a driver
//!   and a GPU): the public ops on CUDA tensors, which take the device path. Elsewhere the test
//!   prints why it did not run and passes.
//!
//! The fused Adam / SGD updates likewise: the in-place CPU update against `*_step` on the device.

use candle_core::{DType, Device, Result, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tram_kernels as k;
use tram_kernels::composed as c;

fn rand_t(shape: &[usize], seed: u64, scale: f64) -> Tensor {
    let n: usize = shape.iter().product();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let v: Vec<f32> = (0..n).map(|_| ((rng.random::<f64>() * 2.0 - 1.0) * scale) as f32).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// max |a − b| / max(max |b|, 1e-6), both read back to the CPU in f64.
fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let v = |t: &Tensor| t.to_device(&Device::Cpu).unwrap().to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let (a, b) = (v(a), v(b));
    let scale = b.iter().fold(1e-6f64, |m, x| m.max(x.abs()));
    a.iter().zip(&b).map(|(x, y)| (x - y).abs()).map(|e| if e.is_nan() { f64::INFINITY } else { e }).fold(0.0, f64::max) / scale
}

/// An op under test: inputs (already on its device and dtype) → output.
type Op<'a> = &'a dyn Fn(&[Tensor]) -> Result<Tensor>;

/// Runs `cpu` on CPU copies of `inputs` (in `dtype`) and `dev` on `device` copies, backward of
/// `sum(y · r)` through both, and compares values and each input's gradient.
#[allow(clippy::too_many_arguments)]
fn parity(
    name: &str,
    inputs: &[Tensor],
    r: Option<&Tensor>,
    dtype: DType,
    device: &Device,
    cpu: Op,
    dev: Op,
    tol: (f64, f64),
) -> Vec<String> {
    let run = |on: &Device, f: Op| -> (Tensor, Vec<Tensor>) {
        let vars: Vec<Var> = inputs.iter().map(|t| Var::from_tensor(&t.to_dtype(dtype).unwrap().to_device(on).unwrap()).unwrap()).collect();
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let y = f(&ts).unwrap();
        let loss = match r {
            Some(r) => y.to_dtype(DType::F32).unwrap().mul(&r.to_device(on).unwrap()).unwrap().sum_all().unwrap(),
            None => y.to_dtype(DType::F32).unwrap().sum_all().unwrap(),
        };
        let g = loss.backward().unwrap();
        (y, vars.iter().map(|v| g.get(v.as_tensor()).expect("no gradient").clone()).collect())
    };
    let (y1, g1) = run(&Device::Cpu, cpu);
    let (y2, g2) = run(device, dev);
    let mut bad = Vec::new();
    assert_eq!(y2.dtype(), y1.dtype(), "{name}: output dtype");
    let e = rel_err(&y2, &y1);
    println!("{name:<32} {dtype:?} values {e:.2e}");
    if e > tol.0 {
        bad.push(format!("{name} {dtype:?} values: {e:.2e} > {:.0e}", tol.0));
    }
    for (i, (a, b)) in g2.iter().zip(&g1).enumerate() {
        let e = rel_err(a, b);
        println!("{name:<32} {dtype:?} grad {i} {e:.2e}");
        if e > tol.1 {
            bad.push(format!("{name} {dtype:?} gradient of input {i}: {e:.2e} > {:.0e}", tol.1));
        }
    }
    bad
}

/// The shapes of [`all_ops`]: `(batch, heads, seq_q, seq_k, hidden, vocab)`. The large one has
/// rows longer than a warp (softmax, layer norm) and than a CUDA block (vocabulary rows), a
/// row count that is not a multiple of the kernels' rows per block, and `seq_q < seq_k`.
const SMALL: (usize, usize, usize, usize, usize, usize) = (2, 3, 5, 7, 48, 300);
const LARGE: (usize, usize, usize, usize, usize, usize) = (2, 3, 37, 70, 200, 1500);

/// Every op, CPU kernel against the device path on `device`; `direct` calls the composed
/// functions (for the CPU), otherwise the public ops (which dispatch on the device).
fn all_ops(device: &Device, direct: bool) -> Vec<String> {
    let mut bad = all_ops_at(device, direct, SMALL);
    bad.extend(all_ops_at(device, direct, LARGE));
    bad
}

fn all_ops_at(device: &Device, direct: bool, shape: (usize, usize, usize, usize, usize, usize)) -> Vec<String> {
    let mut bad = Vec::new();
    let (b, h, sq, sk, d, vocab) = shape;
    // Batch 0 attends every key; batch 1 only the first four.
    let keep: Vec<u32> = (0..b * sk).map(|i| u32::from(i < sk || i % sk < 4)).collect();
    let keep = Tensor::from_vec(keep, (b, sk), &Device::Cpu).unwrap();
    let mask_cpu = k::KeyMask::new(&keep).unwrap();
    let mask_dev = k::KeyMask::new(&keep.to_device(device).unwrap()).unwrap();
    for dtype in [DType::F32, DType::BF16] {
        // bf16: the inputs are rounded alike on both sides; the device may round intermediates
        // to bf16 where the CPU kernel keeps f32 (candle's GELU), so a few bf16 ulps.
        let tol = if dtype == DType::F32 { (1e-5, 1e-4) } else { (2e-2, 4e-2) };
        let scores = rand_t(&[b, h, sq, sk], 1, 4.0);
        let r_scores = rand_t(&[b, h, sq, sk], 2, 1.0);
        for (causal, with_mask) in [(true, false), (false, true), (true, true)] {
            let (mc, md) = (with_mask.then_some(&mask_cpu), with_mask.then_some(&mask_dev));
            let dev_op =
                |t: &[Tensor]| if direct { c::masked_softmax(&t[0], 0.4, causal, md) } else { k::masked_softmax(&t[0], 0.4, causal, md) };
            let name = format!("masked_softmax causal={causal} mask={with_mask}");
            bad.extend(parity(
                &name,
                std::slice::from_ref(&scores),
                Some(&r_scores),
                dtype,
                device,
                &|t| k::masked_softmax(&t[0], 0.4, causal, mc),
                &dev_op,
                tol,
            ));
        }
        let (x, w, bias) = (rand_t(&[b * sq, d], 3, 3.0), rand_t(&[d], 4, 1.0), rand_t(&[d], 5, 1.0));
        let r_x = rand_t(&[b * sq, d], 6, 1.0);
        let ln_dev =
            |t: &[Tensor]| if direct { c::layer_norm(&t[0], &t[1], &t[2], 1e-5) } else { k::layer_norm(&t[0], &t[1], &t[2], 1e-5) };
        bad.extend(parity(
            "layer_norm",
            &[x.clone(), w.clone(), bias.clone()],
            Some(&r_x),
            dtype,
            device,
            &|t| k::layer_norm(&t[0], &t[1], &t[2], 1e-5),
            &ln_dev,
            tol,
        ));
        let gt = |t: &[Tensor]| if direct { c::gelu_tanh(&t[0]) } else { k::gelu_tanh(&t[0]) };
        bad.extend(parity("gelu_tanh", std::slice::from_ref(&x), Some(&r_x), dtype, device, &|t| k::gelu_tanh(&t[0]), &gt, tol));
        let ge = |t: &[Tensor]| if direct { c::gelu_erf(&t[0]) } else { k::gelu_erf(&t[0]) };
        bad.extend(parity("gelu_erf", std::slice::from_ref(&x), Some(&r_x), dtype, device, &|t| k::gelu_erf(&t[0]), &ge, tol));
        let ab = |t: &[Tensor]| if direct { c::add_bias(&t[0], &t[1]) } else { k::add_bias(&t[0], &t[1]) };
        bad.extend(parity("add_bias", &[x.clone(), bias.clone()], Some(&r_x), dtype, device, &|t| k::add_bias(&t[0], &t[1]), &ab, tol));
        // Embedding rows of a [vocab, d] table for b·sq ids, most of them three frequent ones.
        let ids: Vec<u32> = (0..b * sq).map(|i| if i % 3 == 0 { (i * 7 % vocab) as u32 } else { (i % 3) as u32 }).collect();
        let (ids_cpu, ids_dev) = (Tensor::new(ids.as_slice(), &Device::Cpu).unwrap(), Tensor::new(ids.as_slice(), device).unwrap());
        let table = rand_t(&[vocab, d], 11, 1.0);
        let em = |t: &[Tensor]| if direct { c::embedding(&t[0], &ids_dev) } else { k::embedding(&t[0], &ids_dev) };
        bad.extend(parity(
            "embedding",
            std::slice::from_ref(&table),
            Some(&r_x),
            dtype,
            device,
            &|t| k::embedding(&t[0], &ids_cpu),
            &em,
            tol,
        ));
        let logits = rand_t(&[b * sq, vocab], 7, 5.0);
        let r_l = rand_t(&[b * sq, vocab], 8, 1.0);
        let ls = |t: &[Tensor]| if direct { c::log_softmax(&t[0]) } else { k::log_softmax(&t[0]) };
        bad.extend(parity("log_softmax", std::slice::from_ref(&logits), Some(&r_l), dtype, device, &|t| k::log_softmax(&t[0]), &ls, tol));
        // Every third row ignored.
        let tg: Vec<i64> = (0..b * sq).map(|i| if i % 3 == 2 { -100 } else { (i * 37 % vocab) as i64 }).collect();
        let (t_cpu, t_dev) = (Tensor::new(tg.as_slice(), &Device::Cpu).unwrap(), Tensor::new(tg.as_slice(), device).unwrap());
        let ce =
            |t: &[Tensor]| if direct { c::cross_entropy(&t[0], &t_dev, Some(-100)) } else { k::cross_entropy(&t[0], &t_dev, Some(-100)) };
        bad.extend(parity(
            "cross_entropy",
            std::slice::from_ref(&logits),
            None,
            dtype,
            device,
            &|t| k::cross_entropy(&t[0], &t_cpu, Some(-100)),
            &ce,
            tol,
        ));
        let other = logits.add(&rand_t(&[b * sq, vocab], 9, 0.5)).unwrap();
        let r_rows = rand_t(&[b * sq], 10, 1.0);
        let kl = |t: &[Tensor]| if direct { c::kl_div_rows(&t[0], &t[1]) } else { k::kl_div_rows(&t[0], &t[1]) };
        let kl_tol = if dtype == DType::F32 { (1e-4, 1e-4) } else { tol };
        bad.extend(parity(
            "kl_div_rows",
            &[logits.clone(), other],
            Some(&r_rows),
            dtype,
            device,
            &|t| k::kl_div_rows(&t[0], &t[1]),
            &kl,
            kl_tol,
        ));
    }
    // The radius δ's KL in f64: logits a σ = 1e-5 perturbation apart (the f64 kernels on CUDA).
    let logits = rand_t(&[b * sq, vocab], 30, 5.0).to_dtype(DType::F64).unwrap();
    let near = logits.add(&rand_t(&[b * sq, vocab], 31, 1e-5).to_dtype(DType::F64).unwrap()).unwrap();
    let r_rows = rand_t(&[b * sq], 32, 1.0);
    let kl = |t: &[Tensor]| if direct { c::kl_div_rows(&t[0], &t[1]) } else { k::kl_div_rows(&t[0], &t[1]) };
    // The composed f64 sum cancels to ~1e-11 per row; the kernels agree far closer.
    let tol = if direct || !k::cuda_kernels_enabled() { (1e-4, 1e-6) } else { (1e-9, 1e-9) };
    bad.extend(parity("kl_div_rows near", &[logits, near], Some(&r_rows), DType::F64, device, &|t| k::kl_div_rows(&t[0], &t[1]), &kl, tol));
    // The optimizer updates: three steps of each from one start, in f32.
    let n = 1000;
    let (p0, grads) = (rand_t(&[n], 20, 1.0), [rand_t(&[n], 21, 1.0), rand_t(&[n], 22, 1.0), rand_t(&[n], 23, 1.0)]);
    let adam = k::optim::AdamConfig { lr: 1e-2, weight_decay: 0.1, decoupled: true, ..Default::default() };
    let sgd = k::optim::SgdConfig { lr: 1e-2, momentum: 0.9, weight_decay: 0.01, nesterov: true, ..Default::default() };
    for which in ["adamw", "sgd-nesterov"] {
        let run = |on: &Device, composed: bool| -> Tensor {
            let var = Var::from_tensor(&p0.to_device(on).unwrap()).unwrap();
            let mut state = k::optim::AdamState::new();
            for g in &grads {
                let g = g.to_device(on).unwrap();
                match (which, composed) {
                    ("adamw", false) => k::optim::adam_step(&var, &g, &mut state, &adam).unwrap(),
                    ("adamw", true) => k::optim::adam_step_composed(&var, &g, &mut state, &adam).unwrap(),
                    (_, false) => k::optim::sgd_step(&var, &g, &mut state, &sgd).unwrap(),
                    (_, true) => k::optim::sgd_step_composed(&var, &g, &mut state, &sgd).unwrap(),
                }
            }
            var.as_tensor().clone()
        };
        let e = rel_err(&run(device, direct), &run(&Device::Cpu, false));
        println!("{which:<32} F32 parameters after 3 steps {e:.2e}");
        if e > 1e-6 {
            bad.push(format!("{which}: parameters after 3 steps differ by {e:.2e} > 1e-6"));
        }
    }
    // The in-place updates of the plugins' rules (`update`): on CUDA the kernels of
    // cuda/fused.cu, bit for bit the CPU's, three steps of AdamW and of Nesterov SGD.
    let (m0, v0) = (rand_t(&[n], 24, 0.1), rand_t(&[n], 25, 0.01).abs().unwrap());
    let adam_c = k::update::AdamCoeffs::at(2, 1e-2, 0.9, 0.999, 1e-8, k::update::Decay::Decoupled(1.0 - 1e-2 * 0.1));
    let sgd_c = k::update::SgdCoeffs { lr: 1e-2, momentum: 0.9, one_minus_dampening: 1.0, nesterov: true, weight_decay: 0.01 };
    let run = |on: &Device| -> Option<Vec<Vec<u32>>> {
        let c = |t: &Tensor| t.to_device(on).unwrap().copy().unwrap();
        let (pa, m, v, ps, b) = (c(&p0), c(&m0), c(&v0), c(&p0), c(&m0));
        for (i, g) in grads.iter().enumerate() {
            let g = g.to_device(on).unwrap();
            let fused = k::update::adam_update(&pa, &g, &m, &v, &adam_c).unwrap();
            let fused = fused && k::update::sgd_update(&ps, &g, Some(&b), i == 0, &sgd_c).unwrap();
            if !fused {
                return None;
            }
        }
        let bits = |t: &Tensor| t.to_device(&Device::Cpu).unwrap().to_vec1::<f32>().unwrap().iter().map(|x| x.to_bits()).collect();
        Some([&pa, &m, &v, &ps, &b].map(bits).to_vec())
    };
    match run(device) {
        Some(got) => {
            let want = run(&Device::Cpu).expect("the CPU updates run fused");
            for (what, (a, b)) in ["adamw parameter", "adamw m", "adamw v", "sgd parameter", "sgd buffer"].iter().zip(got.iter().zip(&want))
            {
                let same = a == b;
                println!("{:<32} F32 in-place update, 3 steps: {}", what, if same { "bitwise equal" } else { "DIFFERS" });
                if !same {
                    bad.push(format!("in-place {what}: not bitwise the CPU's after 3 steps"));
                }
            }
        }
        None => println!("in-place updates: not fused on {device:?} (kernels off): the composed path is checked above"),
    }
    bad
}

#[test]
fn every_device_path_matches_the_cpu_kernel_on_the_cpu() {
    let bad = all_ops(&Device::Cpu, true);
    assert!(bad.is_empty(), "device paths differ from the CPU kernels:\n{}", bad.join("\n"));
}

/// The CUDA device of this test run, or why there is none.
fn cuda() -> std::result::Result<Device, String> {
    if !candle_core::utils::cuda_is_available() {
        return Err("built without CUDA (rebuild with `--features cuda`, README \"GPU (CUDA)\")".into());
    }
    Device::new_cuda(0).map_err(|e| format!("no usable CUDA device 0 ({e})"))
}

/// On CUDA the public ops run tram-kernels' own CUDA kernels (`cuda/fused.cu`) for the masked
/// softmax, layer norm, GELU, bias addition, embedding, log-softmax, cross-entropy and KL rows;
/// with the kernels switched off, every op runs the composed path. Both against the CPU.
#[test]
fn every_op_on_cuda_matches_the_cpu_kernel() {
    let device = match cuda() {
        Ok(d) => d,
        Err(why) => {
            println!("SKIPPED every_op_on_cuda_matches_the_cpu_kernel: {why}");
            return;
        }
    };
    assert!(k::cuda_kernels_enabled(), "the CUDA kernels are on by default");
    let mut bad = all_ops(&device, false);
    k::set_cuda_kernels(false);
    let composed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| all_ops(&device, false)));
    k::set_cuda_kernels(true);
    bad.extend(composed.expect("the composed path panicked").into_iter().map(|b| format!("composed path: {b}")));
    assert!(bad.is_empty(), "CUDA ops differ from the CPU kernels:\n{}", bad.join("\n"));
}
