//! `tram lm`: GPT-2 fine-tuned on one M2D2 domain, perplexity on that domain and on unseen
//! domains (paper Table 4). Each domain's split is tokenised once into the on-disk token cache
//! ([`tram_data::token_cache`], under `lm.cache_dir`) by `lm.protocol` (`run_clm`: M2D2's
//! recipe; `lines`: tram's earlier one) and read from there by every row and seed;
//! perplexity is `exp(mean token NLL)` over every block of a split.

use super::stream::{tokens, Shuffled};
use super::{data_err, data_source, load_model, load_options, model_source, Prepared};
use crate::config::RunConfig;
use crate::error::{Error, Result};
use crate::task::{EvalSet, EvalSource, TaskData};
use candle_core::Device;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use tram_data::token_cache::{CacheSpec, TokenCache};
use tram_data::DataSource;
use tram_hub::Tokenizer;

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
    /// The column holding each document's text (`text` in M2D2).
    pub text_column: String,
    /// Training split of every training domain.
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

/// The token cache entry of one domain's split: opened, or built (tokenised once, streamed)
/// when missing or stale. Rows and seeds of a run (and later runs) share it.
#[allow(clippy::too_many_arguments)]
fn blocks(
    source: &DataSource,
    domain: &str,
    split: &str,
    run: &RunConfig,
    tokenizer: &Tokenizer,
    tokenizer_hash: &str,
    limit: Option<usize>,
    skipped: &mut crate::task::Skipped,
) -> Result<Arc<TokenCache>> {
    let lm = &run.config.lm;
    let what = format!("{} (domain `{domain}`, split `{split}`)", run.config.data);
    let files = tram_data::find_split_in(&source.files_from_env(), split, super::subset(domain)).map_err(data_err(&what))?;
    let spec = CacheSpec {
        dir: cache_dir(run),
        label: format!("{domain}-{split}"),
        protocol: lm.protocol,
        block_size: lm.block_size,
        column: lm.text_column.clone(),
        limit,
        tokenizer_hash: tokenizer_hash.to_string(),
    };
    let (cache, _built) = TokenCache::open_or_build(&files, tokenizer, &spec).map_err(data_err(&what))?;
    let skips = cache.skips;
    if skips.invalid_utf8_bytes > 0 {
        tracing::warn!(
            domain,
            split,
            replaced = skips.invalid_utf8_bytes,
            "invalid UTF-8 in the text (binary data or another encoding): bytes replaced by U+FFFD; recorded in results.json"
        );
    }
    if !skips.is_empty() {
        tracing::warn!(domain, split, %skips, "rows skipped");
    }
    if !skips.is_clean() {
        skipped.insert(format!("{domain}/{split}"), skips);
    }
    if cache.is_empty() {
        return Err(Error::Data(format!(
            "{what}: {} documents give {} tokens, not one block of lm.block_size = {} (lm.protocol = \"{}\"); lower lm.block_size or add text",
            cache.documents,
            cache.tokens(),
            lm.block_size,
            lm.protocol
        )));
    }
    tracing::info!(domain, split, documents = cache.documents, blocks = cache.len(), "tokenised");
    Ok(Arc::new(cache))
}

/// The token cache directory of a run: `lm.cache_dir`, or `<out>/token-cache`.
pub fn cache_dir(run: &RunConfig) -> PathBuf {
    run.config.lm.cache_dir.clone().unwrap_or_else(|| run.config.out.join("token-cache"))
}

/// At most `max` blocks (all of them when `max` is `None`), evenly spaced through the blocks
/// of `caches`, as `(entry, block)` pairs.
fn spread(caches: &[Arc<TokenCache>], max: Option<usize>) -> Vec<(usize, usize)> {
    let all: usize = caches.iter().map(|c| c.len()).sum();
    let at = |mut i: usize| {
        for (c, cache) in caches.iter().enumerate() {
            if i < cache.len() {
                return (c, i);
            }
            i -= cache.len();
        }
        unreachable!("block index within the total")
    };
    match max {
        Some(k) if k < all => (0..k).map(|i| at(i * all / k)).collect(),
        _ => (0..all).map(at).collect(),
    }
}

/// Evaluation batches read from token cache entries when they are evaluated (nothing is
/// held in memory between evaluations).
struct CachedBlocks {
    caches: Vec<Arc<TokenCache>>,
    picks: Vec<(usize, usize)>,
    batch: usize,
    device: Device,
    name: String,
}

impl EvalSource for CachedBlocks {
    fn len(&self) -> usize {
        self.picks.len()
    }
    fn shard(&self, rank: usize, world: usize) -> Box<dyn Iterator<Item = Result<tram::Batch>> + '_> {
        let chunks = self.picks.chunks(self.batch).enumerate().filter(move |(i, _)| crate::task::in_shard(*i, rank, world));
        Box::new(chunks.map(|(_, c)| {
            let blocks: Vec<Vec<u32>> = c.iter().map(|&(e, k)| self.caches[e].block(k)).collect();
            tram_data::lm::batch(&blocks, &self.device).map_err(data_err(&self.name))
        }))
    }
}

fn eval_set(
    name: &str,
    label: &str,
    in_domain: bool,
    caches: Vec<Arc<TokenCache>>,
    max: Option<usize>,
    batch: usize,
    device: &Device,
) -> EvalSet {
    let picks = spread(&caches, max);
    let source = CachedBlocks { caches, picks, batch: batch.max(1), device: device.clone(), name: name.to_string() };
    EvalSet { name: name.into(), label: label.into(), in_domain, source: Box::new(source) }
}

/// Load GPT-2, its tokenizer and the M2D2 domains of a run.
pub fn prepare(run: &RunConfig, seed: u64) -> Result<Prepared> {
    let cfg = &run.config;
    let lm = &cfg.lm;
    if lm.train_domain.trim().is_empty() {
        return Err(Error::Config("key `lm.train_domain`: no training domain given".into()));
    }
    if lm.block_size == 0 {
        return Err(Error::Config("key `lm.block_size`: must be at least 1".into()));
    }
    if !lm.test_labels.is_empty() && lm.test_labels.len() != lm.test_domains.len() {
        return Err(Error::Config(format!(
            "key `lm.test_labels`: {} labels for {} test domains; give one per domain or none",
            lm.test_labels.len(),
            lm.test_domains.len()
        )));
    }
    let source = model_source(run)?;
    let files = source.files_from_env();
    let tokenizer_path = files.tokenizer_path()?;
    let tokenizer = tram_hub::load_tokenizer(&tokenizer_path)?;
    let tokenizer_hash = tram_data::token_cache::hash_file(&tokenizer_path).map_err(data_err("the tokenizer"))?;
    let opts = load_options(run, seed, None)?;
    let model = load_model(run, &files, &opts)?;
    let data = data_source("data", &cfg.data)?;
    let device = opts.device.clone();
    let eval_batch = cfg.train.eval_batch_size.unwrap_or(cfg.train.batch_size);

    let evaluate_only = cfg.train.evaluate_only || cfg.train.steps == Some(0);
    let mut skipped = crate::task::Skipped::new();
    // The training domain first, then the domains mixed with it (pretraining on a mixture).
    let trained: Vec<&String> = std::iter::once(&lm.train_domain).chain(&lm.mix_domains).collect();
    for (i, d) in lm.mix_domains.iter().enumerate() {
        if trained[..=i].contains(&d) {
            return Err(Error::Config(format!("key `lm.mix_domains`: `{d}` is listed twice (or is the training domain)")));
        }
    }
    let mut train_caches = Vec::new();
    if !evaluate_only {
        for d in &trained {
            train_caches.push(blocks(
                &data,
                d,
                &lm.train_split,
                run,
                &tokenizer,
                &tokenizer_hash,
                cfg.train.max_train_examples,
                &mut skipped,
            )?);
        }
    }
    let valid = if lm.valid_split.trim().is_empty() {
        None
    } else {
        let mut b = Vec::new();
        for d in &trained {
            b.push(blocks(&data, d, &lm.valid_split, run, &tokenizer, &tokenizer_hash, cfg.train.max_eval_examples, &mut skipped)?);
        }
        let name = if lm.mix_domains.is_empty() {
            format!("{}/{}", lm.train_domain, lm.valid_split)
        } else {
            format!("mixture/{}", lm.valid_split)
        };
        Some(eval_set(&name, "validation", true, b, lm.max_eval_blocks, eval_batch, &device))
    };
    let mut tests = Vec::new();
    let train_label = lm.train_label.clone().unwrap_or_else(|| lm.train_domain.clone());
    for (i, d) in trained.iter().enumerate() {
        let b = blocks(&data, d, &lm.test_split, run, &tokenizer, &tokenizer_hash, cfg.train.max_eval_examples, &mut skipped)?;
        let label = if i == 0 { train_label.clone() } else { d.to_string() };
        tests.push(eval_set(d, &label, true, vec![b], lm.max_eval_blocks, eval_batch, &device));
    }
    for (i, d) in lm.test_domains.iter().enumerate() {
        if trained.contains(&d) {
            return Err(Error::Config(format!(
                "key `lm.test_domains`: `{d}` is a training domain (`lm.train_domain` or `lm.mix_domains`); list only unseen domains"
            )));
        }
        let label = lm.test_labels.get(i).cloned().unwrap_or_else(|| d.clone());
        let b = blocks(&data, d, &lm.test_split, run, &tokenizer, &tokenizer_hash, cfg.train.max_eval_examples, &mut skipped)?;
        tests.push(eval_set(d, &label, false, vec![b], lm.max_eval_blocks, eval_batch, &device));
    }
    let train: Box<dyn crate::task::TrainStream> = if evaluate_only {
        Box::new(Empty)
    } else {
        let dev = device.clone();
        // Items are `(entry, block)` pairs; a batch reads its blocks from the memory map.
        let items: Vec<(u32, u32)> =
            train_caches.iter().enumerate().flat_map(|(e, c)| (0..c.len()).map(move |k| (e as u32, k as u32))).collect();
        Box::new(Shuffled::new(
            items,
            cfg.train.batch_size,
            seed,
            Box::new(move |picked: &[&(u32, u32)], _| {
                let owned: Vec<Vec<u32>> = picked.iter().map(|&&(e, k)| train_caches[e as usize].block(k as usize)).collect();
                tram_data::lm::batch(&owned, &dev).map_err(data_err("training batch"))
            }),
            tokens,
        )?)
    };
    Ok(Prepared { model, data: TaskData { train, valid, tests, unit: "tokens", skipped }, tokenizer: Some(tokenizer_path) })
}

/// The stream of a run that does not train.
pub struct Empty;

impl crate::task::TrainStream for Empty {
    fn next_batch(&mut self) -> Result<tram::Batch> {
        Err(Error::Data("this run does not train (train.steps = 0)".into()))
    }
    fn batches_per_epoch(&self) -> usize {
        0
    }
    fn position(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
    fn restore(&mut self, _: &serde_json::Value) -> Result<()> {
        Ok(())
    }
}

/// The `tram lm` app.
pub struct Lm;

impl super::AppSpec for Lm {
    fn name(&self) -> &'static str {
        "lm"
    }

    fn about(&self) -> &'static str {
        "Cross-domain language modelling: GPT-2 on M2D2 (paper Table 4). See apps/trainer/README.md"
    }

    /// Where tokenised text is cached does not change what is computed.
    fn untracked_keys(&self) -> &'static [&'static str] {
        &["cache_dir"]
    }

    fn validate(&self, config: &crate::Config) -> Result<()> {
        let lm = &config.lm;
        let bad = |k: &str, why: String| Err(Error::Config(format!("key `{k}`: {why}")));
        crate::config::limit_at_least_one("lm.max_eval_blocks", lm.max_eval_blocks)?;
        if lm.block_size == 0 {
            return bad("lm.block_size", "must be at least 1".into());
        }
        if lm.block_size < lm.protocol.min_block_size() {
            return bad(
                "lm.block_size",
                format!(
                    "{} is too small for lm.protocol = \"{}\": a block of L tokens predicts L - 1 of them; use at least {}",
                    lm.block_size,
                    lm.protocol,
                    lm.protocol.min_block_size()
                ),
            );
        }
        Ok(())
    }

    fn table_spec(&self, run: Option<&RunConfig>) -> crate::results::TableSpec {
        let split = run
            .map(|r| format!(" — trained on {}", r.config.lm.train_label.clone().unwrap_or_else(|| r.config.lm.train_domain.clone())))
            .unwrap_or_default();
        crate::results::TableSpec {
            title: format!("Cross-domain language modelling (paper Table 4){split}"),
            metric: crate::results::Metric::Perplexity,
            zero_shot_average: true,
            confidence: false,
            corner: "method".into(),
        }
    }

    fn prepare(&self, run: &RunConfig, seed: u64) -> Result<Prepared> {
        prepare(run, seed)
    }
}
