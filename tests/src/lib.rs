//! Test support for the workspace: the small embedding-input classifier of `tram::testing`
//! (the model of the PyTorch golden fixtures and the conformance tests, re-exported here),
//! helpers to build synthetic data, and [`build_example_plugin`], which builds the example
//! run-time plugin for the tests that load it.

use candle_core::{Tensor, D};
use tram::{Model, Result};

pub use tram::testing::{eval_loss, synthetic_batches, ClassifierShape, EmbeddingClassifier, Lcg};

/// Every parameter value as flat f32 vectors, by name.
pub fn param_values(model: &dyn Model) -> Result<Vec<(String, Vec<f32>)>> {
    model.params().iter().map(|p| Ok((p.name.clone(), p.var.as_tensor().flatten_all()?.to_vec1::<f32>()?))).collect()
}

/// Logits reduced over the last dim (used by tests that need a scalar per row).
pub fn row_max(t: &Tensor) -> Result<Tensor> {
    Ok(t.max(D::Minus1)?)
}

/// The device the device-aware integration tests run on: `TRAM_TEST_DEVICE` (`cpu`, `cuda`,
/// `cuda:<n>`), the CPU when unset. Panics with the reason when the named device is unusable
/// (this is test support: `scripts/gpu/check.sh` sets it on the GPU machine).
pub fn test_device() -> candle_core::Device {
    match std::env::var("TRAM_TEST_DEVICE").as_deref().map(str::trim) {
        Err(_) | Ok("") | Ok("cpu") => candle_core::Device::Cpu,
        Ok(name) => {
            let n = match name.strip_prefix("cuda:") {
                Some(n) => n.parse().unwrap_or_else(|_| panic!("TRAM_TEST_DEVICE=`{name}`: expected cpu, cuda or cuda:<n>")),
                None if name == "cuda" => 0,
                None => panic!("TRAM_TEST_DEVICE=`{name}`: expected cpu, cuda or cuda:<n>"),
            };
            cuda_device(n).unwrap_or_else(|why| panic!("TRAM_TEST_DEVICE=`{name}`: {why}"))
        }
    }
}

/// CUDA device `n`, or why there is none: a build without CUDA, or no usable GPU / driver.
pub fn cuda_device(n: usize) -> std::result::Result<candle_core::Device, String> {
    if !candle_core::utils::cuda_is_available() {
        return Err("this build has no CUDA (rebuild with `--features cuda`, README \"GPU (CUDA)\")".into());
    }
    candle_core::Device::new_cuda(n).map_err(|e| format!("no usable CUDA device {n} ({e})"))
}

/// The workspace root (the directory of the root `Cargo.toml`).
pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().expect("the workspace root exists")
}

/// `cargo build -p tram-renyi --lib` (the example run-time plugin) with the cargo running the
/// tests, in their profile (`test`, or `release` for an optimised test build), with `extra`
/// arguments and into `target_dir` when given; returns the cdylib cargo reports. Panics with
/// cargo's output when the build fails (this is test support).
pub fn build_example_plugin(target_dir: Option<&std::path::Path>, extra: &[&str]) -> std::path::PathBuf {
    use std::path::PathBuf;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let mut cmd = std::process::Command::new(cargo);
    cmd.current_dir(workspace_root()).args(["build", "-p", "tram-renyi", "--lib", "--message-format=json-render-diagnostics"]);
    cmd.args(if cfg!(debug_assertions) { ["--profile", "test"] } else { ["--profile", "release"] });
    cmd.args(extra);
    if let Some(dir) = target_dir {
        cmd.env("CARGO_TARGET_DIR", dir);
    }
    let out = cmd.output().expect("running cargo");
    assert!(out.status.success(), "cargo build -p tram-renyi failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let ext = std::env::consts::DLL_EXTENSION;
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "tram_renyi")
        .flat_map(|m| m["filenames"].as_array().cloned().unwrap_or_default())
        .filter_map(|f| f.as_str().map(PathBuf::from))
        .find(|f| f.extension().is_some_and(|e| e == ext))
        .unwrap_or_else(|| panic!("cargo reported no .{ext} for tram-renyi:\n{stdout}"))
}

/// The example plugin built by [`build_example_plugin`] with no extra arguments, once per process.
pub fn example_plugin() -> &'static std::path::Path {
    static PLUGIN: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    PLUGIN.get_or_init(|| build_example_plugin(None, &[]))
}

/// The example plugin built with its `fingerprint-test` feature, so its fingerprint differs from
/// every host's (a plugin the loader must refuse), once per process. It is built unoptimised
/// into `<target>/fingerprint-test`: a cdylib's file name has no hash, so the normal build would
/// be clobbered.
pub fn mismatched_example_plugin() -> &'static std::path::Path {
    static PLUGIN: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    PLUGIN.get_or_init(|| {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| workspace_root().join("target"))
            .join("fingerprint-test");
        build_example_plugin(
            Some(&target),
            &[
                "--features",
                "fingerprint-test",
                "--config",
                "profile.test.package.\"*\".opt-level=0",
                "--config",
                "profile.test.debug=0",
                "--config",
                "profile.release.package.\"*\".opt-level=0",
            ],
        )
    })
}
