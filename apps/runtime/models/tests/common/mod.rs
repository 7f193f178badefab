//! Shared helpers of the tram-models integration tests: fixture loading and comparisons.
#![allow(dead_code)]

use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::PathBuf;
use tram_models::WeightMap;

/// `tests/fixtures/<name>`.
pub fn fixture_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join("fixtures").join(name)
}

/// A fixture's `config.json`, `model.safetensors` and `reference.safetensors`.
pub struct Fixture {
    pub config: serde_json::Value,
    pub weights: WeightMap,
    pub reference: HashMap<String, Tensor>,
}

pub fn fixture(name: &str) -> Fixture {
    let dir = fixture_dir(name);
    let config = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let weights = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    let reference = candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu).unwrap();
    Fixture { config, weights, reference }
}

impl Fixture {
    pub fn get(&self, name: &str) -> Tensor {
        self.reference.get(name).unwrap_or_else(|| panic!("reference has no `{name}`")).clone()
    }
    /// Integer reference tensors (int64 from PyTorch) as u32.
    pub fn ids(&self, name: &str) -> Tensor {
        self.get(name).to_dtype(DType::U32).unwrap()
    }
    /// The config with `key` set to `value`.
    pub fn config_with(&self, key: &str, value: serde_json::Value) -> serde_json::Value {
        let mut c = self.config.clone();
        c.as_object_mut().unwrap().insert(key.into(), value);
        c
    }
}

/// `(max |a − b|, max |b|)` over all elements, in f64.
pub fn diff(a: &Tensor, b: &Tensor) -> (f64, f64) {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let a = a.to_dtype(DType::F64).unwrap();
    let b = b.to_dtype(DType::F64).unwrap();
    let delta = a.sub(&b).unwrap();
    // A NaN anywhere is an infinite difference (`max_all` would skip it).
    let nan = delta.ne(&delta).unwrap().to_dtype(DType::F64).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap() > 0.0;
    let d = if nan { f64::INFINITY } else { delta.abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap() };
    let m = b.abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
    (d, m)
}

/// Max abs difference relative to the reference's max abs value.
pub fn rel_diff(ours: &Tensor, reference: &Tensor) -> f64 {
    let (d, m) = diff(ours, reference);
    d / m.max(1e-12)
}

/// Assert `ours ≈ reference` to `tol` relative (max abs diff / max abs reference) and print it.
pub fn assert_close(what: &str, ours: &Tensor, reference: &Tensor, tol: f64) {
    let (d, m) = diff(ours, reference);
    let rel = d / m.max(1e-12);
    println!("{what}: max abs diff {d:.3e}, max abs value {m:.3e}, relative {rel:.3e} (tolerance {tol:.0e})");
    assert!(rel <= tol, "{what}: relative max abs difference {rel:.3e} > {tol:.0e} (abs {d:.3e}, max {m:.3e})");
}
