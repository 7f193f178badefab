//! With the `cuda` feature: compiles every `cuda/*.cu` to PTX with nvcc (`NVCC`, else
//! `$CUDA_ROOT/bin/nvcc`, else `nvcc` on `PATH`) for the virtual architecture
//! `compute_$CUDA_COMPUTE_CAP` (default 80, the first with bf16), into `$OUT_DIR/<name>.ptx`,
//! which `src/cuda.rs` embeds. The driver compiles PTX for the GPU it finds; PTX from an nvcc
//! newer than the driver's CUDA does not load (README "GPU (CUDA)"). Without the feature it
//! does nothing.
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=cuda");
    for v in ["NVCC", "CUDA_ROOT", "CUDA_COMPUTE_CAP"] {
        println!("cargo::rerun-if-env-changed={v}");
    }
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let nvcc = std::env::var("NVCC").ok().map(PathBuf::from).unwrap_or_else(|| match std::env::var("CUDA_ROOT") {
        Ok(root) => PathBuf::from(root).join("bin").join("nvcc"),
        Err(_) => PathBuf::from("nvcc"),
    });
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "80".into());
    let cap: String = cap.chars().filter(|c| c.is_ascii_digit()).collect();
    let mut sources: Vec<PathBuf> = std::fs::read_dir("cuda")
        .expect("framework/kernels/cuda is missing")
        .map(|e| e.expect("reading framework/kernels/cuda").path())
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .collect();
    sources.sort();
    for src in sources {
        let stem = src.file_stem().expect("a .cu file name").to_string_lossy().into_owned();
        let ptx = out.join(format!("{stem}.ptx"));
        let status = Command::new(&nvcc)
            // No fused multiply-add contraction: the kernels keep the CPU's order of f32 roundings
            // (the optimizer updates are bitwise the CPU's).
            .args(["--ptx", "-O3", "--fmad=false", "-std=c++17", &format!("-arch=compute_{cap}"), "-o"])
            .arg(&ptx)
            .arg(&src)
            .status()
            .unwrap_or_else(|e| {
                panic!(
                    "tram-kernels: cannot run nvcc ({}): {e}. The `cuda` feature needs nvcc: install a CUDA toolkit, or \
                     `. .ci/cuda-env.sh` (nvcc 13.0 from PyPI), or set NVCC",
                    nvcc.display()
                )
            });
        assert!(status.success(), "tram-kernels: nvcc failed on {} ({status})", src.display());
    }
}
