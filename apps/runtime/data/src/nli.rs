//! Sequence-pair classification (MultiNLI, XNLI): premise and hypothesis encoded with the
//! tokenizer's own pair template, labels as class ids.

use crate::error::{Error, Result};
use crate::record::{check_columns, Field, Record};
use crate::skips::Skips;
use candle_core::{Device, Tensor};
use tokenizers::{PostProcessor, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

/// One encoded pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PairExample {
    /// Token ids, special tokens included (`<s> a </s></s> b </s>`, `[CLS] a [SEP] b [SEP]`).
    pub ids: Vec<u32>,
    /// The tokenizer's token type (segment) id of each token, aligned with `ids` (BERT's
    /// template: 0 for `[CLS] a [SEP]`, 1 for `b [SEP]`; XLM-R's: all 0).
    pub type_ids: Vec<u32>,
    /// The class id.
    pub label: u32,
}

/// Padding tokens looked for, in order, when the tokenizer has no padding configured.
pub const PAD_TOKENS: &[&str] = &["<pad>", "[PAD]", "<|pad|>", "<|endoftext|>"];

/// The tokenizer's padding id: from its padding settings, else the first of [`PAD_TOKENS`] it
/// knows, else 0. (Padded positions are masked out, so the value only has to be a valid id.)
pub fn pad_id(tokenizer: &Tokenizer) -> u32 {
    tokenizer.get_padding().map(|p| p.pad_id).or_else(|| PAD_TOKENS.iter().find_map(|t| tokenizer.token_to_id(t))).unwrap_or(0)
}

fn text<'a>(r: &'a Record, col: &str, row: usize) -> Result<Option<&'a str>> {
    match r.get(col) {
        Some(Field::Str(s)) if !s.trim().is_empty() => Ok(Some(s)),
        Some(Field::Str(_)) | Some(Field::Null) | None => Ok(None),
        Some(other) => Err(Error::BadField {
            column: col.to_string(),
            context: format!(" in row {row}"),
            expected: "text".into(),
            found: format!("{} ({other})", other.kind()),
        }),
    }
}

/// The class id in `col` of row `row`: `None` when missing, null or negative (`-1` marks
/// unlabelled rows on the hub); a non-integer is an error.
pub fn label(r: &Record, col: &str, row: usize) -> Result<Option<u32>> {
    match r.get(col) {
        None | Some(Field::Null) => Ok(None),
        Some(f) => match f.as_i64() {
            Some(v) if v < 0 => Ok(None),
            Some(v) if v > u32::MAX as i64 => Err(Error::BadField {
                column: col.to_string(),
                context: format!(" in row {row}"),
                expected: "a class id".into(),
                found: v.to_string(),
            }),
            Some(v) => Ok(Some(v as u32)),
            None => Err(Error::BadField {
                column: col.to_string(),
                context: format!(" in row {row}"),
                expected: "an integer class id".into(),
                found: format!("{} ({f})", f.kind()),
            }),
        },
    }
}

/// Encode `(premise, hypothesis)` pairs with the tokenizer's pair template (its
/// post-processor adds the special tokens: `<s> a </s></s> b </s>` for XLM-R, `[CLS] a [SEP]
/// b [SEP]` for BERT) and keeping its token type ids (segment ids: BERT gives `b [SEP]` type
/// 1), truncating the longer side first to at most `max_len` tokens in all
/// (the tokenizer's own padding is turned off; `max_len` must leave room for one token of each
/// side besides the template's special tokens). Rows with an empty or null text are counted in
/// [`Skips::empty`]; a missing, null or negative label in [`Skips::missing_label`]; a pair
/// that cannot fit `max_len` even truncated in [`Skips::too_long`]. A column absent from the
/// data is an error naming it and listing the columns there are.
pub fn encode(
    records: &[Record],
    tokenizer: &Tokenizer,
    premise_col: &str,
    hypothesis_col: &str,
    label_col: &str,
    max_len: usize,
) -> Result<(Vec<PairExample>, Skips)> {
    if max_len == 0 {
        return Err(Error::Invalid("max_len must be at least 1".into()));
    }
    check_columns(records, &[premise_col, hypothesis_col, label_col], "the data")?;
    let specials = tokenizer.get_post_processor().map(|p| p.added_tokens(true)).unwrap_or(0);
    if max_len < specials + 2 {
        return Err(Error::Invalid(format!(
            "max_len {max_len} leaves no room for a pair: the tokenizer's pair template adds {specials} special tokens, so              max_len must be at least {}",
            specials + 2
        )));
    }
    let mut tok = tokenizer.clone();
    tok.with_padding(None);
    tok.with_truncation(Some(TruncationParams {
        max_length: max_len,
        strategy: TruncationStrategy::LongestFirst,
        stride: 0,
        direction: TruncationDirection::Right,
    }))
    .map_err(|e| Error::Tokenizer(e.to_string()))?;
    let mut skips = Skips::default();
    let mut out = Vec::with_capacity(records.len());
    for (i, r) in records.iter().enumerate() {
        let (Some(a), Some(b)) = (text(r, premise_col, i)?, text(r, hypothesis_col, i)?) else {
            skips.empty += 1;
            continue;
        };
        let Some(y) = label(r, label_col, i)? else {
            skips.missing_label += 1;
            continue;
        };
        match tok.encode((a, b), true) {
            Ok(enc) if enc.get_ids().len() <= max_len => {
                out.push(PairExample { ids: enc.get_ids().to_vec(), type_ids: enc.get_type_ids().to_vec(), label: y })
            }
            Ok(enc) => {
                tracing::warn!(row = i, tokens = enc.get_ids().len(), max_len, "pair does not fit max_len: skipped");
                skips.too_long += 1;
            }
            Err(e) if e.to_string().to_lowercase().contains("truncat") => {
                tracing::warn!(row = i, max_len, error = %e, "pair cannot be truncated to max_len: skipped");
                skips.too_long += 1;
            }
            Err(e) => return Err(Error::Tokenizer(format!("row {i}: {e}"))),
        }
    }
    Ok((out, skips))
}

/// A batch of pairs: inputs `[B, S]` u32 padded with `pad_id` to the longest example, mask
/// `[B, S]` u32 (1 = real token), token types `[B, S]` u32 (the examples' `type_ids`, 0 on
/// padding), targets `[B]` u32. An example whose `type_ids` do not match its `ids` in length
/// is an error.
pub fn batch(examples: &[PairExample], pad_id: u32, device: &Device) -> Result<tram::Batch> {
    batch_refs(&examples.iter().collect::<Vec<_>>(), pad_id, device)
}

/// [`batch`] over borrowed examples (e.g. those a [`crate::Loader`] picked).
pub fn batch_refs(examples: &[&PairExample], pad_id: u32, device: &Device) -> Result<tram::Batch> {
    if examples.is_empty() {
        return Err(Error::Invalid("a pair batch needs at least one example".into()));
    }
    let s = examples.iter().map(|e| e.ids.len()).max().unwrap_or(0).max(1);
    let b = examples.len();
    let mut ids = Vec::with_capacity(b * s);
    let mut mask = Vec::with_capacity(b * s);
    let mut types = Vec::with_capacity(b * s);
    for (i, e) in examples.iter().enumerate() {
        if e.type_ids.len() != e.ids.len() {
            return Err(Error::Invalid(format!(
                "pair example {i} has {} token ids but {} token type ids; they must align",
                e.ids.len(),
                e.type_ids.len()
            )));
        }
        types.extend_from_slice(&e.type_ids);
        types.resize(types.len() + s - e.ids.len(), 0u32);
        ids.extend_from_slice(&e.ids);
        ids.resize(ids.len() + s - e.ids.len(), pad_id);
        mask.resize(mask.len() + e.ids.len(), 1u32);
        mask.resize(mask.len() + s - e.ids.len(), 0u32);
    }
    let targets: Vec<u32> = examples.iter().map(|e| e.label).collect();
    Ok(tram::Batch {
        inputs: Tensor::from_vec(ids, (b, s), device)?,
        targets: Tensor::from_vec(targets, b, device)?,
        mask: Some(Tensor::from_vec(mask, (b, s), device)?),
        token_types: Some(Tensor::from_vec(types, (b, s), device)?),
    })
}
