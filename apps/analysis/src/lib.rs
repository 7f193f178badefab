//! # tram-analysis
//!
//! The loss-surface and representation analysis of the TRAM paper (Sherborne et al., ICLR
//! 2024, Table 6, appendices B.7 and B.8) for any [`tram::Model`]:
//!
//! - [`sharpness`](mod@sharpness): ε-sharpness (Keskar et al. 2017, `A = I`) by projected SGD ascent in the
//!   box `|y_i| ≤ ε(|θ_i| + 1)`, parameters restored bitwise;
//! - [`cka`]: linear CKA (Kornblith et al. 2019) between two models' representations before
//!   the task head ([`tram::Model::representation`]);
//! - [`stats`]: Pearson correlation (in-domain vs out-of-domain sharpness across runs);
//! - [`runs`] and [`report`]: the same over finished `tram lm` / `tram xnli` / `tram vision`
//!   runs (their saved selected models, the pretrained model and data of their configuration),
//!   written as the paper's Table 6 (Markdown, CSV, JSON) — the `tram analyze` command ([`cli`]).
//!
//! ```no_run
//! # fn main() -> tram_analysis::Result<()> {
//! use tram_analysis::{analyze_to, AnalyzeOptions};
//! let dirs = vec![std::path::PathBuf::from("runs/xnli")];
//! let report = analyze_to(&dirs, &AnalyzeOptions::default(), "runs/xnli/analysis".as_ref())?;
//! println!("{}", report.markdown);
//! # Ok(()) }
//! ```

pub mod cka;
pub mod cli;
mod error;
pub mod report;
pub mod runs;
pub mod sharpness;
pub mod stats;

pub use cka::{linear_cka, representation_cka, representations};
pub use error::{Error, Result};
pub use report::{summary, Report};
pub use runs::{
    analyze_run, analyze_run_cached, analyze_runs, analyze_to, find_runs, quick_analysis, AnalyzeOptions, Cache, DomainResult, RunAnalysis,
};
pub use sharpness::{mean_loss, sharpness, Sharpness, SharpnessConfig};
pub use stats::pearson;
