//! # tram-quickstart
//!
//! A miniature of the TRAM paper's cross-domain language-modelling experiment (Sherborne et
//! al., ICLR 2024, Table 4 and Figure 2) that runs offline in minutes on two CPU cores: a small
//! GPT-2 pretrained on four genres of English (`models/quickstart`, built from
//! `data/quickstart` by [`pretrain`]) is fine-tuned on a fifth it has never seen (`bible`) with
//! each method and several seeds, and every genre's test perplexity shows what each method
//! gains in-domain and how much of the other genres it keeps.
//!
//! It is the `tram lm` app ([`tram_trainer::apps::App::Lm`]) run with the bundled config
//! `configs/quickstart/finetune.toml` (one `[[runs]]` row per method, its hyperparameters
//! chosen by [`sweep`]), the bundled model and the bundled corpus; this crate adds the table
//! with the mean and 95% interval over the seeds, the best of each column marked only when it
//! is separated from the runner-up, and the computed finding ([`table`]), the plot of in-domain
//! against zero-shot perplexity with error bars ([`plot`]), the tokenizer ([`tokenizer`]), the
//! hyperparameter sweep ([`sweep`]) and the pretraining command ([`pretrain`]).

pub mod cli;
pub mod plot;
pub mod sweep;
pub mod table;
pub mod tokenizer;

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tram_trainer::apps::App;
use tram_trainer::config::Sources;
use tram_trainer::Control;

/// The bundled corpus (relative to the repository root).
pub const DATA_DIR: &str = "data/quickstart";
/// The bundled pretrained model.
pub const MODEL_DIR: &str = "models/quickstart";
/// The quickstart's fine-tuning config: one `[[runs]]` row per method.
pub const FINETUNE_CONFIG: &str = "configs/quickstart/finetune.toml";
/// The config that pretrains the bundled model from a random initialisation.
pub const PRETRAIN_CONFIG: &str = "configs/quickstart/pretrain.toml";
/// The run name of the untouched checkpoint's row.
pub const ZERO_SHOT: &str = "zero-shot";
/// Default output directory.
pub const DEFAULT_OUT: &str = "runs/quickstart";
/// Seeds per method of the bundled config (`seeds = [0, 1, 2]`): the table shows the mean and
/// the 95% interval over them.
pub const DEFAULT_SEEDS: usize = 3;

/// A path of the repository: `rel` itself when it exists relative to the current directory,
/// else `rel` under the repository this binary was built from (so `cargo run` works from any
/// directory of the checkout).
pub fn repo_path(rel: &str) -> PathBuf {
    let here = PathBuf::from(rel);
    if here.exists() {
        return here;
    }
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(rel);
    if built.exists() {
        built
    } else {
        here
    }
}

/// The domains of a corpus directory: its sub-directories that hold a `train.txt`, sorted.
pub fn domains(data: &Path) -> Result<Vec<String>> {
    let entries = std::fs::read_dir(data).with_context(|| format!("reading the corpus directory {}", data.display()))?;
    let mut out: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("train.txt").is_file())
        .filter_map(|e| e.file_name().to_str().map(String::from))
        .collect();
    out.sort();
    Ok(out)
}

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Methods: `[[runs]]` names of the config (empty: every row). The zero-shot row always runs.
    pub methods: Vec<String>,
    /// Optimizer steps per method (`None`: the config's).
    pub steps: Option<u64>,
    /// Seeds per method: seeds `0..n` (`None`: the config's `seeds`). The zero-shot row is
    /// evaluated once (it does not train; every seed would give the same numbers).
    pub seeds: Option<usize>,
    /// The domain to fine-tune on (`None`: the config's).
    pub train_domain: Option<String>,
    /// Output directory: `<out>/<method>/seed-<seed>/` per method, the tables and the plot.
    pub out: PathBuf,
    /// The corpus (`None`: the bundled one).
    pub data: Option<PathBuf>,
    /// The pretrained model (`None`: the bundled one).
    pub model: Option<PathBuf>,
    /// The config (`None`: the bundled `configs/quickstart/finetune.toml`).
    pub config: Option<PathBuf>,
    /// More `key=value` overrides of the config (as `tram lm --set`).
    pub sets: Vec<String>,
    /// Show progress (per-method lines and the trainer's progress bar).
    pub progress: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            methods: Vec::new(),
            steps: None,
            seeds: None,
            train_domain: None,
            out: PathBuf::from(DEFAULT_OUT),
            data: None,
            model: None,
            config: None,
            sets: Vec::new(),
            progress: true,
        }
    }
}

/// What [`run`] produced.
#[derive(Debug)]
pub struct Report {
    /// The table.
    pub table: table::QuickTable,
    /// The terminal rendering of the table.
    pub text: String,
    /// Files written (tables and plots).
    pub files: Vec<PathBuf>,
    /// Wall-clock seconds of the whole quickstart.
    pub seconds: f64,
    /// ε-sharpness in and out of domain and CKA to the pretrained model per method (paper
    /// Table 6 in miniature, [`tram_analysis::summary`]); the files are in `<out>/analysis`.
    pub analysis: String,
    /// Rows that failed (every step skipped), one message each: they are in the table,
    /// marked, the other rows ran; `tram quickstart` exits non-zero after printing the table.
    pub failures: Vec<String>,
}

fn toml_string(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

fn toml_list(items: &[String]) -> String {
    format!("[{}]", items.iter().map(|s| toml_string(s)).collect::<Vec<_>>().join(", "))
}

/// The sources of the quickstart's runs: the config, the bundled paths, the options.
pub fn sources(opts: &Options) -> Result<(Sources, Vec<String>)> {
    let config = opts.config.clone().unwrap_or_else(|| repo_path(FINETUNE_CONFIG));
    let data = opts.data.clone().unwrap_or_else(|| repo_path(DATA_DIR));
    let model = opts.model.clone().unwrap_or_else(|| repo_path(MODEL_DIR));
    let all = domains(&data)?;
    if all.len() < 2 {
        bail!("{} needs at least two domains (<domain>/train.txt, validation.txt, test.txt); found {all:?}", data.display());
    }
    let mut sets = vec![
        format!("model={}", toml_string(&model.display().to_string())),
        format!("data={}", toml_string(&data.display().to_string())),
        format!("out={}", toml_string(&opts.out.display().to_string())),
    ];
    if let Some(s) = opts.steps {
        sets.push(format!("train.steps={s}"));
    }
    if let Some(n) = opts.seeds {
        if n == 0 {
            bail!("--seeds 0 runs nothing: give at least 1 (the table's intervals need 2 or more)");
        }
        sets.push(format!("seeds=[{}]", (0..n).map(|s| s.to_string()).collect::<Vec<_>>().join(", ")));
    }
    if let Some(d) = &opts.train_domain {
        sets.push(format!("lm.train_domain={}", toml_string(d)));
    }
    // The ranks of a data-parallel job as threads, one per core while the global micro-batch
    // splits evenly (`distributed.ranks = 0`): on 2 cores the default run took 93 s instead of
    // 144 s on one thread, with the same table. Not under an MPI launcher (its ranks are the
    // processes); `--set distributed.engine=...` overrides.
    if !tram_trainer::distributed::launcher_world().is_some_and(|w| w > 1) {
        sets.push("distributed.engine=\"threads\"".into());
    }
    sets.extend(opts.sets.iter().cloned());
    // The unseen domains: every other domain of the corpus.
    let probe = Sources { file: Some(config.clone()), sets: sets.clone(), env: None };
    let registry = tram_plugins::registry()?;
    let first = probe.resolve(&[], &registry).context("resolving the quickstart config")?;
    // A config that lists `seeds` (the bundled one) ignores `seed`: `--set seed=N` would do nothing.
    let seed_set = opts.sets.iter().find(|s| s.split_once('=').is_some_and(|(k, _)| k.trim() == "seed"));
    if let (Some(s), Some(r)) = (seed_set, first.first()) {
        if !r.config.seeds.is_empty() {
            bail!("--set {s}: the config lists `seeds`, which replaces `seed`; use --seeds N (seeds 0..N) or --set 'seeds=[1]'");
        }
    }
    let train = first.first().map(|r| r.config.lm.train_domain.clone()).unwrap_or_default();
    if !all.contains(&train) {
        bail!("the training domain `{train}` is not a domain of {} ({})", data.display(), all.join(", "));
    }
    let unseen: Vec<String> = all.iter().filter(|d| **d != train).cloned().collect();
    sets.insert(3, format!("lm.test_domains={}", toml_list(&unseen)));
    Ok((Sources { file: Some(config), sets, env: None }, all))
}

/// Extra quickstart rows: `(composition, label)`.
pub type ExtraRows = Vec<(String, String)>;

/// The runs `--methods` selects: the zero-shot row, then each method, a row of the config by
/// name or else any composition or alias `registry` parses (a plugin's included), which
/// becomes an extra row labelled with it. Returns the run names and the extra rows
/// (`(composition, label)`, for [`Sources::resolve_with_runs`]).
pub fn select_methods(methods: &[String], rows: &[String], registry: &tram::Registry) -> Result<(Vec<String>, ExtraRows)> {
    let mut selected = vec![ZERO_SHOT.to_string()];
    let mut extra = Vec::new();
    if methods.is_empty() {
        selected.extend(rows.iter().filter(|n| *n != ZERO_SHOT).cloned());
        return Ok((selected, extra));
    }
    for m in methods {
        let name = if rows.contains(m) {
            m.clone()
        } else {
            if let Err(e) = tram::Composition::parse(m, registry) {
                bail!(
                    "method `{m}` is neither a row of the quickstart ({}) nor a composition or alias: {e}",
                    rows.iter().filter(|n| *n != ZERO_SHOT).cloned().collect::<Vec<_>>().join(", ")
                );
            }
            let name = Sources::run_name_of(m);
            if rows.contains(&name) {
                bail!("method `{m}` would be run as `{name}`, which is a row of the quickstart already: name that row instead");
            }
            if !extra.iter().any(|(c, _)| c == m) {
                extra.push((m.clone(), m.clone()));
            }
            name
        };
        if !selected.contains(&name) {
            selected.push(name);
        }
    }
    Ok((selected, extra))
}

/// Run the quickstart: the zero-shot row and one fine-tuning run per method, then the table
/// (printed by the caller from [`Report::text`]), `quickstart.{md,csv,json}` and
/// `quickstart.{svg,png}` in `opts.out`. Earlier results of the selected rows in `opts.out`
/// are an error unless `control.resume` (rows finished with the same settings are kept and
/// skipped) or `control.force` (they are deleted first).
pub fn run(opts: &Options, control: &Control, registry: &tram::Registry) -> Result<Report> {
    let started = Instant::now();
    let (sources, _) = sources(opts)?;
    let names = sources.run_names()?;
    if !names.iter().any(|n| n == ZERO_SHOT) {
        bail!("the config has no `{ZERO_SHOT}` run (the untouched checkpoint's row)");
    }
    let (selected, extra) = select_methods(&opts.methods, &names, registry)?;
    let mut runs = sources.resolve_with_runs(&extra, &selected, registry)?;
    // The untouched checkpoint does not train: one evaluation (its first seed) stands for all.
    let zero_shot_sources = zero_shot_sources(&sources, &runs);
    for r in runs.iter_mut().filter(|r| r.name == ZERO_SHOT) {
        r.config.seeds = vec![r.seeds()[0]];
    }
    // Its rows are the compositions: an override that changes what a row is (its optimizer,
    // whether it trains) would label one method's numbers with another's name.
    tram_trainer::rows::check_labels(&sources, &runs).context("the quickstart's rows are its methods")?;
    // Earlier results of these rows are kept (the trainer refuses to overwrite them; with
    // `control.resume` the rows finished with the same settings are skipped) unless
    // `control.force`: then every seed of the row goes, so that no stale seed joins the table.
    if control.force {
        for r in &runs {
            let dir = r.config.out.join(&r.name);
            tram_trainer::rundir::discard_tree(&dir).with_context(|| format!("removing the previous results in {}", dir.display()))?;
        }
    }
    let out = runs[0].config.out.clone();
    let train_domain = runs[0].config.lm.train_domain.clone();
    if opts.progress {
        eprintln!(
            "quickstart: {} fine-tuned on `{train_domain}` with {} method(s), {} steps each; perplexity on {} test splits → {}",
            runs[0].config.model,
            runs.len() - 1,
            runs.iter().find(|r| r.name != ZERO_SHOT).and_then(|r| r.config.train.steps).map(|s| s.to_string()).unwrap_or("-".into()),
            runs[0].config.lm.test_domains.len() + 1,
            out.display()
        );
    }
    // Every row's output directory checked before the first row trains (results without
    // --resume / --force, a file in the way, another process's lock).
    for r in &runs {
        for seed in r.seeds() {
            tram_trainer::rundir::preflight(App::Lm.name(), r, seed, control).with_context(|| format!("quickstart row `{}`", r.name))?;
        }
    }
    // The table holds what this command ran: no other seed's results left in `out`.
    let ran: Vec<(String, u64)> = runs.iter().flat_map(|r| r.seeds().into_iter().map(move |s| (r.name.clone(), s))).collect();
    let n = runs.len();
    let mut failures = Vec::new();
    for (i, r) in runs.iter().enumerate() {
        let t = Instant::now();
        if opts.progress {
            let what = if r.name == ZERO_SHOT {
                "no training".to_string()
            } else {
                let seeds = r.seeds();
                format!("`{}`, {} seed{}", r.config.optimizer.name, seeds.len(), if seeds.len() == 1 { "" } else { "s" })
            };
            eprintln!("[{}/{n}] {} ({what})", i + 1, r.label);
        }
        let row_sources = if r.name == ZERO_SHOT { &zero_shot_sources } else { &sources };
        let summary = tram_trainer::cli::run_sources(App::Lm, row_sources, std::slice::from_ref(&r.name), false, control, registry)
            .with_context(|| format!("quickstart row `{}`", r.name))?;
        if summary.interrupted {
            bail!("interrupted: run the same command with --resume to continue");
        }
        if opts.progress {
            let res: Vec<_> = r.seeds().iter().map(|s| table::read_result(&r.dir(*s))).collect::<Result<_>>()?;
            let row = table::QuickTable::from_results(&train_domain, &res)?;
            let q = &row.rows[0];
            let cols: Vec<String> = row
                .columns
                .iter()
                .enumerate()
                .map(|(c, l)| format!("{l} {}", table::fmt_interval(q.perplexity[c], q.ci95[c], q.seeds.len())))
                .collect();
            let status = if q.failed {
                " — FAILED: every step skipped"
            } else if q.diverged {
                " — diverged"
            } else {
                ""
            };
            eprintln!("      {:.1} s; perplexity: {}{status}", t.elapsed().as_secs_f64(), cols.join(", "));
        }
        // A failed row is a row of the table: the other methods still run.
        failures.extend(summary.failures);
    }
    let results: Vec<tram_trainer::results::RunResult> =
        tram_trainer::results::collect(&out)?.into_iter().map(|(_, r)| r).filter(|r| ran.contains(&(r.run.clone(), r.seed))).collect();
    let quick = table::QuickTable::from_results(&train_domain, &results)?;
    let mut files = quick.write(&out)?;
    files.extend(plot::draw(&quick, &out)?);
    // Paper Table 6 in miniature: ε-sharpness in / out of domain and CKA to the pretrained model.
    if opts.progress {
        eprintln!("analysis: ε-sharpness and CKA of every row (small subsets, one ascent step)");
    }
    let dirs: Vec<PathBuf> = runs.iter().flat_map(|r| r.seeds().into_iter().map(move |s| r.dir(s))).collect();
    let analysis = tram_analysis::quick_analysis(&dirs, &out.join("analysis"))?;
    files.push(out.join("analysis").join("analysis.md"));
    let analysis = tram_analysis::summary(&analysis);
    Ok(Report { text: quick.text(), table: quick, files, seconds: started.elapsed().as_secs_f64(), analysis, failures })
}

/// The sources of the zero-shot row: `sources` with its first seed only.
fn zero_shot_sources(sources: &Sources, runs: &[tram_trainer::config::RunConfig]) -> Sources {
    let mut s = sources.clone();
    if let Some(z) = runs.iter().find(|r| r.name == ZERO_SHOT) {
        s.sets.push(format!("seeds=[{}]", z.seeds()[0]));
    }
    s
}

/// Rebuild `quickstart.{md,csv,json,svg,png}` from the results already under `out` (every
/// row found there); returns the table and the files written.
pub fn rebuild(out: &Path) -> Result<(table::QuickTable, Vec<PathBuf>)> {
    let results: Vec<tram_trainer::results::RunResult> = tram_trainer::results::collect(out)?.into_iter().map(|(_, r)| r).collect();
    let train_domain = results
        .first()
        .and_then(|r| r.config.get("lm").and_then(|l| l.get("train_domain")).and_then(|d| d.as_str()).map(String::from))
        .with_context(|| format!("no quickstart results under {}", out.display()))?;
    let quick = table::QuickTable::from_results(&train_domain, &results)?;
    let mut files = quick.write(out)?;
    files.extend(plot::draw(&quick, out)?);
    Ok((quick, files))
}

/// Options of [`pretrain`].
#[derive(Clone, Debug, Default)]
pub struct PretrainOptions {
    /// The pretraining config (`None`: the bundled `configs/quickstart/pretrain.toml`).
    pub config: Option<PathBuf>,
    /// `key=value` overrides.
    pub sets: Vec<String>,
    /// Where to install the pretrained model (`None`: don't; the model stays in the run's
    /// output directory).
    pub install: Option<PathBuf>,
}

/// Pretrain the quickstart model: `tram lm` with the pretraining config (a random-init GPT-2
/// trained on the mixture of every domain), then copy the selected model (`config.json`,
/// `model.safetensors`, `tokenizer.json`) to `install`. Returns the run's model directory.
pub fn pretrain(opts: &PretrainOptions, control: &Control, registry: &tram::Registry) -> Result<PathBuf> {
    let config = opts.config.clone().unwrap_or_else(|| repo_path(PRETRAIN_CONFIG));
    let sources = Sources { file: Some(config), sets: opts.sets.clone(), env: None };
    let runs = sources.resolve(&[], registry)?;
    if runs.len() != 1 {
        bail!("the pretraining config must describe one run, found {}", runs.len());
    }
    let summary = tram_trainer::cli::run_sources(App::Lm, &sources, &[], false, control, registry)?;
    if summary.interrupted {
        bail!("interrupted: run the same command with --resume to continue (or --force to start over)");
    }
    if !summary.failures.is_empty() {
        bail!("pretraining failed: {}", summary.failures.join("; "));
    }
    for t in &summary.tables {
        println!("{t}");
    }
    let run = &runs[0];
    let model = run.dir(run.seeds()[0]).join(tram_trainer::trainer::MODEL_DIR);
    if let Some(dest) = &opts.install {
        std::fs::create_dir_all(dest).with_context(|| format!("creating {}", dest.display()))?;
        for f in ["model.safetensors", "tokenizer.json", "config.json"] {
            std::fs::copy(model.join(f), dest.join(f)).with_context(|| format!("copying {f} into {}", dest.display()))?;
        }
    }
    Ok(model)
}
