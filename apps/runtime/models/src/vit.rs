//! Vision Transformer for image classification with the parameter names of `transformers`'
//! `ViTForImageClassification`: `vit.embeddings.cls_token`, `vit.embeddings.position_embeddings`,
//! `vit.embeddings.patch_embeddings.projection.*` (a stride-`p` convolution, computed here as
//! patch extraction + matmul), `vit.encoder.layer.{i}.*` (pre-LayerNorm blocks),
//! `vit.layernorm.*`, `classifier.*`.
//!
//! Batches: `inputs` `[batch, channels, height, width]` pixels (already normalised),
//! `targets` `[batch]` labels. The input embeddings (where noise is added) are the patch
//! projections `[batch, patches, hidden]`; the CLS token and positions are added after. The
//! logits are `classifier(layernorm(h)[CLS])`; the representation is `layernorm(h)[CLS]`.

use crate::checkpoint::{config_out, divides, dropout_seed, num_labels, params_dtype, ConfigFields, Init, Loader};
use crate::encoder::{class_targets, first_token};
use crate::layers::{
    activation, add_per_example, attention_masked, layer_norm, linear, merge_heads, split_heads, AttentionMask, Dropout, Scoped,
};
use crate::{LoadOptions, Pretrained, WeightMap};
use candle_core::{DType, Tensor};
use serde::Serialize;
use tram::{Batch, Error, Logits, Mode, Model, Params, Result, Weights};

/// Hugging Face `ViTConfig` fields used by the model; the dimensions are required, the rest
/// default as in `transformers` (5.24; checked against `tests/fixtures/config_defaults.json`).
#[derive(Clone, Debug, Serialize)]
pub struct VitConfig {
    /// Hidden width.
    pub hidden_size: usize,
    /// Number of layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// Feed-forward width.
    pub intermediate_size: usize,
    /// Image side (square images; `config.json` may give `n` or `[n, n]`).
    pub image_size: usize,
    /// Patch side (square patches; `n` or `[n, n]`).
    pub patch_size: usize,
    /// Input channels.
    pub num_channels: usize,
    /// Feed-forward activation.
    pub hidden_act: String,
    /// Dropout on embeddings and sub-layer outputs.
    pub hidden_dropout_prob: f64,
    /// Dropout on attention probabilities.
    pub attention_probs_dropout_prob: f64,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// Whether query / key / value have biases.
    pub qkv_bias: bool,
    /// Std of new-head initialisation.
    pub initializer_range: f64,
    /// The original `config.json`.
    #[serde(skip)]
    pub raw: serde_json::Value,
}

/// A square side given as `n` or `[n, n]` (`transformers` accepts both); a non-square pair is
/// an error naming the field.
fn square(f: &ConfigFields<'_>, key: &str) -> Result<usize> {
    let expected = "a positive integer or a pair [n, n]";
    match f.raw(key) {
        Some(serde_json::Value::Array(a)) => {
            let sides: Vec<usize> = f.required(key, expected)?;
            match sides.as_slice() {
                [h, w] if h == w => Ok(*h),
                _ => Err(f.error(format_args!(
                    "field `{key}` = {} is not supported: only square images and patches are (supported: an integer n or a pair [n, n])",
                    serde_json::Value::Array(a.clone())
                ))),
            }
        }
        _ => f.required(key, expected),
    }
}

impl VitConfig {
    /// Parse a `config.json` (`model_type` `vit`). Every error names the field and the model
    /// type.
    pub fn from_json(v: &serde_json::Value) -> Result<Self> {
        let f = ConfigFields::new(v, &["vit"], "ViT")?;
        let count = "a non-negative integer";
        let c = Self {
            hidden_size: f.required("hidden_size", count)?,
            num_hidden_layers: f.required("num_hidden_layers", count)?,
            num_attention_heads: f.required("num_attention_heads", count)?,
            intermediate_size: f.required("intermediate_size", count)?,
            image_size: square(&f, "image_size")?,
            patch_size: square(&f, "patch_size")?,
            num_channels: f.or("num_channels", count, 3)?,
            hidden_act: f.activation("hidden_act", "gelu")?,
            hidden_dropout_prob: f.probability("hidden_dropout_prob", 0.0)?,
            attention_probs_dropout_prob: f.probability("attention_probs_dropout_prob", 0.0)?,
            layer_norm_eps: f.positive("layer_norm_eps", 1e-12)?,
            qkv_bias: f.or("qkv_bias", "true or false", true)?,
            initializer_range: f.positive("initializer_range", 0.02)?,
            raw: v.clone(),
        };
        f.check_heads("hidden_size", c.hidden_size, "num_attention_heads", c.num_attention_heads)?;
        if c.patch_size == 0 || !divides(c.patch_size, c.image_size) {
            return Err(f.error(format_args!("image_size {} is not a multiple of patch_size {}", c.image_size, c.patch_size)));
        }
        if c.num_channels == 0 {
            return Err(f.error("field `num_channels` = 0: images need at least one channel"));
        }
        Ok(c)
    }

    /// Number of patches per image.
    pub fn num_patches(&self) -> usize {
        (self.image_size / self.patch_size).pow(2)
    }

    fn to_json(&self) -> serde_json::Value {
        let mut v = if self.raw.is_object() { self.raw.clone() } else { serde_json::json!({}) };
        if let (Some(obj), Ok(serde_json::Value::Object(parsed))) = (v.as_object_mut(), serde_json::to_value(self)) {
            for (k, val) in parsed {
                obj.insert(k, val);
            }
        }
        v
    }
}

/// `ViTForImageClassification`.
pub struct Vit {
    config: VitConfig,
    params: Params,
    labels: usize,
    dropout: Dropout,
}

impl Vit {
    /// The `transformers` class whose weight names the parameters follow.
    pub const ARCHITECTURE: &'static str = "ViTForImageClassification";

    /// Build from a config and checkpoint tensors (with or without the `vit.` prefix; a
    /// missing classifier, as in `google/vit-base-patch16-224-in21k`, is initialised with
    /// `N(0, initializer_range²)`). A pooler (`vit.pooler.*`) is ignored.
    pub fn from_weights(config: VitConfig, weights: WeightMap, opts: &LoadOptions) -> Result<Self> {
        let labels = num_labels(&config.raw, opts)?;
        let c = &config;
        let (h, f, p) = (c.hidden_size, c.intermediate_size, c.patch_size);
        let mut l = Loader::new(weights, "vit", opts, Self::ARCHITECTURE)?;
        l.required("vit.embeddings.cls_token", &[1, 1, h])?;
        l.required("vit.embeddings.position_embeddings", &[1, c.num_patches() + 1, h])?;
        l.required("vit.embeddings.patch_embeddings.projection.weight", &[h, c.num_channels, p, p])?;
        l.required("vit.embeddings.patch_embeddings.projection.bias", &[h])?;
        for i in 0..c.num_hidden_layers {
            let pre = format!("vit.encoder.layer.{i}.");
            l.required(&format!("{pre}layernorm_before.weight"), &[h])?;
            l.required(&format!("{pre}layernorm_before.bias"), &[h])?;
            for m in ["query", "key", "value"] {
                l.required(&format!("{pre}attention.attention.{m}.weight"), &[h, h])?;
                if c.qkv_bias {
                    l.required(&format!("{pre}attention.attention.{m}.bias"), &[h])?;
                }
            }
            l.required(&format!("{pre}attention.output.dense.weight"), &[h, h])?;
            l.required(&format!("{pre}attention.output.dense.bias"), &[h])?;
            l.required(&format!("{pre}layernorm_after.weight"), &[h])?;
            l.required(&format!("{pre}layernorm_after.bias"), &[h])?;
            l.required(&format!("{pre}intermediate.dense.weight"), &[f, h])?;
            l.required(&format!("{pre}intermediate.dense.bias"), &[f])?;
            l.required(&format!("{pre}output.dense.weight"), &[h, f])?;
            l.required(&format!("{pre}output.dense.bias"), &[h])?;
        }
        l.required("vit.layernorm.weight", &[h])?;
        l.required("vit.layernorm.bias", &[h])?;
        l.head("classifier.weight", &[labels, h], Init::Normal(c.initializer_range))?;
        l.head("classifier.bias", &[labels], Init::Zeros)?;
        let (params, _) = l.finish(c.initializer_range)?;
        let dropout = Dropout::new(config.hidden_dropout_prob, dropout_seed(opts.seed));
        Ok(Self { config, params, labels, dropout })
    }

    /// The config.
    pub fn config(&self) -> &VitConfig {
        &self.config
    }

    /// Number of labels of the classifier.
    pub fn num_labels(&self) -> usize {
        self.labels
    }

    /// Patch projections `[batch, patches, hidden]` of `pixels` `[batch, channels, h, w]`:
    /// the stride-`p` convolution as patch extraction and one matmul.
    pub fn patch_embeddings(&self, w: &dyn Weights, pixels: &Tensor) -> Result<Tensor> {
        let c = &self.config;
        let (b, ch, ih, iw) = pixels
            .dims4()
            .map_err(|_| Error::Model(format!("ViT expects pixels of shape [batch, channels, height, width], got {:?}", pixels.dims())))?;
        if ch != c.num_channels || ih != c.image_size || iw != c.image_size {
            return Err(Error::Model(format!(
                "ViT expects images of shape [batch, {}, {}, {}], got {:?}",
                c.num_channels,
                c.image_size,
                c.image_size,
                pixels.dims()
            )));
        }
        let weight = w.weight("vit.embeddings.patch_embeddings.projection.weight")?;
        let p = c.patch_size;
        let (gh, gw) = (ih / p, iw / p);
        let x = pixels.to_dtype(weight.dtype())?;
        // [b, c, gh, p, gw, p] → [b, gh, gw, c, p, p] → [b, gh·gw, c·p·p]: the flattening order
        // of the conv weight [hidden, c, p, p] and of the conv output's spatial positions.
        let patches = x.reshape((b, ch, gh, p, gw, p))?.permute((0, 2, 4, 1, 3, 5))?.contiguous()?.reshape((b, gh * gw, ch * p * p))?;
        let wmat = weight.reshape((c.hidden_size, ch * p * p))?;
        linear(&patches, &wmat, Some(&w.weight("vit.embeddings.patch_embeddings.projection.bias")?))
    }

    /// Final layer-normed hidden states `[batch, 1 + patches, hidden]` from patch projections.
    pub fn encode_embeds(&self, w: &dyn Weights, embeds: &Tensor, mode: Mode) -> Result<Tensor> {
        let c = &self.config;
        let (b, n, h) = embeds.dims3()?;
        if n != c.num_patches() || h != c.hidden_size {
            return Err(Error::Model(format!(
                "ViT patch embeddings must be [batch, {}, {}], got {:?}",
                c.num_patches(),
                c.hidden_size,
                embeds.dims()
            )));
        }
        let (d, train) = (&self.dropout, mode.train);
        // The CLS row and the position embeddings are added per example, their gradients
        // summed over the batch in f32 (`broadcast_as` / `broadcast_add` sum in the dtype).
        let cls = add_per_example(&Tensor::zeros((b, 1, h), embeds.dtype(), embeds.device())?, &w.weight("vit.embeddings.cls_token")?)?;
        let x = add_per_example(&Tensor::cat(&[&cls, embeds], 1)?, &w.weight("vit.embeddings.position_embeddings")?)?;
        let mut x = d.apply_p(&x, c.hidden_dropout_prob, train)?;
        let heads = c.num_attention_heads;
        let scale = 1.0 / ((h / heads) as f64).sqrt();
        for i in 0..c.num_hidden_layers {
            let p = Scoped::new(w, format!("vit.encoder.layer.{i}."));
            let lin = |x: &Tensor, n: &str, bias: bool| -> Result<Tensor> {
                let b = if bias { Some(p.get(&format!("{n}.bias"))?) } else { None };
                linear(x, &p.get(&format!("{n}.weight"))?, b.as_ref())
            };
            let a = layer_norm(&x, &p.get("layernorm_before.weight")?, &p.get("layernorm_before.bias")?, c.layer_norm_eps)?;
            let q = split_heads(&lin(&a, "attention.attention.query", c.qkv_bias)?, heads)?;
            let k = split_heads(&lin(&a, "attention.attention.key", c.qkv_bias)?, heads)?;
            let v = split_heads(&lin(&a, "attention.attention.value", c.qkv_bias)?, heads)?;
            let ctx = attention_masked(&q, &k, &v, &AttentionMask::none(), scale, Some((d, c.attention_probs_dropout_prob, train)))?;
            let o = d.apply_p(&lin(&merge_heads(&ctx)?, "attention.output.dense", true)?, c.hidden_dropout_prob, train)?;
            x = o.add(&x)?;
            let m = layer_norm(&x, &p.get("layernorm_after.weight")?, &p.get("layernorm_after.bias")?, c.layer_norm_eps)?;
            let m = activation(&c.hidden_act, &lin(&m, "intermediate.dense", true)?)?;
            let m = d.apply_p(&lin(&m, "output.dense", true)?, c.hidden_dropout_prob, train)?;
            x = m.add(&x)?;
        }
        layer_norm(&x, &w.weight("vit.layernorm.weight")?, &w.weight("vit.layernorm.bias")?, c.layer_norm_eps)
    }

    /// Final layer-normed hidden states `[batch, 1 + patches, hidden]` of `pixels`.
    pub fn encode(&self, w: &dyn Weights, pixels: &Tensor, mode: Mode) -> Result<Tensor> {
        let e = self.patch_embeddings(w, pixels)?;
        self.encode_embeds(w, &e, mode)
    }
}

/// ViT has no token types: a batch carrying them was built for another model.
fn no_token_types(batch: &Batch) -> Result<()> {
    if batch.token_types.is_some() {
        return Err(Error::Model("ViT takes images, not token type ids: the batch has `token_types`, which only text models read".into()));
    }
    Ok(())
}

impl Model for Vit {
    fn set_example_offset(&self, offset: usize) -> Result<()> {
        self.dropout.set_example_offset(offset)
    }
    fn params(&self) -> &Params {
        &self.params
    }

    fn embed(&self, w: &dyn Weights, batch: &Batch, _mode: Mode) -> Result<Tensor> {
        self.patch_embeddings(w, &batch.inputs)
    }

    fn forward_embeds(&self, w: &dyn Weights, embeds: &Tensor, batch: &Batch, mode: Mode) -> Result<Logits> {
        no_token_types(batch)?;
        let hidden = self.encode_embeds(w, embeds, mode)?;
        let logits = linear(&first_token(&hidden)?, &w.weight("classifier.weight")?, Some(&w.weight("classifier.bias")?))?;
        Ok(Logits { targets: class_targets(&batch.targets, logits.dim(0)?)?, logits })
    }

    fn representation(&self, w: &dyn Weights, batch: &Batch, mode: Mode) -> Result<Tensor> {
        no_token_types(batch)?;
        Ok(first_token(&self.encode(w, &batch.inputs, mode)?)?.to_dtype(DType::F32)?)
    }
}

impl Pretrained for Vit {
    fn config_json(&self) -> serde_json::Value {
        config_out(&self.config.to_json(), Self::ARCHITECTURE, "vit", Some(self.labels), params_dtype(&self.params))
    }
    fn dropout_position(&self) -> Result<u128> {
        self.dropout.position()
    }
    fn set_dropout_position(&self, pos: u128) -> Result<()> {
        self.dropout.set_position(pos)
    }
}
