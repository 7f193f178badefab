//! tram-kernels against PyTorch (golden values and gradients, f32 and bf16, from
//! fixtures/generate.py), against the composed candle-primitive versions (f32, including sizes
//! large enough to split over threads) and against finite differences (f64).

use candle_core::{DType, Device, Result, Tensor, Var, D};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;
use tram_kernels as k;

const CPU: Device = Device::Cpu;

fn fixtures() -> HashMap<String, Tensor> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kernels.safetensors");
    candle_core::safetensors::load(path, &CPU).expect("kernels.safetensors")
}

fn rand_vec(n: usize, seed: u64, scale: f64) -> Vec<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| (rng.random::<f64>() * 2.0 - 1.0) * scale).collect()
}

fn rand_t(shape: &[usize], seed: u64, scale: f64, dtype: DType) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(rand_vec(n, seed, scale), shape, &CPU).unwrap().to_dtype(dtype).unwrap()
}

/// max |a − b| / max(max |b|, floor).
fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let a = a.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let b = b.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let scale = b.iter().fold(1e-6f64, |m, v| m.max(v.abs()));
    a.iter().zip(&b).map(|(x, y)| (x - y).abs()).map(|e| if e.is_nan() { f64::INFINITY } else { e }).fold(0.0, f64::max) / scale
}

fn assert_close(what: &str, a: &Tensor, b: &Tensor, tol: f64) {
    let e = rel_err(a, b);
    assert!(e <= tol, "{what}: relative error {e:.3e} > {tol:.0e}");
}

/// Gradients of `sum(f(vars) * r)` with respect to each of `vars`.
fn grads(vars: &[&Var], f: impl Fn(&[Tensor]) -> Result<Tensor>, r: Option<&Tensor>) -> (Tensor, Vec<Tensor>) {
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let y = f(&ts).unwrap();
    let loss = match r {
        Some(r) => y.mul(&r.to_dtype(y.dtype()).unwrap()).unwrap().sum_all().unwrap(),
        None => y.sum_all().unwrap(),
    };
    let g = loss.backward().unwrap();
    (y, vars.iter().map(|v| g.get(v.as_tensor()).expect("no gradient").clone()).collect())
}

/// Central differences of the scalar `f` at `x` (f64) against its backward.
fn check_fd(x: &Tensor, f: impl Fn(&Tensor) -> Result<Tensor>) {
    let var = Var::from_tensor(x).unwrap();
    let g = f(var.as_tensor()).unwrap().backward().unwrap();
    let g = g.get(var.as_tensor()).expect("no gradient").flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let base = x.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let h = 1e-6;
    for i in 0..base.len() {
        let (mut a, mut b) = (base.clone(), base.clone());
        a[i] += h;
        b[i] -= h;
        let fa = f(&Tensor::from_vec(a, x.shape(), &CPU).unwrap()).unwrap().to_scalar::<f64>().unwrap();
        let fb = f(&Tensor::from_vec(b, x.shape(), &CPU).unwrap()).unwrap().to_scalar::<f64>().unwrap();
        let fd = (fa - fb) / (2.0 * h);
        assert!((fd - g[i]).abs() < 1e-6 * (1.0 + fd.abs()), "component {i}: finite difference {fd}, backward {}", g[i]);
    }
}

fn golden_tol(dt: DType) -> (f64, f64) {
    // (values, gradients): f32 within float rounding; bf16 within a few bf16 ulps (2^-8).
    if dt == DType::F32 {
        (2e-6, 5e-6)
    } else {
        (1.6e-2, 3e-2)
    }
}

// ---------------------------------------------------------------------------------------------
// PyTorch golden values

#[test]
fn softmax_with_causal_and_padding_masks_matches_pytorch() {
    let f = fixtures();
    let mask = k::KeyMask::new(&f["softmax/keep"]).unwrap();
    for (name, dt) in [("f32", DType::F32), ("bf16", DType::BF16)] {
        let x = Var::from_tensor(&f["softmax/x"].to_dtype(dt).unwrap()).unwrap();
        let (y, g) = grads(&[&x], |t| k::masked_softmax(&t[0], 0.5, true, Some(&mask)), Some(&f["softmax/r"]));
        let (tv, tg) = golden_tol(dt);
        assert_eq!(y.dtype(), dt);
        assert_close(&format!("softmax {name} values"), &y, &f[&format!("softmax/{name}/y")], tv);
        assert_close(&format!("softmax {name} gradient"), &g[0], &f[&format!("softmax/{name}/dx")], tg);
    }
}

#[test]
fn layer_norm_matches_pytorch_with_affine_gradients() {
    let f = fixtures();
    for (name, dt) in [("f32", DType::F32), ("bf16", DType::BF16)] {
        let vars: Vec<Var> = ["ln/x", "ln/w", "ln/b"].iter().map(|n| Var::from_tensor(&f[*n].to_dtype(dt).unwrap()).unwrap()).collect();
        let (y, g) = grads(&[&vars[0], &vars[1], &vars[2]], |t| k::layer_norm(&t[0], &t[1], &t[2], 1e-5), Some(&f["ln/r"]));
        let (tv, tg) = golden_tol(dt);
        assert_close(&format!("layer norm {name} values"), &y, &f[&format!("ln/{name}/y")], tv);
        for (i, p) in ["dx", "dw", "db"].iter().enumerate() {
            assert_close(&format!("layer norm {name} {p}"), &g[i], &f[&format!("ln/{name}/{p}")], tg);
        }
    }
}

#[test]
fn gelu_tanh_and_erf_match_pytorch() {
    let f = fixtures();
    for (name, dt) in [("f32", DType::F32), ("bf16", DType::BF16)] {
        let (tv, tg) = golden_tol(dt);
        for (kind, op) in [("tanh", k::gelu_tanh as fn(&Tensor) -> Result<Tensor>), ("erf", k::gelu_erf)] {
            let x = Var::from_tensor(&f["gelu/x"].to_dtype(dt).unwrap()).unwrap();
            let (y, g) = grads(&[&x], |t| op(&t[0]), Some(&f["gelu/r"]));
            assert_close(&format!("gelu {kind} {name} values"), &y, &f[&format!("gelu/{name}/{kind}_y")], tv);
            assert_close(&format!("gelu {kind} {name} gradient"), &g[0], &f[&format!("gelu/{name}/{kind}_dx")], tg);
        }
    }
}

#[test]
fn cross_entropy_with_ignored_rows_matches_pytorch() {
    let f = fixtures();
    let t = f["ce/t"].to_dtype(DType::I64).unwrap();
    for (name, dt) in [("f32", DType::F32), ("bf16", DType::BF16)] {
        let x = Var::from_tensor(&f["ce/x"].to_dtype(dt).unwrap()).unwrap();
        let (y, g) = grads(&[&x], |v| k::cross_entropy(&v[0], &t, Some(-100)), None);
        let (tv, tg) = golden_tol(dt);
        assert_close(&format!("cross-entropy {name} value"), &y.reshape(1).unwrap(), &f[&format!("ce/{name}/loss")], tv);
        assert_close(&format!("cross-entropy {name} gradient"), &g[0], &f[&format!("ce/{name}/dx")], tg);
    }
}

#[test]
fn log_softmax_and_kl_rows_match_pytorch() {
    let f = fixtures();
    for (name, dt) in [("f32", DType::F32), ("bf16", DType::BF16)] {
        let (tv, tg) = golden_tol(dt);
        let x = Var::from_tensor(&f["lsm/x"].to_dtype(dt).unwrap()).unwrap();
        let (y, g) = grads(&[&x], |v| k::log_softmax(&v[0]), Some(&f["lsm/r"]));
        assert_close(&format!("log-softmax {name} values"), &y, &f[&format!("lsm/{name}/y")], tv);
        assert_close(&format!("log-softmax {name} gradient"), &g[0], &f[&format!("lsm/{name}/dx")], tg);
        let t = Var::from_tensor(&f["kl/t"].to_dtype(dt).unwrap()).unwrap();
        let c = Var::from_tensor(&f["kl/c"].to_dtype(dt).unwrap()).unwrap();
        let (y, g) = grads(&[&t, &c], |v| k::kl_div_rows(&v[0], &v[1]), Some(&f["kl/r"]));
        assert_close(&format!("kl {name} values"), &y, &f[&format!("kl/{name}/y")], tv.max(if dt == DType::F32 { 1e-5 } else { 0.0 }));
        assert_close(&format!("kl {name} d target"), &g[0], &f[&format!("kl/{name}/dt")], tg);
        assert_close(&format!("kl {name} d current"), &g[1], &f[&format!("kl/{name}/dc")], tg);
    }
}

// ---------------------------------------------------------------------------------------------
// Against the composed candle-primitive versions (f32), small and thread-split sizes

fn composed_log_softmax(x: &Tensor) -> Result<Tensor> {
    let max = x.detach().max_keepdim(D::Minus1)?;
    let s = x.broadcast_sub(&max)?;
    let l = s.exp()?.sum_keepdim(D::Minus1)?.log()?;
    s.broadcast_sub(&l)
}

#[test]
fn masked_softmax_matches_the_composed_bias_version() {
    // [2, 3, 4, 6] small; [4, 4, 128, 128] splits over threads (2^18 elements).
    for (shape, seed) in [([2usize, 3, 4, 6], 1u64), ([4, 4, 128, 128], 2)] {
        let (b, sk) = (shape[0], shape[3]);
        let keep: Vec<f32> = (0..b * sk).map(|i| if i % sk >= sk - 1 - (i / sk) { 0.0 } else { 1.0 }).collect();
        let mask = k::KeyMask::new(&Tensor::from_vec(keep, (b, sk), &CPU).unwrap()).unwrap();
        let r = rand_t(&shape, seed + 10, 1.0, DType::F32);
        for (causal, m) in [(true, None), (false, Some(&mask)), (true, Some(&mask))] {
            let x = Var::from_tensor(&rand_t(&shape, seed, 4.0, DType::F32)).unwrap();
            let (y1, g1) = grads(&[&x], |t| k::masked_softmax(&t[0], 0.3, causal, m), Some(&r));
            let (y2, g2) = grads(&[&x], |t| k::masked_softmax_composed(&t[0], 0.3, causal, m), Some(&r));
            assert_close(&format!("{shape:?} causal={causal} values"), &y1, &y2, 2e-6);
            assert_close(&format!("{shape:?} causal={causal} gradient"), &g1[0], &g2[0], 5e-6);
        }
    }
}

#[test]
fn softmax_row_without_any_key_is_uniform_as_with_an_additive_bias() {
    let mask = k::KeyMask::new(&Tensor::new(&[[0u32, 0, 0]], &CPU).unwrap()).unwrap();
    let x = Tensor::new(&[[[[1f32, 2.0, 3.0]]]], &CPU).unwrap();
    let y = k::masked_softmax(&x, 1.0, false, Some(&mask)).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(y, vec![1.0 / 3.0; 3]);
}

#[test]
fn layer_norm_gelu_and_losses_match_the_composed_versions() {
    for (rows, d, seed) in [(5usize, 7usize, 3u64), (512, 256, 4)] {
        let x = Var::from_tensor(&rand_t(&[rows, d], seed, 3.0, DType::F32)).unwrap();
        let w = Var::from_tensor(&rand_t(&[d], seed + 1, 1.0, DType::F32)).unwrap();
        let b = Var::from_tensor(&rand_t(&[d], seed + 2, 1.0, DType::F32)).unwrap();
        let r = rand_t(&[rows, d], seed + 3, 1.0, DType::F32);
        let (y1, g1) = grads(&[&x, &w, &b], |t| k::layer_norm(&t[0], &t[1], &t[2], 1e-5), Some(&r));
        let (y2, g2) = grads(&[&x, &w, &b], |t| k::layer_norm_composed(&t[0], &t[1], &t[2], 1e-5), Some(&r));
        assert_close("layer norm values", &y1, &y2, 2e-6);
        for i in 0..3 {
            assert_close(&format!("layer norm gradient {i} ({rows}x{d})"), &g1[i], &g2[i], 2e-5);
        }
        for (name, ours, theirs) in [
            ("gelu tanh", k::gelu_tanh as fn(&Tensor) -> Result<Tensor>, (|t: &Tensor| t.gelu()) as fn(&Tensor) -> Result<Tensor>),
            ("gelu erf", k::gelu_erf, |t: &Tensor| t.gelu_erf()),
            ("log-softmax", k::log_softmax, composed_log_softmax),
        ] {
            let (y1, g1) = grads(&[&x], |t| ours(&t[0]), Some(&r));
            let (y2, g2) = grads(&[&x], |t| theirs(&t[0]), Some(&r));
            assert_close(&format!("{name} values ({rows}x{d})"), &y1, &y2, 2e-6);
            assert_close(&format!("{name} gradient ({rows}x{d})"), &g1[0], &g2[0], 1e-5);
        }
        // cross-entropy: every second row ignored (index d, out of range, never read)
        let t: Vec<i64> = (0..rows).map(|i| if i % 2 == 1 { -1 } else { (i * 7 % d) as i64 }).collect();
        let tt = Tensor::from_vec(t.clone(), rows, &CPU).unwrap();
        let (y1, g1) = grads(&[&x], |v| k::cross_entropy(&v[0], &tt, Some(-1)), None);
        let kept: Vec<u32> = (0..rows as u32).filter(|i| i % 2 == 0).collect();
        let ids: Vec<u32> = kept.iter().map(|&i| t[i as usize] as u32).collect();
        let n = kept.len();
        let (y2, g2) = grads(
            &[&x],
            |v| {
                let lp = composed_log_softmax(&v[0].index_select(&Tensor::from_vec(kept.clone(), n, &CPU)?, 0)?)?;
                lp.gather(&Tensor::from_vec(ids.clone(), (n, 1), &CPU)?, 1)?.mean_all()?.neg()
            },
            None,
        );
        assert_close("cross-entropy value", &y1, &y2, 2e-6);
        assert_close("cross-entropy gradient", &g1[0], &g2[0], 1e-5);
        // KL rows
        let c = Var::from_tensor(&rand_t(&[rows, d], seed + 5, 3.0, DType::F32)).unwrap();
        let rr = rand_t(&[rows], seed + 6, 1.0, DType::F32);
        let (y1, g1) = grads(&[&x, &c], |v| k::kl_div_rows(&v[0], &v[1]), Some(&rr));
        let (y2, g2) = grads(
            &[&x, &c],
            |v| {
                let (lt, lc) = (composed_log_softmax(&v[0])?, composed_log_softmax(&v[1])?);
                lt.exp()?.mul(&lt.sub(&lc)?)?.sum(D::Minus1)
            },
            Some(&rr),
        );
        assert_close("kl values", &y1, &y2, 1e-5);
        assert_close("kl d target", &g1[0], &g2[0], 2e-5);
        assert_close("kl d current", &g1[1], &g2[1], 2e-5);
    }
}

#[test]
fn add_bias_matches_broadcast_add_values_and_gradients() {
    for (shape, seed) in [(vec![3usize, 5], 40u64), (vec![8, 128, 384], 41)] {
        let n = *shape.last().unwrap();
        let x = Var::from_tensor(&rand_t(&shape, seed, 1.0, DType::F32)).unwrap();
        let b = Var::from_tensor(&rand_t(&[n], seed + 1, 1.0, DType::F32)).unwrap();
        let r = rand_t(&shape, seed + 2, 1.0, DType::F32);
        let (y1, g1) = grads(&[&x, &b], |t| k::add_bias(&t[0], &t[1]), Some(&r));
        let (y2, g2) = grads(&[&x, &b], |t| t[0].broadcast_add(&t[1]), Some(&r));
        assert_close("add_bias values", &y1, &y2, 0.0);
        assert_close("add_bias d input", &g1[0], &g2[0], 0.0);
        assert_close(&format!("add_bias d bias {shape:?}"), &g1[1], &g2[1], 1e-5);
    }
    let e = k::add_bias(&rand_t(&[2, 3], 1, 1.0, DType::F32), &rand_t(&[2], 1, 1.0, DType::F32)).unwrap_err().to_string();
    assert!(e.contains("bias [2] must be [3]"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Finite differences (f64)

fn f64t(shape: &[usize], seed: u64, scale: f64) -> Tensor {
    rand_t(shape, seed, scale, DType::F64)
}

#[test]
fn every_kernel_gradient_matches_finite_differences() {
    let r = f64t(&[2, 2, 3, 5], 20, 1.0);
    let mask = k::KeyMask::new(&Tensor::new(&[[1u8, 1, 0, 1, 1], [1, 0, 1, 1, 0]], &CPU).unwrap()).unwrap();
    check_fd(&f64t(&[2, 2, 3, 5], 21, 2.0), |x| k::masked_softmax(x, 0.7, true, Some(&mask))?.mul(&r)?.sum_all());
    let (w, b, r2) = (f64t(&[5], 22, 1.0), f64t(&[5], 23, 1.0), f64t(&[3, 5], 24, 1.0));
    let x = f64t(&[3, 5], 25, 2.0);
    check_fd(&x, |x| k::layer_norm(x, &w, &b, 1e-5)?.mul(&r2)?.sum_all());
    check_fd(&w, |w| k::layer_norm(&x, w, &b, 1e-5)?.mul(&r2)?.sum_all());
    check_fd(&b, |b| k::layer_norm(&x, &w, b, 1e-5)?.mul(&r2)?.sum_all());
    let g = f64t(&[16], 26, 4.0);
    let rg = f64t(&[16], 27, 1.0);
    check_fd(&g, |x| k::gelu_tanh(x)?.mul(&rg)?.sum_all());
    check_fd(&g, |x| k::gelu_erf(x)?.mul(&rg)?.sum_all());
    check_fd(&x, |x| k::log_softmax(x)?.mul(&r2)?.sum_all());
    let t = Tensor::new(&[4u32, 99, 0], &CPU).unwrap();
    check_fd(&x, |x| k::cross_entropy(x, &t, Some(99)));
    let c = f64t(&[3, 5], 28, 2.0);
    let r3 = f64t(&[3], 29, 1.0);
    check_fd(&x, |x| k::kl_div_rows(x, &c)?.mul(&r3)?.sum_all());
    check_fd(&c, |c| k::kl_div_rows(&x, c)?.mul(&r3)?.sum_all());
    check_fd(&b, |b| k::add_bias(&x, b)?.mul(&r2)?.sum_all());
    check_fd(&x, |x| k::add_bias(x, &b)?.mul(&r2)?.sum_all());
}

// ---------------------------------------------------------------------------------------------
// Errors

#[test]
fn bad_inputs_are_errors_naming_the_problem() {
    let x = rand_t(&[3, 4], 30, 1.0, DType::F32);
    let e = k::cross_entropy(&x, &Tensor::new(&[0u32, 4, 1], &CPU).unwrap(), None).unwrap_err().to_string();
    assert!(e.contains("target 4 of row 1") && e.contains("0..4"), "{e}");
    let e = k::cross_entropy(&x, &Tensor::new(&[7i64, 7, 7], &CPU).unwrap(), Some(7)).unwrap_err().to_string();
    assert!(e.contains("every one of the 3 rows"), "{e}");
    let e = k::cross_entropy(&x, &Tensor::new(&[0u32, 1], &CPU).unwrap(), None).unwrap_err().to_string();
    assert!(e.contains("targets must be [3]"), "{e}");
    let e = k::layer_norm(&x, &rand_t(&[3], 1, 1.0, DType::F32), &rand_t(&[4], 1, 1.0, DType::F32), 1e-5).unwrap_err().to_string();
    assert!(e.contains("weight [3]") && e.contains("[4]"), "{e}");
    let mask = k::KeyMask::new(&Tensor::ones((2, 5), DType::F32, &CPU).unwrap()).unwrap();
    let e = k::masked_softmax(&rand_t(&[2, 1, 3, 4], 1, 1.0, DType::F32), 1.0, false, Some(&mask)).unwrap_err().to_string();
    assert!(e.contains("key mask [2, 5] does not fit"), "{e}");
    let e = k::masked_softmax(&rand_t(&[1, 1, 5, 4], 1, 1.0, DType::F32), 1.0, true, None).unwrap_err().to_string();
    assert!(e.contains("seq_q ≤ seq_k"), "{e}");
    let e = k::gelu_tanh(&Tensor::new(&[1u32], &CPU).unwrap()).unwrap_err().to_string();
    assert!(e.contains("expected a float tensor"), "{e}");
}
