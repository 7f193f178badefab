//! `tram quickstart` and its subcommands.

use crate::{repo_path, Options, PretrainOptions, DATA_DIR, DEFAULT_OUT, MODEL_DIR};
use anyhow::Result;
use std::path::PathBuf;
use tram_trainer::Control;

/// `tram quickstart [OPTIONS]` runs the quickstart; `build-tokenizer` and `pretrain` rebuild
/// the bundled tokenizer and model.
#[derive(clap::Args, Clone, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    /// Rebuild the bundled tokenizer or model instead of running the quickstart.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The quickstart's options.
    #[command(flatten)]
    pub run: RunArgs,
}

/// The quickstart's options.
#[derive(clap::Args, Clone, Debug)]
pub struct RunArgs {
    /// Methods to fine-tune with (comma separated or repeated): rows of the config (adam, sam,
    /// asam, fsam, r3f, tram-prev, tram-pretrained, tram-noise, tram-fisher; default: all), or
    /// any other alias or composition, a plugin's included (`tram-noise-renyi`,
    /// `noise(sigma=1e-4,scale=2)+ball+sgd`: commas inside parentheses do not separate). The
    /// zero-shot row of the untouched checkpoint always runs.
    #[arg(long, value_name = "NAME")]
    pub methods: Vec<String>,
    /// Optimizer steps per method (default: the config's).
    #[arg(long)]
    pub steps: Option<u64>,
    /// Seeds per method: 0..N (default: the config's, 3). The table shows the mean and the 95%
    /// interval over them; `--seeds 1` is a quick look without intervals.
    #[arg(long, value_name = "N")]
    pub seeds: Option<usize>,
    /// The domain to fine-tune on (default: the config's, `bible`); the others are the unseen domains.
    #[arg(long, value_name = "DOMAIN")]
    pub train_domain: Option<String>,
    /// Output directory. Earlier results of the selected rows there are never replaced without
    /// --force; with --resume, rows already finished with the same settings are kept.
    #[arg(long, default_value = DEFAULT_OUT)]
    pub out: PathBuf,
    /// Keep the rows already finished in --out with the same settings and run only the others
    /// (an interrupted row continues from its checkpoint).
    #[arg(long, conflicts_with = "force")]
    pub resume: bool,
    /// Delete the selected rows' earlier results in --out and run them again.
    #[arg(long)]
    pub force: bool,
    /// The corpus: <domain>/{train,validation,test}.txt (default: data/quickstart).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// The pretrained model in hub layout (default: models/quickstart).
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// The config with one [[runs]] row per method (default: configs/quickstart/finetune.toml).
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Override any config key, as `tram lm --set` (e.g. `--set optimizer.lr=1e-3`).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// No progress output (the table is still printed).
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Only rebuild the table and the plot from the results already in --out.
    #[arg(long)]
    pub table: bool,
}

/// Rebuild the bundled artefacts, or select the hyperparameters.
#[derive(clap::Subcommand, Clone, Debug)]
pub enum Command {
    /// Select each method's learning rate and own parameter (ρ, λ, σ) on the training domain's
    /// validation split over the grid of configs/quickstart/sweep.toml (one seed per point),
    /// record the grid and the scores (configs/quickstart/sweep.{csv,md}) and write the chosen
    /// values into the config's rows.
    Sweep {
        /// The grid (default: configs/quickstart/sweep.toml).
        #[arg(long, value_name = "FILE")]
        grid: Option<PathBuf>,
        /// The config whose rows are swept and get the chosen values (default:
        /// configs/quickstart/finetune.toml).
        #[arg(long, short = 'c', value_name = "FILE")]
        config: Option<PathBuf>,
        /// Where the grid points' runs go.
        #[arg(long, default_value = crate::sweep::DEFAULT_OUT)]
        out: PathBuf,
        /// Where to record sweep.csv and sweep.md (default: beside the grid file).
        #[arg(long, value_name = "DIR")]
        record: Option<PathBuf>,
        /// Only score the grid: leave the config and the records as they are.
        #[arg(long)]
        dry_run: bool,
        /// Optimizer steps per point (default: the config's).
        #[arg(long)]
        steps: Option<u64>,
        /// Override a config key for every point (as `tram lm --set`).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Keep the points already finished in --out with the same settings.
        #[arg(long, conflicts_with = "force")]
        resume: bool,
        /// Delete earlier results of the points in --out and run them again.
        #[arg(long)]
        force: bool,
        /// No per-point progress.
        #[arg(long, short = 'q')]
        quiet: bool,
    },
    /// Train the byte-level BPE tokenizer on every domain's train.txt and write tokenizer.json
    /// (and the vocabulary size into the model's config.json).
    BuildTokenizer {
        /// The corpus (default: data/quickstart).
        #[arg(long, value_name = "DIR")]
        data: Option<PathBuf>,
        /// Vocabulary size, including the 256 byte symbols and <|endoftext|>.
        #[arg(long, default_value_t = crate::tokenizer::DEFAULT_VOCAB_SIZE)]
        vocab_size: usize,
        /// The model directory whose tokenizer.json (and config.json vocab_size) to write
        /// (default: models/quickstart).
        #[arg(long, value_name = "DIR")]
        model: Option<PathBuf>,
    },
    /// Pretrain the quickstart model from a random initialisation on the mixture of every
    /// domain (`tram lm` with configs/quickstart/pretrain.toml) and install it.
    Pretrain {
        /// The pretraining config (default: configs/quickstart/pretrain.toml).
        #[arg(long, short = 'c', value_name = "FILE")]
        config: Option<PathBuf>,
        /// Override a config key (e.g. `--set train.steps=100`).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Where to install the pretrained model (default: models/quickstart).
        #[arg(long, value_name = "DIR")]
        install: Option<PathBuf>,
        /// Leave the model in the run's output directory only.
        #[arg(long, conflicts_with = "install")]
        no_install: bool,
        /// Continue an interrupted pretraining from its checkpoint (a finished one is kept).
        #[arg(long, conflicts_with = "force")]
        resume: bool,
        /// Delete an earlier pretraining run's results and checkpoints and train again.
        #[arg(long)]
        force: bool,
    },
}

/// The methods of `--methods` values: each split at the commas outside parentheses, so a
/// composition with inline parameters stays whole.
pub fn split_methods(values: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for v in values {
        let (mut depth, mut start) = (0i32, 0);
        for (i, c) in v.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                ',' if depth <= 0 => {
                    out.push(v[start..i].trim().to_string());
                    start = i + 1;
                }
                _ => {}
            }
        }
        out.push(v[start..].trim().to_string());
    }
    out.retain(|m| !m.is_empty());
    out
}

/// The quickstart's tensors are small: candle's CPU thread pool, which spin-waits at a barrier
/// after every op, costs more than it gains on them (and far more when other programs share
/// the cores). Unless `CANDLE_NUM_THREADS` or `RAYON_NUM_THREADS` says otherwise, the
/// quickstart's commands compute on one thread. Must run before candle's first computation.
pub fn default_threads() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() && std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

/// Run `tram quickstart` as parsed; returns the process exit status.
pub fn main(args: Args, registry: &tram::Registry) -> Result<i32> {
    default_threads();
    let control = Control::default();
    tram_trainer::cli::install_ctrlc(&control)?;
    match args.command {
        Some(Command::BuildTokenizer { data, vocab_size, model }) => {
            let data = data.unwrap_or_else(|| repo_path(DATA_DIR));
            let model = model.unwrap_or_else(|| repo_path(MODEL_DIR));
            let out = model.join("tokenizer.json");
            let config = model.join("config.json");
            let n = crate::tokenizer::build(&data, vocab_size, &out, config.is_file().then_some(config.as_path()))?;
            println!("wrote {} ({n} tokens, trained on {})", out.display(), data.display());
        }
        Some(Command::Pretrain { config, sets, install, no_install, resume, force }) => {
            let control = Control { resume, force, ..control.clone() };
            let install = if no_install { None } else { Some(install.unwrap_or_else(|| repo_path(MODEL_DIR))) };
            let opts = PretrainOptions { config, sets, install: install.clone() };
            let model = crate::pretrain(&opts, &control, registry)?;
            match install {
                Some(dir) => println!("pretrained model: {} (installed in {})", model.display(), dir.display()),
                None => println!("pretrained model: {}", model.display()),
            }
        }
        Some(Command::Sweep { grid, config, out, record, dry_run, steps, sets, resume, force, quiet }) => {
            let control = Control { resume, force, ..control.clone() };
            let grid_path = grid.clone().unwrap_or_else(|| repo_path(crate::sweep::SWEEP_CONFIG));
            let record =
                if dry_run { None } else { Some(record.unwrap_or_else(|| grid_path.parent().map(PathBuf::from).unwrap_or_default())) };
            if force {
                tram_trainer::rundir::discard_tree(&out)?;
            }
            let quick = Options { out, config, steps, sets, progress: !quiet, ..Options::default() };
            let opts = crate::sweep::SweepOptions { grid: Some(grid_path), quick, record, write_config: !dry_run };
            let report = crate::sweep::run(&opts, &control, registry)?;
            println!("chosen (lowest in-domain validation perplexity, one seed per point):");
            for c in &report.chosen {
                let param = match (&c.point.key, c.point.value) {
                    (Some(k), Some(v)) => format!(", {k} = {v}"),
                    _ => String::new(),
                };
                println!("  {}: lr = {}{param} (validation perplexity {:.2})", c.point.method, c.point.lr, c.valid_perplexity);
            }
            if !report.files.is_empty() {
                println!("wrote {}", report.files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", "));
            }
            println!("sweep took {:.1} s ({} points)", report.seconds, report.scores.len());
        }
        None if args.run.table => {
            let (quick, files) = crate::rebuild(&args.run.out)?;
            println!("{}", quick.text());
            println!("wrote {}", files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", "));
        }
        None => {
            let a = args.run;
            let control = Control { resume: a.resume, force: a.force, ..control.clone() };
            let opts = Options {
                methods: split_methods(&a.methods),
                steps: a.steps,
                seeds: a.seeds,
                train_domain: a.train_domain,
                out: a.out,
                data: a.data,
                model: a.model,
                config: a.config,
                sets: a.sets,
                progress: !a.quiet,
            };
            let report = match crate::run(&opts, &control, registry) {
                Err(e) if control.stop.load(std::sync::atomic::Ordering::SeqCst) => {
                    eprintln!("interrupted ({e})");
                    return Ok(130);
                }
                r => r?,
            };
            println!("\n{}", report.text);
            println!("{}", report.analysis);
            let files: Vec<String> = report.files.iter().map(|f| f.display().to_string()).collect();
            println!("wrote {}", files.join(", "));
            println!("quickstart took {:.1} s", report.seconds);
            if !report.failures.is_empty() {
                anyhow::bail!(
                    "{} row(s) failed (shown in the table, marked ‡):\n  {}",
                    report.failures.len(),
                    report.failures.join("\n  ")
                );
            }
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_split_at_commas_outside_parentheses() {
        let v = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(split_methods(&v(&["adam,sam", "tram-noise"])), v(&["adam", "sam", "tram-noise"]));
        assert_eq!(split_methods(&v(&["noise(sigma=1e-4,scale=2)+ball+sgd,adam"])), v(&["noise(sigma=1e-4,scale=2)+ball+sgd", "adam"]));
        assert_eq!(split_methods(&v(&["adam,,"])), v(&["adam"]));
    }
}
