//! `tram xnli`: XLM-R base with a new classification head trained on English MultiNLI,
//! selected on English validation loss (`xnli.valid_data` / `valid_subset` / `valid_split`:
//! XNLI's English `validation` in the shipped config) and evaluated zero-shot on the XNLI test
//! set in 15 languages (paper Table 5). Each test set may come from another dataset, config or
//! split (`xnli.test_sets`).

use super::lm::Empty;
use super::stream::{examples, Shuffled};
use super::{data_err, data_source, load_options, model_source, Prepared};
use crate::config::RunConfig;
use crate::error::{Error, Result};
use crate::task::{BatchList, EvalSet, TaskData};
use candle_core::Device;
use serde::{Deserialize, Serialize};
use tram_data::nli::PairExample;
use tram_data::DataSource;
use tram_hub::Tokenizer;

/// `tram xnli`: zero-shot cross-lingual NLI (paper Table 5).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct XnliConfig {
    /// English training data's config / subset (`default` for `nyu-mll/multi_nli`; empty: none).
    pub train_subset: String,
    /// Split of `data` the model is fine-tuned on (English MultiNLI `train`).
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
    /// The column holding the premise of a pair.
    pub premise_column: String,
    /// The column holding the hypothesis of a pair.
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

#[allow(clippy::too_many_arguments)]
fn pairs(
    source: &DataSource,
    what_key: &str,
    subset: &str,
    split: &str,
    run: &RunConfig,
    tokenizer: &Tokenizer,
    limit: Option<usize>,
    skipped: &mut crate::task::Skipped,
) -> Result<Vec<PairExample>> {
    let x = &run.config.xnli;
    let what = format!("{what_key} (config `{subset}`, split `{split}`)");
    let mut records = tram_data::load_split(source, split, super::subset(subset)).map_err(data_err(&what))?;
    tracing::info!(data = %what, rows = records.len(), "loaded");
    if let Some(n) = limit {
        records.truncate(n);
    }
    let (examples, skips) =
        tram_data::nli::encode(&records, tokenizer, &x.premise_column, &x.hypothesis_column, &x.label_column, x.max_length)
            .map_err(data_err(&what))?;
    if !skips.is_empty() {
        tracing::warn!(data = %what, %skips, "rows skipped");
        skipped.insert(format!("{subset}/{split}"), skips);
    }
    if let Some(bad) = examples.iter().find(|e| e.label as usize >= x.num_labels) {
        return Err(Error::Data(format!("{what}: label {} is not below xnli.num_labels = {}", bad.label, x.num_labels)));
    }
    if examples.is_empty() {
        return Err(Error::Data(format!("{what}: no usable examples ({} rows, {skips})", records.len())));
    }
    tracing::info!(data = %what, examples = examples.len(), "encoded");
    Ok(examples)
}

fn eval_set(name: &str, label: &str, in_domain: bool, ex: Vec<PairExample>, batch: usize, pad: u32, device: &Device) -> Result<EvalSet> {
    let n = ex.len();
    let batches = ex.chunks(batch).map(|c| tram_data::nli::batch(c, pad, device).map_err(data_err(name))).collect::<Result<Vec<_>>>()?;
    Ok(EvalSet { name: name.into(), label: label.into(), in_domain, source: Box::new(BatchList(batches, n)) })
}

/// Load XLM-R with a new `xnli.num_labels`-way head, its tokenizer, MultiNLI and XNLI.
pub fn prepare(run: &RunConfig, seed: u64) -> Result<Prepared> {
    let cfg = &run.config;
    let x = &cfg.xnli;
    if x.num_labels < 2 {
        return Err(Error::Config(format!("key `xnli.num_labels`: must be at least 2, got {}", x.num_labels)));
    }
    let source = model_source(run)?;
    let files = source.files_from_env();
    let tokenizer_path = files.tokenizer_path()?;
    let tokenizer = tram_hub::load_tokenizer(&tokenizer_path)?;
    let opts = load_options(run, seed, Some(x.num_labels))?;
    let model = tram_hub::load_model_from(&files, &opts)?;
    let pad = tram_data::nli::pad_id(&tokenizer);
    let device = opts.device.clone();
    let eval_batch = cfg.train.eval_batch_size.unwrap_or(cfg.train.batch_size);
    let train_data = data_source("data", &cfg.data)?;
    let evaluate_only = cfg.train.evaluate_only || cfg.train.steps == Some(0);
    let mut skipped = crate::task::Skipped::new();

    let train: Box<dyn crate::task::TrainStream> = if evaluate_only {
        Box::new(Empty)
    } else {
        let ex =
            pairs(&train_data, &cfg.data, &x.train_subset, &x.train_split, run, &tokenizer, cfg.train.max_train_examples, &mut skipped)?;
        let dev = device.clone();
        Box::new(Shuffled::new(
            ex,
            cfg.train.batch_size,
            seed,
            Box::new(move |picked: &[&PairExample], _| tram_data::nli::batch_refs(picked, pad, &dev).map_err(data_err("training batch"))),
            examples,
        )?)
    };
    let valid = if x.valid_split.trim().is_empty() {
        None
    } else {
        // The validation set may come from another dataset (XNLI's English `validation`, as
        // the paper selects on) than the training data.
        let (key, name) = if x.valid_data.trim().is_empty() { ("data", &cfg.data) } else { ("xnli.valid_data", &x.valid_data) };
        let source = if key == "data" { train_data.clone() } else { data_source(key, name)? };
        let subset = match &x.valid_subset {
            Some(s) => s.as_str(),
            None if key == "data" => x.train_subset.as_str(),
            None => "",
        };
        let ex = pairs(&source, name, subset, &x.valid_split, run, &tokenizer, cfg.train.max_eval_examples, &mut skipped)?;
        Some(eval_set(&format!("{}/{}", x.source_language, x.valid_split), "validation", true, ex, eval_batch, pad, &device)?)
    };
    let test_data = data_source("xnli.test_data", &x.test_data)?;
    let mut tests = Vec::new();
    for lang in &x.languages {
        let set = x.test_sets.get(lang).cloned().unwrap_or_default();
        let (data_key, data_name) = if set.data.trim().is_empty() {
            ("xnli.test_data".to_string(), x.test_data.clone())
        } else {
            (format!("xnli.test_sets.{lang}.data"), set.data.clone())
        };
        let source = if set.data.trim().is_empty() { test_data.clone() } else { data_source(&data_key, &data_name)? };
        let subset = set.subset.clone().unwrap_or_else(|| lang.clone());
        let split = if set.split.trim().is_empty() { x.test_split.clone() } else { set.split.clone() };
        let ex = pairs(&source, &data_name, &subset, &split, run, &tokenizer, cfg.train.max_eval_examples, &mut skipped)?;
        let label = lang.chars().next().map(|c| c.to_uppercase().collect::<String>() + &lang[c.len_utf8()..]).unwrap_or_default();
        tests.push(eval_set(lang, &label, lang == &x.source_language, ex, eval_batch, pad, &device)?);
    }
    if tests.is_empty() {
        return Err(Error::Config("key `xnli.languages`: no evaluation language given".into()));
    }
    Ok(Prepared { model, data: TaskData { train, valid, tests, unit: "examples", skipped }, tokenizer: Some(tokenizer_path) })
}

/// The `tram xnli` app.
pub struct Xnli;

impl super::AppSpec for Xnli {
    fn name(&self) -> &'static str {
        "xnli"
    }

    fn about(&self) -> &'static str {
        "Zero-shot cross-lingual NLI: XLM-R on MultiNLI, tested on XNLI (paper Table 5)"
    }

    fn validate(&self, config: &crate::Config) -> Result<()> {
        let x = &config.xnli;
        let bad = |k: &str, why: String| Err(Error::Config(format!("key `{k}`: {why}")));
        if x.max_length < 2 {
            return bad("xnli.max_length", format!("must be at least 2 (a premise and a hypothesis token), got {}", x.max_length));
        }
        if x.num_labels < 2 {
            return bad("xnli.num_labels", format!("must be at least 2, got {}", x.num_labels));
        }
        if let Some(lang) = x.test_sets.keys().find(|l| !x.languages.contains(l)) {
            return bad(
                &format!("xnli.test_sets.{lang}"),
                format!("`{lang}` is not one of `xnli.languages` ({}); add it there or remove this entry", x.languages.join(", ")),
            );
        }
        Ok(())
    }

    fn table_spec(&self, _run: Option<&RunConfig>) -> crate::results::TableSpec {
        crate::results::TableSpec {
            title: "Zero-shot cross-lingual transfer, XNLI (paper Table 5)".into(),
            metric: crate::results::Metric::Accuracy,
            zero_shot_average: true,
            confidence: false,
            corner: "method".into(),
        }
    }

    fn prepare(&self, run: &RunConfig, seed: u64) -> Result<Prepared> {
        prepare(run, seed)
    }
}
