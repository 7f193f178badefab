//! The post-LayerNorm transformer encoder shared by BERT and RoBERTa / XLM-R: configuration,
//! checkpoint reading of the base model, and the forward from input embeddings to
//! `last_hidden_state`. The two families differ only in position ids (RoBERTa counts from
//! `pad_token_id + 1` and gives padding the padding position) and in their task heads.

use crate::checkpoint::{ids_u32, ConfigFields, Loader};
use crate::layers::{
    activation, attention_masked, embedding, layer_norm, linear, merge_heads, split_heads, AttentionMask, Dropout, Scoped,
};
use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};
use tram::{Error, Result, Weights};

/// Which encoder family a config belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Family {
    /// BERT (`model_type = "bert"`): positions `0..seq`.
    Bert,
    /// RoBERTa / XLM-R (`"roberta"`, `"xlm-roberta"`, `"camembert"`): positions from
    /// `pad_token_id + 1`, padding tokens at `pad_token_id`.
    Roberta,
}

impl Family {
    pub(crate) fn model_types(self) -> &'static [&'static str] {
        match self {
            Family::Bert => &["bert"],
            Family::Roberta => &["xlm-roberta", "roberta", "camembert"],
        }
    }
    fn name(self) -> &'static str {
        match self {
            Family::Bert => "BERT",
            Family::Roberta => "RoBERTa / XLM-R",
        }
    }
}

/// Hugging Face `BertConfig` / `RobertaConfig` / `XLMRobertaConfig` fields used by the models.
/// Fields with a `transformers` default may be absent; the dimensions are required.
#[derive(Clone, Debug, Serialize)]
pub struct EncoderConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Hidden width.
    pub hidden_size: usize,
    /// Number of layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// Feed-forward width.
    pub intermediate_size: usize,
    /// Size of the position table.
    pub max_position_embeddings: usize,
    /// Feed-forward activation (`gelu`, `gelu_new`, `relu`, ...).
    pub hidden_act: String,
    /// Dropout on embeddings and sub-layer outputs.
    pub hidden_dropout_prob: f64,
    /// Dropout on attention probabilities.
    pub attention_probs_dropout_prob: f64,
    /// Token-type table size (`transformers` default 2; RoBERTa / XLM-R checkpoints say 1).
    pub type_vocab_size: usize,
    /// Std of new-head initialisation.
    pub initializer_range: f64,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// Padding token id (RoBERTa's padding position).
    pub pad_token_id: u32,
    /// Only `"absolute"` is supported.
    pub position_embedding_type: String,
    /// Dropout before the classifier (`hidden_dropout_prob` when null).
    pub classifier_dropout: Option<f64>,
    /// The family (from `model_type`).
    #[serde(skip)]
    pub family: Family,
    /// The original `config.json` (kept so a saved config round-trips every field).
    #[serde(skip)]
    pub raw: serde_json::Value,
}

impl EncoderConfig {
    /// Parse a `config.json`; the family (and its defaults) follow `model_type`
    /// (`bert` when absent).
    pub fn from_json(v: &serde_json::Value) -> Result<Self> {
        let family = match crate::checkpoint::model_type(v) {
            Some(mt) if Family::Roberta.model_types().contains(&mt) => Family::Roberta,
            _ => Family::Bert,
        };
        Self::from_json_as(v, family)
    }

    /// Parse a `config.json` of the given family. Absent fields take the defaults of
    /// `transformers`' `BertConfig` / `RobertaConfig` / `XLMRobertaConfig` (5.24; checked
    /// against `tests/fixtures/config_defaults.json`); the dimensions are required. Every
    /// error names the field and the model type.
    pub fn from_json_as(v: &serde_json::Value, family: Family) -> Result<Self> {
        let f = ConfigFields::new(v, family.model_types(), family.name())?;
        let roberta = family == Family::Roberta;
        let default_pad = if roberta { 1 } else { 0 };
        let count = "a non-negative integer";
        let c = Self {
            vocab_size: f.required("vocab_size", count)?,
            hidden_size: f.required("hidden_size", count)?,
            num_hidden_layers: f.required("num_hidden_layers", count)?,
            num_attention_heads: f.required("num_attention_heads", count)?,
            intermediate_size: f.required("intermediate_size", count)?,
            max_position_embeddings: f.required("max_position_embeddings", count)?,
            hidden_act: f.activation("hidden_act", "gelu")?,
            hidden_dropout_prob: f.probability("hidden_dropout_prob", 0.1)?,
            attention_probs_dropout_prob: f.probability("attention_probs_dropout_prob", 0.1)?,
            type_vocab_size: f.or("type_vocab_size", count, 2)?,
            initializer_range: f.positive("initializer_range", 0.02)?,
            layer_norm_eps: f.positive("layer_norm_eps", 1e-12)?,
            pad_token_id: match f.optional("pad_token_id", "a token id")? {
                Some(id) => id,
                // BERT does not use it; RoBERTa's positions count from it.
                None if roberta && f.raw("pad_token_id").is_some() => {
                    return Err(f.error("field `pad_token_id` is null, but RoBERTa / XLM-R position ids count from the padding id"))
                }
                None => default_pad,
            },
            position_embedding_type: f.or("position_embedding_type", "a string", "absolute".to_string())?,
            classifier_dropout: f.optional("classifier_dropout", "a number or null")?,
            family,
            raw: v.clone(),
        };
        f.check_heads("hidden_size", c.hidden_size, "num_attention_heads", c.num_attention_heads)?;
        if c.position_embedding_type != "absolute" {
            return Err(f.error(format_args!(
                "field `position_embedding_type` = `{}` is not supported (supported: `absolute`)",
                c.position_embedding_type
            )));
        }
        if c.type_vocab_size == 0 {
            return Err(f.error("field `type_vocab_size` = 0: the model needs at least 1 token type"));
        }
        if let Some(p) = c.classifier_dropout {
            f.check_probability("classifier_dropout", p)?;
        }
        f.only("is_decoder", false, "the models are bidirectional encoders; a decoder's causal attention is not implemented")?;
        f.only("add_cross_attention", false, "cross-attention layers are not implemented")?;
        Ok(c)
    }

    /// The classifier dropout probability.
    pub fn classifier_dropout_prob(&self) -> f64 {
        self.classifier_dropout.unwrap_or(self.hidden_dropout_prob)
    }

    /// The config as JSON: the original fields, overwritten by the parsed ones.
    pub(crate) fn to_json(&self) -> serde_json::Value {
        let mut v = if self.raw.is_object() { self.raw.clone() } else { serde_json::json!({}) };
        if let (Some(obj), Ok(serde_json::Value::Object(parsed))) = (v.as_object_mut(), serde_json::to_value(self)) {
            for (k, val) in parsed {
                obj.insert(k, val);
            }
        }
        v
    }
}

/// The base encoder of a task model: reads its weights under `base` (`"bert"`, `"roberta"`).
#[derive(Clone, Debug)]
pub(crate) struct Encoder {
    pub(crate) cfg: EncoderConfig,
    pub(crate) base: &'static str,
}

impl Encoder {
    /// Read the embeddings and layers from the checkpoint, in `transformers` state-dict order.
    pub(crate) fn load(&self, l: &mut Loader<'_>) -> Result<()> {
        let c = &self.cfg;
        let (h, f) = (c.hidden_size, c.intermediate_size);
        let e = format!("{}.embeddings.", self.base);
        l.required(&format!("{e}word_embeddings.weight"), &[c.vocab_size, h])?;
        l.required(&format!("{e}position_embeddings.weight"), &[c.max_position_embeddings, h])?;
        l.required(&format!("{e}token_type_embeddings.weight"), &[c.type_vocab_size, h])?;
        l.required(&format!("{e}LayerNorm.weight"), &[h])?;
        l.required(&format!("{e}LayerNorm.bias"), &[h])?;
        for i in 0..c.num_hidden_layers {
            let p = format!("{}.encoder.layer.{i}.", self.base);
            for m in ["query", "key", "value"] {
                l.required(&format!("{p}attention.self.{m}.weight"), &[h, h])?;
                l.required(&format!("{p}attention.self.{m}.bias"), &[h])?;
            }
            l.required(&format!("{p}attention.output.dense.weight"), &[h, h])?;
            l.required(&format!("{p}attention.output.dense.bias"), &[h])?;
            l.required(&format!("{p}attention.output.LayerNorm.weight"), &[h])?;
            l.required(&format!("{p}attention.output.LayerNorm.bias"), &[h])?;
            l.required(&format!("{p}intermediate.dense.weight"), &[f, h])?;
            l.required(&format!("{p}intermediate.dense.bias"), &[f])?;
            l.required(&format!("{p}output.dense.weight"), &[h, f])?;
            l.required(&format!("{p}output.dense.bias"), &[h])?;
            l.required(&format!("{p}output.LayerNorm.weight"), &[h])?;
            l.required(&format!("{p}output.LayerNorm.bias"), &[h])?;
        }
        Ok(())
    }

    /// Word embeddings of `ids` `[batch, seq]` → `[batch, seq, hidden]`.
    pub(crate) fn word_embeddings(&self, w: &dyn Weights, ids: &Tensor) -> Result<Tensor> {
        if ids.rank() != 2 {
            return Err(Error::Model(format!("{} expects token ids of shape [batch, seq], got {:?}", self.cfg.family.name(), ids.dims())));
        }
        embedding(&w.weight(&format!("{}.embeddings.word_embeddings.weight", self.base))?, &ids_u32(ids)?)
    }

    /// Position ids `[batch, seq]` (u32) of `ids`, built on `ids`' device (no host round trip
    /// in a training step on a GPU).
    pub(crate) fn position_ids(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, s) = ids.dims2()?;
        let c = &self.cfg;
        let dev = ids.device();
        let (pos, max) = match c.family {
            Family::Bert => (Tensor::arange(0u32, s as u32, dev)?.unsqueeze(0)?.broadcast_as((b, s))?.contiguous()?, s),
            Family::Roberta => {
                // transformers' create_position_ids_from_input_ids: cumsum of non-padding
                // tokens, times the non-padding mask, plus padding_idx (f32 counts: exact
                // below 2^24 tokens).
                let pad = c.pad_token_id;
                let keep = ids_u32(ids)?.ne(pad)?.to_dtype(DType::F32)?;
                let count = keep.cumsum(1)?;
                let pos = count.mul(&keep)?.affine(1.0, pad as f64)?.to_dtype(DType::U32)?;
                // The largest position is pad + (longest row's tokens); read back only when a
                // full row could exceed the table.
                let bound = pad as usize + s + 1;
                let max = if bound <= c.max_position_embeddings {
                    bound
                } else {
                    pad as usize + count.max_all()?.to_scalar::<f32>()? as usize + 1
                };
                (pos, max)
            }
        };
        if max > c.max_position_embeddings {
            return Err(Error::Model(format!(
                "{}: a sequence of {s} tokens needs {max} positions, the model has max_position_embeddings = {}",
                c.family.name(),
                c.max_position_embeddings
            )));
        }
        Ok(pos)
    }

    /// `x` `[batch, seq, hidden]` plus the token-type embeddings of `token_types`
    /// `[batch, seq]`, or of all zeros when absent (`transformers`' default `token_type_ids`:
    /// row 0 added to every token, its gradient summed over the tokens in f32 by
    /// [`tram_kernels::add_bias`]). An id outside `0..type_vocab_size` is an error naming both.
    fn add_token_type_embeddings(&self, x: &Tensor, table: &Tensor, token_types: Option<&Tensor>, b: usize, s: usize) -> Result<Tensor> {
        let c = &self.cfg;
        let Some(tt) = token_types else {
            return Ok(tram_kernels::add_bias(x, &table.get(0)?)?);
        };
        if tt.dims() != [b, s] {
            return Err(Error::Model(format!("{}: token type ids {:?} do not match the token ids [{b}, {s}]", c.family.name(), tt.dims())));
        }
        let tt = ids_u32(tt)?;
        let max = tt.max_all()?.to_scalar::<u32>()?;
        if max as usize >= c.type_vocab_size {
            return Err(Error::Model(format!(
                "{}: token type id {max} is outside 0..{} (config.json type_vocab_size = {}); the tokenizer's pair template \
                 assigns segment ids this model has no embeddings for",
                c.family.name(),
                c.type_vocab_size,
                c.type_vocab_size
            )));
        }
        Ok(x.add(&embedding(table, &tt)?)?)
    }

    /// `last_hidden_state` `[batch, seq, hidden]` from word embeddings `embeds`, the token
    /// `ids` (for position ids), optional `[batch, seq]` token type ids (all 0 when absent)
    /// and an optional `[batch, seq]` attention mask.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn forward_embeds(
        &self,
        w: &dyn Weights,
        embeds: &Tensor,
        ids: &Tensor,
        token_types: Option<&Tensor>,
        mask: Option<&Tensor>,
        dropout: &Dropout,
        train: bool,
    ) -> Result<Tensor> {
        let c = &self.cfg;
        let (b, s, _) = embeds.dims3()?;
        let h = c.hidden_size;
        if ids.dims() != [b, s] {
            return Err(Error::Model(format!("embeddings {:?} do not match token ids {:?}", embeds.dims(), ids.dims())));
        }
        let e = Scoped::new(w, format!("{}.embeddings.", self.base));
        let pos = embedding(&e.get("position_embeddings.weight")?, &self.position_ids(ids)?)?;
        let x = self.add_token_type_embeddings(&embeds.add(&pos)?, &e.get("token_type_embeddings.weight")?, token_types, b, s)?;
        let x = layer_norm(&x, &e.get("LayerNorm.weight")?, &e.get("LayerNorm.bias")?, c.layer_norm_eps)?;
        let mut x = dropout.apply_p(&x, c.hidden_dropout_prob, train)?;
        let attn_mask = match mask {
            Some(m) => {
                if m.dims() != [b, s] {
                    return Err(Error::Model(format!("attention mask {:?} does not match token ids {:?}", m.dims(), ids.dims())));
                }
                AttentionMask::padding(m)?
            }
            None => AttentionMask::none(),
        };
        let heads = c.num_attention_heads;
        let scale = 1.0 / ((h / heads) as f64).sqrt();
        for i in 0..c.num_hidden_layers {
            let p = Scoped::new(w, format!("{}.encoder.layer.{i}.", self.base));
            let lin =
                |x: &Tensor, n: &str| -> Result<Tensor> { linear(x, &p.get(&format!("{n}.weight"))?, Some(&p.get(&format!("{n}.bias"))?)) };
            let q = split_heads(&lin(&x, "attention.self.query")?, heads)?;
            let k = split_heads(&lin(&x, "attention.self.key")?, heads)?;
            let v = split_heads(&lin(&x, "attention.self.value")?, heads)?;
            let ctx = attention_masked(&q, &k, &v, &attn_mask, scale, Some((dropout, c.attention_probs_dropout_prob, train)))?;
            let a = dropout.apply_p(&lin(&merge_heads(&ctx)?, "attention.output.dense")?, c.hidden_dropout_prob, train)?;
            let a = layer_norm(
                &a.add(&x)?,
                &p.get("attention.output.LayerNorm.weight")?,
                &p.get("attention.output.LayerNorm.bias")?,
                c.layer_norm_eps,
            )?;
            let f = activation(&c.hidden_act, &lin(&a, "intermediate.dense")?)?;
            let o = dropout.apply_p(&lin(&f, "output.dense")?, c.hidden_dropout_prob, train)?;
            x = layer_norm(&o.add(&a)?, &p.get("output.LayerNorm.weight")?, &p.get("output.LayerNorm.bias")?, c.layer_norm_eps)?;
        }
        Ok(x)
    }
}

/// The first token's state `[batch, hidden]` of `[batch, seq, hidden]`, contiguous: the heads
/// multiply it by their weights, and candle's CUDA matmul refuses a strided left operand (the
/// narrowed view has row stride `seq·hidden`), which the H200 device check caught for ViT.
pub(crate) fn first_token(x: &Tensor) -> Result<Tensor> {
    Ok(x.narrow(1, 0, 1)?.squeeze(1)?.contiguous()?)
}

/// Class ids as u32 `[batch]`, checked against the batch size.
pub(crate) fn class_targets(targets: &Tensor, batch: usize) -> Result<Tensor> {
    let t = ids_u32(targets)?;
    if t.dims() != [batch] {
        return Err(Error::Model(format!("classification targets must have shape [{batch}] (one label per example), got {:?}", t.dims())));
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn the_first_token_is_a_contiguous_batch_by_hidden_copy_of_position_zero() {
        let x = Tensor::arange(0f32, 2.0 * 5.0 * 4.0, &Device::Cpu).unwrap().reshape((2, 5, 4)).unwrap();
        let cls = first_token(&x).unwrap();
        // CUDA's matmul needs this: a strided [2, 4] view of row stride 20 is refused there.
        assert!(cls.is_contiguous());
        assert_eq!(cls.to_vec2::<f32>().unwrap(), [[0.0, 1.0, 2.0, 3.0], [20.0, 21.0, 22.0, 23.0]]);
    }
}
