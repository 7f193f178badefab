//! ε-sharpness: the closed form of a quadratic loss, every probe inside the box, zero for a
//! constant loss, parameters restored bitwise, determinism.

use candle_core::{DType, Device, Tensor, Var};
use std::cell::RefCell;
use tram::{Batch, Logits, Mode, Model, Params, Weights};
use tram_analysis::sharpness::{sharpness, SharpnessConfig};

/// Records every parameter vector the model was evaluated at (the probes).
#[derive(Default)]
struct Probes(RefCell<Vec<Vec<f64>>>);

impl Probes {
    fn record(&self, w: &dyn Weights, names: &[&str]) -> tram::Result<()> {
        let mut v = Vec::new();
        for n in names {
            v.extend(w.weight(n)?.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?);
        }
        self.0.borrow_mut().push(v);
        Ok(())
    }
}

/// L(θ) = ½ Σ a_i θ_i² + b·θ (+ c), whatever the batch (one prediction row per batch).
struct Quadratic {
    params: Params,
    a: Tensor,
    b: Tensor,
    c: f64,
    probes: Probes,
}

impl Quadratic {
    fn new(theta: &[f64], a: &[f64], b: &[f64], c: f64) -> Self {
        let dev = Device::Cpu;
        let t = |v: &[f64]| Tensor::from_slice(v, v.len(), &dev).unwrap();
        Self {
            params: Params::new([("theta".to_string(), Var::from_tensor(&t(theta)).unwrap())]).unwrap(),
            a: t(a),
            b: t(b),
            c,
            probes: Probes::default(),
        }
    }
    fn value(&self, theta: &[f64]) -> f64 {
        let a = self.a.to_vec1::<f64>().unwrap();
        let b = self.b.to_vec1::<f64>().unwrap();
        theta.iter().zip(&a).zip(&b).map(|((t, a), b)| 0.5 * a * t * t + b * t).sum::<f64>() + self.c
    }
}

impl Model for Quadratic {
    fn params(&self) -> &Params {
        &self.params
    }
    fn embed(&self, _w: &dyn Weights, b: &Batch, _m: Mode) -> tram::Result<Tensor> {
        Ok(b.inputs.clone())
    }
    fn forward_embeds(&self, w: &dyn Weights, _x: &Tensor, _b: &Batch, _m: Mode) -> tram::Result<Logits> {
        self.probes.record(w, &["theta"])?;
        let t = w.weight("theta")?;
        let l = ((t.sqr()? * &self.a)?.affine(0.5, 0.0)? + (&t * &self.b)?)?.sum_all()?.affine(1.0, self.c)?;
        Ok(Logits { logits: l.reshape((1, 1))?, targets: Tensor::zeros(1, DType::U32, t.device())? })
    }
    fn loss(&self, logits: &Logits) -> tram::Result<Tensor> {
        Ok(logits.logits.sum_all()?)
    }
}

fn dummy_batches(k: usize) -> Vec<Batch> {
    (0..k)
        .map(|_| Batch::new(Tensor::zeros((1, 1), DType::F32, &Device::Cpu).unwrap(), Tensor::zeros(1, DType::U32, &Device::Cpu).unwrap()))
        .collect()
}

fn inside_box(theta0: &[f64], probe: &[f64], eps: f64, tol: f64) -> bool {
    theta0.iter().zip(probe).all(|(t, p)| (p - t).abs() <= eps * (t.abs() + 1.0) * (1.0 + tol) + tol)
}

#[test]
fn quadratic_loss_matches_the_closed_form_corner() {
    // Convex coordinates (a > 0, a = 0) go to the corner sign(a θ + b) · ε(|θ| + 1);
    // concave ones (a < 0) to their interior maximiser θ + d (inside the box).
    let theta = [0.5, -1.2, 2.0, 0.3, -0.7, 0.1, 1.5];
    let a = [2.0, 1.0, 0.5, 0.0, 3.0, -1.0, -2.0];
    let d = [0.0, 0.0, 0.0, 0.0, 0.0, 0.02, -0.05];
    let mut b = [0.3, 0.4, -1.5, -0.8, 2.5, 0.0, 0.0];
    for i in 5..7 {
        b[i] = -a[i] * (theta[i] + d[i]); // ∂/∂θ = a(θ − θ* ) with θ* = θ + d
    }
    let eps = 0.1;
    let model = Quadratic::new(&theta, &a, &b, 1.0);
    let mut best = theta;
    for i in 0..theta.len() {
        let r = eps * (theta[i].abs() + 1.0);
        best[i] = if a[i] < 0.0 {
            theta[i] + d[i].clamp(-r, r)
        } else {
            let g = a[i] * theta[i] + b[i];
            theta[i] + r * g.signum()
        };
    }
    let l0 = model.value(&theta);
    let lmax = model.value(&best);
    let want = 100.0 * (lmax - l0) / (1.0 + l0);
    assert!(want > 0.0);

    let cfg = SharpnessConfig { epsilon: eps, steps: 60, lr: 0.25, batch_size: 1, accumulation: 2, eval_every: 0 };
    let s = sharpness(&model, &dummy_batches(3), &cfg).unwrap();
    assert!((s.loss - l0).abs() < 1e-12, "{} vs {l0}", s.loss);
    assert!((s.max_loss - lmax).abs() < 1e-10, "max loss {} vs closed form {lmax}", s.max_loss);
    assert!((s.sharpness - want).abs() < 1e-8, "φ {} vs closed form {want}", s.sharpness);
    assert_eq!(s.rows, 3);
    assert_eq!(s.probe_losses.len(), 1);

    // Few steps cannot reach the corner: a lower bound, still in the box.
    let short = sharpness(&model, &dummy_batches(3), &SharpnessConfig { steps: 1, lr: 0.01, ..cfg.clone() }).unwrap();
    assert!(short.sharpness > 0.0 && short.sharpness < want, "{} vs {want}", short.sharpness);

    // Every probe of both searches stayed inside the box.
    let probes = model.probes.0.borrow();
    assert!(probes.len() > 60);
    for p in probes.iter() {
        assert!(inside_box(&theta, p, eps, 1e-12), "probe {p:?} leaves the box around {theta:?}");
    }
}

#[test]
fn paper_default_box_and_many_probes() {
    // ε = 1e-3 (the paper's), evaluation every step: the max over probes is monotone here.
    let theta: Vec<f64> = (0..50).map(|i| ((i * 37 % 17) as f64 - 8.0) / 3.0).collect();
    let a: Vec<f64> = (0..50).map(|i| (i % 5) as f64 * 0.7).collect();
    // No coordinate starts at a critical point (a θ + b = 0), where ascent cannot move.
    let b: Vec<f64> = (0..50).map(|i| ((i * 11 % 7) as f64 - 3.0) / 2.0 + 0.1).collect();
    assert!((0..50).all(|i| (a[i] * theta[i] + b[i]).abs() > 1e-3));
    let model = Quadratic::new(&theta, &a, &b, 40.0);
    let cfg = SharpnessConfig { steps: 30, lr: 1e-2, eval_every: 1, ..SharpnessConfig::default() };
    let s = sharpness(&model, &dummy_batches(5), &cfg).unwrap();
    assert_eq!(s.probe_losses.len(), 30);
    let corner: Vec<f64> = (0..50).map(|i| theta[i] + 1e-3 * (theta[i].abs() + 1.0) * (a[i] * theta[i] + b[i]).signum()).collect();
    let want = 100.0 * (model.value(&corner) - s.loss) / (1.0 + s.loss);
    assert!((s.sharpness - want).abs() < 1e-9, "{} vs {want}", s.sharpness);
    assert_eq!(s.max_loss, s.probe_losses.iter().cloned().fold(s.loss, f64::max));
    for p in model.probes.0.borrow().iter() {
        assert!(inside_box(&theta, p, 1e-3, 1e-12));
    }
}

/// A loss that does not change with the parameters: connected to them (zero gradient) or not.
struct Constant {
    params: Params,
    connected: bool,
}

impl Model for Constant {
    fn params(&self) -> &Params {
        &self.params
    }
    fn embed(&self, _w: &dyn Weights, b: &Batch, _m: Mode) -> tram::Result<Tensor> {
        Ok(b.inputs.clone())
    }
    fn forward_embeds(&self, w: &dyn Weights, x: &Tensor, b: &Batch, _m: Mode) -> tram::Result<Logits> {
        let rows = x.dim(0)?;
        let mut logits = Tensor::full(0.25f32, (rows, 3), x.device())?;
        if self.connected {
            logits = logits.broadcast_add(&w.weight("w")?.sum_all()?.affine(0.0, 0.0)?)?;
        }
        Ok(Logits { logits, targets: b.targets.clone() })
    }
}

#[test]
fn constant_loss_has_zero_sharpness() {
    for connected in [true, false] {
        let w = Var::from_tensor(&Tensor::new(&[1.0f32, -2.0, 3.0], &Device::Cpu).unwrap()).unwrap();
        let model = Constant { params: Params::new([("w".to_string(), w)]).unwrap(), connected };
        let batches: Vec<Batch> = (0..4u32)
            .map(|i| {
                Batch::new(
                    Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap(),
                    Tensor::new(&[i % 3, (i + 1) % 3], &Device::Cpu).unwrap(),
                )
            })
            .collect();
        let s = sharpness(&model, &batches, &SharpnessConfig { steps: 5, lr: 10.0, eval_every: 1, ..SharpnessConfig::default() }).unwrap();
        assert_eq!(s.sharpness, 0.0, "connected = {connected}");
        assert_eq!(s.max_loss, s.loss);
        assert!((s.loss - 3f64.ln()).abs() < 1e-6, "uniform logits: ln 3, got {}", s.loss);
        assert_eq!(s.rows, 8);
    }
}

/// A small classifier with a non-convex loss.
struct Mlp {
    params: Params,
    probes: Probes,
}

const MLP: [&str; 4] = ["h.weight", "h.bias", "o.weight", "o.bias"];

impl Mlp {
    fn new(dtype: DType) -> Self {
        let dev = Device::Cpu;
        let var = |shape: (usize, usize), seed: u64| {
            let n = shape.0 * shape.1;
            let v: Vec<f32> = (0..n).map(|i| (((i as u64 * 2654435761 + seed) % 1000) as f32 / 500.0 - 1.0) * 0.6).collect();
            Var::from_tensor(&Tensor::from_vec(v, shape, &dev).unwrap().to_dtype(dtype).unwrap()).unwrap()
        };
        let params = Params::new([
            ("h.weight".to_string(), var((16, 6), 1)),
            ("h.bias".to_string(), Var::from_tensor(&var((1, 16), 2).as_tensor().flatten_all().unwrap()).unwrap()),
            ("o.weight".to_string(), var((3, 16), 3)),
            ("o.bias".to_string(), Var::from_tensor(&var((1, 3), 4).as_tensor().flatten_all().unwrap()).unwrap()),
        ])
        .unwrap();
        Self { params, probes: Probes::default() }
    }
}

impl Model for Mlp {
    fn params(&self) -> &Params {
        &self.params
    }
    fn embed(&self, _w: &dyn Weights, b: &Batch, _m: Mode) -> tram::Result<Tensor> {
        Ok(b.inputs.clone())
    }
    fn forward_embeds(&self, w: &dyn Weights, x: &Tensor, b: &Batch, _m: Mode) -> tram::Result<Logits> {
        self.probes.record(w, &MLP)?;
        let x = x.to_dtype(w.weight("h.weight")?.dtype())?;
        let h = x.matmul(&w.weight("h.weight")?.t()?)?.broadcast_add(&w.weight("h.bias")?)?.tanh()?;
        let logits = h.matmul(&w.weight("o.weight")?.t()?)?.broadcast_add(&w.weight("o.bias")?)?;
        Ok(Logits { logits: logits.to_dtype(DType::F32)?, targets: b.targets.clone() })
    }
}

fn mlp_batches() -> Vec<Batch> {
    (0..5u64)
        .map(|k| {
            let v: Vec<f32> = (0..8 * 6).map(|i| ((((i as u64 + 7 * k) * 2246822519) % 997) as f32 / 498.5 - 1.0) * 2.0).collect();
            let t: Vec<u32> = (0..8).map(|i| ((i as u64 * 5 + k) % 3) as u32).collect();
            Batch::new(Tensor::from_vec(v, (8, 6), &Device::Cpu).unwrap(), Tensor::new(t.as_slice(), &Device::Cpu).unwrap())
        })
        .collect()
}

/// The exact bits of every parameter (bf16 → f32 is exact).
fn bits(p: &Params) -> Vec<Vec<u32>> {
    p.iter()
        .map(|p| {
            p.var
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|x| x.to_bits())
                .collect()
        })
        .collect()
}

#[test]
fn probes_stay_in_the_box_and_parameters_are_restored_bitwise() {
    for (dtype, tol) in [(DType::F32, 1e-6), (DType::BF16, 1e-2)] {
        let model = Mlp::new(dtype);
        let before = bits(&model.params);
        let theta0 = model.probes.record(&model.params.detached(), &MLP).map(|_| model.probes.0.borrow_mut().pop().unwrap()).unwrap();
        let batches = mlp_batches();
        let eps = 1e-2;
        let cfg = SharpnessConfig { epsilon: eps, steps: 12, lr: 0.5, batch_size: 8, accumulation: 4, eval_every: 3 };
        let s = sharpness(&model, &batches, &cfg).unwrap();
        assert_eq!(bits(&model.params), before, "{dtype:?}: parameters not restored bitwise");
        assert!(s.sharpness > 0.0, "{dtype:?}: the ascent raised the loss: {s:?}");
        assert!(s.max_loss >= s.loss);
        assert_eq!(s.probe_losses.len(), 4);
        assert_eq!(s.rows, 40);
        let probes = model.probes.0.borrow();
        // 5 batches at θ, 12 × 4 gradient passes, 4 evaluations of 5 batches.
        assert_eq!(probes.len(), 5 + 48 + 20);
        let mut moved = 0;
        for p in probes.iter() {
            assert!(inside_box(&theta0, p, eps, tol), "{dtype:?}: a probe leaves the box");
            moved += usize::from(p != &theta0);
        }
        assert!(moved > 0);
        drop(probes);
        // Deterministic, and measured from the restored parameters.
        let again = sharpness(&model, &batches, &cfg).unwrap();
        assert_eq!(again, s);
        assert_eq!(bits(&model.params), before);
    }
}

/// Fails on its `fail_at`-th forward pass.
struct Failing {
    inner: Mlp,
    calls: RefCell<usize>,
    fail_at: usize,
}

impl Model for Failing {
    fn params(&self) -> &Params {
        self.inner.params()
    }
    fn embed(&self, w: &dyn Weights, b: &Batch, m: Mode) -> tram::Result<Tensor> {
        self.inner.embed(w, b, m)
    }
    fn forward_embeds(&self, w: &dyn Weights, x: &Tensor, b: &Batch, m: Mode) -> tram::Result<Logits> {
        *self.calls.borrow_mut() += 1;
        if *self.calls.borrow() == self.fail_at {
            return Err(tram::Error::Model("injected failure".into()));
        }
        self.inner.forward_embeds(w, x, b, m)
    }
}

#[test]
fn parameters_are_restored_when_the_measurement_fails() {
    let model = Failing { inner: Mlp::new(DType::F32), calls: RefCell::new(0), fail_at: 5 + 9 };
    let before = bits(model.params());
    let cfg = SharpnessConfig { epsilon: 0.05, steps: 10, lr: 1.0, accumulation: 2, ..SharpnessConfig::default() };
    let err = sharpness(&model, &mlp_batches(), &cfg).unwrap_err();
    assert!(err.to_string().contains("injected failure"), "{err}");
    assert_eq!(bits(model.params()), before);
}

#[test]
fn bad_settings_and_inputs_are_errors() {
    let model = Mlp::new(DType::F32);
    let b = mlp_batches();
    for cfg in [
        SharpnessConfig { epsilon: -1.0, ..SharpnessConfig::default() },
        SharpnessConfig { lr: f64::NAN, ..SharpnessConfig::default() },
        SharpnessConfig { accumulation: 0, ..SharpnessConfig::default() },
        SharpnessConfig { batch_size: 0, ..SharpnessConfig::default() },
    ] {
        assert!(sharpness(&model, &b, &cfg).is_err(), "{cfg:?}");
    }
    assert!(sharpness(&model, &[], &SharpnessConfig::default()).is_err());
    // Zero steps: L(θ) only, φ = 0.
    let s = sharpness(&model, &b, &SharpnessConfig { steps: 0, ..SharpnessConfig::default() }).unwrap();
    assert_eq!(s.sharpness, 0.0);
    assert!(s.probe_losses.is_empty());
}
