//! The CUDA kernels' code (`cuda/fused.cu`) run on the CPU under a CUDA emulation
//! (`tests/cuda_emu/emu.h`: the threads of a block are OS threads, so warp shuffles, votes and
//! block barriers are real rendezvous) with the launch shapes of `src/cuda.rs`, against the
//! fused CPU kernels: values and gradients of the masked softmax (causal, key mask, rows with no
//! key to attend), layer norm (input, weight and bias gradients over several row chunks),
//! log-softmax, cross-entropy with ignored rows, KL rows, GELU (both kinds, f32 and bf16), and
//! the in-place Adam / AdamW / SGD updates (bit for bit), the embedding rows and table gradient
//! (bit for bit, f32 and bf16) and the bias addition with its column sums. This checks on every machine what
//! `tests/device.rs` checks on a GPU (the same kernels through the driver), so a kernel bug
//! shows without one. Needs a C++20 compiler (`c++`, or `CXX`).

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use tram_kernels as k;

/// The emulator binary, compiled once per test run.
fn emulator() -> &'static PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let bin = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("tram-cuda-emu");
        // `CXX`, else the first of c++, g++, clang++ that runs.
        let candidates: Vec<String> = match std::env::var("CXX") {
            Ok(c) => vec![c],
            Err(_) => ["c++", "g++", "clang++"].map(String::from).to_vec(),
        };
        let cxx =
            candidates.iter().find(|c| Command::new(c).arg("--version").output().is_ok_and(|o| o.status.success())).unwrap_or_else(|| {
                panic!("no C++ compiler ({}): this test needs a C++20 compiler (apt-get install g++, or set CXX)", candidates.join(", "))
            });
        let out = Command::new(cxx)
            .args(["-std=c++20", "-O2", "-ffp-contract=off", "-pthread", "-o"])
            .arg(&bin)
            .arg(dir.join("tests/cuda_emu/main.cpp"))
            .output()
            .unwrap_or_else(|e| panic!("cannot run the C++ compiler `{cxx}` ({e})"));
        assert!(out.status.success(), "compiling the CUDA emulator failed:\n{}", String::from_utf8_lossy(&out.stderr));
        bin
    })
}

/// Kernel arguments in the emulator's stdin format.
#[derive(Default)]
struct Args(Vec<u8>);

impl Args {
    fn f32s(mut self, v: &[f32]) -> Self {
        self.0.extend((v.len() as u64).to_le_bytes());
        v.iter().for_each(|x| self.0.extend(x.to_le_bytes()));
        self
    }
    fn u32s(mut self, v: &[u32]) -> Self {
        self.0.extend((v.len() as u64).to_le_bytes());
        v.iter().for_each(|x| self.0.extend(x.to_le_bytes()));
        self
    }
    fn u8s(mut self, v: &[u8]) -> Self {
        self.0.extend((v.len() as u64).to_le_bytes());
        self.0.extend(v);
        self
    }
    fn u32(mut self, v: u32) -> Self {
        self.0.extend(v.to_le_bytes());
        self
    }
    fn i32(mut self, v: i32) -> Self {
        self.0.extend(v.to_le_bytes());
        self
    }
    fn f64s(mut self, v: &[f64]) -> Self {
        self.0.extend((v.len() as u64).to_le_bytes());
        v.iter().for_each(|x| self.0.extend(x.to_le_bytes()));
        self
    }
    fn f32(mut self, v: f32) -> Self {
        self.0.extend(v.to_le_bytes());
        self
    }
}

/// Runs `kernel` of the emulator and returns its output arrays (f32).
fn emulate(kernel: &str, args: Args) -> Vec<Vec<f32>> {
    emulate_raw(kernel, args, 4)
        .into_iter()
        .map(|a| a.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect())
        .collect()
}

/// [`emulate`] for a kernel whose outputs are f64.
fn emulate_f64(kernel: &str, args: Args) -> Vec<Vec<f64>> {
    emulate_raw(kernel, args, 8)
        .into_iter()
        .map(|a| a.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect())
        .collect()
}

/// The output arrays of `kernel` as bytes, `width` bytes per element.
fn emulate_raw(kernel: &str, args: Args, width: usize) -> Vec<Vec<u8>> {
    let mut child =
        Command::new(emulator()).arg(kernel).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(&args.0).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "emulated {kernel} failed: {}", String::from_utf8_lossy(&out.stderr));
    let (mut b, mut arrays) = (&out.stdout[..], Vec::new());
    while !b.is_empty() {
        let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
        arrays.push(b[8..8 + width * n].to_vec());
        b = &b[8 + width * n..];
    }
    arrays
}

fn rand_v(n: usize, seed: u64, scale: f64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| ((rng.random::<f64>() * 2.0 - 1.0) * scale) as f32).collect()
}

fn t(v: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_slice(v, shape, &Device::Cpu).unwrap()
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

/// max |a − b| / max(max |b|, 1e-6); a NaN where the CPU has a number (an element the kernel
/// did not write: the emulator fills outputs with NaN) fails.
fn assert_close(what: &str, a: &[f32], b: &[f32], tol: f64) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    if let Some(i) = a.iter().zip(b).position(|(x, y)| x.is_nan() != y.is_nan()) {
        panic!("{what}: element {i} is {} from the emulated CUDA kernel and {} from the CPU kernel", a[i], b[i]);
    }
    let scale = b.iter().fold(1e-6f64, |m, x| m.max(x.abs() as f64));
    let err = a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).abs()).fold(0.0, f64::max) / scale;
    println!("{what:<48} {err:.2e}");
    assert!(err <= tol, "{what}: the emulated CUDA kernel is {err:.2e} (relative) from the CPU kernel, over {tol:.0e}");
}

#[test]
fn masked_softmax_kernels_match_the_cpu_kernel_with_every_masking_in_f32_and_bf16() {
    let (b, h, sq, sk) = (2usize, 3usize, 37usize, 70usize);
    let rows = b * h * sq;
    let x = rand_v(rows * sk, 1, 4.0);
    let r = rand_v(rows * sk, 2, 1.0);
    // Batch 1 keeps only the keys from 60 on: with the causal mask its first queries have no
    // key to attend (uniform rows).
    let keep: Vec<u8> = (0..b * sk).map(|i| u8::from(i < sk || i % sk >= 60)).collect();
    let mask = k::KeyMask::new(&t(&keep.iter().map(|v| *v as f32).collect::<Vec<_>>(), &[b, sk])).unwrap();
    let scale = 0.35f32;
    for dtype in [DType::F32, DType::BF16] {
        // bf16: one bf16 rounding of nearly equal values; the backward reads the rounded
        // probabilities where the CPU's keeps them in f32.
        let tol = if dtype == DType::F32 { (1e-5, 1e-5) } else { (8e-3, 2e-2) };
        let f32s = |t: &Tensor| flat(&t.to_dtype(DType::F32).unwrap());
        for (causal, with_mask) in [(false, false), (true, false), (false, true), (true, true)] {
            let xv = Var::from_tensor(&t(&x, &[b, h, sq, sk]).to_dtype(dtype).unwrap()).unwrap();
            let rr = t(&r, &[b, h, sq, sk]).to_dtype(dtype).unwrap();
            let y = k::masked_softmax(xv.as_tensor(), scale as f64, causal, with_mask.then_some(&mask)).unwrap();
            let dx = y.mul(&rr).unwrap().sum_all().unwrap().backward().unwrap().get(xv.as_tensor()).unwrap().clone();
            let bf16 = i32::from(dtype == DType::BF16);
            let args = Args::default()
                .f32s(&f32s(xv.as_tensor()))
                .u32(rows as u32)
                .u32(sq as u32)
                .u32(sk as u32)
                .f32(scale)
                .i32(causal as i32)
                .u8s(if with_mask { &keep } else { &[] })
                .i32(with_mask as i32)
                .u32((h * sq) as u32)
                .i32(bf16);
            let out = emulate("masked_softmax", args);
            assert_close(&format!("masked softmax causal={causal} mask={with_mask} {dtype:?}"), &out[0], &f32s(&y), tol.0);
            let args = Args::default().f32s(&f32s(&y)).f32s(&f32s(&rr)).u32(rows as u32).u32(sk as u32).f32(scale).i32(bf16);
            let out = emulate("softmax_bwd", args);
            assert_close(&format!("softmax backward causal={causal} mask={with_mask} {dtype:?}"), &out[0], &f32s(&dx), tol.1);
        }
    }
}

#[test]
fn layer_norm_kernels_match_the_cpu_kernel_in_value_and_all_three_gradients_in_f32_and_bf16() {
    let (rows, d) = (75usize, 200usize);
    let (x, w, bias, r) = (rand_v(rows * d, 3, 3.0), rand_v(d, 4, 1.0), rand_v(d, 5, 1.0), rand_v(rows * d, 6, 1.0));
    // bf16: the inputs are bf16 values on both sides; outputs and input gradient within a
    // bf16 rounding, the weight / bias sums (f32 here, rounded on the CPU) likewise.
    for (dtype, bf16, tol) in [(DType::F32, 0, 1e-5), (DType::BF16, 1, 8e-3)] {
        let v = |a: &[f32], shape: &[usize]| Var::from_tensor(&t(a, shape).to_dtype(dtype).unwrap()).unwrap();
        let vars = [v(&x, &[rows, d]), v(&w, &[d]), v(&bias, &[d])];
        let y = k::layer_norm(vars[0].as_tensor(), vars[1].as_tensor(), vars[2].as_tensor(), 1e-5).unwrap();
        let grads = y.mul(&t(&r, &[rows, d]).to_dtype(dtype).unwrap()).unwrap().sum_all().unwrap().backward().unwrap();
        let g = |i: usize| flat(&grads.get(vars[i].as_tensor()).unwrap().to_dtype(DType::F32).unwrap());
        // Chunks of 8 rows: ten chunks, the last one partial.
        let out = emulate(
            "layer_norm",
            Args::default().f32s(&x).f32s(&w).f32s(&bias).f32s(&r).u32(rows as u32).u32(d as u32).f32(1e-5).u32(8).i32(bf16),
        );
        assert_close(&format!("layer norm {dtype:?}"), &out[0], &flat(&y.to_dtype(DType::F32).unwrap()), tol);
        assert_close(&format!("layer norm input gradient {dtype:?}"), &out[1], &g(0), tol);
        assert_close(&format!("layer norm weight gradient {dtype:?}"), &out[2], &g(1), tol);
        assert_close(&format!("layer norm bias gradient {dtype:?}"), &out[3], &g(2), tol);
    }
}

#[test]
fn log_softmax_kernels_match_the_cpu_kernel_on_rows_wider_than_a_block() {
    let (rows, n) = (5usize, 1500usize);
    let (x, r) = (rand_v(rows * n, 7, 5.0), rand_v(rows * n, 8, 1.0));
    let xv = Var::from_tensor(&t(&x, &[rows, n])).unwrap();
    let y = k::log_softmax(xv.as_tensor()).unwrap();
    let dx = y.mul(&t(&r, &[rows, n])).unwrap().sum_all().unwrap().backward().unwrap().get(xv.as_tensor()).unwrap().clone();
    let out = emulate("log_softmax", Args::default().f32s(&x).f32s(&r).u32(rows as u32).u32(n as u32));
    assert_close("log-softmax", &out[0], &flat(&y), 1e-5);
    assert_close("log-softmax backward", &out[1], &flat(&dx), 1e-5);
}

#[test]
fn cross_entropy_kernels_match_the_cpu_kernel_with_ignored_rows_in_f32_and_bf16() {
    let (rows, n) = (7usize, 1500usize);
    let x = rand_v(rows * n, 9, 5.0);
    let targets: Vec<i64> = (0..rows).map(|i| if i % 3 == 1 { -100 } else { (i * 211 % n) as i64 }).collect();
    let counted = targets.iter().filter(|t| **t != -100).count();
    let ids: Vec<u32> = targets.iter().map(|t| if *t < 0 { u32::MAX } else { *t as u32 }).collect();
    // The wrapper averages the per-row losses over the counted rows: upstream 1 / counted each.
    let g = vec![1.0 / counted as f32; rows];
    for dtype in [DType::F32, DType::BF16] {
        let tol = if dtype == DType::F32 { 1e-5 } else { 8e-3 };
        let xv = Var::from_tensor(&t(&x, &[rows, n]).to_dtype(dtype).unwrap()).unwrap();
        let loss = k::cross_entropy(xv.as_tensor(), &Tensor::new(targets.as_slice(), &Device::Cpu).unwrap(), Some(-100)).unwrap();
        let dx = loss.backward().unwrap().get(xv.as_tensor()).unwrap().to_dtype(DType::F32).unwrap();
        let xs = flat(&xv.as_tensor().to_dtype(DType::F32).unwrap());
        let args = Args::default().f32s(&xs).u32s(&ids).f32s(&g).u32(rows as u32).u32(n as u32).i32(i32::from(dtype == DType::BF16));
        let out = emulate("cross_entropy", args);
        for (i, l) in out[0].iter().enumerate() {
            if targets[i] < 0 {
                assert_eq!(*l, 0.0, "an ignored row has loss 0");
            }
        }
        let mean = out[0].iter().map(|v| *v as f64).sum::<f64>() / counted as f64;
        assert_close(
            &format!("cross-entropy (mean of the rows) {dtype:?}"),
            &[mean as f32],
            &[loss.to_dtype(DType::F32).unwrap().to_scalar::<f32>().unwrap()],
            1e-6,
        );
        assert_close(&format!("cross-entropy backward {dtype:?}"), &out[1], &flat(&dx), tol);
    }
}

#[test]
fn kl_rows_kernels_match_the_cpu_kernel_in_value_and_both_gradients() {
    let (rows, n) = (5usize, 1500usize);
    let target = rand_v(rows * n, 10, 5.0);
    let current: Vec<f32> = target.iter().zip(rand_v(rows * n, 11, 0.5)).map(|(a, b)| a + b).collect();
    let r = rand_v(rows, 12, 1.0);
    let (tv, cv) = (Var::from_tensor(&t(&target, &[rows, n])).unwrap(), Var::from_tensor(&t(&current, &[rows, n])).unwrap());
    let kl = k::kl_div_rows(tv.as_tensor(), cv.as_tensor()).unwrap();
    let grads = kl.mul(&t(&r, &[rows])).unwrap().sum_all().unwrap().backward().unwrap();
    let out = emulate("kl_rows", Args::default().f32s(&target).f32s(&current).f32s(&r).u32(rows as u32).u32(n as u32));
    assert_close("KL rows", &out[0], &flat(&kl), 1e-5);
    assert_close("KL rows target gradient", &out[1], &flat(grads.get(tv.as_tensor()).unwrap()), 1e-4);
    assert_close("KL rows current gradient", &out[2], &flat(grads.get(cv.as_tensor()).unwrap()), 1e-5);
}

/// The f64 kernels compute TRAM's radius δ: logits a σ = 1e-5 perturbation apart, whose KL
/// (~1e-11 per row) f32 cannot resolve.
#[test]
fn f64_kl_rows_kernels_match_the_cpu_f64_kernel_on_nearly_equal_logits() {
    let (rows, n) = (4usize, 1500usize);
    let target: Vec<f64> = rand_v(rows * n, 13, 5.0).iter().map(|&x| x as f64).collect();
    let current: Vec<f64> = target.iter().zip(rand_v(rows * n, 14, 1.0)).map(|(a, b)| a + 1e-5 * b as f64).collect();
    let r: Vec<f64> = rand_v(rows, 15, 1.0).iter().map(|&x| x as f64).collect();
    let t64 = |v: &[f64], shape: &[usize]| Tensor::from_slice(v, shape, &Device::Cpu).unwrap();
    let (tv, cv) = (Var::from_tensor(&t64(&target, &[rows, n])).unwrap(), Var::from_tensor(&t64(&current, &[rows, n])).unwrap());
    let kl = k::kl_div_rows(tv.as_tensor(), cv.as_tensor()).unwrap();
    let grads = kl.mul(&t64(&r, &[rows])).unwrap().sum_all().unwrap().backward().unwrap();
    let out = emulate_f64("kl_rows_f64", Args::default().f64s(&target).f64s(&current).f64s(&r).u32(rows as u32).u32(n as u32));
    let rel = |a: &[f64], b: &Tensor| -> f64 {
        let b = b.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let scale = b.iter().fold(0f64, |m, x| m.max(x.abs()));
        let e = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).map(|e| if e.is_nan() { f64::INFINITY } else { e }).fold(0.0, f64::max);
        e / scale
    };
    let kls = kl.to_vec1::<f64>().unwrap();
    assert!(kls.iter().all(|&v| v > 0.0 && v < 1e-8), "KL rows {kls:?} are not those of nearly equal logits");
    for (what, a, b) in [
        ("f64 KL rows", &out[0], &kl),
        ("f64 KL target gradient", &out[1], grads.get(tv.as_tensor()).unwrap()),
        ("f64 KL current gradient", &out[2], grads.get(cv.as_tensor()).unwrap()),
    ] {
        let e = rel(a, b);
        println!("{what:<48} {e:.2e}");
        assert!(e <= 1e-8, "{what}: the emulated CUDA kernel is {e:.2e} (relative) from the CPU f64 kernel");
    }
}

#[test]
fn gelu_kernels_match_the_cpu_kernel_in_f32_and_bf16() {
    let n = 3000;
    let (x, r) = (rand_v(n, 13, 4.0), rand_v(n, 14, 1.0));
    for (kind, name) in [(0, "tanh"), (1, "erf")] {
        for dtype in [DType::F32, DType::BF16] {
            // bf16: inputs rounded to bf16 alike on both sides; the outputs may differ by one bf16
            // rounding of nearly equal f32 values.
            let tol = if dtype == DType::F32 { 1e-5 } else { 8e-3 };
            let xv = Var::from_tensor(&t(&x, &[n]).to_dtype(dtype).unwrap()).unwrap();
            let y = if kind == 0 { k::gelu_tanh(xv.as_tensor()) } else { k::gelu_erf(xv.as_tensor()) }.unwrap();
            let rr = t(&r, &[n]).to_dtype(dtype).unwrap();
            let dx = y.mul(&rr).unwrap().sum_all().unwrap().backward().unwrap().get(xv.as_tensor()).unwrap().clone();
            let f32s = |t: &Tensor| flat(&t.to_dtype(DType::F32).unwrap());
            let out =
                emulate("gelu", Args::default().f32s(&f32s(xv.as_tensor())).f32s(&f32s(&rr)).i32(kind).i32((dtype == DType::BF16) as i32));
            assert_close(&format!("gelu {name} {dtype:?}"), &out[0], &f32s(&y), tol);
            assert_close(&format!("gelu {name} backward {dtype:?}"), &out[1], &f32s(&dx), tol);
        }
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn update_kernels_equal_the_cpu_updates_bit_for_bit() {
    use k::update::{adam_update, sgd_update, AdamCoeffs, Decay, SgdCoeffs};
    let n = 2000;
    let (p0, g, m0, v0) =
        (rand_v(n, 15, 1.0), rand_v(n, 16, 1.0), rand_v(n, 17, 0.1), rand_v(n, 18, 0.01).iter().map(|x| x.abs()).collect::<Vec<_>>());
    for (kind, decay) in [(0, Decay::None), (1, Decay::L2(0.01)), (2, Decay::Decoupled(1.0 - 1e-3 * 0.1))] {
        let c = AdamCoeffs::at(3, 1e-3, 0.9, 0.999, 1e-8, decay);
        let (p, m, v) = (t(&p0, &[n]).copy().unwrap(), t(&m0, &[n]).copy().unwrap(), t(&v0, &[n]).copy().unwrap());
        assert!(adam_update(&p, &t(&g, &[n]), &m, &v, &c).unwrap(), "the CPU update runs fused");
        let factor = match decay {
            Decay::None => 0.0,
            Decay::L2(x) | Decay::Decoupled(x) => x,
        };
        let mut args = Args::default().f32s(&p0).f32s(&g).f32s(&m0).f32s(&v0).i32(kind);
        for x in [factor, c.beta1, c.one_minus_beta1, c.beta2, c.one_minus_beta2, c.inv_bc2_sqrt, c.eps, c.step_size] {
            args = args.f32(x as f32);
        }
        let out = emulate("adam", args);
        for (what, got, want) in [("parameter", &out[0], &p), ("m", &out[1], &m), ("v", &out[2], &v)] {
            assert_eq!(bits(got), bits(&flat(want)), "adam {decay:?}: {what} differs from the CPU update");
        }
    }
    for (momentum, wd, first, nesterov) in
        [(0.0, 0.0, false, false), (0.0, 0.01, false, false), (0.9, 0.0, true, false), (0.9, 0.01, false, true), (0.9, 0.0, false, false)]
    {
        let c = SgdCoeffs { lr: 1e-2, momentum, one_minus_dampening: 0.9, nesterov, weight_decay: wd };
        let p = t(&p0, &[n]).copy().unwrap();
        let buf = (momentum != 0.0).then(|| t(&m0, &[n]).copy().unwrap());
        assert!(sgd_update(&p, &t(&g, &[n]), buf.as_ref(), first, &c).unwrap(), "the CPU update runs fused");
        let flags = [momentum != 0.0, wd != 0.0, first, nesterov].map(i32::from);
        let mut args = Args::default().f32s(&p0).f32s(&g).f32s(if momentum != 0.0 { &m0 } else { &[] });
        for f in flags {
            args = args.i32(f);
        }
        for x in [wd, momentum, c.one_minus_dampening, c.lr] {
            args = args.f32(x as f32);
        }
        let out = emulate("sgd", args);
        assert_eq!(bits(&out[0]), bits(&flat(&p)), "sgd {c:?}: the parameter differs from the CPU update");
        if let Some(b) = &buf {
            assert_eq!(bits(&out[1]), bits(&flat(b)), "sgd {c:?}: the buffer differs from the CPU update");
        }
    }
}

/// The CPU embedding's rows and table gradient for the positions whose id is in the table
/// (the CPU op refuses the others; the kernels give them NaN rows and skip their gradient).
fn cpu_embedding(table: &[f32], ids: &[u32], g: &[f32], vocab: usize, d: usize, dtype: DType) -> (Vec<f32>, Vec<f32>) {
    let keep: Vec<usize> = (0..ids.len()).filter(|&i| (ids[i] as usize) < vocab).collect();
    let kept_ids: Vec<u32> = keep.iter().map(|&i| ids[i]).collect();
    let kept_g: Vec<f32> = keep.iter().flat_map(|&i| g[i * d..(i + 1) * d].to_vec()).collect();
    let tv = Var::from_tensor(&t(table, &[vocab, d]).to_dtype(dtype).unwrap()).unwrap();
    let ids_t = Tensor::from_slice(&kept_ids, kept_ids.len(), &Device::Cpu).unwrap();
    let y = k::embedding(tv.as_tensor(), &ids_t).unwrap();
    let r = t(&kept_g, &[kept_ids.len(), d]).to_dtype(dtype).unwrap();
    let grads = y.mul(&r).unwrap().sum_all().unwrap().backward().unwrap();
    let dt = grads.get(tv.as_tensor()).unwrap().to_dtype(DType::F32).unwrap();
    (flat(&y.to_dtype(DType::F32).unwrap()), flat(&dt))
}

#[test]
fn embedding_kernels_equal_the_cpu_rows_and_table_gradient_bit_for_bit_in_f32_and_bf16() {
    let (vocab, d, n) = (23usize, 300usize, 260usize);
    let table = rand_v(vocab * d, 41, 1.0);
    let g = rand_v(n * d, 42, 1.0);
    // Mostly three frequent ids (long runs of one id), one id past the table.
    let mut rng = ChaCha8Rng::seed_from_u64(43);
    let mut ids: Vec<u32> =
        (0..n).map(|_| if rng.random::<f64>() < 0.6 { rng.random_range(0..3) } else { rng.random_range(0..vocab as u32) }).collect();
    ids[17] = vocab as u32;
    for (dtype, bf16) in [(DType::F32, 0), (DType::BF16, 1)] {
        let out = emulate("embedding", Args::default().f32s(&table).u32s(&ids).f32s(&g).u32(vocab as u32).u32(d as u32).i32(bf16));
        let (y, grad, order) = (&out[0], &out[1], &out[2]);
        // The order is the stable sort of the ids.
        let mut want: Vec<u32> = (0..n as u32).collect();
        want.sort_by_key(|&i| ids[i as usize]);
        assert_eq!(order.iter().map(|&o| o as u32).collect::<Vec<_>>(), want, "{dtype:?}: id order");
        let (cpu_y, cpu_grad) = cpu_embedding(&table, &ids, &g, vocab, d, dtype);
        // Rows: the table's, NaN for the id past it.
        let mut kept = Vec::new();
        for (i, row) in y.chunks_exact(d).enumerate() {
            if i == 17 {
                assert!(row.iter().all(|v| v.is_nan()), "{dtype:?}: the row of an id past the table is not NaN");
            } else {
                kept.extend_from_slice(row);
            }
        }
        assert_eq!(bits(&kept), bits(&cpu_y), "{dtype:?}: embedding rows");
        assert_eq!(bits(grad), bits(&cpu_grad), "{dtype:?}: table gradient");
    }
}

#[test]
fn bias_kernels_add_in_the_dtype_and_sum_the_gradient_over_row_chunks_in_f32() {
    // 200 rows: four chunks of 64 rows; 300 columns: two blocks of columns.
    let (rows, n) = (200usize, 300usize);
    let (x, b, g) = (rand_v(rows * n, 51, 1.0), rand_v(n, 52, 1.0), rand_v(rows * n, 53, 1.0));
    for (dtype, bf16) in [(DType::F32, 0), (DType::BF16, 1)] {
        let out = emulate("add_bias", Args::default().f32s(&x).f32s(&b).f32s(&g).u32(rows as u32).u32(n as u32).u32(64).i32(bf16));
        let bv = Var::from_tensor(&t(&b, &[n]).to_dtype(dtype).unwrap()).unwrap();
        let xt = t(&x, &[rows, n]).to_dtype(dtype).unwrap();
        let y = k::add_bias(&xt, bv.as_tensor()).unwrap();
        assert_eq!(bits(&out[0]), bits(&flat(&y.to_dtype(DType::F32).unwrap())), "{dtype:?}: x + b");
        // The gradient sums, unrounded, against the exact sums of the (dtype-rounded) g.
        let gt = t(&g, &[rows, n]).to_dtype(dtype).unwrap().to_dtype(DType::F64).unwrap();
        let exact: Vec<f32> = flat(&gt.sum(0).unwrap().to_dtype(DType::F32).unwrap());
        assert_close(&format!("bias gradient {dtype:?}"), &out[1], &exact, 2e-6);
    }
}
