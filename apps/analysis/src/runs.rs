//! Analysis of finished runs of `tram lm` / `tram xnli` / `tram vision`: for each run (a
//! `seed-<s>/` directory with `results.json` and the selected model in `model/`), rebuild its
//! evaluation sets from the configuration recorded in `results.json`, load the pretrained model
//! it started from and its saved fine-tuned model, and measure per domain / language
//! (each column of the run's results table):
//!
//! - ε-sharpness of the fine-tuned model ([`crate::sharpness()`]);
//! - linear CKA between the pretrained and the fine-tuned representations ([`crate::cka`]).
//!
//! A run that did not train (`train.steps = 0`, the zero-shot row) is analysed at the
//! pretrained parameters (its CKA is 1).
//!
//! Relative `model` / `data` paths in a run's configuration are resolved from the current
//! directory, as when the run was trained.

use crate::error::{Error, Result};
use crate::report::{self, Report};
use crate::sharpness::{sharpness, SharpnessConfig};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tram::{Batch, Model};
use tram_trainer::apps::App;
use tram_trainer::config::{Config, RunConfig};
use tram_trainer::results::RunResult;

/// What to measure and on which examples.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnalyzeOptions {
    /// The ε-sharpness settings; `sharpness.batch_size` is also the batch size of the
    /// evaluation sets (the runs' `train.eval_batch_size` is replaced by it).
    pub sharpness: SharpnessConfig,
    /// Cut every evaluation set to this many examples (token blocks come from this many
    /// documents for `lm`); `None` keeps each run's own `train.max_eval_examples`.
    pub max_examples: Option<usize>,
    /// Use at most this many batches of every evaluation set (a time budget independent of
    /// document lengths); `None`: all.
    pub max_batches: Option<usize>,
    /// Measure ε-sharpness on only the first this many of those batches (CKA uses them all);
    /// `None`: all.
    pub sharpness_batches: Option<usize>,
    /// Evaluate on this split of every domain / language instead of the run's test split
    /// (`lm.test_split`, `xnli.test_split`, `vision.test_split`); the paper measured
    /// sharpness on the validation sets.
    pub split: Option<String>,
    /// Device for the analysis (`cpu`, `cuda`, …); `None` keeps each run's own.
    pub device: Option<String>,
    /// Further `key=value` overrides of the runs' configurations (e.g. `xnli.languages=["en","de"]`).
    pub sets: Vec<String>,
    /// Measure ε-sharpness.
    pub measure_sharpness: bool,
    /// Measure CKA.
    pub measure_cka: bool,
}

impl Default for AnalyzeOptions {
    fn default() -> Self {
        Self {
            sharpness: SharpnessConfig::default(),
            max_examples: None,
            max_batches: None,
            sharpness_batches: None,
            split: None,
            device: None,
            sets: Vec::new(),
            measure_sharpness: true,
            measure_cka: true,
        }
    }
}

impl AnalyzeOptions {
    /// Small settings for a quick look (the quickstart, a few seconds per run of a small GPT-2
    /// on two CPU cores): per domain at most `batches` batches of 4 examples for CKA, and
    /// ε-sharpness on the first of them with one SGD ascent step (ε = 1e-3, lr 1e-3): a cheap,
    /// first-order probe of the box, comparable across methods measured the same way.
    pub fn quick(batches: usize) -> Self {
        Self {
            sharpness: SharpnessConfig { steps: 1, batch_size: 4, accumulation: 1, ..SharpnessConfig::default() },
            max_batches: Some(batches),
            sharpness_batches: Some(1),
            ..Self::default()
        }
    }
}

/// The measurements on one domain / language of one run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DomainResult {
    /// Domain / language key.
    pub name: String,
    /// Column label.
    pub label: String,
    /// The training domain / language.
    pub in_domain: bool,
    /// Examples (token blocks for `lm`) evaluated (all of them for CKA).
    pub examples: usize,
    /// Prediction rows (tokens for `lm`) of the ε-sharpness measurement.
    pub rows: u64,
    /// `L(θ)` of the fine-tuned model (`NaN` when sharpness was not measured).
    pub loss: f64,
    /// The largest loss found in the ε-box.
    pub max_loss: f64,
    /// ε-sharpness φ.
    pub sharpness: f64,
    /// Linear CKA between pretrained and fine-tuned representations (`NaN` when not measured).
    pub cka: f64,
}

/// The measurements of one run (one seed).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunAnalysis {
    /// The run's directory (`…/<run>/seed-<s>`).
    pub dir: PathBuf,
    /// `lm`, `xnli` or `vision`.
    pub app: String,
    /// Run name.
    pub run: String,
    /// Row label (the method).
    pub label: String,
    /// Row order.
    pub row: usize,
    /// Seed.
    pub seed: u64,
    /// Whether a fine-tuned model was analysed (false: a run that did not train).
    pub fine_tuned: bool,
    /// The composition of the run's optimizer.
    pub composition: String,
    /// Per domain / language, in table order.
    pub domains: Vec<DomainResult>,
    /// Wall-clock seconds of the analysis.
    pub seconds: f64,
    /// The run diverged (a non-finite metric in its final evaluation, `results.json`'s
    /// `diverged`): nothing is measured, its domains hold NaN, and the tables show it as
    /// `diverged`.
    #[serde(default)]
    pub diverged: bool,
    /// Optimizer steps of the run.
    #[serde(default)]
    pub steps: u64,
    /// Steps the run skipped (non-finite loss or gradient).
    #[serde(default)]
    pub skipped_steps: u64,
    /// Steps the run took without ascent.
    #[serde(default)]
    pub no_ascent_steps: u64,
}

/// Every finished run in `dirs`: a directory holding a run's `results.json` is that run;
/// any other directory is searched (a few levels deep) for `seed-*/results.json`.
pub fn find_runs(dirs: &[PathBuf]) -> Result<Vec<(PathBuf, RunResult)>> {
    let mut out: Vec<(PathBuf, RunResult)> = Vec::new();
    for d in dirs {
        if !d.is_dir() {
            return Err(Error::Input(format!("{} is not a directory (give a run directory or an output directory of runs)", d.display())));
        }
        let own = d.join(tram_trainer::trainer::RESULTS_FILE);
        // A run directory's (`seed-*`) own results.json must parse: an unreadable one is an
        // error, not a reason to search below it. Elsewhere a results.json is the table of an
        // `out` directory, and the runs are searched for.
        let seed_dir = d.file_name().is_some_and(|n| n.to_string_lossy().starts_with("seed-"));
        let single = if own.is_file() {
            let bytes = std::fs::read(&own).map_err(|e| Error::Input(format!("reading {}: {e}", own.display())))?;
            match serde_json::from_slice::<RunResult>(&bytes) {
                Ok(r) => Some(r),
                Err(e) if seed_dir => return Err(Error::Input(format!("{}: not a results file ({e})", own.display()))),
                Err(_) => None,
            }
        } else {
            None
        };
        let mut found = match single {
            Some(r) => vec![(d.clone(), r)],
            None => tram_trainer::results::collect(d)?
                .into_iter()
                .map(|(p, r)| (p.parent().map(Path::to_path_buf).unwrap_or_default(), r))
                .collect(),
        };
        found.sort_by(|a, b| (a.1.row, &a.1.run, a.1.seed).cmp(&(b.1.row, &b.1.run, b.1.seed)));
        for f in found {
            let key = std::fs::canonicalize(&f.0).unwrap_or_else(|_| f.0.clone());
            if !out.iter().any(|(p, _)| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()) == key) {
                out.push(f);
            }
        }
    }
    if out.is_empty() {
        return Err(Error::Input(format!(
            "no finished runs (results.json of a seed-* directory) under {}",
            dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
        )));
    }
    Ok(out)
}

fn app_of(name: &str) -> Result<App> {
    App::named(name).ok_or_else(|| Error::Input(format!("results.json names app `{name}`; the analysis knows {}", App::names())))
}

fn set_path(root: &mut Value, key: &str, value: Value) -> Result<()> {
    let parts: Vec<&str> = key.split('.').collect();
    let mut node = root;
    for (i, p) in parts.iter().enumerate() {
        let obj = node.as_object_mut().ok_or_else(|| Error::Input(format!("`{key}`: `{}` is not a table", parts[..i].join("."))))?;
        if i + 1 == parts.len() {
            obj.insert(p.to_string(), value);
            return Ok(());
        }
        node = obj.entry(p.to_string()).or_insert_with(|| Value::Object(Default::default()));
    }
    Ok(())
}

/// The configuration to rebuild a run's evaluation sets with: the run's own (from its
/// `results.json`), without training data, with the analysis's batch size, example cap,
/// split, device and overrides.
pub fn analysis_config(result: &RunResult, opts: &AnalyzeOptions) -> Result<RunConfig> {
    let app = app_of(&result.app)?;
    let mut v = result.config.clone();
    if !v.is_object() {
        return Err(Error::Input(format!("results.json of run `{}` seed {} holds no configuration", result.run, result.seed)));
    }
    set_path(&mut v, "train.evaluate_only", Value::Bool(true))?;
    set_path(&mut v, "train.eval_batch_size", Value::from(opts.sharpness.batch_size))?;
    if let Some(n) = opts.max_examples {
        set_path(&mut v, "train.max_eval_examples", Value::from(n))?;
    }
    if let Some(split) = &opts.split {
        set_path(&mut v, &format!("{}.test_split", app.name()), Value::from(split.clone()))?;
    }
    if let Some(d) = &opts.device {
        set_path(&mut v, "device", Value::from(d.clone()))?;
    }
    for s in &opts.sets {
        let (k, raw) = s.split_once('=').ok_or_else(|| Error::Input(format!("--set `{s}`: expected `key=value`")))?;
        set_path(&mut v, k.trim(), tram_trainer::config::parse_value(raw.trim()))?;
    }
    let config: Config = serde_json::from_value(v).map_err(|e| {
        Error::Input(format!("the configuration of run `{}` seed {} (with the analysis overrides): {e}", result.run, result.seed))
    })?;
    Ok(RunConfig { name: result.run.clone(), label: result.label.clone(), config })
}

/// One evaluation set as the analysis uses it: its batches and the pretrained model's
/// representations of them.
struct SetData {
    name: String,
    label: String,
    in_domain: bool,
    batches: Vec<Batch>,
    pretrained: Option<Tensor>,
}

/// Evaluation sets and pretrained representations, shared by the runs whose configurations
/// build the same sets from the same pretrained model (seeds and methods of one experiment).
#[derive(Default)]
pub struct Cache {
    entries: Vec<(String, std::rc::Rc<Vec<SetData>>)>,
}

/// What decides the evaluation sets and the pretrained representations of a run: its
/// configuration without the keys that only change training.
fn cache_key(app: &str, run: &RunConfig) -> String {
    let mut v = run.config.to_json();
    if let Some(m) = v.as_object_mut() {
        for k in ["out", "seed", "seeds", "label", "optimizer"] {
            m.remove(k);
        }
        let (eval_batch, max_eval) = (run.config.train.eval_batch_size, run.config.train.max_eval_examples);
        m.insert("train".into(), serde_json::json!({"eval_batch_size": eval_batch, "max_eval_examples": max_eval}));
    }
    format!("{app}:{v}")
}

fn set_data(prepared: &tram_trainer::apps::Prepared, opts: &AnalyzeOptions) -> Result<Vec<SetData>> {
    let pre = prepared.model.as_ref();
    prepared
        .data
        .tests
        .iter()
        .map(|set| {
            let mut batches = Vec::new();
            for b in set.source.batches() {
                if opts.max_batches.is_some_and(|m| batches.len() >= m) {
                    break;
                }
                batches.push(b?);
            }
            if batches.is_empty() {
                return Err(Error::Input(format!("evaluation set `{}` has no examples", set.name)));
            }
            let pretrained =
                if opts.measure_cka { Some(crate::cka::representations(pre, &pre.params().detached(), &batches)?) } else { None };
            Ok(SetData { name: set.name.clone(), label: set.label.clone(), in_domain: set.in_domain, batches, pretrained })
        })
        .collect()
}

/// Analyse one finished run (its directory and `results.json`).
pub fn analyze_run(dir: &Path, result: &RunResult, opts: &AnalyzeOptions) -> Result<RunAnalysis> {
    analyze_run_cached(dir, result, opts, &mut Cache::default())
}

/// [`analyze_run`], reusing the evaluation sets and pretrained representations in `cache`.
pub fn analyze_run_cached(dir: &Path, result: &RunResult, opts: &AnalyzeOptions, cache: &mut Cache) -> Result<RunAnalysis> {
    let started = Instant::now();
    let app = app_of(&result.app)?;
    let composition = result.optimizer.get("composition").and_then(Value::as_str).unwrap_or_default().to_string();
    if result.is_diverged() {
        // A diverged model has no meaningful loss surface or representations: recorded, not measured.
        tracing::warn!(run = %result.run, seed = result.seed, dir = %dir.display(), "the run diverged: not measured (shown as `diverged`)");
        let domains = result
            .columns
            .iter()
            .map(|c| DomainResult {
                name: c.name.clone(),
                label: c.label.clone(),
                in_domain: c.in_domain,
                examples: 0,
                rows: 0,
                loss: f64::NAN,
                max_loss: f64::NAN,
                sharpness: f64::NAN,
                cka: f64::NAN,
            })
            .collect();
        return Ok(RunAnalysis {
            dir: dir.to_path_buf(),
            app: result.app.clone(),
            run: result.run.clone(),
            label: result.label.clone(),
            row: result.row,
            seed: result.seed,
            fine_tuned: result.steps > 0,
            composition,
            domains,
            seconds: started.elapsed().as_secs_f64(),
            diverged: true,
            steps: result.steps,
            skipped_steps: result.skipped_steps,
            no_ascent_steps: result.no_ascent_steps,
        });
    }
    let run = analysis_config(result, opts)?;
    let model_dir = dir.join(tram_trainer::trainer::MODEL_DIR);
    let fine: Option<Box<dyn tram_models::Pretrained>> = if model_dir.join("config.json").is_file() {
        let opts = tram_models::LoadOptions {
            dtype: tram_trainer::dtype(&run.config.dtype)?,
            device: tram_trainer::device(&run.config.device)?,
            seed: result.seed,
            num_labels: None,
        };
        Some(tram_hub::load_model(&tram_hub::ModelSource::local(&model_dir), &opts)?)
    } else if result.steps == 0 {
        None
    } else {
        return Err(Error::Input(format!(
            "{}: run `{}` seed {} trained {} steps but its selected model is missing (no model/config.json)",
            dir.display(),
            result.run,
            result.seed,
            result.steps
        )));
    };
    let key = cache_key(app.name(), &run);
    let cached = cache.entries.iter().find(|(k, _)| k == &key).map(|(_, d)| d.clone());
    // A run that did not train is measured on the pretrained model itself.
    let mut pretrained_model = None;
    let sets = match cached {
        Some(d) if fine.is_some() => d,
        cached => {
            let prepared = app.prepare(&run, result.seed)?;
            let d = match cached {
                Some(d) => d,
                None => {
                    let d = std::rc::Rc::new(set_data(&prepared, opts)?);
                    cache.entries.push((key, d.clone()));
                    d
                }
            };
            pretrained_model = Some(prepared.model);
            d
        }
    };
    let tuned: &dyn Model = match (&fine, &pretrained_model) {
        (Some(m), _) => m.as_ref(),
        (None, Some(m)) => m.as_ref(),
        (None, None) => unreachable!("a run without a fine-tuned model prepares the pretrained one"),
    };
    let mut domains = Vec::new();
    for set in sets.iter() {
        let t = Instant::now();
        let cka = match &set.pretrained {
            // CKA of a single example is undefined.
            Some(x) if x.dim(0)? < 2 => {
                tracing::warn!(set = %set.name, "one example: no CKA");
                f64::NAN
            }
            Some(x) => {
                let y = crate::cka::representations(tuned, &tuned.params().detached(), &set.batches)?;
                crate::cka::linear_cka(x, &y)?
            }
            None => f64::NAN,
        };
        let (loss, max_loss, phi, rows) = if opts.measure_sharpness {
            let n = opts.sharpness_batches.unwrap_or(usize::MAX).clamp(1, set.batches.len());
            let s = sharpness(tuned, &set.batches[..n], &opts.sharpness)?;
            (s.loss, s.max_loss, s.sharpness, s.rows)
        } else {
            (f64::NAN, f64::NAN, f64::NAN, 0)
        };
        tracing::info!(run = %result.run, seed = result.seed, set = %set.name, sharpness = phi, cka, seconds = t.elapsed().as_secs_f64(), "analysed");
        domains.push(DomainResult {
            name: set.name.clone(),
            label: set.label.clone(),
            in_domain: set.in_domain,
            examples: set.batches.iter().map(|b| b.examples()).sum::<tram::Result<usize>>()?,
            rows,
            loss,
            max_loss,
            sharpness: phi,
            cka,
        });
    }
    Ok(RunAnalysis {
        dir: dir.to_path_buf(),
        app: result.app.clone(),
        run: result.run.clone(),
        label: result.label.clone(),
        row: result.row,
        seed: result.seed,
        fine_tuned: fine.is_some(),
        composition,
        domains,
        seconds: started.elapsed().as_secs_f64(),
        diverged: false,
        steps: result.steps,
        skipped_steps: result.skipped_steps,
        no_ascent_steps: result.no_ascent_steps,
    })
}

/// Analyse every finished run in `dirs` (see [`find_runs`]) and aggregate the tables.
pub fn analyze_runs(dirs: &[PathBuf], opts: &AnalyzeOptions) -> Result<Report> {
    if !opts.measure_sharpness && !opts.measure_cka {
        return Err(Error::Input(
            "nothing to analyse: both ε-sharpness and CKA are turned off (--no-sharpness and --no-cka); drop one of them".into(),
        ));
    }
    opts.sharpness.validate()?;
    let found = find_runs(dirs)?;
    let mut runs = Vec::with_capacity(found.len());
    let mut cache = Cache::default();
    for (dir, result) in &found {
        tracing::info!(run = %result.run, seed = result.seed, dir = %dir.display(), "analysing");
        runs.push(analyze_run_cached(dir, result, opts, &mut cache)?);
    }
    Ok(report::report(opts, runs))
}

/// [`analyze_runs`], then write `analysis.md`, `sharpness.csv`, `cka.csv`, `runs.csv` and
/// `analysis.json` into `out`; returns the report (its Markdown is `report.markdown`).
pub fn analyze_to(dirs: &[PathBuf], opts: &AnalyzeOptions, out: &Path) -> Result<Report> {
    let r = analyze_runs(dirs, opts)?;
    report::write(&r, out)?;
    Ok(r)
}

/// Batches per domain the quickstart's analysis uses ([`AnalyzeOptions::quick`]).
pub const QUICK_BATCHES: usize = 2;

/// The quickstart's analysis: the finished runs in `runs` (run directories, or directories
/// above them) with [`AnalyzeOptions::quick`]`(`[`QUICK_BATCHES`]`)`, the files written into
/// `out`. Print [`crate::report::summary`] of the result for a terminal.
pub fn quick_analysis(runs: &[PathBuf], out: &Path) -> Result<Report> {
    analyze_to(runs, &AnalyzeOptions::quick(QUICK_BATCHES), out)
}
