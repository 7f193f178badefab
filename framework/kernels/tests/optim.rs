//! The fused in-place optimizer updates against PyTorch's single-tensor formulas written out
//! in f64, and against their own composed (device) path.

use candle_core::{Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tram_kernels::optim::{adam_step, adam_step_composed, sgd_step, sgd_step_composed, AdamConfig, AdamState, SgdConfig};

fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect()
}

/// torch.optim.Adam / AdamW (foreach=False) in f64.
fn adam_reference(p: &mut [f64], m: &mut [f64], v: &mut [f64], g: &[f64], c: &AdamConfig, t: i32) {
    for i in 0..p.len() {
        let mut gi = g[i];
        if c.weight_decay != 0.0 {
            if c.decoupled {
                p[i] *= 1.0 - c.lr * c.weight_decay;
            } else {
                gi += c.weight_decay * p[i];
            }
        }
        m[i] += (1.0 - c.beta1) * (gi - m[i]);
        v[i] = c.beta2 * v[i] + (1.0 - c.beta2) * gi * gi;
        let denom = v[i].sqrt() / (1.0 - c.beta2.powi(t)).sqrt() + c.eps;
        p[i] -= c.lr / (1.0 - c.beta1.powi(t)) * m[i] / denom;
    }
}

fn max_rel(a: &[f32], b: &[f64]) -> f64 {
    let scale = b.iter().fold(1e-12f64, |m, v| m.max(v.abs()));
    a.iter().zip(b).map(|(x, y)| (*x as f64 - y).abs()).map(|e| if e.is_nan() { f64::INFINITY } else { e }).fold(0.0, f64::max) / scale
}

#[test]
fn fused_adam_and_adamw_follow_the_pytorch_formula_in_place() {
    // 70_000 elements: split over threads.
    for n in [37usize, 70_000] {
        for c in [
            AdamConfig { lr: 1e-2, ..Default::default() },
            AdamConfig { lr: 1e-2, weight_decay: 0.1, ..Default::default() },
            AdamConfig { lr: 1e-2, weight_decay: 0.1, decoupled: true, ..Default::default() },
        ] {
            let init = data(n, 1);
            let var = Var::from_vec(init.clone(), n, &Device::Cpu).unwrap();
            let storage_before = var.as_tensor().clone();
            let composed = Var::from_vec(init.clone(), n, &Device::Cpu).unwrap();
            let (mut p, mut m, mut v) = (init.iter().map(|x| *x as f64).collect::<Vec<_>>(), vec![0.0; n], vec![0.0; n]);
            let (mut st, mut st2) = (AdamState::new(), AdamState::new());
            for t in 1..=3 {
                let g = data(n, 10 + t as u64);
                let gt = Tensor::from_slice(&g, n, &Device::Cpu).unwrap();
                adam_step(&var, &gt, &mut st, &c).unwrap();
                adam_step_composed(&composed, &gt, &mut st2, &c).unwrap();
                adam_reference(&mut p, &mut m, &mut v, &g.iter().map(|x| *x as f64).collect::<Vec<_>>(), &c, t);
            }
            let got = var.as_tensor().to_vec1::<f32>().unwrap();
            assert!(max_rel(&got, &p) < 1e-6, "{c:?} n={n}: fused vs reference {}", max_rel(&got, &p));
            let comp = composed.as_tensor().to_vec1::<f32>().unwrap();
            assert!(max_rel(&comp, &p) < 1e-6, "{c:?}: composed vs reference {}", max_rel(&comp, &p));
            // In place: a tensor sharing the variable's storage sees the update.
            assert_eq!(storage_before.to_vec1::<f32>().unwrap(), got);
            assert_eq!(st.step, 3);
            let (mm, _) = st.moments(&[n]).unwrap().unwrap();
            assert!(max_rel(&mm.to_vec1::<f32>().unwrap(), &m) < 1e-6);
        }
    }
}

#[test]
fn fused_sgd_follows_the_pytorch_formula() {
    let n = 50;
    for c in [
        SgdConfig { lr: 0.1, ..Default::default() },
        SgdConfig { lr: 0.1, momentum: 0.9, ..Default::default() },
        SgdConfig { lr: 0.1, momentum: 0.9, dampening: 0.1, weight_decay: 0.01, nesterov: false },
        SgdConfig { lr: 0.1, momentum: 0.9, weight_decay: 0.01, nesterov: true, ..Default::default() },
    ] {
        let init = data(n, 2);
        let var = Var::from_vec(init.clone(), n, &Device::Cpu).unwrap();
        let composed = Var::from_vec(init.clone(), n, &Device::Cpu).unwrap();
        let mut p: Vec<f64> = init.iter().map(|x| *x as f64).collect();
        let mut buf = vec![0.0; n];
        let (mut st, mut st2) = (AdamState::new(), AdamState::new());
        for t in 1..=3u64 {
            let g = data(n, 20 + t);
            let gt = Tensor::from_slice(&g, n, &Device::Cpu).unwrap();
            sgd_step(&var, &gt, &mut st, &c).unwrap();
            sgd_step_composed(&composed, &gt, &mut st2, &c).unwrap();
            for i in 0..n {
                let mut gi = g[i] as f64 + c.weight_decay * p[i];
                if c.momentum != 0.0 {
                    buf[i] = if t == 1 { gi } else { c.momentum * buf[i] + (1.0 - c.dampening) * gi };
                    gi = if c.nesterov { gi + c.momentum * buf[i] } else { buf[i] };
                }
                p[i] -= c.lr * gi;
            }
        }
        let got = var.as_tensor().to_vec1::<f32>().unwrap();
        assert!(max_rel(&got, &p) < 1e-6, "{c:?}: {}", max_rel(&got, &p));
        let comp = composed.as_tensor().to_vec1::<f32>().unwrap();
        assert!(max_rel(&comp, &p) < 1e-6, "{c:?} composed: {}", max_rel(&comp, &p));
    }
}

#[test]
fn fused_updates_refuse_mismatched_shapes_and_half_parameters() {
    let var = Var::from_vec(vec![1f32; 4], 4, &Device::Cpu).unwrap();
    let e =
        adam_step(&var, &Tensor::ones(3, candle_core::DType::F32, &Device::Cpu).unwrap(), &mut AdamState::new(), &AdamConfig::default())
            .unwrap_err()
            .to_string();
    assert!(e.contains("gradient [3] does not match the parameter [4]"), "{e}");
    let half = Var::from_tensor(&Tensor::ones(4, candle_core::DType::BF16, &Device::Cpu).unwrap()).unwrap();
    let e = sgd_step(&half, &Tensor::ones(4, candle_core::DType::F32, &Device::Cpu).unwrap(), &mut AdamState::new(), &SgdConfig::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("needs an f32 parameter") && e.contains("master weights"), "{e}");
}

#[test]
fn bitwise_updates_refuse_shared_storage_and_leave_other_dtypes_to_the_caller() {
    use tram_kernels::update::{adam_update, sgd_update, AdamCoeffs, Decay, SgdCoeffs};
    let c = AdamCoeffs {
        beta1: 0.9,
        one_minus_beta1: 0.1,
        beta2: 0.999,
        one_minus_beta2: 0.001,
        inv_bc2_sqrt: 1.0,
        eps: 1e-8,
        step_size: 1e-3,
        decay: Decay::None,
    };
    let p = Var::from_vec(vec![1f32; 4], 4, &Device::Cpu).unwrap();
    let g = Tensor::ones(4, candle_core::DType::F32, &Device::Cpu).unwrap();
    let m = Tensor::zeros(4, candle_core::DType::F32, &Device::Cpu).unwrap();
    // The same moment twice: an error naming the problem, not a deadlock.
    let e = adam_update(p.as_tensor(), &g, &m, &m.clone(), &c).unwrap_err().to_string();
    assert!(e.contains("must not share storage"), "{e}");
    let e =
        adam_update(p.as_tensor(), &g, &m, &Tensor::zeros(3, candle_core::DType::F32, &Device::Cpu).unwrap(), &c).unwrap_err().to_string();
    assert!(e.contains("state [3] does not match the parameter [4]"), "{e}");
    assert_eq!(p.as_tensor().to_vec1::<f32>().unwrap(), [1.0; 4], "nothing written on an error");
    // bf16: not fused, nothing written; the caller runs its composed path.
    let half = Var::from_tensor(&Tensor::ones(4, candle_core::DType::BF16, &Device::Cpu).unwrap()).unwrap();
    let gh = g.to_dtype(candle_core::DType::BF16).unwrap();
    let s = SgdCoeffs { lr: 0.1, momentum: 0.0, one_minus_dampening: 1.0, nesterov: false, weight_decay: 0.0 };
    assert!(!sgd_update(half.as_tensor(), &gh, None, true, &s).unwrap());
    assert_eq!(half.as_tensor().to_dtype(candle_core::DType::F32).unwrap().to_vec1::<f32>().unwrap(), [1.0; 4]);
    // f32: fused, in place.
    assert!(sgd_update(p.as_tensor(), &g, None, true, &s).unwrap());
    assert_eq!(p.as_tensor().to_vec1::<f32>().unwrap(), [0.9; 4]);
}

#[test]
fn in_place_affine_and_add_write_what_candles_ops_compute_bit_for_bit() {
    use tram_kernels::update::{add_assign, affine_owned};
    let bits = |t: &Tensor| t.to_vec1::<f32>().unwrap().into_iter().map(f32::to_bits).collect::<Vec<_>>();
    // 70 000 elements: several of the kernels' 4096-element chunks and a partial one.
    for n in [5usize, 70_000] {
        let mut x = data(n, 7);
        x[0] = -0.0;
        x[1] = 0.0;
        let t = Tensor::from_vec(x, n, &Device::Cpu).unwrap();
        for (mul, add) in [(1.0, 0.0), (0.37, 0.0), (1.0, 0.01), (-3.5e-3, 1.0)] {
            let expected = t.affine(mul, add).unwrap();
            let got = affine_owned(t.copy().unwrap(), mul, add).unwrap();
            assert_eq!(bits(&got), bits(&expected), "n={n} mul={mul} add={add}");
        }
        let e = Tensor::from_vec(data(n, 8), n, &Device::Cpu).unwrap();
        let expected = t.add(&e).unwrap();
        let dst = t.copy().unwrap();
        assert!(add_assign(&dst, &e).unwrap());
        assert_eq!(bits(&dst), bits(&expected), "n={n} add");
        // A source sharing the destination's storage is left to the caller.
        assert!(!add_assign(&dst, &dst.clone()).unwrap());
    }
    // bf16: candle's affine, a new tensor.
    let h = Tensor::ones(4, candle_core::DType::BF16, &Device::Cpu).unwrap();
    let got = affine_owned(h.clone(), 0.5, 0.25).unwrap().to_dtype(candle_core::DType::F32).unwrap();
    assert_eq!(got.to_vec1::<f32>().unwrap(), [0.75; 4]);
    assert_eq!(h.to_dtype(candle_core::DType::F32).unwrap().to_vec1::<f32>().unwrap(), [1.0; 4]);
}
