//! Guards: zero gradients give no ascent, non-finite losses or gradients skip the step, NaN in
//! a trust-region target never reaches the parameters.

mod common;
use candle_core::{DType, Device, Tensor, Var};
use common::*;
use std::collections::BTreeMap;
use tram::registry::{Component, Entry, Kind};
use tram::{Batch, Distance, Logits, Mode, Model, Optimizer, OptimizerConfig, Params, Reduction, Weights};

/// A model whose logits do not depend on its parameters: every gradient is exactly zero.
struct Flat {
    params: Params,
}

impl Model for Flat {
    fn params(&self) -> &Params {
        &self.params
    }
    fn embed(&self, _w: &dyn Weights, batch: &Batch, _mode: Mode) -> tram::Result<Tensor> {
        Ok(batch.inputs.clone())
    }
    fn forward_embeds(&self, w: &dyn Weights, embeds: &Tensor, batch: &Batch, _mode: Mode) -> tram::Result<Logits> {
        // Multiplying by a zero tensor (not `affine(0, _)`, which candle prunes from the graph).
        let zero = w.weight("w")?.sum_all()?.mul(&Tensor::new(0f32, &Device::Cpu)?)?;
        Ok(Logits { logits: embeds.broadcast_add(&zero)?, targets: batch.targets.clone() })
    }
}

fn flat() -> Flat {
    Flat { params: Params::new([("w".to_string(), Var::new(&[1f32, -2.0], &Device::Cpu).unwrap())]).unwrap() }
}

#[test]
fn zero_gradient_gives_no_ascent_and_no_nan() {
    let batch = Batch::new(
        Tensor::new(&[[0.5f32, 1.0, -1.0], [2.0, 0.0, 0.0]], &Device::Cpu).unwrap(),
        Tensor::new(&[0u32, 2], &Device::Cpu).unwrap(),
    );
    for c in ["sam", "asam", "fsam", "tram-noise", "tram-pretrained", "tram-fisher", "sam+sgd"] {
        let m = flat();
        let mut opt = Optimizer::new(&tram_plugins::registry().unwrap(), OptimizerConfig::new(c, 0.1)).unwrap();
        let r = opt.step(&m, std::slice::from_ref(&batch)).unwrap();
        assert!(!r.ascent && !r.skipped, "{c}: {r:?}");
        assert_eq!(r.epsilon_norm, 0.0);
        assert_eq!(r.grad_norm, 0.0);
        assert_eq!(opt.no_ascent_steps(), 1, "{c}");
        assert_eq!(m.params().iter().next().unwrap().var.as_tensor().to_vec1::<f32>().unwrap(), vec![1.0, -2.0], "{c}");
    }
}

fn poison_row(m: &dyn Model, row: usize) {
    let emb = &m.params().iter().next().unwrap().var;
    let mut v = emb.as_tensor().to_vec2::<f32>().unwrap();
    v[row].iter_mut().for_each(|x| *x = f32::NAN);
    emb.set(&Tensor::new(v, &Device::Cpu).unwrap()).unwrap();
}

#[test]
fn a_nan_loss_skips_the_step_and_leaves_parameters_bitwise_unchanged() {
    let poisoned =
        Batch::new(Tensor::new(&[[31u32, 1, 2], [3, 4, 31]], &Device::Cpu).unwrap(), Tensor::new(&[0u32, 1], &Device::Cpu).unwrap());
    for c in ["adam", "sgd", "sam", "tram-noise", "tram-prev", "tram-fisher", "trpo", "r3f", "asam+mesa"] {
        let m = model(11);
        poison_row(&m, 31);
        let before = clone_model(&m);
        let mut opt = optimizer(c);
        let r = opt.step(&m, std::slice::from_ref(&poisoned)).unwrap();
        assert!(r.skipped, "{c}: {r:?}");
        assert_eq!(opt.skipped_steps(), 1);
        assert_eq!(opt.steps(), 1, "a skipped step still counts for the schedule");
        assert_bitwise_equal(&m, &before, c);
        // A clean batch (token 31 unused) trains again, and NaN stays confined to the poisoned row.
        let mut clean = batches(1, 3);
        let ids: Vec<Vec<u32>> =
            clean[0].inputs.to_vec2::<u32>().unwrap().into_iter().map(|r| r.into_iter().map(|t| t % 31).collect()).collect();
        clean[0].inputs = Tensor::new(ids, &Device::Cpu).unwrap();
        let ok = opt.step(&m, &clean).unwrap();
        assert!(!ok.skipped && ok.loss.is_finite(), "{c}: {ok:?}");
        for p in m.params().iter().skip(1) {
            assert!(
                p.var.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().all(|x| x.is_finite()),
                "{c}: {} has NaN",
                p.name
            );
        }
    }
}

#[test]
fn nan_in_the_target_drops_the_ascent_or_skips_the_penalised_step() {
    for (c, penalised) in [("tram-pretrained", false), ("tram-prev", false), ("trpo", true), ("mesa", true), ("asam+trpo", true)] {
        let m = model(12);
        let bias = &m.params().iter().find(|p| p.name == "fc2.bias").unwrap().var;
        let good = bias.as_tensor().detach().copy().unwrap();
        bias.set(&Tensor::full(f32::NAN, good.shape(), &Device::Cpu).unwrap()).unwrap();
        let mut opt = optimizer(c);
        opt.init(m.params()).unwrap(); // θ₀ (and θ_{-1}, θ_ema) now hold NaN
        bias.set(&good).unwrap();
        let before = clone_model(&m);
        let r = opt.step(&m, &batches(1, 1)).unwrap();
        if penalised {
            assert!(r.skipped, "{c}: {r:?}");
            assert_bitwise_equal(&m, &before, c);
        } else {
            assert!(!r.skipped && !r.ascent, "{c}: {r:?}");
            assert!(r.delta.unwrap().is_nan());
            assert_eq!(opt.no_ascent_steps(), 1);
            assert!(max_abs_diff(&m, &before) > 0.0, "{c}: the plain base step should have moved θ");
        }
        for p in m.params().iter() {
            assert!(
                p.var.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().all(|x| x.is_finite()),
                "{c}: NaN reached {}",
                p.name
            );
        }
    }
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let m = model(13);
    let mut opt = optimizer("sam");
    assert!(opt.step(&m, &[]).unwrap_err().to_string().contains("at least one batch"));
    let wrong =
        Batch::new(Tensor::zeros((2, 3, 4), DType::U32, &Device::Cpu).unwrap(), Tensor::zeros(2, DType::U32, &Device::Cpu).unwrap());
    assert!(opt.step(&m, &[wrong]).is_err());
    // A parameter that gets no gradient is named, with the fix.
    struct Unused(Params);
    impl Model for Unused {
        fn params(&self) -> &Params {
            &self.0
        }
        fn embed(&self, _w: &dyn Weights, b: &Batch, _m: Mode) -> tram::Result<Tensor> {
            Ok(b.inputs.clone())
        }
        fn forward_embeds(&self, w: &dyn Weights, e: &Tensor, b: &Batch, _m: Mode) -> tram::Result<Logits> {
            Ok(Logits { logits: e.broadcast_mul(&w.weight("used")?)?, targets: b.targets.clone() })
        }
    }
    let m = Unused(
        Params::new([
            ("used".to_string(), Var::ones(3, DType::F32, &Device::Cpu).unwrap()),
            ("unused".to_string(), Var::ones(3, DType::F32, &Device::Cpu).unwrap()),
        ])
        .unwrap(),
    );
    let b = Batch::new(Tensor::ones((2, 3), DType::F32, &Device::Cpu).unwrap(), Tensor::zeros(2, DType::U32, &Device::Cpu).unwrap());
    let e = optimizer("adam").step(&m, std::slice::from_ref(&b)).unwrap_err().to_string();
    assert!(e.contains("`unused`") && e.contains("allow_missing_gradients"), "{e}");
    let cfg = OptimizerConfig { allow_missing_gradients: true, ..OptimizerConfig::new("adam", 0.1) };
    let mut opt = Optimizer::new(&tram_plugins::registry().unwrap(), cfg).unwrap();
    assert!(!opt.step(&m, &[b]).unwrap().skipped);
}

/// A distance that is NaN and carries no graph: the penalty is NaN and its gradient absent, as
/// with `temperature = 0` before it was refused (candle drops the gradient of `affine(0, _)`).
struct NanDistance;
impl Distance for NanDistance {
    fn name(&self) -> &str {
        "nan-distance"
    }
    fn distance(&self, _t: &Tensor, _c: &Tensor, _r: Reduction, _n: usize) -> tram::Result<Tensor> {
        Ok(Tensor::new(f32::NAN, &Device::Cpu)?)
    }
}

#[test]
fn a_non_finite_penalty_skips_the_step_even_without_a_gradient() {
    let mut r = tram_plugins::registry().unwrap();
    r.register(Entry::new(Kind::Distance, "nan-distance", "always NaN", vec![], |_| Ok(Component::Distance(Box::new(NanDistance)))))
        .unwrap();
    for c in ["reg:prev(distance=nan-distance)+adam", "reg:ema(distance=nan-distance)+ball+sgd"] {
        let m = model(14);
        let before = clone_model(&m);
        let mut opt = Optimizer::new(&r, OptimizerConfig::new(c, 0.01)).unwrap();
        let rep = opt.step(&m, &batches(1, 2)).unwrap();
        assert!(rep.loss.is_finite() && rep.penalty.is_some_and(f64::is_nan), "{c}: {rep:?}");
        assert!(rep.skipped && !rep.ascent, "{c}: {rep:?}");
        assert_eq!(opt.skipped_steps(), 1, "{c}");
        assert_bitwise_equal(&m, &before, c);
    }
}

/// The optimizer state as `key → bytes`, without the engine's counters.
fn state_without_counters(opt: &Optimizer, m: &dyn Model) -> BTreeMap<String, Vec<u8>> {
    let bytes = opt.state_bytes(m.params()).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors().into_iter().filter(|(k, _)| !k.starts_with("engine/")).map(|(k, v)| (k, v.data().to_vec())).collect()
}

#[test]
fn an_update_that_makes_a_weight_non_finite_is_rolled_back_and_counted_as_skipped() {
    // lr = 1e300 is finite, but lr·g overflows f32: every weight the update touches becomes ±∞ or NaN.
    for c in ["sgd", "adam", "adamw", "tram-prev+sgd", "asam+mesa"] {
        let m = model(15);
        let before = clone_model(&m);
        let r = tram_plugins::registry().unwrap();
        let mut opt = Optimizer::new(&r, OptimizerConfig::new(c, 1e300)).unwrap();
        let mut fresh = Optimizer::new(&r, OptimizerConfig::new(c, 1e300)).unwrap();
        fresh.init(m.params()).unwrap();
        let rep = opt.step(&m, &batches(1, 4)).unwrap();
        assert!(rep.skipped && rep.loss.is_finite() && rep.grad_norm.is_finite(), "{c}: {rep:?}");
        assert_eq!((opt.steps(), opt.skipped_steps()), (1, 1), "{c}");
        assert_bitwise_equal(&m, &before, c);
        // Moments, step counts, θ_{t-1} and θ_ema are as before the step.
        assert_eq!(state_without_counters(&opt, &m), state_without_counters(&fresh, &m), "{c}");
    }
}

#[test]
fn a_rolled_back_update_restores_optimizer_state_that_the_update_wrote_in_place() {
    // After two ordinary steps the moments / momentum buffers exist and the fused base step
    // updates them in place: a rollback backup that shared their storage (instead of copying
    // them) would "restore" the values the failed update wrote.
    for c in ["sgd", "adam", "adamw", "tram-prev+sgd", "asam+mesa"] {
        let m = model(16);
        let r = tram_plugins::registry().unwrap();
        let mut opt = Optimizer::new(&r, OptimizerConfig::new(c, 0.01)).unwrap();
        for seed in [5, 6] {
            assert!(!opt.step(&m, &batches(1, seed)).unwrap().skipped, "{c}");
        }
        let saved = state_without_counters(&opt, &m);
        let before = clone_model(&m);
        // The same state, stepped with a learning rate whose update overflows f32.
        let mut huge = Optimizer::new(&r, OptimizerConfig::new(c, 1e300)).unwrap();
        huge.load_state_bytes(m.params(), &opt.state_bytes(m.params()).unwrap(), "<two steps>").unwrap();
        let rep = huge.step(&m, &batches(1, 7)).unwrap();
        assert!(rep.skipped && rep.grad_norm.is_finite(), "{c}: {rep:?}");
        assert_bitwise_equal(&m, &before, c);
        assert_eq!(state_without_counters(&huge, &m), saved, "{c}: optimizer state after the rollback");
        // And the restored state is live: an ordinary step from it matches one from the original.
        let mut again = Optimizer::new(&r, OptimizerConfig::new(c, 0.01)).unwrap();
        again.load_state_bytes(m.params(), &huge.state_bytes(m.params()).unwrap(), "<rolled back>").unwrap();
        let twin = clone_model(&m);
        assert!(!again.step(&m, &batches(1, 8)).unwrap().skipped, "{c}");
        assert!(!opt.step(&twin, &batches(1, 8)).unwrap().skipped, "{c}");
        assert_bitwise_equal(&m, &twin, c);
    }
}

/// A linear classifier whose weights are bf16.
struct LinearBf16 {
    params: Params,
}

impl Model for LinearBf16 {
    fn params(&self) -> &Params {
        &self.params
    }
    fn embed(&self, _w: &dyn Weights, batch: &Batch, _mode: Mode) -> tram::Result<Tensor> {
        Ok(batch.inputs.to_dtype(DType::BF16)?)
    }
    fn forward_embeds(&self, w: &dyn Weights, embeds: &Tensor, batch: &Batch, _mode: Mode) -> tram::Result<Logits> {
        Ok(Logits { logits: embeds.matmul(&w.weight("w")?)?, targets: batch.targets.clone() })
    }
}

#[test]
fn a_non_finite_update_is_rolled_back_in_bf16_too_and_a_finite_one_is_kept() {
    let w = Tensor::new(&[[0.5f32, -1.0, 0.25], [1.0, 0.0, -0.5]], &Device::Cpu).unwrap().to_dtype(DType::BF16).unwrap();
    let batch =
        Batch::new(Tensor::new(&[[1.0f32, 2.0], [-1.0, 0.5]], &Device::Cpu).unwrap(), Tensor::new(&[0u32, 2], &Device::Cpu).unwrap());
    let r = tram_plugins::registry().unwrap();
    for (lr, rolled_back) in [(1e300, true), (0.1, false)] {
        for c in ["sgd", "adam", "sam"] {
            let m = LinearBf16 { params: Params::new([("w".to_string(), Var::from_tensor(&w).unwrap())]).unwrap() };
            let before = m.params().iter().next().unwrap().var.as_tensor().copy().unwrap();
            let mut opt = Optimizer::new(&r, OptimizerConfig::new(c, lr)).unwrap();
            let rep = opt.step(&m, std::slice::from_ref(&batch)).unwrap();
            assert_eq!(rep.skipped, rolled_back, "{c} lr {lr}: {rep:?}");
            let after = m.params().iter().next().unwrap().var.as_tensor().to_dtype(DType::F32).unwrap().flatten_all().unwrap();
            let after = after.to_vec1::<f32>().unwrap();
            let before = before.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(after.iter().all(|x| x.is_finite()), "{c} lr {lr}: {after:?}");
            assert_eq!(after == before, rolled_back, "{c} lr {lr}: {before:?} -> {after:?}");
        }
    }
}

#[test]
fn f16_parameters_are_refused_naming_what_to_use_instead() {
    let w = Tensor::new(&[[0.5f32, -1.0, 0.25], [1.0, 0.0, -0.5]], &Device::Cpu).unwrap().to_dtype(DType::F16).unwrap();
    let m = LinearBf16 { params: Params::new([("w".to_string(), Var::from_tensor(&w).unwrap())]).unwrap() };
    let batch = Batch::new(
        Tensor::new(&[[1.0f32, 2.0]], &Device::Cpu).unwrap().to_dtype(DType::F16).unwrap(),
        Tensor::new(&[0u32], &Device::Cpu).unwrap(),
    );
    let mut opt = optimizer("adam");
    let e = opt.step(&m, &[batch]).unwrap_err().to_string();
    assert!(e.contains("parameter `w` is f16") && e.contains("bf16") && e.contains("f32"), "{e}");
    assert_eq!(
        m.params().iter().next().unwrap().var.as_tensor().to_dtype(DType::F32).unwrap().to_vec2::<f32>().unwrap()[0],
        [0.5, -1.0, 0.25]
    );
}

/// A base optimizer whose state cannot be read (a device error, say): plain SGD without state.
struct UnreadableState;

impl tram::BaseOptimizer for UnreadableState {
    fn name(&self) -> &str {
        "unreadable"
    }
    fn update(&mut self, params: &Params, grads: &[Tensor], lr: f64) -> tram::Result<()> {
        for (p, g) in params.iter().zip(grads) {
            p.var.set(&p.var.as_tensor().sub(&g.affine(lr, 0.0)?)?)?;
        }
        Ok(())
    }
    fn state(&self, _: &Params) -> tram::Result<Vec<(String, Tensor)>> {
        Err(tram::Error::Model("the state of `unreadable` cannot be read".into()))
    }
    fn load_state(&mut self, _: &Params, _: &tram::state::StateReader<'_>) -> tram::Result<()> {
        Ok(())
    }
}

#[test]
fn a_state_that_cannot_be_read_fails_the_save_and_the_step_instead_of_being_dropped() {
    let mut r = tram::Registry::empty();
    r.register(Entry::new(Kind::Base, "unreadable", "test", vec![], |_| Ok(Component::Base(Box::new(UnreadableState))))).unwrap();
    let m = model(3);
    let before = clone_model(&m);
    let mut opt = Optimizer::new(&r, OptimizerConfig::new("unreadable", 0.1)).unwrap();
    // The step needs the state for its rollback: it fails, and the parameters are untouched.
    let err = opt.step(&m, &batches(1, 1)).unwrap_err().to_string();
    assert!(err.contains("cannot be read"), "{err}");
    assert_bitwise_equal(&m, &before, "unreadable");
    let dir = tempfile::tempdir().unwrap();
    let err = opt.save_state(m.params(), &dir.path().join("opt.safetensors")).unwrap_err().to_string();
    assert!(err.contains("cannot be read"), "{err}");
    assert!(!dir.path().join("opt.safetensors").exists(), "nothing written");
}
