//! `tram lm`: GPT-2 fine-tuned on one M2D2 domain, perplexity on that domain and on unseen
//! domains (paper Table 4). Each domain's documents are tokenised, joined with end-of-text
//! tokens and cut into blocks of `lm.block_size` predicted tokens; perplexity is
//! `exp(mean token NLL)` over every block of a split.

use super::stream::{tokens, Shuffled};
use super::{data_err, data_source, load_model, load_options, model_source, Prepared};
use crate::config::RunConfig;
use crate::error::{Error, Result};
use crate::task::{BatchList, EvalSet, TaskData};
use candle_core::Device;
use tram_data::DataSource;
use tram_hub::Tokenizer;

fn blocks(
    source: &DataSource,
    domain: &str,
    split: &str,
    run: &RunConfig,
    tokenizer: &Tokenizer,
    limit: Option<usize>,
    skipped: &mut crate::task::Skipped,
) -> Result<Vec<Vec<u32>>> {
    let lm = &run.config.lm;
    let what = format!("{} (domain `{domain}`, split `{split}`)", run.config.data);
    let records = tram_data::load_split(source, split, super::subset(domain)).map_err(data_err(&what))?;
    let (mut texts, _) = tram_data::lm::decode_texts(&records, &lm.text_column).map_err(data_err(&what))?;
    if let Some(n) = limit {
        texts.truncate(n);
    }
    // Invalid UTF-8 among the documents used (after the limit), replaced by U+FFFD.
    let replaced: usize = records
        .iter()
        .take(limit.unwrap_or(usize::MAX))
        .map(|r| match r.get(&lm.text_column) {
            Some(tram_data::Field::Bytes(b)) => tram_data::lm::invalid_utf8_bytes(b),
            _ => 0,
        })
        .sum();
    let (blocks, mut skips) = tram_data::lm::token_blocks(&texts, tokenizer, lm.block_size).map_err(data_err(&what))?;
    skips.invalid_utf8_bytes = replaced;
    if replaced > 0 {
        tracing::warn!(
            domain,
            split,
            replaced,
            "invalid UTF-8 in the text (binary data or another encoding): bytes replaced by U+FFFD; recorded in results.json"
        );
    }
    if !skips.is_empty() {
        tracing::warn!(domain, split, %skips, "rows skipped");
    }
    if !skips.is_clean() {
        skipped.insert(format!("{domain}/{split}"), skips);
    }
    if blocks.is_empty() {
        return Err(Error::Data(format!(
            "{what}: {} documents give fewer than {} tokens, not one block of lm.block_size = {}; lower lm.block_size or add text",
            texts.len(),
            lm.block_size + 1,
            lm.block_size
        )));
    }
    tracing::info!(domain, split, documents = texts.len(), blocks = blocks.len(), "tokenised");
    Ok(blocks)
}

/// At most `max` blocks, evenly spaced through `blocks` (all of them when `max` is `None`).
fn spread(blocks: Vec<Vec<u32>>, max: Option<usize>) -> Vec<Vec<u32>> {
    match max {
        Some(k) if k < blocks.len() => {
            let n = blocks.len();
            (0..k).map(|i| blocks[i * n / k].clone()).collect()
        }
        _ => blocks,
    }
}

fn eval_set(name: &str, label: &str, in_domain: bool, blocks: Vec<Vec<u32>>, batch: usize, device: &Device) -> Result<EvalSet> {
    let n = blocks.len();
    let batches = blocks.chunks(batch).map(|c| tram_data::lm::batch(c, device).map_err(data_err(name))).collect::<Result<Vec<_>>>()?;
    Ok(EvalSet { name: name.into(), label: label.into(), in_domain, source: Box::new(BatchList(batches, n)) })
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
    let mut train_blocks = Vec::new();
    if !evaluate_only {
        for d in &trained {
            train_blocks.extend(blocks(&data, d, &lm.train_split, run, &tokenizer, cfg.train.max_train_examples, &mut skipped)?);
        }
    }
    let valid = if lm.valid_split.trim().is_empty() {
        None
    } else {
        let mut b = Vec::new();
        for d in &trained {
            b.extend(blocks(&data, d, &lm.valid_split, run, &tokenizer, cfg.train.max_eval_examples, &mut skipped)?);
        }
        let name = if lm.mix_domains.is_empty() {
            format!("{}/{}", lm.train_domain, lm.valid_split)
        } else {
            format!("mixture/{}", lm.valid_split)
        };
        Some(eval_set(&name, "validation", true, spread(b, lm.max_eval_blocks), eval_batch, &device)?)
    };
    let mut tests = Vec::new();
    let train_label = lm.train_label.clone().unwrap_or_else(|| lm.train_domain.clone());
    for (i, d) in trained.iter().enumerate() {
        let b = blocks(&data, d, &lm.test_split, run, &tokenizer, cfg.train.max_eval_examples, &mut skipped)?;
        let label = if i == 0 { train_label.clone() } else { d.to_string() };
        tests.push(eval_set(d, &label, true, spread(b, lm.max_eval_blocks), eval_batch, &device)?);
    }
    for (i, d) in lm.test_domains.iter().enumerate() {
        if trained.contains(&d) {
            return Err(Error::Config(format!(
                "key `lm.test_domains`: `{d}` is a training domain (`lm.train_domain` or `lm.mix_domains`); list only unseen domains"
            )));
        }
        let label = lm.test_labels.get(i).cloned().unwrap_or_else(|| d.clone());
        let b = blocks(&data, d, &lm.test_split, run, &tokenizer, cfg.train.max_eval_examples, &mut skipped)?;
        tests.push(eval_set(d, &label, false, spread(b, lm.max_eval_blocks), eval_batch, &device)?);
    }
    let train: Box<dyn crate::task::TrainStream> = if evaluate_only {
        Box::new(Empty)
    } else {
        let dev = device.clone();
        Box::new(Shuffled::new(
            train_blocks,
            cfg.train.batch_size,
            seed,
            Box::new(move |picked: &[&Vec<u32>], _| {
                let owned: Vec<Vec<u32>> = picked.iter().map(|b| (*b).clone()).collect();
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
