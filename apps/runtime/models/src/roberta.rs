//! XLM-R / RoBERTa for sequence classification, with the parameter names of `transformers`'
//! `XLMRobertaForSequenceClassification` (identical to `RobertaForSequenceClassification`):
//! `roberta.embeddings.*`, `roberta.encoder.layer.{i}.*`, `classifier.dense.*`,
//! `classifier.out_proj.*`. RoBERTa has no pooler.
//!
//! Batches: `inputs` `[batch, seq]` token ids (padding = `pad_token_id`), `mask` `[batch, seq]`
//! attention mask (1 = real token), optional `token_types` `[batch, seq]` (RoBERTa / XLM-R
//! tokenizers give all zeros; ids must be below `type_vocab_size`, usually 1),
//! `targets` `[batch]` labels. Position ids start at
//! `pad_token_id + 1` and padding tokens get `pad_token_id`. The logits are
//! `out_proj(dropout(tanh(dense(dropout(h[<s>])))))`; the representation is `h[<s>]`.

use crate::checkpoint::{config_out, dropout_seed, model_type, num_labels, params_dtype, Init, Loader};
use crate::encoder::{class_targets, first_token, Encoder, EncoderConfig, Family};
use crate::layers::{linear, Dropout};
use crate::{LoadOptions, Pretrained, WeightMap};
use candle_core::{DType, Tensor};
use tram::{Batch, Logits, Mode, Model, Params, Result, Weights};

/// A RoBERTa / XLM-R `config.json`.
pub type RobertaConfig = EncoderConfig;

/// `XLMRobertaForSequenceClassification` / `RobertaForSequenceClassification`.
pub struct Roberta {
    encoder: Encoder,
    params: Params,
    labels: usize,
    dropout: Dropout,
    model_type: String,
}

impl Roberta {
    /// Build from a config and checkpoint tensors (with or without the `roberta.` prefix; a
    /// missing classification head is initialised with `N(0, initializer_range²)`). MLM heads
    /// (`lm_head.*`) are ignored.
    pub fn from_weights(config: RobertaConfig, weights: WeightMap, opts: &LoadOptions) -> Result<Self> {
        if config.family != Family::Roberta {
            return Err(tram::Error::Model(format!(
                "Roberta::from_weights got a {:?} config (model_type `{}`); use Bert for BERT",
                config.family,
                model_type(&config.raw).unwrap_or("<missing>")
            )));
        }
        let model_type = model_type(&config.raw).unwrap_or("xlm-roberta").to_string();
        let labels = num_labels(&config.raw, opts)?;
        let h = config.hidden_size;
        let std = config.initializer_range;
        let what = architecture(&model_type);
        let mut l = Loader::new(weights, "roberta", opts, what)?;
        let encoder = Encoder { cfg: config, base: "roberta" };
        encoder.load(&mut l)?;
        l.head("classifier.dense.weight", &[h, h], Init::Normal(std))?;
        l.head("classifier.dense.bias", &[h], Init::Zeros)?;
        l.head("classifier.out_proj.weight", &[labels, h], Init::Normal(std))?;
        l.head("classifier.out_proj.bias", &[labels], Init::Zeros)?;
        l.ignore(|k| k.ends_with("position_ids"));
        let (params, _) = l.finish(std)?;
        let dropout = Dropout::new(encoder.cfg.hidden_dropout_prob, dropout_seed(opts.seed));
        Ok(Self { encoder, params, labels, dropout, model_type })
    }

    /// The config.
    pub fn config(&self) -> &RobertaConfig {
        &self.encoder.cfg
    }

    /// Number of labels of the classifier.
    pub fn num_labels(&self) -> usize {
        self.labels
    }

    /// `last_hidden_state` `[batch, seq, hidden]` of token `ids` `[batch, seq]` with optional
    /// token type ids `[batch, seq]` (all 0 when `None`) and an optional attention mask (1 =
    /// real token).
    pub fn encode(&self, w: &dyn Weights, ids: &Tensor, token_types: Option<&Tensor>, mask: Option<&Tensor>, mode: Mode) -> Result<Tensor> {
        let e = self.encoder.word_embeddings(w, ids)?;
        self.encoder.forward_embeds(w, &e, ids, token_types, mask, &self.dropout, mode.train)
    }
}

fn architecture(model_type: &str) -> &'static str {
    match model_type {
        "roberta" => "RobertaForSequenceClassification",
        "camembert" => "CamembertForSequenceClassification",
        _ => "XLMRobertaForSequenceClassification",
    }
}

impl Model for Roberta {
    fn set_example_offset(&self, offset: usize) -> Result<()> {
        self.dropout.set_example_offset(offset)
    }
    fn params(&self) -> &Params {
        &self.params
    }

    fn embed(&self, w: &dyn Weights, batch: &Batch, _mode: Mode) -> Result<Tensor> {
        self.encoder.word_embeddings(w, &batch.inputs)
    }

    fn forward_embeds(&self, w: &dyn Weights, embeds: &Tensor, batch: &Batch, mode: Mode) -> Result<Logits> {
        let hidden = self.encoder.forward_embeds(
            w,
            embeds,
            &batch.inputs,
            batch.token_types.as_ref(),
            batch.mask.as_ref(),
            &self.dropout,
            mode.train,
        )?;
        let p = self.encoder.cfg.classifier_dropout_prob();
        let x = self.dropout.apply_p(&first_token(&hidden)?, p, mode.train)?;
        let x = linear(&x, &w.weight("classifier.dense.weight")?, Some(&w.weight("classifier.dense.bias")?))?.tanh()?;
        let x = self.dropout.apply_p(&x, p, mode.train)?;
        let logits = linear(&x, &w.weight("classifier.out_proj.weight")?, Some(&w.weight("classifier.out_proj.bias")?))?;
        Ok(Logits { targets: class_targets(&batch.targets, logits.dim(0)?)?, logits })
    }

    fn representation(&self, w: &dyn Weights, batch: &Batch, mode: Mode) -> Result<Tensor> {
        let hidden = self.encode(w, &batch.inputs, batch.token_types.as_ref(), batch.mask.as_ref(), mode)?;
        Ok(first_token(&hidden)?.to_dtype(DType::F32)?)
    }
}

impl Pretrained for Roberta {
    fn config_json(&self) -> serde_json::Value {
        config_out(
            &self.encoder.cfg.to_json(),
            architecture(&self.model_type),
            &self.model_type,
            Some(self.labels),
            params_dtype(&self.params),
        )
    }
    fn dropout_position(&self) -> Result<u128> {
        self.dropout.position()
    }
    fn set_dropout_position(&self, pos: u128) -> Result<()> {
        self.dropout.set_position(pos)
    }
}
