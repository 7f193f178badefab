//! Shared helpers for the integration tests.
#![allow(dead_code)]

use candle_core::{Device, Tensor};
use std::collections::HashMap;
use tram::{Batch, Model, Optimizer, OptimizerConfig};
use tram_tests::{synthetic_batches, ClassifierShape, EmbeddingClassifier};

pub const SHAPE: ClassifierShape = ClassifierShape { vocab: 32, embed: 8, hidden: 16, layers: 1, classes: 4 };

pub fn model(seed: u64) -> EmbeddingClassifier {
    EmbeddingClassifier::random(SHAPE, seed, &Device::Cpu).unwrap()
}

pub fn clone_model(m: &EmbeddingClassifier) -> EmbeddingClassifier {
    let t: HashMap<String, Tensor> = m.params().iter().map(|p| (p.name.clone(), p.var.as_tensor().copy().unwrap())).collect();
    EmbeddingClassifier::from_tensors(&t, SHAPE.layers).unwrap()
}

pub fn batches(n: usize, seed: u64) -> Vec<Batch> {
    synthetic_batches(SHAPE, n, 16, 6, seed, &Device::Cpu).unwrap()
}

pub fn lr_for(composition: &str) -> f64 {
    if composition.ends_with("sgd") {
        0.1
    } else {
        0.01
    }
}

pub fn optimizer(composition: &str) -> Optimizer {
    let cfg = OptimizerConfig::new(composition, lr_for(composition)).with("noise", "sigma", 1e-3);
    Optimizer::new(&tram_plugins::registry().unwrap(), cfg).unwrap_or_else(|e| panic!("{composition}: {e}"))
}

/// Bitwise equality of every parameter of two models.
pub fn assert_bitwise_equal(a: &dyn Model, b: &dyn Model, what: &str) {
    for (pa, pb) in a.params().iter().zip(b.params().iter()) {
        let va = pa.var.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let vb = pb.var.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let same = va.iter().zip(&vb).all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same, "{what}: parameter {} differs", pa.name);
    }
}

/// Largest |a − b| over every parameter of two models; a NaN difference is infinite (`max`
/// alone would skip it).
pub fn max_abs_diff(a: &dyn Model, b: &dyn Model) -> f32 {
    let mut m = 0f32;
    for (pa, pb) in a.params().iter().zip(b.params().iter()) {
        let d = pa.var.as_tensor().sub(pb.var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        m = d.iter().fold(m, |m, e| m.max(if e.is_nan() { f32::INFINITY } else { e.abs() }));
    }
    m
}

/// Every alias plus the other paper rows and options expressed as compositions.
pub fn all_compositions() -> Vec<String> {
    let r = tram_plugins::registry().unwrap();
    let mut v: Vec<String> = r.aliases().map(|a| a.name.clone()).collect();
    v.extend(
        [
            "sam+sgd",
            "asam+sgd",
            "tram-noise+sgd",
            "tram-fisher+sgd",
            "noise(distance=kl-reverse)+ball+adam",
            "noise(distance=kl-sym)+ball+adam",
            "pretrained(reduction=reference,scale=100)+ball+adam",
            "noise+ball(ascent=reference)+adam",
            "ball(adaptive=true,eta=0.01,weights_only=true)+sgd",
            "reg:ema(temperature=5,lambda=0.8)+adam",
            "reg:prev+reg:noise+ball+adamw",
        ]
        .map(String::from),
    );
    v
}
