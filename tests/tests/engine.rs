//! The step engine: every composition trains, pass counts match the paper's cost model, the
//! composed optimizer equals its pieces run by hand, and accumulation computes one ε.

mod common;
use candle_core::{Device, Tensor};
use common::*;
use tram::ops::{global_norm, log_softmax};
use tram::{Batch, Mode, Model, Optimizer, OptimizerConfig, QueuedNoise};
use tram_tests::eval_loss;

#[test]
fn every_registered_composition_decreases_the_loss() {
    let data = batches(4, 7);
    let mut failures = Vec::new();
    for c in all_compositions() {
        let m = model(1);
        let mut opt = optimizer(&c);
        let before = eval_loss(&m, &data).unwrap();
        for s in 0..40 {
            let r = opt.step(&m, std::slice::from_ref(&data[s % data.len()])).unwrap();
            assert!(!r.skipped, "{c}: step {s} skipped");
        }
        let after = eval_loss(&m, &data).unwrap();
        if after.is_nan() || after >= 0.8 * before {
            failures.push(format!("{c}: {before:.4} -> {after:.4}"));
        }
    }
    assert!(failures.is_empty(), "loss did not fall by 20%: {failures:#?}");
}

fn passes(c: &str, step: usize) -> (usize, usize) {
    let m = model(2);
    let data = batches(1, 3);
    let mut opt = optimizer(c);
    let mut last = None;
    for _ in 0..=step {
        last = Some(opt.step(&m, &data).unwrap());
    }
    let r = last.unwrap();
    (r.forward_passes, r.backward_passes)
}

#[test]
fn pass_counts_follow_the_papers_cost_model() {
    // TRAM: 3 forward (one without gradient), 2 backward; TRAM-Fisher / FSAM / SAM: 2 + 2.
    for (c, want) in [
        ("adam", (1, 1)),
        ("sam", (2, 2)),
        ("asam", (2, 2)),
        ("fsam", (2, 2)),
        ("tram-noise", (3, 2)),
        ("tram-pretrained", (3, 2)),
        ("tram-prev", (3, 2)),
        ("tram-fisher", (2, 2)),
        ("trpo", (2, 1)),
        ("r3f", (2, 2)),
        ("mesa", (2, 1)),
        ("asam+trpo", (3, 2)),
        ("asam+r3f", (4, 4)),
    ] {
        assert_eq!(passes(c, 2), want, "{c}");
    }
    // At t = 0 the previous iterate is θ₀: δ = 0, no ascent, a plain base step.
    assert_eq!(passes("tram-prev", 0), (2, 1));
}

fn grads(m: &dyn Model, b: &Batch) -> Vec<Tensor> {
    let l = m.loss(&m.forward(m.params(), b, Mode::TRAIN).unwrap()).unwrap();
    let g = l.backward().unwrap();
    m.params().iter().map(|p| g.get(p.var.as_tensor()).unwrap().clone()).collect()
}

#[test]
fn sam_on_sgd_equals_its_pieces_by_hand() {
    let (a, b) = (model(3), model(3));
    let data = batches(1, 5);
    let (rho, lr) = (0.05, 0.1);
    let mut opt = Optimizer::new(&tram_plugins::registry().unwrap(), OptimizerConfig::new("ball+sgd(momentum=0)", lr)).unwrap();
    opt.step(&a, &data).unwrap();
    // By hand: ε = ρ g/‖g‖, gradient at θ+ε, restore, θ ← θ − lr g'.
    let g = grads(&b, &data[0]);
    let n = global_norm(&g).unwrap();
    let theta: Vec<Tensor> = b.params().iter().map(|p| p.var.as_tensor().detach().copy().unwrap()).collect();
    for ((p, t), g) in b.params().iter().zip(&theta).zip(&g) {
        p.var.set(&t.add(&g.affine(rho / (n + 1e-12), 0.0).unwrap()).unwrap()).unwrap();
    }
    let g2 = grads(&b, &data[0]);
    for ((p, t), g) in b.params().iter().zip(&theta).zip(&g2) {
        p.var.set(&t.sub(&g.affine(lr, 0.0).unwrap()).unwrap()).unwrap();
    }
    assert!(max_abs_diff(&a, &b) < 1e-7, "{}", max_abs_diff(&a, &b));
}

#[test]
fn tram_x_on_adam_equals_its_pieces_by_hand() {
    let (a, b) = (model(4), model(4));
    let data = batches(1, 6);
    let lr = 0.01;
    let z = Tensor::randn(0f32, 0.1, (16, 6, 8), &Device::Cpu).unwrap();
    let mut opt = Optimizer::new(&tram_plugins::registry().unwrap(), OptimizerConfig::new("noise+ball+adam", lr)).unwrap();
    opt.set_noise_source(Box::new(QueuedNoise::new([z.clone()])));
    let report = opt.step(&a, &data).unwrap();

    let batch = &data[0];
    let w = b.params();
    let current = b.forward(w, batch, Mode::TRAIN).unwrap().logits.detach();
    let e = b.embed(&w.detached(), batch, Mode::TRAIN).unwrap();
    let target = b.forward_embeds(&w.detached(), &e.add(&z).unwrap(), batch, Mode::TRAIN).unwrap().logits;
    // δ = KL(p_target ‖ p_current), mean over rows.
    // (in f64, as the engine measures δ)
    let f64 = |t: &Tensor| t.to_dtype(candle_core::DType::F64).unwrap();
    let (lt, lc) = (log_softmax(&f64(&target)).unwrap(), log_softmax(&f64(&current)).unwrap());
    let delta = lt.exp().unwrap().mul(&lt.sub(&lc).unwrap()).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap() / 16.0;
    assert!((report.delta.unwrap() - delta).abs() < 1e-9 + 1e-5 * delta, "{} vs {delta}", report.delta.unwrap());
    let g = grads(&b, batch);
    let t: Vec<Tensor> = w.iter().map(|p| p.var.as_tensor().abs().unwrap()).collect();
    let tg: Vec<Tensor> = g.iter().zip(&t).map(|(g, t)| g.mul(t).unwrap()).collect();
    let n = global_norm(&tg).unwrap();
    let theta: Vec<Tensor> = w.iter().map(|p| p.var.as_tensor().detach().copy().unwrap()).collect();
    for (((p, th), g), t) in w.iter().zip(&theta).zip(&g).zip(&t) {
        p.var.set(&th.add(&g.mul(&t.sqr().unwrap()).unwrap().affine(delta / (n + 1e-12), 0.0).unwrap()).unwrap()).unwrap();
    }
    let g2 = grads(&b, batch);
    // First Adam step: m̂ = g, v̂ = g², θ ← θ − lr g/(|g| + ε).
    for ((p, th), g) in w.iter().zip(&theta).zip(&g2) {
        let upd = g.div(&g.abs().unwrap().affine(1.0, 1e-8).unwrap()).unwrap();
        p.var.set(&th.sub(&upd.affine(lr, 0.0).unwrap()).unwrap()).unwrap();
    }
    assert!(max_abs_diff(&a, &b) < 1e-6, "{}", max_abs_diff(&a, &b));
}

#[test]
fn trpo_penalty_on_sgd_equals_its_pieces_by_hand() {
    let (a, b) = (model(5), model(5));
    let data = batches(3, 8);
    let (lr, lambda) = (0.1, 0.7);
    let cfg = OptimizerConfig::new("reg:prev+sgd(momentum=0)", lr).with("reg:prev", "lambda", lambda);
    let mut opt = Optimizer::new(&tram_plugins::registry().unwrap(), cfg).unwrap();
    let mut prev: Vec<Tensor> = b.params().iter().map(|p| p.var.as_tensor().detach().copy().unwrap()).collect();
    for batch in &data {
        opt.step(&a, std::slice::from_ref(batch)).unwrap();
        let w = b.params();
        let snap = tram::Snapshot::from_tensors(w, prev.clone()).unwrap();
        let target = b.forward(&snap, batch, Mode::EVAL).unwrap().logits;
        let cur = b.forward(w, batch, Mode::TRAIN).unwrap();
        let (lt, lc) = (log_softmax(&target).unwrap(), log_softmax(&cur.logits).unwrap());
        let kl = lt.exp().unwrap().mul(&lt.sub(&lc).unwrap()).unwrap().sum_all().unwrap().affine(1.0 / 16.0, 0.0).unwrap();
        let loss = b.loss(&cur).unwrap().add(&kl.affine(lambda, 0.0).unwrap()).unwrap();
        let gs = loss.backward().unwrap();
        prev = w.iter().map(|p| p.var.as_tensor().detach().copy().unwrap()).collect();
        for p in w.iter() {
            let g = gs.get(p.var.as_tensor()).unwrap();
            p.var.set(&p.var.as_tensor().sub(&g.affine(lr, 0.0).unwrap()).unwrap()).unwrap();
        }
    }
    assert!(max_abs_diff(&a, &b) < 1e-6, "{}", max_abs_diff(&a, &b));
}

#[test]
fn accumulation_computes_one_ascent_over_all_micro_batches() {
    let data = batches(2, 9);
    let joined = Batch::new(
        Tensor::cat(&[&data[0].inputs, &data[1].inputs], 0).unwrap(),
        Tensor::cat(&[&data[0].targets, &data[1].targets], 0).unwrap(),
    );
    for c in ["sam+sgd", "fsam", "tram-pretrained", "asam+mesa"] {
        let (a, b) = (model(6), model(6));
        let (mut oa, mut ob) = (optimizer(c), optimizer(c));
        for _ in 0..3 {
            let ra = oa.step(&a, &data).unwrap();
            let rb = ob.step(&b, std::slice::from_ref(&joined)).unwrap();
            assert!((ra.loss - rb.loss).abs() < 1e-5, "{c}: loss {} vs {}", ra.loss, rb.loss);
            assert!(
                (ra.epsilon_norm - rb.epsilon_norm).abs() < 1e-5 * (1.0 + rb.epsilon_norm),
                "{c}: ‖ε‖ {} vs {}",
                ra.epsilon_norm,
                rb.epsilon_norm
            );
            assert_eq!(ra.backward_passes, 2 * rb.backward_passes, "{c}");
        }
        assert!(max_abs_diff(&a, &b) < 1e-5, "{c}: {}", max_abs_diff(&a, &b));
    }
}

#[test]
fn the_two_pass_step_restores_parameters_bitwise_before_the_base_step() {
    // With lr = 0 the base step changes nothing, so after a SAM step θ must be bitwise θ.
    let (a, b) = (model(7), model(7));
    let mut opt = Optimizer::new(&tram_plugins::registry().unwrap(), OptimizerConfig::new("ball(rho=0.5)+sgd", 0.0)).unwrap();
    let r = opt.step(&a, &batches(1, 1)).unwrap();
    assert!(r.ascent && r.epsilon_norm > 0.1);
    assert_bitwise_equal(&a, &b, "after a zero-lr SAM step");
}

#[test]
fn clipping_bounds_the_final_gradient() {
    let (a, b) = (model(8), model(8));
    let data = batches(1, 2);
    let lr = 0.1;
    let cfg = OptimizerConfig { max_grad_norm: Some(0.01), ..OptimizerConfig::new("sgd(momentum=0)", lr) };
    let mut opt = Optimizer::new(&tram_plugins::registry().unwrap(), cfg).unwrap();
    let r = opt.step(&a, &data).unwrap();
    assert!(r.grad_norm > 0.01);
    let g = grads(&b, &data[0]);
    let coef = 0.01 / (r.grad_norm + 1e-6);
    for (p, g) in b.params().iter().zip(&g) {
        p.var.set(&p.var.as_tensor().sub(&g.affine(lr * coef, 0.0).unwrap()).unwrap()).unwrap();
    }
    assert!(max_abs_diff(&a, &b) < 1e-7);
}

#[test]
fn tram_x_with_the_papers_tiny_noise_still_measures_a_positive_radius() {
    // σ = 1e-5 (paper default): δ ~ 1e-10, below f32 resolution of the KL terms.
    let m = model(9);
    let mut opt = Optimizer::new(&tram_plugins::registry().unwrap(), OptimizerConfig::new("tram-noise", 1e-3)).unwrap();
    for _ in 0..3 {
        let r = opt.step(&m, &batches(1, 4)).unwrap();
        let d = r.delta.unwrap();
        assert!(d > 0.0 && d < 1e-6, "δ = {d}");
        assert!(r.ascent && r.epsilon_norm > 0.0);
    }
}
