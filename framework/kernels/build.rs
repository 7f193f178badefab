//! With the `cuda` feature: compiles `cuda/keyed_rng.cu` (the keyed dropout / noise streams,
//! embedded by `src/keyed.rs`) and `cuda/fused.cu` (the fused ops and optimizer updates,
//! embedded by `src/cuda.rs`) to PTX with nvcc, `--fmad=false` (no multiply-add contraction: the
//! kernels keep the CPU's order of f32 roundings). Without it: nothing (the kernels' code is
//! still checked on the host by `tests/keyed_host.rs` and `tests/cuda_emu.rs`).
//!
//! nvcc: `NVCC`, else `$CUDA_ROOT|CUDA_HOME|CUDA_PATH/bin/nvcc`, else `nvcc` on `PATH`
//! (`. .ci/cuda-env.sh` sets them up from PyPI). The architecture: `CUDA_COMPUTE_CAP` (`90`,
//! `9.0`), else what `nvidia-smi` reports, as candle's own kernels.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=cuda/keyed_rng.cu");
    println!("cargo:rerun-if-changed=cuda/keyed_rng.h");
    println!("cargo:rerun-if-changed=cuda/fused.cu");
    for v in ["NVCC", "CUDA_ROOT", "CUDA_HOME", "CUDA_PATH", "CUDA_COMPUTE_CAP"] {
        println!("cargo:rerun-if-env-changed={v}");
    }
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let nvcc = nvcc();
    let cap = compute_cap();
    for name in ["keyed_rng", "fused"] {
        let status = Command::new(&nvcc)
            .args(["--ptx", "-O3", "--fmad=false", "-std=c++17"])
            .arg(format!("--gpu-architecture=sm_{cap}"))
            .arg("-o")
            .arg(out_dir.join(format!("{name}.ptx")))
            .arg(dir.join(format!("cuda/{name}.cu")))
            .status()
            .unwrap_or_else(|e| {
                panic!(
                    "tram-kernels (feature `cuda`): could not run nvcc `{}` ({e}); install CUDA or `. .ci/cuda-env.sh`, or set NVCC",
                    nvcc.display()
                )
            });
        assert!(status.success(), "tram-kernels (feature `cuda`): nvcc failed to compile cuda/{name}.cu for sm_{cap} (see above)");
    }
}

fn nvcc() -> PathBuf {
    if let Some(p) = std::env::var_os("NVCC") {
        return p.into();
    }
    for root in ["CUDA_ROOT", "CUDA_HOME", "CUDA_PATH"] {
        if let Some(r) = std::env::var_os(root) {
            let p = PathBuf::from(r).join("bin").join("nvcc");
            if p.exists() {
                return p;
            }
        }
    }
    "nvcc".into()
}

fn compute_cap() -> String {
    let raw = std::env::var("CUDA_COMPUTE_CAP").ok().or_else(|| {
        let o = Command::new("nvidia-smi").args(["--query-gpu=compute_cap", "--format=csv,noheader"]).output().ok()?;
        let s = String::from_utf8_lossy(&o.stdout);
        o.status.success().then(|| s.lines().next().unwrap_or("").to_string())
    });
    let cap = raw.as_deref().map(|s| s.trim().replace('.', "")).unwrap_or_default();
    if cap.is_empty() || !cap.bytes().all(|b| b.is_ascii_digit()) {
        panic!(
            "tram-kernels (feature `cuda`): no compute capability: set CUDA_COMPUTE_CAP (e.g. 90 for H100/H200, 80 for A100), \
             or run where nvidia-smi reports the GPU (got {raw:?})"
        );
    }
    cap
}
