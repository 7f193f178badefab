//! `tram analyze`: arguments and driver.

use crate::error::Result;
use crate::runs::{analyze_to, AnalyzeOptions};
use crate::sharpness::SharpnessConfig;
use std::path::PathBuf;

/// Arguments of `tram analyze`.
#[derive(clap::Args, Clone, Debug)]
pub struct AnalyzeArgs {
    /// Finished runs: run directories (`<out>/<run>/seed-<s>`) or directories above them
    /// (an app's `out`), searched for `seed-*/results.json`.
    #[arg(required = true, value_name = "RUN_DIR")]
    pub dirs: Vec<PathBuf>,
    /// Where to write analysis.md, analysis.json, sharpness.csv, cka.csv and runs.csv
    /// (default: `<first RUN_DIR>/analysis`).
    #[arg(long, short = 'o', value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// ε of the sharpness box |y_i| ≤ ε(|θ_i| + 1).
    #[arg(long, default_value_t = SharpnessConfig::default().epsilon)]
    pub epsilon: f64,
    /// SGD ascent steps of the sharpness search.
    #[arg(long, default_value_t = SharpnessConfig::default().steps)]
    pub steps: usize,
    /// SGD learning rate of the ascent.
    #[arg(long, default_value_t = SharpnessConfig::default().lr)]
    pub lr: f64,
    /// Examples per micro-batch (also the evaluation batch size).
    #[arg(long, default_value_t = SharpnessConfig::default().batch_size)]
    pub batch_size: usize,
    /// Micro-batches accumulated into one ascent step.
    #[arg(long, default_value_t = SharpnessConfig::default().accumulation)]
    pub accumulation: usize,
    /// Also evaluate the loss every N ascent steps (0: only after the last).
    #[arg(long, default_value_t = 0)]
    pub eval_every: usize,
    /// Cut every evaluation set to N examples (default: each run's own train.max_eval_examples).
    #[arg(long, value_name = "N")]
    pub max_examples: Option<usize>,
    /// Use at most N batches of every evaluation set.
    #[arg(long, value_name = "N")]
    pub max_batches: Option<usize>,
    /// Measure ε-sharpness on only the first N of those batches (CKA uses them all).
    #[arg(long, value_name = "N")]
    pub sharpness_batches: Option<usize>,
    /// Evaluate on this split of each domain / language (e.g. `validation`, as the paper did)
    /// instead of the runs' test split.
    #[arg(long, value_name = "SPLIT")]
    pub split: Option<String>,
    /// Device for the analysis (cpu, cuda, cuda:<n>, metal; default: each run's own).
    #[arg(long)]
    pub device: Option<String>,
    /// Override a key of the runs' configurations, e.g. `--set 'xnli.languages=["en","de"]'` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Skip ε-sharpness (CKA only).
    #[arg(long)]
    pub no_sharpness: bool,
    /// Skip CKA (ε-sharpness only).
    #[arg(long)]
    pub no_cka: bool,
}

impl AnalyzeArgs {
    /// The options these arguments describe.
    pub fn options(&self) -> AnalyzeOptions {
        AnalyzeOptions {
            sharpness: SharpnessConfig {
                epsilon: self.epsilon,
                steps: self.steps,
                lr: self.lr,
                batch_size: self.batch_size,
                accumulation: self.accumulation,
                eval_every: self.eval_every,
            },
            max_examples: self.max_examples,
            max_batches: self.max_batches,
            sharpness_batches: self.sharpness_batches,
            split: self.split.clone(),
            device: self.device.clone(),
            sets: self.sets.clone(),
            measure_sharpness: !self.no_sharpness,
            measure_cka: !self.no_cka,
        }
    }

    /// The output directory.
    pub fn out_dir(&self) -> PathBuf {
        self.out.clone().unwrap_or_else(|| self.dirs[0].join("analysis"))
    }
}

/// Run `tram analyze`: analyse, write the files, return the Markdown tables.
pub fn run(args: &AnalyzeArgs) -> Result<String> {
    let out = args.out_dir();
    let report = analyze_to(&args.dirs, &args.options(), &out)?;
    tracing::info!(dir = %out.display(), "analysis written (analysis.md, analysis.json, sharpness.csv, cka.csv, runs.csv)");
    Ok(report.markdown)
}
