//! The quickstart's tokenizer: byte-level BPE (GPT-2's pre-tokenization and decoding, with
//! `<|endoftext|>` as its only special token) trained with the `tokenizers` crate on the
//! training splits of every domain of the corpus.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

/// The end-of-text token (GPT-2's), joined after every document by `tram-data`.
pub const EOS: &str = "<|endoftext|>";

/// Default vocabulary size of the quickstart tokenizer.
pub const DEFAULT_VOCAB_SIZE: usize = 4096;

/// The `train.txt` of every domain under `data`, in domain order.
pub fn training_files(data: &Path) -> Result<Vec<PathBuf>> {
    let files: Vec<PathBuf> = crate::domains(data)?.into_iter().map(|d| data.join(d).join("train.txt")).collect();
    if files.is_empty() {
        bail!("{} has no <domain>/train.txt files to train a tokenizer on", data.display());
    }
    Ok(files)
}

/// Train a byte-level BPE tokenizer of `vocab_size` tokens (including the 256 byte symbols
/// and `<|endoftext|>`) on `files` (one document per line). Deterministic: the same files
/// give the same tokenizer.
pub fn train(files: &[PathBuf], vocab_size: usize) -> Result<Tokenizer> {
    if vocab_size <= 257 {
        bail!("a byte-level BPE vocabulary needs more than 257 tokens (256 bytes + {EOS}), got {vocab_size}");
    }
    let byte_level = ByteLevel::default().add_prefix_space(false).trim_offsets(true).use_regex(true);
    let mut tokenizer = Tokenizer::new(BPE::default());
    tokenizer.with_pre_tokenizer(Some(byte_level));
    tokenizer.with_decoder(Some(byte_level));
    tokenizer.with_post_processor(Some(byte_level));
    let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(vec![AddedToken::from(EOS, true)])
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build()
        .into();
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    for f in files {
        if !f.is_file() {
            bail!("tokenizer training file {} does not exist", f.display());
        }
    }
    tokenizer.train_from_files(&mut trainer, names).map_err(|e| anyhow::anyhow!("training the tokenizer: {e}"))?;
    Ok(tokenizer)
}

/// Train on the corpus under `data` and save `tokenizer.json` at `out`; when `config` (a
/// GPT-2 `config.json`) is given, its `vocab_size` is set to the tokenizer's. Returns the
/// vocabulary size.
pub fn build(data: &Path, vocab_size: usize, out: &Path, config: Option<&Path>) -> Result<usize> {
    let files = training_files(data)?;
    let tokenizer = train(&files, vocab_size)?;
    let size = tokenizer.get_vocab_size(true);
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    tokenizer.save(out, false).map_err(|e| anyhow::anyhow!("writing {}: {e}", out.display()))?;
    if let Some(config) = config {
        let text = std::fs::read_to_string(config).with_context(|| format!("reading {}", config.display()))?;
        let mut v: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("parsing {}", config.display()))?;
        if v.get("vocab_size").and_then(|n| n.as_u64()) != Some(size as u64) {
            v["vocab_size"] = serde_json::json!(size);
            std::fs::write(config, serde_json::to_string_pretty(&v)? + "\n").with_context(|| format!("writing {}", config.display()))?;
        }
    }
    Ok(size)
}
