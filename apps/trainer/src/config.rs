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

use crate::error::{Error, Result};
use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Map};
use figment::{Figment, Metadata, Profile, Provider};
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
    /// The pretrained model: a hub id `org/name[@revision]` or a local directory in hub layout.
    pub model: String,
    /// Where the weights start: `pretrained` (read from `model`) or `random` (a fresh
    /// initialisation of the architecture `model`'s config.json describes, seeded by the run's
    /// seed: pretraining from scratch; GPT-2 only; no weights file is needed).
    #[serde(skip_serializing_if = "ModelInit::is_pretrained")]
    pub init: ModelInit,
    /// The training data: a hub dataset id `org/name[@revision]` or a local directory of
    /// parquet / JSON-lines files with the hub dataset's columns.
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
    /// Parameter dtype: `f32` or `bf16` (`f16` is refused: see [`crate::dtype`]).
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
    /// Which settings the paper states and which are this project's choices (recorded in
    /// each run's `results.json`, see [`Provenance`]).
    #[serde(skip_serializing_if = "Provenance::is_empty")]
    pub provenance: Provenance,
    /// Rows of the paper table: `[[runs]]` with `name`, optional `label` and overrides.
    pub runs: Vec<Value>,
}

/// Where a config's values come from: keys (dotted paths such as `train.steps`, or
/// `optimizer.<component>.<parameter>` such as `optimizer.ball.rho` for a component default)
/// whose values the paper states, and keys whose values it does not state (our choices).
/// Each run's `results.json` records both with the run's values under `provenance`, and a key
/// of either list that `TRAM_*` variables or `--set` changed under `provenance.changed` (with
/// the source): such a value is neither the paper's nor the config's choice.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Provenance {
    /// Keys whose values come from the paper.
    pub paper: Vec<String>,
    /// Keys whose values the paper does not state: chosen here.
    pub ours: Vec<String>,
    /// Keys of `paper` or `ours` given by `TRAM_*` variables or `--set`, with that source
    /// (filled in when the config is resolved; never read from a file).
    #[serde(skip_deserializing, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub changed: std::collections::BTreeMap<String, String>,
}

impl Provenance {
    /// Whether nothing is marked.
    pub fn is_empty(&self) -> bool {
        self.paper.is_empty() && self.ours.is_empty()
    }

    /// The `provenance` object of a run's `results.json`: `{paper: {key: value}, ours: {key:
    /// value}, changed: {key: {value, was, by}}}`, the values taken from `config` (the run's
    /// config as JSON) or, for a component parameter the config leaves at its default, from
    /// `optimizer` (`Optimizer::describe()`). `Null` when nothing is marked. A key whose
    /// component the run's composition does not use is left out.
    pub fn record(&self, config: &Value, optimizer: &Value) -> Value {
        if self.is_empty() {
            return Value::Null;
        }
        let mut out = serde_json::json!({"paper": {}, "ours": {}});
        let mut changed = serde_json::Map::new();
        for (bucket, keys) in [("paper", &self.paper), ("ours", &self.ours)] {
            for key in keys {
                let Some(value) = lookup(config, key).or_else(|| component_param(optimizer, key)).filter(|v| !v.is_null()) else {
                    continue;
                };
                match self.changed.get(key) {
                    Some(by) => {
                        changed.insert(key.clone(), serde_json::json!({"value": value, "was": bucket, "by": by}));
                    }
                    None => {
                        out[bucket][key] = value;
                    }
                }
            }
        }
        if !changed.is_empty() {
            out["changed"] = Value::Object(changed);
        }
        out
    }
}

/// The value at a dotted key path (`train.steps`, `optimizer.schedule`) of a JSON object.
fn lookup(v: &Value, key: &str) -> Option<Value> {
    let mut node = v;
    for part in key.split('.') {
        node = node.as_object()?.get(part)?;
    }
    (!node.is_null()).then(|| node.clone())
}

/// `optimizer.<component>.<param>` in an optimizer description: the `params` (or penalty
/// settings) of the part named `<component>`.
fn component_param(desc: &Value, key: &str) -> Option<Value> {
    let rest = key.strip_prefix("optimizer.")?;
    let (component, param) = rest.rsplit_once('.')?;
    let component = component.trim_matches('"');
    // `reg:<region>` is a penalty: its weight is in the penalty settings of that region.
    let (name, fields): (&str, &[&str]) = match component.strip_prefix("reg:") {
        Some(region) => (region, &["penalty"]),
        None => (component, &["params", "settings"]),
    };
    fn find(v: &Value, name: &str, fields: &[&str], param: &str) -> Option<Value> {
        match v {
            Value::Object(m) => {
                if m.get("name").and_then(Value::as_str) == Some(name) {
                    if let Some(x) = fields.iter().find_map(|k| m.get(*k).and_then(|p| p.get(param))) {
                        return Some(x.clone());
                    }
                }
                m.values().find_map(|x| find(x, name, fields, param))
            }
            Value::Array(a) => a.iter().find_map(|x| find(x, name, fields, param)),
            _ => None,
        }
    }
    find(desc, name, fields, param)
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
            provenance: Provenance::default(),
            runs: Vec::new(),
        }
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

/// `tram lm`: cross-domain language modelling on M2D2 (paper Table 4).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LmConfig {
    /// The training domain (a dataset config / subset name, or a sub-directory of a local dataset).
    pub train_domain: String,
    /// Column label of the training domain in the table (defaults to `train_domain`).
    pub train_label: Option<String>,
    /// More domains whose training and validation splits are mixed with the training
    /// domain's (pretraining on a mixture); their test splits are in-domain columns.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mix_domains: Vec<String>,
    /// The unseen test domains, in table order.
    pub test_domains: Vec<String>,
    /// Column labels of the test domains (same length as `test_domains`, or empty).
    pub test_labels: Vec<String>,
    /// Token block length (1024 in the paper).
    pub block_size: usize,
    /// How documents become blocks: `"run_clm"` (the default; transformers' `run_clm.py`,
    /// M2D2's recipe: line breaks kept, no end-of-text token, non-overlapping blocks of
    /// `block_size` tokens) or `"lines"` (lines stripped, blank lines dropped, end-of-text
    /// after each, blocks of `block_size + 1` overlapping by one). See `tram_data::lm::Protocol`.
    pub protocol: tram_data::lm::Protocol,
    /// Where tokenised splits are cached (memory-mapped token files reused by every row,
    /// seed and later run); unset: `<out>/token-cache`. A relative path is relative to the
    /// working directory, like `out`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_dir: Option<PathBuf>,
    /// Evaluate on at most this many blocks of each validation and test split, evenly spaced
    /// through it (quick runs; unset: every block).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_eval_blocks: Option<usize>,
    /// The text column.
    pub text_column: String,
    /// Split names.
    pub train_split: String,
    /// Validation split of the training domain (model selection).
    pub valid_split: String,
    /// Test split of every domain.
    pub test_split: String,
}

impl Default for LmConfig {
    fn default() -> Self {
        Self {
            train_domain: String::new(),
            train_label: None,
            mix_domains: Vec::new(),
            test_domains: Vec::new(),
            test_labels: Vec::new(),
            block_size: 1024,
            protocol: tram_data::lm::Protocol::RunClm,
            cache_dir: None,
            max_eval_blocks: None,
            text_column: "text".into(),
            train_split: "train".into(),
            valid_split: "validation".into(),
            test_split: "test".into(),
        }
    }
}

/// `tram xnli`: zero-shot cross-lingual NLI (paper Table 5).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct XnliConfig {
    /// English training data's config / subset (`default` for `nyu-mll/multi_nli`; empty: none).
    pub train_subset: String,
    /// Training split.
    pub train_split: String,
    /// The dataset of the English validation set (model selection), hub id or local
    /// directory; empty: `data`. The paper selects on XNLI's English validation split
    /// (`facebook/xnli`, config `en`, split `validation`: 2,490 rows, its Table 8's 2.5K).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub valid_data: String,
    /// Config / subset of the validation set; unset: `train_subset` when the validation set
    /// comes from `data`, else none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub valid_subset: Option<String>,
    /// Validation split (model selection; empty: none, the final model is evaluated).
    pub valid_split: String,
    /// The evaluation dataset (XNLI), hub id or local directory.
    pub test_data: String,
    /// Test split of the evaluation dataset.
    pub test_split: String,
    /// Languages of the evaluation dataset (its configs / subsets), in table order; the first
    /// one that equals `source_language` is the in-language column.
    pub languages: Vec<String>,
    /// The training language (excluded from the zero-shot average).
    pub source_language: String,
    /// Columns.
    pub premise_column: String,
    /// Hypothesis column.
    pub hypothesis_column: String,
    /// Label column (0 entailment, 1 neutral, 2 contradiction; rows with -1 are skipped).
    pub label_column: String,
    /// Number of classes of the new head.
    pub num_labels: usize,
    /// Maximum tokens of a premise–hypothesis pair (truncated beyond).
    pub max_length: usize,
    /// Test sets that come from elsewhere than `test_data` / config `<language>` /
    /// `test_split`, by language: `{ de = { data = "org/name", subset = "de", split = "test" } }`
    /// (a field left out keeps its default). Each key must be one of `languages`.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub test_sets: std::collections::BTreeMap<String, SetSource>,
}

/// Where one evaluation set comes from; an empty field keeps the app's default.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SetSource {
    /// The dataset, hub id or local directory.
    pub data: String,
    /// Its config / subset.
    pub subset: Option<String>,
    /// Its split.
    pub split: String,
}

impl Default for XnliConfig {
    fn default() -> Self {
        Self {
            train_subset: "default".into(),
            train_split: "train".into(),
            valid_data: String::new(),
            valid_subset: None,
            valid_split: "validation_matched".into(),
            test_data: "facebook/xnli".into(),
            test_split: "test".into(),
            languages: ["en", "ar", "bg", "de", "el", "es", "fr", "hi", "ru", "sw", "th", "tr", "ur", "vi", "zh"]
                .map(String::from)
                .to_vec(),
            source_language: "en".into(),
            premise_column: "premise".into(),
            hypothesis_column: "hypothesis".into(),
            label_column: "label".into(),
            num_labels: 3,
            max_length: 128,
            test_sets: Default::default(),
        }
    }
}

/// `tram vision`: cross-dataset image classification (paper Table 3).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct VisionConfig {
    /// Dataset config / subset (`default` when the dataset has one).
    pub subset: String,
    /// The dataset holding the test split, when it is another repository than `data`
    /// (Stanford Cars on the hub); empty: `data`.
    pub test_data: String,
    /// Column label of the dataset in the table (defaults to `data`).
    pub dataset_label: Option<String>,
    /// Training split.
    pub train_split: String,
    /// Validation split (empty: none; model selection then uses the final model).
    pub valid_split: String,
    /// Test split (top-1 accuracy is reported on it).
    pub test_split: String,
    /// Image column.
    pub image_column: String,
    /// Label column.
    pub label_column: String,
    /// Number of classes of the new head (0: from the data's largest label + 1).
    pub num_labels: usize,
    /// Side of the square model input (defaults to the model's `image_size`).
    pub image_size: Option<usize>,
    /// Per-channel normalisation mean (default: the model's `preprocessor_config.json`, else 0.5).
    pub mean: Option<Vec<f32>>,
    /// Per-channel normalisation std (default: the model's `preprocessor_config.json`, else 0.5).
    pub std: Option<Vec<f32>>,
    /// Random horizontal flips of training images.
    pub hflip: bool,
}

impl Default for VisionConfig {
    fn default() -> Self {
        Self {
            subset: "default".into(),
            test_data: String::new(),
            dataset_label: None,
            train_split: "train".into(),
            valid_split: String::new(),
            test_split: "test".into(),
            image_column: "img".into(),
            label_column: "label".into(),
            num_labels: 0,
            image_size: None,
            mean: None,
            std: None,
            hflip: true,
        }
    }
}

/// A provider of `key.path = value` pairs (environment variables or `--set` overrides);
/// values are parsed as TOML (`3e-5` is a float, `[1, 2]` an array, `true` a bool) and kept as
/// strings when they are not TOML.
#[derive(Clone, Debug)]
pub struct Overrides {
    name: String,
    pairs: Vec<(String, String)>,
}

impl Overrides {
    /// `--set key=value` strings.
    pub fn sets<S: AsRef<str>>(sets: &[S]) -> Result<Self> {
        let mut pairs = Vec::new();
        for s in sets {
            let s = s.as_ref();
            let (k, v) =
                s.split_once('=').ok_or_else(|| Error::Config(format!("--set `{s}`: expected `key=value`, e.g. `train.steps=100`")))?;
            let k = k.trim();
            if k.is_empty() || k.split('.').any(str::is_empty) {
                return Err(Error::Config(format!("--set `{s}`: `{k}` is not a key path such as `optimizer.lr`")));
            }
            pairs.push((k.to_string(), v.trim().to_string()));
        }
        Ok(Self { name: "--set".into(), pairs })
    }

    /// The `TRAM_*` environment variables (`TRAM_OPTIMIZER__LR=3e-5` sets `optimizer.lr`).
    pub fn env() -> Self {
        Self::env_from(std::env::vars())
    }

    /// [`Overrides::env`] from explicit variables (tests).
    pub fn env_from(vars: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut pairs: Vec<(String, String)> = vars
            .into_iter()
            .filter_map(|(k, v)| {
                if ENV_RESERVED.contains(&k.as_str()) {
                    return None;
                }
                let rest = k.strip_prefix(ENV_PREFIX)?;
                (!rest.is_empty()).then(|| (rest.to_ascii_lowercase().replace("__", "."), v))
            })
            .collect();
        pairs.sort();
        Self { name: "TRAM_* environment variables".into(), pairs }
    }

    /// Whether there is nothing to override.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// The keys given a whole table (`optimizer.schedule={kind="constant"}`): such a value
    /// replaces the table of the earlier sources instead of being merged into it.
    fn tables(&self) -> Vec<String> {
        self.pairs.iter().filter(|(_, raw)| matches!(toml_value(raw), Some(toml::Value::Table(_)))).map(|(k, _)| k.clone()).collect()
    }

    fn dict(&self) -> Result<serde_json::Map<String, Value>> {
        let mut root = serde_json::Map::new();
        for (key, raw) in &self.pairs {
            if let Some((at, v)) = toml_value(raw).as_ref().and_then(|t| non_finite(t, key)) {
                return Err(Error::Config(format!(
                    "{}: key `{at}` = {v}: a setting must be a finite number (nan and inf are not values of any setting; quote a word: `{key}=\"{raw}\"`)",
                    self.name
                )));
            }
            let value = parse_value(raw);
            let parts: Vec<&str> = key.split('.').collect();
            let mut node = &mut root;
            for (i, p) in parts.iter().enumerate() {
                if i + 1 == parts.len() {
                    node.insert(p.to_string(), value.clone());
                } else {
                    let entry = node.entry(p.to_string()).or_insert_with(|| Value::Object(Default::default()));
                    if !entry.is_object() {
                        return Err(Error::Config(format!(
                            "{}: `{key}` sets a key inside `{}`, which is also given a value",
                            self.name,
                            parts[..=i].join(".")
                        )));
                    }
                    node = entry.as_object_mut().expect("checked");
                }
            }
        }
        Ok(root)
    }
}

/// A value given as text: TOML when it parses (numbers, booleans, arrays, inline tables),
/// else the text itself.
pub fn parse_value(raw: &str) -> Value {
    toml_value(raw).and_then(|v| serde_json::to_value(v).ok()).unwrap_or_else(|| Value::String(raw.to_string()))
}

/// `raw` as a TOML value, if it is one.
fn toml_value(raw: &str) -> Option<toml::Value> {
    toml::from_str::<toml::Table>(&format!("v = {}", raw.trim())).ok()?.remove("v")
}

/// The key path (under `at`) and value of the first NaN or ±∞ inside `v`. JSON, which the
/// config passes through on its way to the optimizer's component tables, has no such numbers:
/// they would become `null`, read as "unset", and the default would silently replace them.
fn non_finite(v: &toml::Value, at: &str) -> Option<(String, f64)> {
    let join = |k: &str| if at.is_empty() { k.to_string() } else { format!("{at}.{k}") };
    match v {
        toml::Value::Float(f) if !f.is_finite() => Some((at.to_string(), *f)),
        toml::Value::Table(t) => t.iter().find_map(|(k, v)| non_finite(v, &join(k))),
        toml::Value::Array(a) => a.iter().enumerate().find_map(|(i, v)| non_finite(v, &format!("{at}[{i}]"))),
        _ => None,
    }
}

impl Provider for Overrides {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name.clone())
    }
    fn data(&self) -> std::result::Result<Map<Profile, Dict>, figment::Error> {
        let dict = self.dict().map_err(|e| figment::Error::from(e.to_string()))?;
        Serialized::defaults(Value::Object(dict)).data()
    }
}

/// A provider without some of its keys: `paths` (dotted) are removed from its data. A table
/// given whole by a later source (`--set 'optimizer.schedule={kind="constant"}'`) replaces the
/// table of the earlier ones this way; figment alone would merge the two, keeping e.g. the
/// file's `warmup` under the new `kind`. A single key (`--set optimizer.schedule.kind=constant`)
/// is still merged into the table it belongs to.
struct Without<P> {
    inner: P,
    paths: Vec<String>,
}

impl<P: Provider> Provider for Without<P> {
    fn metadata(&self) -> Metadata {
        self.inner.metadata()
    }
    fn data(&self) -> std::result::Result<Map<Profile, Dict>, figment::Error> {
        let mut data = self.inner.data()?;
        for dict in data.values_mut() {
            for path in &self.paths {
                remove_path(dict, &path.split('.').collect::<Vec<_>>());
            }
        }
        Ok(data)
    }
    fn profile(&self) -> Option<Profile> {
        self.inner.profile()
    }
}

fn remove_path(d: &mut Dict, parts: &[&str]) {
    match parts {
        [] => {}
        [last] => {
            d.remove(*last);
        }
        [first, rest @ ..] => {
            if let Some(figment::value::Value::Dict(_, inner)) = d.get_mut(*first) {
                remove_path(inner, rest);
            }
        }
    }
}

/// A run overlay: the keys of one `[[runs]]` entry.
#[derive(Clone, Debug)]
struct RunOverlay {
    name: String,
    values: serde_json::Map<String, Value>,
}

/// How the metadata of a [`RunOverlay`] is named.
const RUN_OVERLAY_PREFIX: &str = "[[runs]] entry";

impl Provider for RunOverlay {
    fn metadata(&self) -> Metadata {
        Metadata::named(format!("{RUN_OVERLAY_PREFIX} `{}`", self.name))
    }
    fn data(&self) -> std::result::Result<Map<Profile, Dict>, figment::Error> {
        Serialized::defaults(Value::Object(self.values.clone())).data()
    }
}

/// One resolved run: its name, table label and configuration.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// The run name (directory name under `out`).
    pub name: String,
    /// Row label in the table.
    pub label: String,
    /// The configuration.
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

/// Where a configuration comes from.
#[derive(Clone, Debug, Default)]
pub struct Sources {
    /// The TOML file, if any.
    pub file: Option<PathBuf>,
    /// `--set key=value` overrides.
    pub sets: Vec<String>,
    /// Environment variables (`None`: the process environment).
    pub env: Option<Vec<(String, String)>>,
}

impl Sources {
    fn env(&self) -> Overrides {
        match &self.env {
            Some(v) => Overrides::env_from(v.clone()),
            None => Overrides::env(),
        }
    }

    /// The defaults and the file, without the tables that `replaced` names (given whole by a
    /// later source, see [`Without`]).
    fn base(&self, replaced: &[String]) -> Result<Figment> {
        let mut f = Figment::from(Without { inner: Serialized::defaults(Config::default()), paths: replaced.to_vec() });
        if let Some(path) = &self.file {
            if !path.is_file() {
                return Err(Error::Config(format!("config file {} does not exist", path.display())));
            }
            // Parse first: figment reports TOML syntax errors without the line otherwise.
            let text = std::fs::read_to_string(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
            let table = toml::from_str::<toml::Table>(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
            if let Some((at, v)) = non_finite(&toml::Value::Table(table), "") {
                return Err(Error::Config(format!(
                    "{}: key `{at}` = {v}: a setting must be a finite number (nan and inf are not values of any setting)",
                    path.display()
                )));
            }
            f = f.merge(Without { inner: Toml::file_exact(path), paths: replaced.to_vec() });
        }
        Ok(f)
    }

    /// The environment and `--set` overrides, with the figment of every source: a table given
    /// whole by a later source replaces the earlier sources' table (see [`Without`]).
    fn layered(&self, overlay: Option<&RunOverlay>) -> Result<Figment> {
        let (env, sets) = (self.env(), Overrides::sets(&self.sets)?);
        let by_sets = sets.tables();
        let below: Vec<String> = env.tables().into_iter().chain(by_sets.iter().cloned()).collect();
        let mut f = self.base(&below)?;
        if let Some(o) = overlay {
            f = f.merge(Without { inner: o.clone(), paths: below.clone() });
        }
        Ok(f.merge(Without { inner: env, paths: by_sets }).merge(sets))
    }

    /// `plugins` as extracted from `f`, relative ones joined to the config file's directory
    /// when the file (its top level or a `[[runs]]` entry) set them.
    fn plugin_paths(&self, f: &Figment, plugins: Vec<PathBuf>) -> Vec<PathBuf> {
        let from_file = f
            .find_metadata("plugins")
            .is_some_and(|m| matches!(m.source, Some(figment::Source::File(_))) || m.name.starts_with(RUN_OVERLAY_PREFIX));
        match self.file.as_deref().and_then(Path::parent) {
            Some(dir) if from_file => plugins.into_iter().map(|p| if p.is_relative() { dir.join(p) } else { p }).collect(),
            _ => plugins,
        }
    }

    /// The names of the `[[runs]]` of the file (after overrides: `--set runs=[]` clears them).
    pub fn run_names(&self) -> Result<Vec<String>> {
        Ok(self.overlays()?.into_iter().map(|r| r.name).collect())
    }

    fn overlays(&self) -> Result<Vec<RunOverlay>> {
        let f = self.layered(None)?;
        let runs: Vec<Value> = f.extract_inner("runs").map_err(figment_error)?;
        let mut out: Vec<RunOverlay> = Vec::new();
        for (i, r) in runs.into_iter().enumerate() {
            let Value::Object(mut m) = r else {
                return Err(Error::Config(format!("runs[{i}] must be a table with a `name`")));
            };
            let name = match m.remove("name") {
                Some(Value::String(s)) if valid_run_name(&s) => s,
                Some(Value::String(s)) => {
                    return Err(Error::Config(format!("runs[{i}].name `{s}`: use letters, digits, `-`, `_`, `.` (it names a directory)")))
                }
                Some(other) => return Err(Error::Config(format!("runs[{i}].name must be a string, found {other}"))),
                None => return Err(Error::Config(format!("runs[{i}] has no `name`"))),
            };
            if m.contains_key("runs") {
                return Err(Error::Config(format!("runs[{i}] (`{name}`) cannot contain `runs`")));
            }
            if out.iter().any(|o| o.name == name) {
                return Err(Error::Config(format!("two [[runs]] are named `{name}`")));
            }
            out.push(RunOverlay { name, values: m });
        }
        Ok(out)
    }

    /// Resolve the runs named `names` (all `[[runs]]` when empty; a single run named after the
    /// optimizer when the file has no `[[runs]]`).
    pub fn resolve(&self, names: &[String], registry: &tram::Registry) -> Result<Vec<RunConfig>> {
        let overlays = self.overlays()?;
        let build = |overlay: Option<&RunOverlay>| -> Result<Config> {
            let f = self.layered(overlay)?;
            let mut config: Config = f.extract().map_err(figment_error)?;
            config.plugins = self.plugin_paths(&f, std::mem::take(&mut config.plugins));
            explicit_settings(&f, &mut config)?;
            mark_changed(&f, &mut config.provenance)?;
            config.validate(registry)?;
            Ok(config)
        };
        if overlays.is_empty() {
            let config = build(None)?;
            let name = names.first().cloned().unwrap_or_else(|| sanitize(&config.optimizer.name));
            if names.len() > 1 || (names.len() == 1 && !valid_run_name(&name)) {
                return Err(Error::Config(format!(
                    "the config has no [[runs]]; --run can only name the run directory once (got {names:?})"
                )));
            }
            let label = config.label.clone().unwrap_or_else(|| name.clone());
            return Ok(vec![RunConfig { name, label, config }]);
        }
        let selected: Vec<&RunOverlay> = if names.is_empty() {
            overlays.iter().collect()
        } else {
            names
                .iter()
                .map(|n| {
                    overlays.iter().find(|o| &o.name == n).ok_or_else(|| {
                        Error::Config(format!(
                            "no [[runs]] entry is named `{n}`; the config has: {}",
                            overlays.iter().map(|o| o.name.as_str()).collect::<Vec<_>>().join(", ")
                        ))
                    })
                })
                .collect::<Result<_>>()?
        };
        selected
            .into_iter()
            .map(|o| {
                let config = build(Some(o))?;
                let label = config.label.clone().unwrap_or_else(|| o.name.clone());
                Ok(RunConfig { name: o.name.clone(), label, config })
            })
            .collect()
    }
}

/// Which source set `key` in `f`: 0 the defaults, 1 the config file, 2 a `[[runs]]` entry,
/// 3 the `TRAM_*` environment variables, 4 `--set` (later sources win).
fn source_rank(f: &Figment, key: &str) -> u8 {
    let Some(m) = f.find_metadata(key) else { return 0 };
    if m.name.starts_with(RUN_OVERLAY_PREFIX) {
        2
    } else if matches!(m.source, Some(figment::Source::File(_))) {
        1
    } else if m.name == "--set" {
        4
    } else if m.name.starts_with("TRAM_") {
        3
    } else {
        0
    }
}

const SOURCE_NAMES: [&str; 5] = ["the defaults", "the config file", "a [[runs]] entry", "TRAM_* environment variables", "--set"];

/// Checks that need to know which settings were given, not only their values: `seeds = []`
/// (no seed at all) and `train.steps` with `train.epochs` (only one decides a run's length;
/// set by different sources, the later source's key wins and the other is dropped here).
fn explicit_settings(f: &Figment, config: &mut Config) -> Result<()> {
    let seeds = source_rank(f, "seeds");
    if seeds > 0 && config.seeds.is_empty() {
        return Err(Error::Config(format!(
            "key `seeds` (from {}): an empty list runs no seed; give at least one (`seeds = [0, 1, 2]`), or remove `seeds` to run `seed`",
            SOURCE_NAMES[seeds as usize]
        )));
    }
    let mut seen = std::collections::BTreeSet::new();
    if let Some(d) = config.seeds.iter().find(|s| !seen.insert(**s)) {
        return Err(Error::Config(format!("key `seeds`: seed {d} is listed twice (each seed is one run directory)")));
    }
    let (steps, epochs) = (source_rank(f, "train.steps"), source_rank(f, "train.epochs"));
    if steps > 0 && epochs > 0 && config.train.steps.is_some() {
        if steps == epochs {
            return Err(Error::Config(format!(
                "keys `train.steps` and `train.epochs` are both set by {}: a run's length is given by one of them; remove the other",
                SOURCE_NAMES[steps as usize]
            )));
        }
        if epochs > steps {
            tracing::info!(
                "train.epochs = {} from {} overrides train.steps from {}",
                config.train.epochs,
                SOURCE_NAMES[epochs as usize],
                SOURCE_NAMES[steps as usize]
            );
            config.train.steps = None;
        }
    }
    Ok(())
}

/// Check the keys of `provenance` (each marked once, as the paper's or ours) and note which of
/// them `TRAM_*` variables or `--set` gave: their values are no longer the marked ones.
fn mark_changed(f: &Figment, p: &mut Provenance) -> Result<()> {
    let mut seen = std::collections::BTreeSet::new();
    for key in p.paper.iter().chain(&p.ours) {
        if !seen.insert(key.as_str()) {
            return Err(Error::Config(format!(
                "key `provenance`: `{key}` is listed twice (in `paper` and `ours`, or twice in one); a value comes from the paper or is ours"
            )));
        }
        if key.is_empty() || key.split('.').any(str::is_empty) {
            return Err(Error::Config(format!("key `provenance`: `{key}` is not a key path such as `train.steps`")));
        }
    }
    p.changed.clear();
    for key in p.paper.clone().into_iter().chain(p.ours.clone()) {
        // The source of the key's value (a table's is the last source that set any key in
        // it, or the whole table: either changes it). Tables above the key are not asked:
        // `--set train.steps=…` makes `--set` the source of `train`, not of `train.select`.
        let rank = source_rank(f, &key.replace('"', ""));
        if rank >= 3 {
            p.changed.insert(key, SOURCE_NAMES[rank as usize].to_string());
        }
    }
    Ok(())
}

fn valid_run_name(s: &str) -> bool {
    !s.is_empty() && !s.starts_with('.') && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn sanitize(s: &str) -> String {
    let out: String = s.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' }).collect();
    if out.is_empty() {
        "run".into()
    } else {
        out
    }
}

fn figment_error(e: figment::Error) -> Error {
    let msgs: Vec<String> = e
        .into_iter()
        .map(|e| {
            let mut s = e.kind.to_string();
            if !e.path.is_empty() {
                s = format!("key `{}`: {s}", e.path.join("."));
            }
            if let Some(m) = &e.metadata {
                s.push_str(&format!(" (from {})", m.name));
                if let Some(src) = &m.source {
                    s.push_str(&format!(" {src}"));
                }
            }
            s
        })
        .collect();
    Error::Config(msgs.join("; "))
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
        for (k, v) in [
            ("train.max_train_examples", self.train.max_train_examples),
            ("train.max_eval_examples", self.train.max_eval_examples),
            ("lm.max_eval_blocks", self.lm.max_eval_blocks),
            ("vision.image_size", self.vision.image_size),
        ] {
            if v == Some(0) {
                return Err(Error::Config(format!(
                    "key `{k}` = 0: must be at least 1 (0 leaves nothing to train on or to evaluate; leave it out for no limit)"
                )));
            }
        }
        if self.lm.block_size == 0 {
            return bad("lm.block_size", "must be at least 1".into());
        }
        if self.lm.block_size < self.lm.protocol.min_block_size() {
            return bad(
                "lm.block_size",
                format!(
                    "{} is too small for lm.protocol = \"{}\": a block of L tokens predicts L - 1 of them; use at least {}",
                    self.lm.block_size,
                    self.lm.protocol,
                    self.lm.protocol.min_block_size()
                ),
            );
        }
        if self.xnli.max_length < 2 {
            return bad("xnli.max_length", format!("must be at least 2 (a premise and a hypothesis token), got {}", self.xnli.max_length));
        }
        if self.xnli.num_labels < 2 {
            return bad("xnli.num_labels", format!("must be at least 2, got {}", self.xnli.num_labels));
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
        if let Some(lang) = self.xnli.test_sets.keys().find(|l| !self.xnli.languages.contains(l)) {
            return bad(
                &format!("xnli.test_sets.{lang}"),
                format!("`{lang}` is not one of `xnli.languages` ({}); add it there or remove this entry", self.xnli.languages.join(", ")),
            );
        }
        for (k, v) in [("vision.mean", &self.vision.mean), ("vision.std", &self.vision.std)] {
            if let Some(x) = v.as_ref().and_then(|v| v.iter().find(|x| !x.is_finite() || (k == "vision.std" && **x <= 0.0))) {
                return bad(k, format!("{x} is not a valid value (finite; a std must be > 0)"));
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

/// Load the configuration of one run from a file (no `[[runs]]` selection), for library use.
pub fn load(file: Option<&Path>, sets: &[String]) -> Result<Config> {
    let s = Sources { file: file.map(Path::to_path_buf), sets: sets.to_vec(), env: None };
    let mut registry = tram_plugins::registry()?;
    registry.load_env_plugins()?; // components from TRAM_PLUGINS, as the `tram` command does (`plugins` are loaded by `validate`)
    let mut runs = s.resolve(&[], &registry)?;
    Ok(runs.remove(0).config)
}
