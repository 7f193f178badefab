//! # tram-trainer
//!
//! The fine-tuning runs of the TRAM paper (Sherborne et al., ICLR 2024) on top of `tram`:
//!
//! - [`config`]: a TOML file, `TRAM_*` environment variables and `--set key=value` overrides
//!   (figment), strictly checked; `[[runs]]` rows of a paper table;
//! - [`trainer`]: one run as steps (open, resume, train, select, evaluate) — accumulation,
//!   metrics lines, validation-based model selection, atomic checkpoints, exact `--resume`,
//!   Ctrl-C, final evaluation;
//! - [`results`]: per-run `results.json` and the paper-shaped table (JSON, CSV, Markdown);
//! - [`rundir`]: the run directory's lock, stale temporary files, output paths checked up
//!   front, and what `--resume` / `--force` do with recorded results;
//! - [`rows`]: the checks that keep every row's label true to what ran;
//! - [`apps`]: `lm` (GPT-2 on M2D2, Table 4), `xnli` (XLM-R on MultiNLI → XNLI, Table 5) and
//!   `vision` (ViT-B/16 on CIFAR-100 / Cars / Flowers, Table 3), each an [`apps::AppSpec`]
//!   beside its config section, listed in [`apps::App::ALL`] (the subcommands, fingerprints and
//!   `tram analyze` derive from it).

pub mod allocator;
pub mod apps;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod distributed;
pub mod error;
pub mod eval;
pub mod results;
pub mod rows;
pub mod rundir;
pub mod task;
pub mod trainer;

pub use config::{Config, RunConfig, Sources};
pub use error::{Error, Result};
pub use trainer::{Control, Outcome};

/// The candle device a config names: `cpu`, `cuda`, `cuda:<n>` or `metal`. A CUDA name on a
/// build without CUDA is an error saying how to rebuild; the device is not part of what a
/// checkpoint must match on resume (checkpoints hold no device data: a run checkpointed on one
/// device resumes on another).
pub fn device(name: &str) -> Result<candle_core::Device> {
    let bad = |why: String| Error::Config(format!("key `device`: {why}"));
    match name.trim() {
        "cpu" | "" => Ok(candle_core::Device::Cpu),
        "metal" => {
            candle_core::Device::new_metal(0).map_err(|e| bad(format!("metal is unavailable ({e}); build with candle's metal feature")))
        }
        s if s == "cuda" || s.starts_with("cuda:") => {
            let n = match s.strip_prefix("cuda:") {
                Some(n) => n.parse::<usize>().map_err(|_| bad(format!("`{s}`: expected cuda:<gpu index>")))?,
                // One process per GPU: `cuda` is GPU <local rank> of a data-parallel job.
                None => crate::distributed::local_rank().unwrap_or(0),
            };
            if !candle_core::utils::cuda_is_available() {
                return Err(bad(format!("`{s}`: this tram was built without CUDA; rebuild it with `--features cuda` (`cargo build --release -p tram-cli --features cuda`, README section \"GPU (CUDA)\"), or set device = \"cpu\"")));
            }
            candle_core::Device::new_cuda(n).map_err(|e| {
                bad(format!("`{s}`: CUDA device {n} is unavailable ({e}); check that `nvidia-smi` lists GPU {n} and that the driver is at least as new as the CUDA the build used, or set device = \"cpu\""))
            })
        }
        other => Err(bad(format!("`{other}`: expected cpu, cuda, cuda:<n> or metal"))),
    }
}

/// Check the syntax of a device name (availability is checked when the run starts).
pub fn check_device_name(name: &str) -> Result<()> {
    match name.trim() {
        "cpu" | "" | "metal" | "cuda" => Ok(()),
        s if s.strip_prefix("cuda:").is_some_and(|n| n.parse::<usize>().is_ok()) => Ok(()),
        other => Err(Error::Config(format!("key `device`: `{other}`: expected cpu, cuda, cuda:<n> or metal"))),
    }
}

/// The dtype a config names: `f32` or `bf16`.
///
/// `bf16` runs the forward and backward passes in bf16 and trains f32 master weights (the
/// optimizer state, the trust regions' snapshots, ε, δ and the norms are f32; see
/// `tram::Optimizer::master_params`).
///
/// `f16` is refused: training in it needs loss scaling, which the framework does not do;
/// without it small gradients underflow to 0 (f16's smallest value is 6e-8) and Adam's update
/// writes NaN or ∞ into most weights at step 1. `bf16` has f32's exponent range at the same
/// size.
pub fn dtype(name: &str) -> Result<candle_core::DType> {
    match name {
        "f32" => Ok(candle_core::DType::F32),
        "bf16" => Ok(candle_core::DType::BF16),
        "f16" => Err(Error::Config(
            "key `dtype`: `f16` is not supported for training (it needs loss scaling, which tram does not do: small gradients underflow and Adam's update turns most f16 weights into NaN at the first step); use `bf16` (same size, f32's range, trained on f32 master weights) or `f32`".into(),
        )),
        other => Err(Error::Config(format!("key `dtype`: `{other}`: expected f32 or bf16"))),
    }
}
