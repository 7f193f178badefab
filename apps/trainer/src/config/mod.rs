//! Run configuration: a TOML file, then `TRAM_*` environment variables, then `--set key=value`
//! overrides, in that order of precedence (later wins), merged with figment and checked
//! strictly: an unknown key or a value of the wrong type is an error naming the key.
//!
//! A config file may list the rows of a paper table as `[[runs]]`: each has a `name`, an
//! optional `label` (the row name in the table) and any keys of the config, which override the
//! file's top-level values for that run (environment variables and `--set` still win).
//!
//! ```toml
//! model = "openai-community/gpt2"
//! data = "machelreid/m2d2"
//! [optimizer]
//! name = "adam"
//! lr = 3e-5
//! [[runs]]
//! name = "tram-prev"
//! label = "TRAM-θ_{t-1}"
//! optimizer = { name = "tram-prev" }
//! ```

mod provenance;
mod sources;

pub use crate::apps::lm::LmConfig;
pub use crate::apps::vision::VisionConfig;
pub use crate::apps::xnli::{SetSource, XnliConfig};
pub use provenance::Provenance;
pub use sources::{parse_value, Overrides, Sources};

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::{Path, PathBuf};
use tram::OptimizerConfig;

/// Prefix of the environment variables read as config keys (`TRAM_TRAIN__STEPS` =
/// `train.steps`: `__` separates levels, single `_` stays part of the key).
pub const ENV_PREFIX: &str = "TRAM_";

/// `TRAM_*` variables that are not config keys (read by other parts of the `tram` command).
pub const ENV_RESERVED: &[&str] = &["TRAM_PLUGINS", "TRAM_LOG"];

/// The whole configuration of one run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The pretrained model: a hub id `org/name[@revision]` or a local directory in hub layout
    /// (a relative one written in a config file is looked up beside the file first, then in
    /// the working directory).
    pub model: String,
    /// Where the weights start: `pretrained` (read from `model`) or `random` (a fresh
    /// initialisation of the architecture `model`'s config.json describes, seeded by the run's
    /// seed: pretraining from scratch; GPT-2 only; no weights file is needed).
    #[serde(skip_serializing_if = "ModelInit::is_pretrained")]
    pub init: ModelInit,
    /// The training data: a hub dataset id `org/name[@revision]` or a local directory of
    /// parquet / JSON-lines files with the hub dataset's columns (a relative one written in a
    /// config file is looked up beside the file first, then in the working directory).
    pub data: String,
    /// Output directory; each run writes into `<out>/<run name>/seed-<seed>/`.
    pub out: PathBuf,
    /// Seed of the run: new-head initialisation, dropout, data order and the noise stream.
    pub seed: u64,
    /// Several seeds (aggregated in the table); when given it replaces `seed`, and must hold at
    /// least one seed, each once.
    pub seeds: Vec<u64>,
    /// `cpu`, `cuda`, `cuda:<n>` or `metal`.
    pub device: String,
    /// Parameter dtype: `f32` or `bf16` (bf16 weights, f32 master weights and optimizer state;
    /// `f16` is refused: see [`crate::dtype`]).
    pub dtype: String,
    /// Row name in the results table (defaults to the run name).
    pub label: Option<String>,
    /// Run-time plugins to load before the optimizer is built: plugin libraries (`cdylib`s made
    /// with `tram::export_plugin!`) or directories, each standing for every shared library in
    /// it. Relative paths written in a config file (top level or a `[[runs]]` entry) are
    /// relative to the file's directory; given with `--set`, to the working directory. They
    /// join `TRAM_PLUGINS` and `--plugin` (a library already loaded from those is not loaded
    /// again). See docs/writing-a-plugin.md.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub plugins: Vec<PathBuf>,
    /// The optimizer: a composition or alias and its component tables (see `configs/optimizers.toml`).
    pub optimizer: OptimizerConfig,
    /// The training loop.
    pub train: TrainConfig,
    /// Settings of `tram lm`.
    pub lm: LmConfig,
    /// Settings of `tram xnli`.
    pub xnli: XnliConfig,
    /// Settings of `tram vision`.
    pub vision: VisionConfig,
    /// Data-parallel training (`mpirun -np W tram …`; see [`DistributedConfig`]).
    #[serde(skip_serializing_if = "DistributedConfig::is_default")]
    pub distributed: DistributedConfig,
    /// Which settings the paper states and which are this project's choices (recorded in
    /// each run's `results.json`, see [`Provenance`]).
    #[serde(skip_serializing_if = "Provenance::is_empty")]
    pub provenance: Provenance,
    /// Rows of the paper table: `[[runs]]` with `name`, optional `label` and overrides.
    pub runs: Vec<Value>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            model: String::new(),
            init: ModelInit::Pretrained,
            data: String::new(),
            out: PathBuf::from("runs"),
            seed: 0,
            seeds: Vec::new(),
            device: "cpu".into(),
            dtype: "f32".into(),
            label: None,
            plugins: Vec::new(),
            optimizer: OptimizerConfig::default(),
            train: TrainConfig::default(),
            lm: LmConfig::default(),
            xnli: XnliConfig::default(),
            vision: VisionConfig::default(),
            distributed: DistributedConfig::default(),
            provenance: Provenance::default(),
            runs: Vec::new(),
        }
    }
}

/// Which data-parallel engine a run uses.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DistributedEngine {
    /// MPI when the process was started by an MPI launcher with more than one rank (the
    /// `OMPI_COMM_WORLD_SIZE`, `PMI_SIZE` or `PMIX_SIZE` environment variable), else one process.
    #[default]
    Auto,
    /// One process, even under `mpirun` (every rank then trains alone).
    Single,
    /// MPI, whatever the environment says (needs the `mpi` feature).
    Mpi,
    /// `distributed.ranks` ranks as threads of this process, each with one candle thread and
    /// its own model replica (on a CPU, faster than one rank whose ops are split over threads).
    Threads,
}

/// Which collective sums the gradients of a data-parallel step.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AllReduce {
    /// MPI, in f64 on the CPU (every device).
    #[default]
    Mpi,
    /// NCCL between GPUs (one process per GPU; needs the `nccl` feature and `device = "cuda"`).
    Nccl,
}

/// `[distributed]`: data-parallel training over the ranks of an MPI job (README
/// "Data-parallel training"). `train.batch_size` is the global micro-batch: each of the W
/// ranks trains on its share of it, and a step equals the single-process step on it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DistributedConfig {
    /// `auto` (MPI when launched by `mpirun` with W > 1), `single`, `mpi` or `threads`.
    pub engine: DistributedEngine,
    /// `global` (every rank perturbs by the ε of the whole global batch: the single-process
    /// step) or `local` (each rank by its own gradient's ε; m-sharpness).
    pub ascent: tram::distributed::AscentScope,
    /// A rank that waits longer than this in one collective (another rank died or hangs) ends
    /// the job with an error naming the call.
    pub timeout_s: f64,
    /// The gradient all-reduce: `mpi` or `nccl`.
    pub allreduce: AllReduce,
    /// Ranks of `engine = "threads"`; 0: as many as the CPU cores allow while splitting the
    /// global micro-batch evenly.
    pub ranks: usize,
}

impl Default for DistributedConfig {
    fn default() -> Self {
        Self { engine: DistributedEngine::Auto, ascent: Default::default(), timeout_s: 600.0, allreduce: AllReduce::Mpi, ranks: 0 }
    }
}

impl DistributedConfig {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// Where a run's weights start.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ModelInit {
    /// The checkpoint's weights.
    #[default]
    Pretrained,
    /// A fresh random initialisation (training from scratch).
    Random,
}

impl ModelInit {
    fn is_pretrained(&self) -> bool {
        *self == ModelInit::Pretrained
    }
}

/// Which parameters the final evaluation uses.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Select {
    /// The parameters with the lowest validation loss on the training domain (language tasks).
    Best,
    /// The final parameters (the vision protocol: no early stopping).
    Last,
}

/// The training loop.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Optimizer steps; `0` evaluates the starting model only. Unset: `epochs` decides. Given
    /// with `epochs` by the same source it is an error; given by different sources, the later
    /// one (file < `[[runs]]` entry < `TRAM_*` < `--set`) decides the run's length.
    pub steps: Option<u64>,
    /// Evaluate the starting model only, whatever `steps` says (the paper's zero-shot rows).
    pub evaluate_only: bool,
    /// Passes over the training data (used when `steps` is unset).
    pub epochs: f64,
    /// Examples (or token blocks) per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step (the effective batch is `batch_size × accumulation`).
    pub accumulation: usize,
    /// Evaluate on the training domain's validation split every this many steps (0: only at the end).
    pub eval_every: u64,
    /// Micro-batch size of evaluation (defaults to `batch_size`).
    pub eval_batch_size: Option<usize>,
    /// Write a checkpoint every this many steps (0: only at the end and on Ctrl-C).
    pub checkpoint_every: u64,
    /// Write a metrics line every this many steps.
    pub log_every: u64,
    /// Model selection for the final evaluation.
    pub select: Select,
    /// Limit every training split to this many examples (documents for lm) — for smoke runs.
    pub max_train_examples: Option<usize>,
    /// Limit every evaluation split to this many examples (documents for lm).
    pub max_eval_examples: Option<usize>,
    /// Show progress bars (on a terminal).
    pub progress: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            steps: None,
            evaluate_only: false,
            epochs: 1.0,
            batch_size: 16,
            accumulation: 1,
            eval_every: 0,
            eval_batch_size: None,
            checkpoint_every: 0,
            log_every: 1,
            select: Select::Best,
            max_train_examples: None,
            max_eval_examples: None,
            progress: true,
        }
    }
}

/// One resolved run: its name, table label and configuration.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// The run name (directory name under `out`).
    pub name: String,
    /// Row label in the table.
    pub label: String,
    /// The run's configuration: the file's values with its `[[runs]]` entry, `TRAM_*` and `--set` applied.
    pub config: Config,
}

impl RunConfig {
    /// The seeds of this run.
    pub fn seeds(&self) -> Vec<u64> {
        if self.config.seeds.is_empty() {
            vec![self.config.seed]
        } else {
            self.config.seeds.clone()
        }
    }
    /// The output directory of one seed.
    pub fn dir(&self, seed: u64) -> PathBuf {
        self.config.out.join(&self.name).join(format!("seed-{seed}"))
    }
}

impl Config {
    /// Check values that parse but cannot work.
    pub fn validate(&self, registry: &tram::Registry) -> Result<()> {
        let bad = |k: &str, why: String| Err(Error::Config(format!("key `{k}`: {why}")));
        if self.train.batch_size == 0 {
            return bad("train.batch_size", "must be at least 1".into());
        }
        if self.train.accumulation == 0 {
            return bad("train.accumulation", "must be at least 1".into());
        }
        if self.train.eval_batch_size == Some(0) {
            return bad("train.eval_batch_size", "must be at least 1".into());
        }
        if self.train.log_every == 0 {
            return bad("train.log_every", "must be at least 1".into());
        }
        if self.train.steps.is_none() && !self.train.evaluate_only && !(self.train.epochs.is_finite() && self.train.epochs > 0.0) {
            return bad(
                "train.epochs",
                format!(
                    "must be in (0, ∞) (finite), got {}; to evaluate the starting model only, set `train.evaluate_only = true`",
                    self.train.epochs
                ),
            );
        }
        limit_at_least_one("train.max_train_examples", self.train.max_train_examples)?;
        limit_at_least_one("train.max_eval_examples", self.train.max_eval_examples)?;
        for app in crate::apps::App::ALL {
            app.spec().validate(self)?;
        }
        let json = self.to_json();
        for key in self.provenance.paper.iter().chain(&self.provenance.ours) {
            let exists = {
                let mut node = Some(&json);
                for part in key.split('.') {
                    node = node.and_then(|n| n.as_object()).and_then(|m| m.get(part));
                }
                node.is_some()
            };
            // A component parameter left at its default is not in the config.
            let component_param = key.starts_with("optimizer.") && key.split('.').count() >= 3;
            if !exists && !component_param {
                return bad(
                    "provenance",
                    format!("`{key}` is not a setting of the config; give key paths such as `train.steps` or `optimizer.ball.rho`"),
                );
            }
        }
        if let (Some(steps), tram::Schedule::Polynomial { warmup, total: 0, .. }) = (self.train.steps, &self.optimizer.schedule) {
            // Legal (the rate is still ramping up when the run ends; short smoke runs such as
            // `tram quickstart --steps 3` do this on purpose), but rarely meant: said, not refused.
            if steps > 0 && *warmup > steps && !self.train.evaluate_only {
                tracing::warn!(
                    "key `optimizer.schedule.warmup`: {warmup} warmup steps exceed the run's {steps} steps (`train.steps`): the \
                     learning rate never reaches `lr` (it ends at {:.3} × lr); lower the warmup if that is not meant",
                    steps as f64 / *warmup as f64
                );
            }
        }
        crate::dtype(&self.dtype)?;
        crate::check_device_name(&self.device)?;
        let registry = self.plugin_registry(registry)?;
        tram::Optimizer::new(&registry, self.optimizer.clone()).map_err(|e| Error::Config(format!("key `optimizer`: {e}")))?;
        Ok(())
    }

    /// `registry` with this config's `plugins` loaded: the registry the run's optimizer is
    /// built from. Libraries `registry` already has (from `TRAM_PLUGINS` or `--plugin`) are
    /// not loaded again; a path that does not load is an error naming the key and the path.
    pub fn plugin_registry<'r>(&self, registry: &'r tram::Registry) -> Result<std::borrow::Cow<'r, tram::Registry>> {
        if self.plugins.is_empty() {
            return Ok(std::borrow::Cow::Borrowed(registry));
        }
        let mut r = registry.clone();
        for path in &self.plugins {
            let bad = |e: tram::Error| Error::Config(format!("key `plugins`: `{}`: {e}", path.display()));
            for file in tram::plugin::plugin_files(path).map_err(bad)? {
                r.load_plugin(&file).map_err(bad)?; // a library already loaded is skipped
            }
        }
        Ok(std::borrow::Cow::Owned(r))
    }

    /// The config as JSON (recorded in results and checkpoints).
    pub fn to_json(&self) -> Value {
        let mut v = serde_json::to_value(self).expect("a Config serialises to JSON (string keys only)");
        if let Some(m) = v.as_object_mut() {
            m.remove("runs");
        }
        v
    }
}

/// An optional limit (`train.max_train_examples`, `lm.max_eval_blocks`, ...): unset is no
/// limit, `0` is refused (it would leave nothing to train on or to evaluate).
pub(crate) fn limit_at_least_one(key: &str, v: Option<usize>) -> Result<()> {
    if v == Some(0) {
        return Err(Error::Config(format!(
            "key `{key}` = 0: must be at least 1 (0 leaves nothing to train on or to evaluate; leave it out for no limit)"
        )));
    }
    Ok(())
}

/// Load the configuration of one run from a file (no `[[runs]]` selection), for library use.
pub fn load(file: Option<&Path>, sets: &[String]) -> Result<Config> {
    let s = Sources { file: file.map(Path::to_path_buf), sets: sets.to_vec(), env: None };
    let mut registry = tram_plugins::registry()?;
    // Components from TRAM_PLUGINS, as the `tram` command loads them (`plugins` are loaded by
    // `validate`): a plugin that does not load is a warning, and an error only for a config
    // that names one of its components (the error then lists it).
    for e in registry.load_env_plugins_lenient() {
        tracing::warn!("{e} (not loaded)");
    }
    let mut runs = s.resolve(&[], &registry)?;
    Ok(runs.remove(0).config)
}
