//! Language modelling: documents → token blocks, by the `run_clm` protocol (M2D2's recipe) or
//! the `lines` protocol (see [`Protocol`]); the blocks of a split live in a [`crate::token_cache`].

use crate::error::{Error, Result};
use crate::record::{check_columns, Field, Record};
use crate::skips::Skips;
use candle_core::{Device, Tensor};
use tokenizers::Tokenizer;

/// End-of-text tokens looked for, in order (GPT-2's first).
pub const EOS_TOKENS: &[&str] = &["<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>", "[SEP]"];

/// The id of the tokenizer's end-of-text token (GPT-2 `<|endoftext|>`, else `</s>`, `<eos>`,
/// `<|end_of_text|>`, `[SEP]`), if it has one.
pub fn eos_id(tokenizer: &Tokenizer) -> Option<u32> {
    EOS_TOKENS.iter().find_map(|t| tokenizer.token_to_id(t))
}

/// The texts of column `column`: a null value is an empty text (skipped by
/// [`token_blocks`]); a non-text value is an error naming the row. Bytes that are not valid
/// UTF-8 are replaced by U+FFFD with a warning (see [`decode_texts`] for the count).
pub fn texts(records: &[Record], column: &str) -> Result<Vec<String>> {
    let (texts, replaced) = decode_texts(records, column)?;
    if replaced > 0 {
        tracing::warn!(column, replaced, "invalid UTF-8 in the text: bytes replaced by U+FFFD");
    }
    Ok(texts)
}

/// Bytes of `bytes` that are not part of a valid UTF-8 sequence (what a lossy decoding
/// replaces by U+FFFD).
pub fn invalid_utf8_bytes(bytes: &[u8]) -> usize {
    bytes.utf8_chunks().map(|c| c.invalid().len()).sum()
}

/// [`texts`], and how many bytes were not valid UTF-8 and were replaced by U+FFFD (binary
/// values, such as the lines of a `.txt` file in another encoding or a binary file, are
/// decoded lossily; the caller reports the count).
pub fn decode_texts(records: &[Record], column: &str) -> Result<(Vec<String>, usize)> {
    check_columns(records, &[column], "the data")?;
    let mut replaced = 0;
    let texts = records
        .iter()
        .enumerate()
        .map(|(i, r)| match r.get(column) {
            Some(Field::Str(s)) => Ok(s.clone()),
            Some(Field::Bytes(b)) => {
                replaced += invalid_utf8_bytes(b);
                Ok(String::from_utf8_lossy(b).trim().to_string())
            }
            Some(Field::Null) | None => Ok(String::new()),
            Some(other) => Err(Error::BadField {
                column: column.to_string(),
                context: format!(" in row {i}"),
                expected: "text".into(),
                found: format!("{} ({other})", other.kind()),
            }),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((texts, replaced))
}

/// Tokenise `texts` (no special tokens; the tokenizer's own truncation and padding are
/// turned off), join the documents into one stream with the EOS token ([`eos_id`]) after each
/// document, and cut the stream into contiguous blocks of `block_len + 1` tokens that overlap
/// by one: block `k` is `stream[k·L .. k·L + L + 1]`, used as inputs `[..L]` and targets
/// `[1..]`, so every token after the first is predicted exactly once. The trailing remainder
/// that does not fill a block is dropped. Empty texts (and texts that tokenise to nothing)
/// are counted in [`Skips::empty`].
pub fn token_blocks<I, S>(texts: I, tokenizer: &Tokenizer, block_len: usize) -> Result<(Vec<Vec<u32>>, Skips)>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str> + Sync,
{
    let eos = eos_id(tokenizer);
    if eos.is_none() {
        tracing::warn!("the tokenizer has no end-of-text token ({}): documents are joined without a separator", EOS_TOKENS.join(", "));
    }
    token_blocks_with(texts, tokenizer, block_len, eos)
}

/// [`token_blocks`] with an explicit document separator (`None`: documents are concatenated).
pub fn token_blocks_with<I, S>(texts: I, tokenizer: &Tokenizer, block_len: usize, eos: Option<u32>) -> Result<(Vec<Vec<u32>>, Skips)>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str> + Sync,
{
    if block_len == 0 {
        return Err(Error::Invalid("block length must be at least 1".into()));
    }
    let (stream, skips) = token_stream(texts, tokenizer, eos)?;
    Ok((blocks_of(&stream, block_len)?, skips))
}

/// The joined token stream of `texts` (EOS after each document when given) and the empty
/// texts skipped. Documents are tokenised on all cores; the order is kept.
pub fn token_stream<I, S>(texts: I, tokenizer: &Tokenizer, eos: Option<u32>) -> Result<(Vec<u32>, Skips)>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str> + Sync,
{
    let mut tok = tokenizer.clone();
    tok.with_truncation(None).map_err(|e| Error::Tokenizer(e.to_string()))?;
    tok.with_padding(None);
    let texts: Vec<S> = texts.into_iter().collect();
    // Documents are encoded on all cores, in contiguous chunks, and joined in order.
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).clamp(1, texts.len().max(1));
    let chunk = texts.len().div_ceil(threads).max(1);
    let encode = |part: &[S]| -> Result<(Vec<u32>, Skips)> {
        let mut skips = Skips::default();
        let mut stream = Vec::new();
        for text in part {
            let text = text.as_ref();
            if text.trim().is_empty() {
                skips.empty += 1;
                continue;
            }
            let enc = tok.encode(text, false).map_err(|e| Error::Tokenizer(e.to_string()))?;
            if enc.get_ids().is_empty() {
                skips.empty += 1;
                continue;
            }
            stream.extend_from_slice(enc.get_ids());
            stream.extend(eos);
        }
        Ok((stream, skips))
    };
    let parts: Vec<Result<(Vec<u32>, Skips)>> = if threads <= 1 {
        vec![encode(&texts)]
    } else {
        std::thread::scope(|s| {
            let handles: Vec<_> = texts.chunks(chunk).map(|c| s.spawn(move || encode(c))).collect();
            handles.into_iter().map(|h| h.join().expect("tokenizer worker panicked")).collect()
        })
    };
    let mut skips = Skips::default();
    let mut stream = Vec::new();
    for part in parts {
        let (ids, sk) = part?;
        stream.extend_from_slice(&ids);
        skips += sk;
    }
    Ok((stream, skips))
}

/// Cut a token stream into blocks of `block_len + 1` tokens overlapping by one (see
/// [`token_blocks`]).
pub fn blocks_of(stream: &[u32], block_len: usize) -> Result<Vec<Vec<u32>>> {
    if block_len == 0 {
        return Err(Error::Invalid("block length must be at least 1".into()));
    }
    let n = stream.len().saturating_sub(1) / block_len;
    Ok((0..n).map(|k| stream[k * block_len..k * block_len + block_len + 1].to_vec()).collect())
}

/// A batch of blocks: inputs `[B, L]` u32 (`block[..L]`), targets `[B, L]` u32
/// (`block[1..]`), mask `[B, L]` u32 all ones. Every block must have the same length `L + 1`.
pub fn batch(blocks: &[Vec<u32>], device: &Device) -> Result<tram::Batch> {
    let first = blocks.first().ok_or_else(|| Error::Invalid("an LM batch needs at least one block".into()))?;
    let len = first.len();
    if len < 2 {
        return Err(Error::Invalid(format!("LM blocks need at least 2 tokens (inputs and a shifted target), got {len}")));
    }
    if let Some((i, b)) = blocks.iter().enumerate().find(|(_, b)| b.len() != len) {
        return Err(Error::Invalid(format!("LM block {i} has {} tokens, the first has {len}: blocks must have equal lengths", b.len())));
    }
    let l = len - 1;
    let b = blocks.len();
    let inputs: Vec<u32> = blocks.iter().flat_map(|blk| blk[..l].iter().copied()).collect();
    let targets: Vec<u32> = blocks.iter().flat_map(|blk| blk[1..].iter().copied()).collect();
    Ok(tram::Batch {
        inputs: Tensor::from_vec(inputs, (b, l), device)?,
        targets: Tensor::from_vec(targets, (b, l), device)?,
        mask: Some(Tensor::ones((b, l), candle_core::DType::U32, device)?),
        token_types: None,
    })
}

/// How the documents of a split become token blocks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// transformers' `run_clm.py`, the recipe of M2D2 (and of the paper, which follows it):
    /// every line of a `.txt` file is one document *with* its line break (blank lines
    /// included, as `datasets`' text builder reads it with `keep_linebreaks=True`), tokenised
    /// with the tokenizer's own special tokens (none for GPT-2) and no end-of-text token; each
    /// group of 1,000 documents (a `Dataset.map` batch) is concatenated and cut into
    /// non-overlapping blocks of `block_size` tokens, its remainder dropped. A block of `L`
    /// tokens predicts `L − 1` of them (Hugging Face shifts labels inside the model).
    #[default]
    RunClm,
    /// tram's earlier protocol: lines stripped of surrounding whitespace, blank lines
    /// dropped, the end-of-text token ([`eos_id`]) after every document, and blocks of
    /// `block_size + 1` tokens overlapping by one, so every token after the first is predicted
    /// exactly once ([`token_blocks`]).
    Lines,
}

impl Protocol {
    /// The smallest block size that predicts at least one token.
    pub fn min_block_size(self) -> usize {
        match self {
            Protocol::RunClm => 2,
            Protocol::Lines => 1,
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::RunClm => "run_clm",
            Protocol::Lines => "lines",
        })
    }
}

/// [`Protocol::RunClm`] on in-memory documents: each group of
/// [`crate::token_cache::RUN_CLM_MAP_BATCH`] documents tokenised (with the tokenizer's special
/// tokens), concatenated and cut into non-overlapping blocks of `block_size`, the remainder of
/// each group dropped (`run_clm.py`'s `group_texts` under `Dataset.map(batched=True)`).
pub fn run_clm_blocks<S: AsRef<str>>(documents: &[S], tokenizer: &Tokenizer, block_size: usize) -> Result<Vec<Vec<u32>>> {
    if block_size < Protocol::RunClm.min_block_size() {
        return Err(Error::Invalid(format!("block length must be at least 2 for the run_clm protocol, got {block_size}")));
    }
    let mut tok = tokenizer.clone();
    tok.with_truncation(None).map_err(|e| Error::Tokenizer(e.to_string()))?;
    tok.with_padding(None);
    let mut blocks = Vec::new();
    for group in documents.chunks(crate::token_cache::RUN_CLM_MAP_BATCH) {
        let mut ids = Vec::new();
        for d in group {
            ids.extend_from_slice(tok.encode(d.as_ref(), true).map_err(|e| Error::Tokenizer(e.to_string()))?.get_ids());
        }
        blocks.extend(ids.chunks_exact(block_size).map(|c| c.to_vec()));
    }
    Ok(blocks)
}
