//! BERT for sequence classification, with the parameter names of `transformers`'
//! `BertForSequenceClassification`: `bert.embeddings.*`, `bert.encoder.layer.{i}.*`,
//! `bert.pooler.dense.*`, `classifier.*`.
//!
//! Batches: `inputs` `[batch, seq]` token ids, `mask` `[batch, seq]` attention mask
//! (1 = real token), `token_types` `[batch, seq]` segment ids of sentence pairs (all 0 when
//! absent, as in `transformers`), `targets` `[batch]` labels. The logits are
//! `classifier(dropout(tanh(pooler.dense(h[CLS]))))`; the representation is `h[CLS]`.

use crate::checkpoint::{config_out, dropout_seed, num_labels, params_dtype, Init, Loader};
use crate::encoder::{class_targets, first_token, Encoder, EncoderConfig, Family};
use crate::layers::{linear, Dropout};
use crate::{LoadOptions, Pretrained, WeightMap};
use candle_core::{DType, Tensor};
use tram::{Batch, Logits, Mode, Model, Params, Result, Weights};

/// A BERT `config.json`.
pub type BertConfig = EncoderConfig;

/// `BertForSequenceClassification`.
pub struct Bert {
    encoder: Encoder,
    params: Params,
    labels: usize,
    dropout: Dropout,
}

impl Bert {
    /// The `transformers` class whose weight names the parameters follow.
    pub const ARCHITECTURE: &'static str = "BertForSequenceClassification";

    /// Build from a config and checkpoint tensors (with or without the `bert.` prefix; a
    /// missing pooler or classifier is initialised with `N(0, initializer_range²)`).
    pub fn from_weights(config: BertConfig, weights: WeightMap, opts: &LoadOptions) -> Result<Self> {
        if config.family != Family::Bert {
            return Err(tram::Error::Model(format!(
                "Bert::from_weights got a {:?} config (model_type `{}`); use Roberta for RoBERTa / XLM-R",
                config.family,
                crate::checkpoint::model_type(&config.raw).unwrap_or("<missing>")
            )));
        }
        let labels = num_labels(&config.raw, opts)?;
        let h = config.hidden_size;
        let std = config.initializer_range;
        let mut l = Loader::new(weights, "bert", opts, Self::ARCHITECTURE)?;
        let encoder = Encoder { cfg: config, base: "bert" };
        encoder.load(&mut l)?;
        l.head("bert.pooler.dense.weight", &[h, h], Init::Normal(std))?;
        l.head("bert.pooler.dense.bias", &[h], Init::Zeros)?;
        l.head("classifier.weight", &[labels, h], Init::Normal(std))?;
        l.head("classifier.bias", &[labels], Init::Zeros)?;
        // MLM / NSP heads and buffers of other BERT classes.
        l.ignore(|k| k.starts_with("cls.") || k.ends_with("position_ids"));
        let (params, _) = l.finish(std)?;
        let dropout = Dropout::new(encoder.cfg.hidden_dropout_prob, dropout_seed(opts.seed));
        Ok(Self { encoder, params, labels, dropout })
    }

    /// The config.
    pub fn config(&self) -> &BertConfig {
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

    /// `tanh(pooler.dense(h[CLS]))` of a `last_hidden_state`.
    pub fn pool(&self, w: &dyn Weights, hidden: &Tensor) -> Result<Tensor> {
        let cls = first_token(hidden)?;
        Ok(linear(&cls, &w.weight("bert.pooler.dense.weight")?, Some(&w.weight("bert.pooler.dense.bias")?))?.tanh()?)
    }
}

impl Model for Bert {
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
        let pooled = self.pool(w, &hidden)?;
        let pooled = self.dropout.apply_p(&pooled, self.encoder.cfg.classifier_dropout_prob(), mode.train)?;
        let logits = linear(&pooled, &w.weight("classifier.weight")?, Some(&w.weight("classifier.bias")?))?;
        Ok(Logits { targets: class_targets(&batch.targets, logits.dim(0)?)?, logits })
    }

    fn representation(&self, w: &dyn Weights, batch: &Batch, mode: Mode) -> Result<Tensor> {
        let hidden = self.encode(w, &batch.inputs, batch.token_types.as_ref(), batch.mask.as_ref(), mode)?;
        Ok(first_token(&hidden)?.to_dtype(DType::F32)?)
    }
}

impl Pretrained for Bert {
    fn config_json(&self) -> serde_json::Value {
        config_out(&self.encoder.cfg.to_json(), Self::ARCHITECTURE, "bert", Some(self.labels), params_dtype(&self.params))
    }
    fn dropout_position(&self) -> Result<u128> {
        self.dropout.position()
    }
    fn set_dropout_position(&self, pos: u128) -> Result<()> {
        self.dropout.set_position(pos)
    }
}
