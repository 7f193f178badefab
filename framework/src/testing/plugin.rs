//! Plugin checks: build a plugin crate's `cdylib` from a test, and compare the plugin loaded
//! at run time with the same crate linked statically.

use crate::compose::bind::OptimizerConfig;
use crate::compose::registry::Registry;
use crate::engine::Optimizer;
use crate::error::{Error, Result};
use crate::plugin::RegisterFn;
use crate::testing::model::{synthetic_batches, ClassifierShape, EmbeddingClassifier};
use crate::Model;
use candle_core::Device;
use std::path::{Path, PathBuf};

/// `cargo build --lib` of the crate in `manifest_dir` with the cargo running the test (`$CARGO`)
/// and `extra` arguments (`--release`, `--profile test`, `--features …`); returns the path of
/// the `cdylib` cargo reports. An error holds cargo's output when the build fails.
///
/// Call it from an integration test of the plugin crate itself
/// (`build_cdylib(Path::new(env!("CARGO_MANIFEST_DIR")), &[])`): `cargo test` does not build
/// the `cdylib`, so a library under `target/` may be stale; this builds the current one.
pub fn build_cdylib(manifest_dir: &Path, extra: &[&str]) -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = manifest_dir.join("Cargo.toml");
    let out = std::process::Command::new(&cargo)
        .current_dir(manifest_dir)
        .args(["build", "--lib", "--message-format=json-render-diagnostics", "--manifest-path"])
        .arg(&manifest)
        .args(extra)
        .output()
        .map_err(|e| Error::Model(format!("running {}: {e}", Path::new(&cargo).display())))?;
    if !out.status.success() {
        return Err(Error::Model(format!("cargo build of {} failed:\n{}", manifest.display(), String::from_utf8_lossy(&out.stderr))));
    }
    let manifest = manifest.canonicalize().unwrap_or(manifest);
    let ext = std::env::consts::DLL_EXTENSION;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| {
            m["reason"] == "compiler-artifact"
                && m["manifest_path"].as_str().is_some_and(|p| Path::new(p).canonicalize().ok().as_deref() == Some(manifest.as_path()))
                && m["target"]["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "cdylib"))
        })
        .flat_map(|m| m["filenames"].as_array().cloned().unwrap_or_default())
        .filter_map(|f| f.as_str().map(PathBuf::from))
        .find(|f| f.extension().is_some_and(|e| e == ext))
        .ok_or_else(|| {
            Error::Model(format!(
                "cargo built no .{ext} for {} (is `crate-type = [\"cdylib\", \"rlib\"]` in its [lib]?)",
                manifest.display()
            ))
        })
}

/// What [`static_equals_loaded`] compared.
#[derive(Clone, Debug, PartialEq)]
pub struct StaticVsLoaded {
    /// Steps trained with each registry.
    pub steps: usize,
    /// Parameter entries compared.
    pub values: usize,
    /// Largest difference found, relative (`|a − b| / max(|a|, 1)`; 0 when bitwise equal).
    pub max_difference: f64,
    /// Loss of the last step (statically linked).
    pub last_loss: f64,
}

/// Trains `config` for `steps` steps twice on the same [`EmbeddingClassifier`] and data: once
/// with `base` plus the plugin crate linked statically (`register`, the function its
/// `export_plugin!` exports), once with `base` plus its `cdylib` at `library` loaded at run
/// time. Every step's loss, penalty, δ and norms and the final parameters must agree within
/// `tolerance` (relative to `max(|value|, 1)`); an error names the first difference.
///
/// Use `tolerance = 0.0` (bitwise) when the plugin's components only see detached tensors
/// (a distance used as TRAM's radius, a neighborhood, a base optimizer), and about `1e-4` when
/// a gradient crosses the plugin boundary (a plugin distance in a penalty: it is
/// differentiated inside the plugin and re-attached by a first-order surrogate, which rounds
/// differently).
///
/// `base` holds the components the composition needs besides the plugin's (the built-ins:
/// `tram_plugins::registry()`).
pub fn static_equals_loaded(
    base: &Registry,
    register: RegisterFn,
    library: &Path,
    config: &OptimizerConfig,
    steps: usize,
    tolerance: f64,
) -> Result<StaticVsLoaded> {
    let mut linked = base.clone();
    register(&mut linked)?;
    let mut loaded = base.clone();
    loaded.load_plugin(library)?;
    let shape = ClassifierShape { vocab: 32, embed: 8, hidden: 16, layers: 1, classes: 4 };
    let data = synthetic_batches(shape, 2, 8, 6, 7, &Device::Cpu)?;
    type Run = (Vec<crate::StepReport>, Vec<(String, Vec<f32>)>);
    let run = |registry: &Registry| -> Result<Run> {
        let model = EmbeddingClassifier::random(shape, 1, &Device::Cpu)?;
        let mut opt = Optimizer::new(registry, config.clone())?;
        let reports = (0..steps).map(|s| opt.step(&model, std::slice::from_ref(&data[s % data.len()]))).collect::<Result<Vec<_>>>()?;
        let values = model
            .params()
            .iter()
            .map(|p| Ok((p.name.clone(), p.var.as_tensor().flatten_all()?.to_vec1::<f32>()?)))
            .collect::<Result<_>>()?;
        Ok((reports, values))
    };
    let (a_reports, a_values) = run(&linked)?;
    let (b_reports, b_values) = run(&loaded)?;
    let differ = |what: String| {
        Error::Model(format!(
            "`{}`: linked statically and loaded from {} differ beyond {tolerance:e}: {what}",
            config.name,
            library.display()
        ))
    };
    let mut max_difference = 0f64;
    let mut close = |a: f64, b: f64| {
        let d = if a.to_bits() == b.to_bits() { 0.0 } else { (a - b).abs() / a.abs().max(1.0) };
        max_difference = max_difference.max(if d.is_nan() { f64::INFINITY } else { d });
        d <= tolerance
    };
    for (s, (a, b)) in a_reports.iter().zip(&b_reports).enumerate() {
        let opt = |x: Option<f64>| x.unwrap_or(0.0);
        let same = a.skipped == b.skipped
            && a.penalty.is_some() == b.penalty.is_some()
            && a.delta.is_some() == b.delta.is_some()
            && close(a.loss, b.loss)
            && close(opt(a.penalty), opt(b.penalty))
            && close(opt(a.delta), opt(b.delta))
            && close(a.grad_norm, b.grad_norm)
            && close(a.epsilon_norm, b.epsilon_norm);
        if !same {
            return Err(differ(format!("step {s}: linked {a:?}, loaded {b:?}")));
        }
    }
    let mut values = 0;
    for ((name, a), (_, b)) in a_values.iter().zip(&b_values) {
        if let Some(i) = a.iter().zip(b).position(|(x, y)| !close(*x as f64, *y as f64)) {
            return Err(differ(format!("parameter `{name}` entry {i} after {steps} steps: linked {}, loaded {}", a[i], b[i])));
        }
        values += a.len();
    }
    Ok(StaticVsLoaded { steps, values, max_difference, last_loss: a_reports.last().map_or(f64::NAN, |r| r.loss) })
}
