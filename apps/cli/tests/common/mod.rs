//! What the data-parallel tests (`mpi.rs` under Open MPI, `threads.rs` in one process) share:
//! the quickstart config with pinned learning rates, the `tram lm` arguments, and the distance
//! of two runs' final weights.
#![allow(dead_code)]

use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The compositions the issue names.
pub const METHODS: &str = "adam,sam,tram-prev,tram-noise,tram-fisher,r3f";

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// The quickstart config with every row's learning rate pinned to 3e-4 (model and data
/// paths made absolute), written once per test process. The rows' swept rates (up to 3e-3)
/// would make the comparison depend on the sweep: the key half of `c_attn.bias` has an
/// analytically zero gradient, so Adam turns its rounding noise — which differs between a
/// sum over 4 rows and two sums over 2 — into steps of about lr/100, and the W=2 vs W=1
/// difference scales with the learning rate (2.1e-5 of max |θ| at 3e-3, 2.5e-6 at 3e-4).
pub fn config() -> PathBuf {
    static CONFIG: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let text = std::fs::read_to_string(repo().join("configs/quickstart/finetune.toml")).unwrap();
            let mut out = String::new();
            for line in text.lines() {
                let line = if line.starts_with("model = ") {
                    format!("model = {:?}", repo().join("models/quickstart").display().to_string())
                } else if line.starts_with("data = ") {
                    format!("data = {:?}", repo().join("data/quickstart").display().to_string())
                } else if let (true, Some(i)) = (line.starts_with("optimizer = {"), line.find(" lr = ")) {
                    let start = i + " lr = ".len();
                    let end = line[start..].find([',', ' ', '}']).map_or(line.len(), |e| start + e);
                    format!("{}3e-4{}", &line[..start], &line[end..])
                } else {
                    line.to_string()
                };
                out.push_str(&line);
                out.push('\n');
            }
            assert!(out.matches("lr = 3e-4").count() >= 9, "the quickstart rows no longer set `lr = ` inline:\n{out}");
            let dir = std::env::temp_dir().join(format!("tram-dp-test-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("finetune.toml");
            std::fs::write(&path, out).unwrap();
            path
        })
        .clone()
}

/// `tram lm` on the quickstart config (learning rates pinned, [`config`]): seed 0, `steps`
/// steps of a global micro-batch of 4 blocks, the last parameters selected, two validation
/// blocks, no other domain.
pub fn args(out: &Path, methods: &str, steps: u64, extra: &[&str]) -> Vec<String> {
    let config = config();
    let mut a: Vec<String> = ["lm", "-c", config.to_str().unwrap(), "--run", methods].iter().map(|s| s.to_string()).collect();
    for set in [
        format!("out={}", out.display()),
        // Seed 0 only: the comparisons are of seed 0 (the config's three seeds tripled the time).
        "seeds=[0]".into(),
        format!("train.steps={steps}"),
        "train.batch_size=4".into(),
        "train.eval_every=0".into(),
        "train.select=\"last\"".into(),
        "train.progress=false".into(),
        "lm.max_eval_blocks=2".into(),
        "lm.test_domains=[]".into(),
    ] {
        a.push("--set".into());
        a.push(set);
    }
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

pub fn weights(dir: &Path, method: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir.join(method).join("seed-0/model/model.safetensors"), &Device::Cpu).unwrap()
}

/// Largest |a − b| over every weight, relative to the largest |a| of the model, and the
/// relative distance ‖a − b‖ / ‖a‖ of all weights together.
pub fn distance(a: &HashMap<String, Tensor>, b: &HashMap<String, Tensor>) -> (f64, f64, String) {
    let (mut max_diff, mut max_abs, mut sq_diff, mut sq, mut worst) = (0f64, 0f64, 0f64, 0f64, String::new());
    assert_eq!(a.len(), b.len());
    for (k, x) in a {
        let x: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        let y: Vec<f32> = b[k].flatten_all().unwrap().to_vec1().unwrap();
        for (x, y) in x.iter().zip(&y) {
            let d = (*x as f64 - *y as f64).abs();
            // A NaN is an infinite difference (`d > max_diff` alone would skip it).
            let d = if d.is_nan() { f64::INFINITY } else { d };
            if d > max_diff {
                (max_diff, worst) = (d, k.clone());
            }
            max_abs = max_abs.max((*x as f64).abs());
            sq_diff += d * d;
            sq += (*x as f64).powi(2);
        }
    }
    (max_diff / max_abs, (sq_diff / sq).sqrt(), worst)
}

pub fn assert_close(a: &Path, b: &Path, methods: &str, what: &str) {
    for m in methods.split(',') {
        let (wa, wb) = (weights(a, m), weights(b, m));
        let start = weights_of_start();
        let (moved, _, _) = distance(&start, &wa);
        assert!(moved > 1e-6, "{what}: `{m}` did not train (distance from the start {moved:e})");
        let (max_rel, norm_rel, worst) = distance(&wa, &wb);
        eprintln!("{what}: {m}: max |Δ| / max |θ| = {max_rel:.2e} (at {worst}), ‖Δ‖/‖θ‖ = {norm_rel:.2e}");
        assert!(max_rel <= 1e-5 && norm_rel <= 1e-5, "{what}: `{m}` differs: max {max_rel:e} (at {worst}), norm {norm_rel:e}");
    }
}

pub fn weights_of_start() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(repo().join("models/quickstart/model.safetensors"), &Device::Cpu).unwrap()
}
