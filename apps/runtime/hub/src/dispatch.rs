//! Building the model a checkpoint's `config.json` describes.

use crate::error::{Error, Result};
use crate::source::{HubOptions, ModelFiles, ModelSource};
use tram_models::{LoadOptions, Pretrained};

/// The `config.json` `model_type` values [`load_model`] accepts: GPT-2 (`GPT2LMHeadModel`),
/// ViT (`ViTForImageClassification`), BERT (`BertForSequenceClassification`), RoBERTa /
/// XLM-R / CamemBERT (`XLMRobertaForSequenceClassification`).
pub const SUPPORTED_MODEL_TYPES: &[&str] = tram_models::MODEL_TYPES;

/// Load the model `source` names, with the hub configured from the environment
/// ([`HubOptions::from_env`]): read `config.json`, check its `model_type`, load the weights on
/// `opts.device` in `opts.dtype` and build the matching `tram_models` architecture.
pub fn load_model(source: &ModelSource, opts: &LoadOptions) -> Result<Box<dyn Pretrained>> {
    load_model_from(&source.files(&HubOptions::from_env()), opts)
}

/// [`load_model`] with explicit hub options.
pub fn load_model_from(files: &ModelFiles, opts: &LoadOptions) -> Result<Box<dyn Pretrained>> {
    let config_path = files.config_path()?;
    let config = crate::load::read_config(&config_path)?;
    let model_type = config.get("model_type").and_then(|m| m.as_str());
    if !model_type.is_some_and(|m| SUPPORTED_MODEL_TYPES.contains(&m)) {
        return Err(Error::UnknownArchitecture {
            path: config_path,
            model_type: match config.get("model_type") {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
                None => "<missing>".into(),
            },
            supported: SUPPORTED_MODEL_TYPES.join(", "),
        });
    }
    let weights = files.weights(&opts.device, opts.dtype)?;
    tram_models::from_config(&config, weights, opts).map_err(|error| Error::Model { source_desc: files.source().to_string(), error })
}

/// A new, randomly initialised model of the architecture `files`' `config.json` describes
/// (no weights are read; `tram_models::random_from_config`), for training from scratch.
pub fn init_model_from(files: &ModelFiles, opts: &LoadOptions) -> Result<Box<dyn Pretrained>> {
    let config = crate::load::read_config(&files.config_path()?)?;
    tram_models::random_from_config(&config, opts).map_err(|error| Error::Model { source_desc: files.source().to_string(), error })
}
