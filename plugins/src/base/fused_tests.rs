//! The fused in-place updates of `adam`, `adamw` and `sgd` against their composed candle ops,
//! bit for bit, over several steps of random data.

use super::adam::{AdamConfig, AdamCore, Moments};
use super::sgd::{SgdConfig, SgdRule};
use candle_core::{DType, Device, Tensor, Var};
use tram::components::base::SimpleOptimizer;

/// Deterministic values in about ±`scale`, with exact zeros, negative zeros and a spread of
/// magnitudes (what makes `x·c + 0` and `−0` matter).
fn data(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|i| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let u = (s >> 40) as f32 / (1u64 << 24) as f32;
            match i % 17 {
                0 => 0.0,
                1 => -0.0,
                2 => (u - 0.5) * 1e-30,
                _ => (u * 2.0 - 1.0) * scale * 10f32.powi((s >> 20) as i32 % 5 - 2),
            }
        })
        .collect()
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap().into_iter().map(f32::to_bits).collect()
}

// 70 000 elements: several of the kernels' 4096-element chunks and a partial one.
const SIZES: [usize; 2] = [37, 70_000];

#[test]
fn fused_adam_and_adamw_match_the_composed_ops_bit_for_bit_and_update_the_moments_in_place() {
    for n in SIZES {
        for (decoupled, wd) in [(false, 0.0), (false, 0.05), (true, 0.0), (true, 0.01)] {
            let core = AdamCore::new(AdamConfig { beta1: 0.85, beta2: 0.995, eps: 1e-7, weight_decay: wd }, decoupled);
            let init = data(n, 1, 1.0);
            let fused = Var::from_vec(init.clone(), n, &Device::Cpu).unwrap();
            let composed = Var::from_vec(init, n, &Device::Cpu).unwrap();
            let (mut sf, mut sc): (Option<Moments>, Option<Moments>) = (None, None);
            let mut first_m = None;
            for t in 1..=6u64 {
                let g = Tensor::from_vec(data(n, 100 + t, 0.1), n, &Device::Cpu).unwrap();
                let lr = 1e-3 * t as f64;
                core.step(t, lr, &fused, &g, &mut sf).unwrap();
                core.step_composed(t, lr, &composed, &g, &mut sc).unwrap();
                let what = format!("n={n} decoupled={decoupled} wd={wd} step {t}");
                assert_eq!(bits(fused.as_tensor()), bits(composed.as_tensor()), "parameter, {what}");
                let (f, c) = (sf.as_ref().unwrap(), sc.as_ref().unwrap());
                assert_eq!(bits(&f.m), bits(&c.m), "m, {what}");
                assert_eq!(bits(&f.v), bits(&c.v), "v, {what}");
                // In place: the moment handle of the first step sees every later step.
                let m0 = first_m.get_or_insert_with(|| AdamCore::to_tensors(f).remove(0));
                assert_eq!(bits(m0), bits(&c.m), "m in place, {what}");
            }
        }
    }
}

#[test]
fn fused_sgd_matches_the_composed_ops_bit_for_bit_with_momentum_dampening_nesterov_and_decay() {
    let configs = [
        SgdConfig { momentum: 0.0, ..Default::default() },
        SgdConfig { momentum: 0.0, weight_decay: 0.01, ..Default::default() },
        SgdConfig::default(),
        SgdConfig { momentum: 0.8, dampening: 0.3, weight_decay: 0.02, nesterov: false },
        SgdConfig { momentum: 0.9, dampening: 0.0, weight_decay: 0.0, nesterov: true },
        SgdConfig { momentum: 0.9, dampening: 0.0, weight_decay: 0.05, nesterov: true },
    ];
    for n in SIZES {
        for config in &configs {
            let rule = SgdRule::new(config.clone());
            let init = data(n, 2, 1.0);
            let fused = Var::from_vec(init.clone(), n, &Device::Cpu).unwrap();
            let composed = Var::from_vec(init, n, &Device::Cpu).unwrap();
            let (mut bf, mut bc): (Option<Tensor>, Option<Tensor>) = (None, None);
            for t in 1..=5u64 {
                let g = Tensor::from_vec(data(n, 200 + t, 0.1), n, &Device::Cpu).unwrap();
                let lr = 0.05 / t as f64;
                rule.step(t, lr, &fused, &g, &mut bf).unwrap();
                rule.step_composed(lr, &composed, &g, &mut bc).unwrap();
                let what = format!("n={n} {config:?} step {t}");
                assert_eq!(bits(fused.as_tensor()), bits(composed.as_tensor()), "parameter, {what}");
                assert_eq!(bf.is_some(), bc.is_some(), "{what}");
                if let (Some(f), Some(c)) = (&bf, &bc) {
                    assert_eq!(bits(f), bits(c), "momentum buffer, {what}");
                }
            }
        }
    }
}

#[test]
fn bf16_parameters_keep_the_composed_path() {
    let core = AdamCore::new(AdamConfig::with_decay(0.01), true);
    let init = Tensor::from_vec(data(64, 3, 1.0), 64, &Device::Cpu).unwrap().to_dtype(DType::BF16).unwrap();
    let (a, b) = (Var::from_tensor(&init).unwrap(), Var::from_tensor(&init).unwrap());
    let (mut sa, mut sb) = (None, None);
    for t in 1..=3u64 {
        let g = Tensor::from_vec(data(64, 300 + t, 0.1), 64, &Device::Cpu).unwrap().to_dtype(DType::BF16).unwrap();
        core.step(t, 1e-2, &a, &g, &mut sa).unwrap();
        core.step_composed(t, 1e-2, &b, &g, &mut sb).unwrap();
    }
    let f32s = |t: &Tensor| t.to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(f32s(a.as_tensor()), f32s(b.as_tensor()));
    assert_eq!(sa.as_ref().unwrap().m.dtype(), DType::BF16);
    assert_eq!(f32s(&sa.unwrap().v), f32s(&sb.unwrap().v));
}
