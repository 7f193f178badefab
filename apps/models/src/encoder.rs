//! The post-LayerNorm transformer encoder shared by BERT and RoBERTa / XLM-R: configuration,
//! checkpoint reading of the base model, and the forward from input embeddings to
//! `last_hidden_state`. The two families differ only in position ids (RoBERTa counts from
//! `pad_token_id + 1` and gives padding the padding position) and in their task heads.

use crate::checkpoint::{divides, ids_u32, parse_config, Loader};
use crate::layers::{activation, attention_with, embedding, layer_norm, linear, merge_heads, padding_bias, split_heads, Dropout, Scoped};
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
    /// Token-type table size (2 for BERT, 1 for RoBERTa).
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

#[derive(Deserialize)]
struct Raw {
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    max_position_embeddings: usize,
    hidden_act: Option<String>,
    hidden_dropout_prob: Option<f64>,
    attention_probs_dropout_prob: Option<f64>,
    type_vocab_size: Option<usize>,
    initializer_range: Option<f64>,
    layer_norm_eps: Option<f64>,
    pad_token_id: Option<u32>,
    position_embedding_type: Option<String>,
    classifier_dropout: Option<f64>,
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

    /// Parse a `config.json` of the given family.
    pub fn from_json_as(v: &serde_json::Value, family: Family) -> Result<Self> {
        let r: Raw = parse_config(v, family.model_types(), family.name())?;
        let roberta = family == Family::Roberta;
        let c = Self {
            vocab_size: r.vocab_size,
            hidden_size: r.hidden_size,
            num_hidden_layers: r.num_hidden_layers,
            num_attention_heads: r.num_attention_heads,
            intermediate_size: r.intermediate_size,
            max_position_embeddings: r.max_position_embeddings,
            hidden_act: r.hidden_act.unwrap_or_else(|| "gelu".into()),
            hidden_dropout_prob: r.hidden_dropout_prob.unwrap_or(0.1),
            attention_probs_dropout_prob: r.attention_probs_dropout_prob.unwrap_or(0.1),
            type_vocab_size: r.type_vocab_size.unwrap_or(if roberta { 1 } else { 2 }),
            initializer_range: r.initializer_range.unwrap_or(0.02),
            layer_norm_eps: r.layer_norm_eps.unwrap_or(if roberta { 1e-5 } else { 1e-12 }),
            pad_token_id: r.pad_token_id.unwrap_or(if roberta { 1 } else { 0 }),
            position_embedding_type: r.position_embedding_type.unwrap_or_else(|| "absolute".into()),
            classifier_dropout: r.classifier_dropout,
            family,
            raw: v.clone(),
        };
        c.validate()?;
        Ok(c)
    }

    fn validate(&self) -> Result<()> {
        let mt = crate::checkpoint::model_type(&self.raw).unwrap_or("<missing>");
        let bad = |m: String| Err(Error::Model(format!("config.json (model_type `{mt}`): {m}")));
        if self.hidden_size == 0 || self.num_attention_heads == 0 || !divides(self.num_attention_heads, self.hidden_size) {
            return bad(format!(
                "hidden_size {} is not a positive multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.position_embedding_type != "absolute" {
            return bad(format!("position_embedding_type `{}` is not supported (only `absolute`)", self.position_embedding_type));
        }
        if self.type_vocab_size == 0 {
            return bad("type_vocab_size must be at least 1".into());
        }
        crate::layers::activation(&self.hidden_act, &Tensor::zeros(1, DType::F32, &candle_core::Device::Cpu)?)
            .map_err(|e| Error::Model(format!("config.json (model_type `{mt}`): hidden_act: {e}")))?;
        for (name, p) in [
            ("hidden_dropout_prob", self.hidden_dropout_prob),
            ("attention_probs_dropout_prob", self.attention_probs_dropout_prob),
            ("classifier_dropout", self.classifier_dropout.unwrap_or(0.0)),
        ] {
            if !(0.0..1.0).contains(&p) {
                return bad(format!("{name} = {p} is outside [0, 1)"));
            }
        }
        Ok(())
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

    /// Position ids `[batch, seq]` (u32) of `ids`.
    pub(crate) fn position_ids(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, s) = ids.dims2()?;
        let c = &self.cfg;
        let (pos, max) = match c.family {
            Family::Bert => ((0..b).flat_map(|_| 0..s as u32).collect::<Vec<u32>>(), s),
            Family::Roberta => {
                // transformers' create_position_ids_from_input_ids: cumsum of non-padding
                // tokens, times the non-padding mask, plus padding_idx.
                let rows = ids_u32(ids)?.to_vec2::<u32>()?;
                let pad = c.pad_token_id;
                let mut pos = Vec::with_capacity(b * s);
                let mut max = 0;
                for row in rows {
                    let mut count = 0u32;
                    for t in row {
                        if t != pad {
                            count += 1;
                            pos.push(pad + count);
                        } else {
                            pos.push(pad);
                        }
                    }
                    max = max.max((pad + count + 1) as usize);
                }
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
        Ok(Tensor::from_vec(pos, (b, s), ids.device())?)
    }

    /// `last_hidden_state` `[batch, seq, hidden]` from word embeddings `embeds`, the token
    /// `ids` (for position ids) and an optional `[batch, seq]` attention mask.
    pub(crate) fn forward_embeds(
        &self,
        w: &dyn Weights,
        embeds: &Tensor,
        ids: &Tensor,
        mask: Option<&Tensor>,
        dropout: &Dropout,
        train: bool,
    ) -> Result<Tensor> {
        let c = &self.cfg;
        let (b, s, h) = embeds.dims3()?;
        if ids.dims() != [b, s] {
            return Err(Error::Model(format!("embeddings {:?} do not match token ids {:?}", embeds.dims(), ids.dims())));
        }
        let e = Scoped::new(w, format!("{}.embeddings.", self.base));
        let pos = embedding(&e.get("position_embeddings.weight")?, &self.position_ids(ids)?)?;
        let typ = e.get("token_type_embeddings.weight")?.narrow(0, 0, 1)?; // token_type_ids = 0
        let x = embeds.add(&pos)?.broadcast_add(&typ)?;
        let x = layer_norm(&x, &e.get("LayerNorm.weight")?, &e.get("LayerNorm.bias")?, c.layer_norm_eps)?;
        let mut x = dropout.apply_p(&x, c.hidden_dropout_prob, train)?;
        let bias = match mask {
            Some(m) => {
                if m.dims() != [b, s] {
                    return Err(Error::Model(format!("attention mask {:?} does not match token ids {:?}", m.dims(), ids.dims())));
                }
                Some(padding_bias(m)?)
            }
            None => None,
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
            let ctx = attention_with(&q, &k, &v, bias.as_ref(), scale, Some((dropout, c.attention_probs_dropout_prob, train)))?;
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

/// The first token's state `[batch, hidden]` of `[batch, seq, hidden]`.
pub(crate) fn first_token(x: &Tensor) -> Result<Tensor> {
    Ok(x.narrow(1, 0, 1)?.squeeze(1)?)
}

/// Class ids as u32 `[batch]`, checked against the batch size.
pub(crate) fn class_targets(targets: &Tensor, batch: usize) -> Result<Tensor> {
    let t = ids_u32(targets)?;
    if t.dims() != [batch] {
        return Err(Error::Model(format!("classification targets must have shape [{batch}] (one label per example), got {:?}", t.dims())));
    }
    Ok(t)
}
