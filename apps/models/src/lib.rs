//! # tram-models
//!
//! Trainable transformer models for [`tram`]: GPT-2, ViT, BERT and XLM-R / RoBERTa with
//! Hugging Face weight names and `config.json` fields, dropout in train mode only, an entry at
//! the input embeddings (for the noise trust region) and the base representation before the
//! task head (for CKA). Built only from differentiable candle ops (see [`layers`]).

pub mod layers;

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
