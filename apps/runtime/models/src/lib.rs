//! # tram-models
//!
//! Trainable transformer models for [`tram`]: GPT-2, ViT, BERT and XLM-R / RoBERTa with
//! Hugging Face weight names and `config.json` fields, dropout in train mode only, an entry at
//! the input embeddings (for the noise trust region) and the base representation before the
//! task head (for CKA). Built only from differentiable candle ops (see [`layers`]).
//!
//! Checkpoints are read as `transformers` reads them: an absent `config.json` field takes the
//! default of the `transformers` config class (checked against a table generated from
//! transformers 5.24, `tests/fixtures/config_defaults.json`); a field of the wrong type or an
//! unsupported value is an error naming the field, the value, the model type and what is
//! supported; sentence pairs carry their token type ids ([`tram::Batch::token_types`]); an
//! untied GPT-2 head (`tie_word_embeddings = false`) is its own trainable parameter. A saved
//! config states the dtype of the saved weights.

pub mod bert;
mod checkpoint;
pub mod encoder;
pub mod gpt2;
pub mod layers;
pub mod roberta;
pub mod vit;

pub use bert::{Bert, BertConfig};
pub use encoder::{EncoderConfig, Family};
pub use gpt2::{Gpt2, Gpt2Config};
pub use roberta::{Roberta, RobertaConfig};
pub use vit::{Vit, VitConfig};

use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;

/// Named tensors as read from a checkpoint (Hugging Face names).
pub type WeightMap = HashMap<String, Tensor>;

/// How a model is built from a checkpoint.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Parameter dtype (f32 or bf16).
    pub dtype: DType,
    /// Device.
    pub device: Device,
    /// Seed of new-head initialisation and of dropout.
    pub seed: u64,
    /// Number of labels of a classification head (overrides `config.json`'s `num_labels` /
    /// `id2label`); `None` keeps the config's.
    pub num_labels: Option<usize>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self { dtype: DType::F32, device: Device::Cpu, seed: 0, num_labels: None }
    }
}

/// A model loaded from (and savable to) a Hugging Face checkpoint.
pub trait Pretrained: tram::Model + Send {
    /// The `config.json` to save beside the weights; `architectures` names the `transformers`
    /// class whose weight names the parameters follow.
    fn config_json(&self) -> serde_json::Value;
    /// Dropout stream positions, for training checkpoints.
    fn dropout_position(&self) -> tram::Result<u128>;
    /// Restore dropout stream positions.
    fn set_dropout_position(&self, pos: u128) -> tram::Result<()>;
}

/// The `model_type` values [`from_config`] accepts.
pub const MODEL_TYPES: &[&str] = &["gpt2", "vit", "bert", "roberta", "xlm-roberta", "camembert"];

/// The `model_type` values [`random_from_config`] accepts.
pub const RANDOM_INIT_MODEL_TYPES: &[&str] = &["gpt2"];

/// A new, randomly initialised model of the architecture a `config.json` describes, for
/// training from scratch: GPT-2 ([`Gpt2::random`]); other architectures are an error.
pub fn random_from_config(config: &serde_json::Value, opts: &LoadOptions) -> tram::Result<Box<dyn Pretrained>> {
    match config.get("model_type").and_then(|m| m.as_str()).unwrap_or("") {
        "gpt2" => Ok(Box::new(Gpt2::random(Gpt2Config::from_json(config)?, opts)?)),
        other => Err(tram::Error::Model(format!(
            "random initialisation supports model_type {}, not `{other}`; start from a pretrained checkpoint instead",
            RANDOM_INIT_MODEL_TYPES.join(", ")
        ))),
    }
}

/// Build the model a `config.json` describes (by its `model_type`) from checkpoint tensors:
/// GPT-2 → [`Gpt2`] (`GPT2LMHeadModel`), ViT → [`Vit`] (`ViTForImageClassification`), BERT →
/// [`Bert`] (`BertForSequenceClassification`), RoBERTa / XLM-R → [`Roberta`]
/// (`XLMRobertaForSequenceClassification`).
pub fn from_config(config: &serde_json::Value, weights: WeightMap, opts: &LoadOptions) -> tram::Result<Box<dyn Pretrained>> {
    let mt = config.get("model_type").and_then(|m| m.as_str()).unwrap_or("");
    Ok(match mt {
        "gpt2" => Box::new(Gpt2::from_weights(Gpt2Config::from_json(config)?, weights, opts)?),
        "vit" => Box::new(Vit::from_weights(VitConfig::from_json(config)?, weights, opts)?),
        "bert" => Box::new(Bert::from_weights(EncoderConfig::from_json_as(config, Family::Bert)?, weights, opts)?),
        "roberta" | "xlm-roberta" | "camembert" => {
            Box::new(Roberta::from_weights(EncoderConfig::from_json_as(config, Family::Roberta)?, weights, opts)?)
        }
        "" => return Err(tram::Error::Model(format!("config.json has no model_type; supported: {}", MODEL_TYPES.join(", ")))),
        other => return Err(tram::Error::Model(format!("unsupported model_type `{other}`; supported: {}", MODEL_TYPES.join(", ")))),
    })
}
