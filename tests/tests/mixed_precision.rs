//! Mixed precision: a bf16 model is trained on f32 master weights. The optimizer state, the
//! trust regions' snapshots, ε and the norms are f32; the second pass of a two-pass step runs at
//! bf16(θ + ε) and the restore is exact; a bf16 run tracks the f32 run's loss curve; a bf16
//! checkpoint resumes bitwise; a checkpoint of the other dtype is a clear error.

mod common;
use candle_core::{DType, Tensor};
use common::*;
use std::sync::{Arc, Mutex};
use tram::components::state::StateReader;
use tram::{BaseOptimizer, Component, Entry, Kind, Model, Optimizer, OptimizerConfig, Params};
use tram_tests::EmbeddingClassifier;

/// bf16 model `seed` and the f32 model with exactly its (bf16-representable) weights.
fn pair(seed: u64) -> (EmbeddingClassifier, EmbeddingClassifier) {
    let bf16 = model(seed).to_dtype(DType::BF16).unwrap();
    let f32 = bf16.to_dtype(DType::F32).unwrap();
    (bf16, f32)
}

/// Every value's bits, parameter by parameter (any dtype).
fn bits(params: &Params) -> Vec<(String, DType, Vec<u32>)> {
    params
        .iter()
        .map(|p| {
            let t = p.var.as_tensor().flatten_all().unwrap();
            // bf16 → f32 is exact, so the f32 bits are the bf16 bits (shifted).
            let b = t.to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap().iter().map(|x| x.to_bits()).collect();
            (p.name.clone(), t.dtype(), b)
        })
        .collect()
}

/// The bf16 bits of f32 masters rounded to nearest.
fn rounded_bits(masters: &Params) -> Vec<Vec<u32>> {
    masters
        .iter()
        .map(|p| {
            let t = p.var.as_tensor().to_dtype(DType::BF16).unwrap().to_dtype(DType::F32).unwrap().flatten_all().unwrap();
            t.to_vec1::<f32>().unwrap().iter().map(|x| x.to_bits()).collect()
        })
        .collect()
}

/// The dtype of every tensor in an optimizer checkpoint, by key.
fn state_dtypes(opt: &Optimizer, params: &Params) -> Vec<(String, DType)> {
    let bytes = opt.state_bytes(params).unwrap();
    let map = candle_core::safetensors::load_buffer(&bytes, &candle_core::Device::Cpu).unwrap();
    let mut v: Vec<(String, DType)> = map.into_iter().map(|(k, t)| (k, t.dtype())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// What the recording base optimizer saw in `update`: the parameters' dtypes and bits, the
/// gradients' dtypes.
type Seen = Arc<Mutex<Vec<(Vec<(String, DType, Vec<u32>)>, Vec<DType>)>>>;

/// A base optimizer that records what it is handed and changes nothing.
struct Record(Seen);

impl BaseOptimizer for Record {
    fn name(&self) -> &str {
        "record"
    }
    fn update(&mut self, params: &Params, grads: &[Tensor], _lr: f64) -> tram::Result<()> {
        self.0.lock().unwrap().push((bits(params), grads.iter().map(Tensor::dtype).collect()));
        Ok(())
    }
    fn state(&self, _params: &Params) -> tram::Result<Vec<(String, Tensor)>> {
        Ok(Vec::new())
    }
    fn load_state(&mut self, _params: &Params, _state: &StateReader<'_>) -> tram::Result<()> {
        Ok(())
    }
}

#[test]
fn a_bf16_runs_masters_and_optimizer_state_are_f32_and_match_its_weights() {
    for c in ["adam", "tram-prev", "tram-noise", "mesa", "asam"] {
        let (m, _) = pair(31);
        let mut opt = optimizer(c);
        assert!(opt.master_params().is_none(), "{c}: no masters before the first step");
        for b in &batches(3, 32) {
            let rep = opt.step(&m, std::slice::from_ref(b)).unwrap();
            assert!(!rep.skipped, "{c}: {rep:?}");
        }
        let masters = opt.master_params().expect("a bf16 model has masters");
        assert!(masters.iter().all(|p| p.var.dtype() == DType::F32), "{c}");
        // The model's weights are its masters rounded to nearest, bitwise.
        let live: Vec<Vec<u32>> =
            bits(m.params()).into_iter().map(|(_, d, b)| if d == DType::BF16 { b } else { panic!("{c}: {d:?}") }).collect();
        assert_eq!(live, rounded_bits(masters), "{c}");
        // The masters moved in f32: they are not all bf16-representable any more.
        assert!(bits(masters).iter().any(|(_, _, b)| b.iter().any(|x| x & 0xffff != 0)), "{c}: masters still on the bf16 grid");
        // Every state tensor is f32 (the step counters i64), masters included.
        let dtypes = state_dtypes(&opt, m.params());
        assert!(dtypes.iter().filter(|(k, _)| k.starts_with("masters/")).count() == m.params().len(), "{c}: {dtypes:?}");
        for (k, d) in &dtypes {
            let want = if k.starts_with("engine/") || k.ends_with("/step") || k.ends_with("/t") { *d } else { DType::F32 };
            assert_eq!(*d, want, "{c}: `{k}` is {d:?}");
        }
        assert!(dtypes.iter().any(|(k, _)| k.starts_with("base/")), "{c}: {dtypes:?}");
    }
    // An f32 model has no masters and no `masters/` entries.
    let (_, f) = pair(31);
    let mut opt = optimizer("tram-prev");
    opt.step(&f, &batches(1, 32)).unwrap();
    assert!(opt.master_params().is_none());
    assert!(state_dtypes(&opt, f.params()).iter().all(|(k, _)| !k.starts_with("masters/")));
}

#[test]
fn a_two_pass_step_hands_the_base_the_f32_masters_restored_bitwise_and_f32_gradients() {
    let seen: Seen = Arc::default();
    let mut r = tram_plugins::registry().unwrap();
    let s = seen.clone();
    r.register(Entry::new(Kind::Base, "record", "records its inputs", vec![], move |_| Ok(Component::Base(Box::new(Record(s.clone()))))))
        .unwrap();
    // (Regions whose target is a parameter snapshot would see θ_t = θ_{t-1} = θ₀ here, as
    // `record` does not move the weights: δ = 0 and no ascent.)
    for c in ["noise+ball+record", "ball+record", "ball(adaptive=true)+record", "fisher+record"] {
        seen.lock().unwrap().clear();
        let (m, _) = pair(41);
        let mut opt = Optimizer::new(&r, OptimizerConfig::new(c, 0.1).with("noise", "sigma", 1e-3)).unwrap();
        let data = batches(3, 42);
        // A first step makes the masters; `record` changes nothing, so they stay θ₀.
        opt.step(&m, std::slice::from_ref(&data[0])).unwrap();
        let before_live = bits(m.params());
        let before_masters = bits(opt.master_params().unwrap());
        for b in &data[1..] {
            let rep = opt.step(&m, std::slice::from_ref(b)).unwrap();
            assert!(rep.ascent && rep.epsilon_norm > 0.0 && !rep.skipped, "{c}: {rep:?}");
        }
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 3, "{c}");
        for (params, grads) in seen.iter() {
            // The base saw the f32 masters, bitwise as before the second pass at θ + ε.
            assert_eq!(params, &before_masters, "{c}: the masters were not restored bitwise");
            assert!(params.iter().all(|(_, d, _)| *d == DType::F32), "{c}");
            assert!(grads.iter().all(|d| *d == DType::F32), "{c}: {grads:?}");
        }
        // The model's bf16 weights are back to what they were, bitwise.
        assert_eq!(bits(m.params()), before_live, "{c}");
        assert_eq!(bits(opt.master_params().unwrap()), before_masters, "{c}");
    }
}

#[test]
fn a_bf16_run_tracks_the_f32_runs_loss_curve() {
    // Tolerance, from bf16's unit roundoff u = 2^-8 (8 significant bits, round to nearest):
    // on this model's path from the weights to the logits a value is rounded to bf16 at most 8
    // times (the weights, the mean-pooled embedding, each layer's matmul, bias add and tanh),
    // each time with a relative error ≤ u. To first order the logits, and the cross-entropy
    // computed from them in f32, are then off by at most 8u relative; the trajectories of
    // the f32 masters differ only through these errors in the gradients, which is of the same
    // order over a short run. Tolerance: |L_bf16 − L_f32| ≤ 8u · L_f32 (3.1%), every step.
    let u = 2f64.powi(-8);
    let data = batches(20, 52);
    for c in ["adam", "tram-prev", "tram-noise", "sam+sgd"] {
        let (b, f) = pair(51);
        let (mut ob, mut of) = (optimizer(c), optimizer(c));
        let mut worst = 0f64;
        let (mut first, mut last) = (0.0, 0.0);
        for (i, batch) in data.iter().enumerate() {
            let rb = ob.step(&b, std::slice::from_ref(batch)).unwrap();
            let rf = of.step(&f, std::slice::from_ref(batch)).unwrap();
            let rel = (rb.loss - rf.loss).abs() / rf.loss;
            worst = worst.max(rel);
            assert!(rel <= 8.0 * u, "{c} step {i}: bf16 loss {} vs f32 {} ({rel:.2e} relative > 8·2^-8)", rb.loss, rf.loss);
            if i == 0 {
                first = rf.loss;
            }
            last = rf.loss;
        }
        assert!(last < first, "{c}: the f32 run did not learn ({first} -> {last})");
        println!("{c}: worst relative loss difference over {} steps: {worst:.2e} (tolerance {:.2e})", data.len(), 8.0 * u);
    }
}

#[test]
fn a_bf16_checkpoint_resumes_bitwise_like_an_uninterrupted_bf16_run() {
    let dir = tempfile::tempdir().unwrap();
    let data = batches(6, 61);
    for c in ["adam", "tram-prev", "tram-pretrained", "tram-noise", "tram-fisher", "mesa", "asam+r3f"] {
        let (straight, _) = pair(60);
        let mut o = optimizer(c);
        for b in &data {
            o.step(&straight, std::slice::from_ref(b)).unwrap();
        }
        let (first, _) = pair(60);
        let mut o1 = optimizer(c);
        for b in &data[..3] {
            o1.step(&first, std::slice::from_ref(b)).unwrap();
        }
        let path = dir.path().join(format!("{c}.safetensors"));
        o1.save_state(first.params(), &path).unwrap();
        // A fresh process: the model from its saved (bf16) weights, a new optimizer.
        let resumed = first.to_dtype(DType::BF16).unwrap();
        drop((first, o1));
        let mut o2 = optimizer(c);
        o2.load_state(resumed.params(), &path).unwrap();
        for b in &data[3..] {
            o2.step(&resumed, std::slice::from_ref(b)).unwrap();
        }
        assert_eq!(bits(resumed.params()), bits(straight.params()), "{c}: model weights");
        assert_eq!(bits(o2.master_params().unwrap()), bits(o.master_params().unwrap()), "{c}: masters");
        assert_eq!(o2.state_bytes(resumed.params()).unwrap(), o.state_bytes(straight.params()).unwrap(), "{c}: optimizer state");
    }
}

#[test]
fn a_checkpoint_of_the_other_dtype_is_refused_naming_the_dtype_to_resume_with() {
    let dir = tempfile::tempdir().unwrap();
    let (b, f) = pair(70);
    let data = batches(1, 71);
    let (mut ob, mut of) = (optimizer("tram-prev"), optimizer("tram-prev"));
    ob.step(&b, &data).unwrap();
    of.step(&f, &data).unwrap();
    let (pb, pf) = (dir.path().join("bf16.safetensors"), dir.path().join("f32.safetensors"));
    ob.save_state(b.params(), &pb).unwrap();
    of.save_state(f.params(), &pf).unwrap();
    let (b2, f2) = pair(70);
    let e = optimizer("tram-prev").load_state(b2.params(), &pf).unwrap_err().to_string();
    assert!(e.contains("no f32 master weights") && e.contains("`emb.weight` is bf16") && e.contains("dtype = \"f32\""), "{e}");
    let e = optimizer("tram-prev").load_state(f2.params(), &pb).unwrap_err().to_string();
    assert!(e.contains("master weights of a bf16 run") && e.contains("dtype = \"bf16\""), "{e}");
}
