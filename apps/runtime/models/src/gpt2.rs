//! GPT-2 language model with the parameter names of `transformers`' `GPT2LMHeadModel`:
//! `transformer.wte.weight`, `transformer.wpe.weight`, `transformer.h.{i}.ln_1.*`,
//! `transformer.h.{i}.attn.c_attn.*` (`Conv1D`, weight `[in, out]`), `attn.c_proj.*`, `ln_2.*`,
//! `mlp.c_fc.*`, `mlp.c_proj.*`, `transformer.ln_f.*`. The LM head is tied to `wte` (no
//! separate parameter) unless the config says `tie_word_embeddings = false`: then it is the
//! trainable `lm_head.weight` `[vocab, n_embd]`, read from and saved to the checkpoint.
//!
//! Batches: `inputs` `[batch, seq]` token ids, `targets` `[batch, seq]` next-token ids
//! (already shifted by the caller), `mask` `[batch, seq]` (1 = this position's target counts),
//! optional `token_types` `[batch, seq]` (embedded with `wte` and added to the input, as
//! `transformers`' `token_type_ids`).
//! Attention is causal, so right padding does not change the real positions. The logits rows
//! are the positions with mask 1 in row-major order (all positions without a mask); the
//! representation is the mean of the final hidden states over the masked positions.

use crate::checkpoint::{config_out, dropout_seed, ids_u32, params_dtype, ConfigFields, Loader};
use crate::layers::{
    activation, add_per_example, attention_masked, conv1d, embedding, layer_norm, linear, merge_heads, split_heads, AttentionMask, Dropout,
    Scoped,
};
use crate::{LoadOptions, Pretrained, WeightMap};
use candle_core::{DType, Tensor};
use serde::Serialize;
use tram::{Batch, Error, Logits, Mode, Model, Params, Result, Weights};

/// Hugging Face `GPT2Config` fields used by the model; the dimensions are required, the rest
/// default as in `transformers` (5.24; checked against `tests/fixtures/config_defaults.json`).
#[derive(Clone, Debug, Serialize)]
pub struct Gpt2Config {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Size of the position table (maximum sequence length).
    pub n_positions: usize,
    /// Hidden width.
    pub n_embd: usize,
    /// Number of blocks.
    pub n_layer: usize,
    /// Attention heads per block.
    pub n_head: usize,
    /// Feed-forward width (`4 · n_embd` when null).
    pub n_inner: Option<usize>,
    /// Feed-forward activation.
    pub activation_function: String,
    /// Dropout on sub-layer outputs.
    pub resid_pdrop: f64,
    /// Dropout on the input embeddings (after adding positions).
    pub embd_pdrop: f64,
    /// Dropout on attention probabilities.
    pub attn_pdrop: f64,
    /// LayerNorm epsilon.
    pub layer_norm_epsilon: f64,
    /// Std of new-weight initialisation.
    pub initializer_range: f64,
    /// Scale attention scores by `1/√head_dim`.
    pub scale_attn_weights: bool,
    /// Further scale block `i`'s scores by `1/(i+1)`.
    pub scale_attn_by_inverse_layer_idx: bool,
    /// Whether the LM head is `wte` (true) or its own parameter `lm_head.weight` (false).
    pub tie_word_embeddings: bool,
    /// The original `config.json`.
    #[serde(skip)]
    pub raw: serde_json::Value,
}

impl Gpt2Config {
    /// Parse a `config.json` (`model_type` `gpt2`). Every error names the field and the
    /// model type.
    pub fn from_json(v: &serde_json::Value) -> Result<Self> {
        let f = ConfigFields::new(v, &["gpt2"], "GPT-2")?;
        let count = "a non-negative integer";
        let c = Self {
            vocab_size: f.required("vocab_size", count)?,
            n_positions: f.required("n_positions", count)?,
            n_embd: f.required("n_embd", count)?,
            n_layer: f.required("n_layer", count)?,
            n_head: f.required("n_head", count)?,
            n_inner: f.optional("n_inner", "a non-negative integer or null")?,
            activation_function: f.activation("activation_function", "gelu_new")?,
            resid_pdrop: f.probability("resid_pdrop", 0.1)?,
            embd_pdrop: f.probability("embd_pdrop", 0.1)?,
            attn_pdrop: f.probability("attn_pdrop", 0.1)?,
            layer_norm_epsilon: f.positive("layer_norm_epsilon", 1e-5)?,
            initializer_range: f.positive("initializer_range", 0.02)?,
            scale_attn_weights: f.or("scale_attn_weights", "true or false", true)?,
            scale_attn_by_inverse_layer_idx: f.or("scale_attn_by_inverse_layer_idx", "true or false", false)?,
            tie_word_embeddings: f.or("tie_word_embeddings", "true or false", true)?,
            raw: v.clone(),
        };
        f.check_heads("n_embd", c.n_embd, "n_head", c.n_head)?;
        f.only("add_cross_attention", false, "cross-attention layers are not implemented")?;
        Ok(c)
    }

    /// Feed-forward width.
    pub fn inner(&self) -> usize {
        self.n_inner.unwrap_or(4 * self.n_embd)
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

/// `GPT2LMHeadModel`.
pub struct Gpt2 {
    config: Gpt2Config,
    params: Params,
    dropout: Dropout,
}

impl Gpt2 {
    /// The `transformers` class whose weight names the parameters follow.
    pub const ARCHITECTURE: &'static str = "GPT2LMHeadModel";

    /// Build from a config and checkpoint tensors, with or without the `transformer.` prefix
    /// (hub base checkpoints such as `openai-community/gpt2` have `h.0...`, `wte.weight`).
    /// With a tied head (`tie_word_embeddings`, the default) a separate `lm_head.weight` is
    /// ignored, as `transformers` does; with an untied head it is required. The attention-mask
    /// buffers are ignored.
    pub fn from_weights(config: Gpt2Config, weights: WeightMap, opts: &LoadOptions) -> Result<Self> {
        let (h, f) = (config.n_embd, config.inner());
        let weights_have_head = weights.contains_key("lm_head.weight");
        let mut l = Loader::new(weights, "transformer", opts, Self::ARCHITECTURE)?;
        l.required("transformer.wte.weight", &[config.vocab_size, h])?;
        l.required("transformer.wpe.weight", &[config.n_positions, h])?;
        for i in 0..config.n_layer {
            let p = format!("transformer.h.{i}.");
            l.required(&format!("{p}ln_1.weight"), &[h])?;
            l.required(&format!("{p}ln_1.bias"), &[h])?;
            l.required(&format!("{p}attn.c_attn.weight"), &[h, 3 * h])?;
            l.required(&format!("{p}attn.c_attn.bias"), &[3 * h])?;
            l.required(&format!("{p}attn.c_proj.weight"), &[h, h])?;
            l.required(&format!("{p}attn.c_proj.bias"), &[h])?;
            l.required(&format!("{p}ln_2.weight"), &[h])?;
            l.required(&format!("{p}ln_2.bias"), &[h])?;
            l.required(&format!("{p}mlp.c_fc.weight"), &[h, f])?;
            l.required(&format!("{p}mlp.c_fc.bias"), &[f])?;
            l.required(&format!("{p}mlp.c_proj.weight"), &[f, h])?;
            l.required(&format!("{p}mlp.c_proj.bias"), &[h])?;
        }
        l.required("transformer.ln_f.weight", &[h])?;
        l.required("transformer.ln_f.bias", &[h])?;
        let tied = config.tie_word_embeddings;
        if !tied {
            if !weights_have_head {
                return Err(Error::Model(format!(
                    "{}: config.json says tie_word_embeddings = false, but the checkpoint has no `lm_head.weight` (expected shape \
                     [{}, {h}]); the untied LM head is not replaced by a random or tied one: use the complete checkpoint, or set \
                     tie_word_embeddings = true if the head really is wte",
                    Self::ARCHITECTURE,
                    config.vocab_size
                )));
            }
            l.required("lm_head.weight", &[config.vocab_size, h])?;
        }
        // Tied LM head, causal-mask buffers of older checkpoints.
        l.ignore(|k| {
            (tied && k == "lm_head.weight") || (k.ends_with(".attn.bias") && !k.contains("c_attn")) || k.ends_with(".attn.masked_bias")
        });
        let (params, _) = l.finish(config.initializer_range)?;
        let dropout = Dropout::new(config.resid_pdrop, dropout_seed(opts.seed));
        Ok(Self { config, params, dropout })
    }

    /// Freshly initialised weights for `config`, as `transformers`' `GPT2PreTrainedModel`
    /// initialises a new model: embeddings and `Conv1D` weights `N(0, initializer_range²)`,
    /// the residual projections (`attn.c_proj`, `mlp.c_proj`) `N(0, initializer_range² / (2 ·
    /// n_layer))`, biases 0, LayerNorm weights 1, an untied `lm_head.weight`
    /// `N(0, initializer_range²)`. Each tensor's values depend only on `seed`
    /// and its name. For pretraining from scratch ([`Gpt2::from_weights`] takes the result).
    pub fn init_weights(config: &Gpt2Config, opts: &LoadOptions) -> Result<WeightMap> {
        let (h, f, std) = (config.n_embd, config.inner(), config.initializer_range);
        let proj_std = std / ((2 * config.n_layer.max(1)) as f64).sqrt();
        let (dt, dev) = (opts.dtype, &opts.device);
        let mut w = WeightMap::new();
        let normal = |w: &mut WeightMap, name: String, dims: &[usize], std: f64| -> Result<()> {
            let t = crate::layers::init_normal(dims, std, crate::checkpoint::name_seed(opts.seed, &name), dt, dev)?;
            w.insert(name, t);
            Ok(())
        };
        normal(&mut w, "transformer.wte.weight".into(), &[config.vocab_size, h], std)?;
        normal(&mut w, "transformer.wpe.weight".into(), &[config.n_positions, h], std)?;
        let ones = |n: usize| Tensor::ones(n, dt, dev);
        let zeros = |n: usize| Tensor::zeros(n, dt, dev);
        for i in 0..config.n_layer {
            let p = format!("transformer.h.{i}.");
            for ln in ["ln_1", "ln_2"] {
                w.insert(format!("{p}{ln}.weight"), ones(h)?);
                w.insert(format!("{p}{ln}.bias"), zeros(h)?);
            }
            normal(&mut w, format!("{p}attn.c_attn.weight"), &[h, 3 * h], std)?;
            w.insert(format!("{p}attn.c_attn.bias"), zeros(3 * h)?);
            normal(&mut w, format!("{p}attn.c_proj.weight"), &[h, h], proj_std)?;
            w.insert(format!("{p}attn.c_proj.bias"), zeros(h)?);
            normal(&mut w, format!("{p}mlp.c_fc.weight"), &[h, f], std)?;
            w.insert(format!("{p}mlp.c_fc.bias"), zeros(f)?);
            normal(&mut w, format!("{p}mlp.c_proj.weight"), &[f, h], proj_std)?;
            w.insert(format!("{p}mlp.c_proj.bias"), zeros(h)?);
        }
        w.insert("transformer.ln_f.weight".into(), ones(h)?);
        w.insert("transformer.ln_f.bias".into(), zeros(h)?);
        if !config.tie_word_embeddings {
            normal(&mut w, "lm_head.weight".into(), &[config.vocab_size, h], std)?;
        }
        Ok(w)
    }

    /// A new, randomly initialised model ([`Gpt2::init_weights`]).
    pub fn random(config: Gpt2Config, opts: &LoadOptions) -> Result<Self> {
        let weights = Self::init_weights(&config, opts)?;
        Self::from_weights(config, weights, opts)
    }

    /// The config.
    pub fn config(&self) -> &Gpt2Config {
        &self.config
    }

    /// Final hidden states `[batch, seq, hidden]` (after `ln_f`) of token `ids` `[batch, seq]`.
    pub fn hidden_states(&self, w: &dyn Weights, ids: &Tensor, mode: Mode) -> Result<Tensor> {
        let e = self.word_embeddings(w, ids)?;
        self.hidden_states_from_embeds(w, &e, mode)
    }

    /// Final hidden states from input (word) embeddings `[batch, seq, hidden]` and optional
    /// token type ids `[batch, seq]`, embedded with `wte` and added to the input as
    /// `transformers`' `token_type_ids` are.
    pub fn hidden_states_typed(&self, w: &dyn Weights, embeds: &Tensor, token_types: Option<&Tensor>, mode: Mode) -> Result<Tensor> {
        let Some(tt) = token_types else { return self.hidden_states_from_embeds(w, embeds, mode) };
        let (b, s, _) = embeds.dims3()?;
        if tt.dims() != [b, s] {
            return Err(Error::Model(format!("GPT-2: token type ids {:?} do not match the inputs [{b}, {s}]", tt.dims())));
        }
        let tt = ids_u32(tt)?;
        let max = tt.max_all()?.to_scalar::<u32>()?;
        if max as usize >= self.config.vocab_size {
            return Err(Error::Model(format!(
                "GPT-2: token type id {max} is outside the vocabulary 0..{} (config.json vocab_size; GPT-2 embeds token types with wte)",
                self.config.vocab_size
            )));
        }
        let typed = embeds.add(&embedding(&w.weight("transformer.wte.weight")?, &tt)?)?;
        self.hidden_states_from_embeds(w, &typed, mode)
    }

    fn word_embeddings(&self, w: &dyn Weights, ids: &Tensor) -> Result<Tensor> {
        if ids.rank() != 2 {
            return Err(Error::Model(format!("GPT-2 expects token ids of shape [batch, seq], got {:?}", ids.dims())));
        }
        embedding(&w.weight("transformer.wte.weight")?, &ids_u32(ids)?)
    }

    /// Final hidden states from input (word) embeddings `[batch, seq, hidden]`.
    pub fn hidden_states_from_embeds(&self, w: &dyn Weights, embeds: &Tensor, mode: Mode) -> Result<Tensor> {
        let c = &self.config;
        let (_, s, h) = embeds.dims3()?;
        if s > c.n_positions {
            return Err(Error::Model(format!("GPT-2: a sequence of {s} tokens exceeds n_positions = {}", c.n_positions)));
        }
        let train = mode.train;
        let d = &self.dropout;
        let wpe = w.weight("transformer.wpe.weight")?.narrow(0, 0, s)?;
        let mut x = d.apply_p(&add_per_example(embeds, &wpe)?, c.embd_pdrop, train)?;
        let causal = AttentionMask::causal();
        let heads = c.n_head;
        let head_dim = h / heads;
        for i in 0..c.n_layer {
            let p = Scoped::new(w, format!("transformer.h.{i}."));
            let cv = |x: &Tensor, n: &str| -> Result<Tensor> { conv1d(x, &p.get(&format!("{n}.weight"))?, &p.get(&format!("{n}.bias"))?) };
            let a = layer_norm(&x, &p.get("ln_1.weight")?, &p.get("ln_1.bias")?, c.layer_norm_epsilon)?;
            let qkv = cv(&a, "attn.c_attn")?;
            let q = split_heads(&qkv.narrow(2, 0, h)?, heads)?;
            let k = split_heads(&qkv.narrow(2, h, h)?, heads)?;
            let v = split_heads(&qkv.narrow(2, 2 * h, h)?, heads)?;
            let mut scale = if c.scale_attn_weights { 1.0 / (head_dim as f64).sqrt() } else { 1.0 };
            if c.scale_attn_by_inverse_layer_idx {
                scale /= (i + 1) as f64;
            }
            let ctx = attention_masked(&q, &k, &v, &causal, scale, Some((d, c.attn_pdrop, train)))?;
            let o = cv(&merge_heads(&ctx)?, "attn.c_proj")?;
            x = x.add(&d.apply_p(&o, c.resid_pdrop, train)?)?;
            let m = layer_norm(&x, &p.get("ln_2.weight")?, &p.get("ln_2.bias")?, c.layer_norm_epsilon)?;
            let m = cv(&activation(&c.activation_function, &cv(&m, "mlp.c_fc")?)?, "mlp.c_proj")?;
            x = x.add(&d.apply_p(&m, c.resid_pdrop, train)?)?;
        }
        layer_norm(&x, &w.weight("transformer.ln_f.weight")?, &w.weight("transformer.ln_f.bias")?, c.layer_norm_epsilon)
    }

    /// The parameter the LM head multiplies by: `transformer.wte.weight` when tied,
    /// `lm_head.weight` when `tie_word_embeddings = false`.
    pub fn lm_head_name(&self) -> &'static str {
        if self.config.tie_word_embeddings {
            "transformer.wte.weight"
        } else {
            "lm_head.weight"
        }
    }

    /// LM logits `[.., vocab]` of hidden states (the head tied to `wte`, or `lm_head.weight`).
    pub fn lm_logits(&self, w: &dyn Weights, hidden: &Tensor) -> Result<Tensor> {
        linear(hidden, &w.weight(self.lm_head_name())?, None)
    }
}

/// Flat row indices `[n]` (u32) of the positions where `mask` `[batch, seq]` is non-zero.
fn mask_rows(mask: &Tensor, b: usize, s: usize) -> Result<Tensor> {
    if mask.dims() != [b, s] {
        return Err(Error::Model(format!("GPT-2 mask must have the shape of the inputs [{b}, {s}], got {:?}", mask.dims())));
    }
    let m = mask.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let idx: Vec<u32> = m.iter().enumerate().filter(|(_, v)| **v != 0.0).map(|(i, _)| i as u32).collect();
    if idx.is_empty() {
        return Err(Error::Model("GPT-2 batch mask selects no positions: no target to predict".into()));
    }
    let n = idx.len();
    Ok(Tensor::from_vec(idx, n, mask.device())?)
}

impl Model for Gpt2 {
    fn set_example_offset(&self, offset: usize) -> Result<()> {
        self.dropout.set_example_offset(offset)
    }
    fn params(&self) -> &Params {
        &self.params
    }

    fn embed(&self, w: &dyn Weights, batch: &Batch, _mode: Mode) -> Result<Tensor> {
        self.word_embeddings(w, &batch.inputs)
    }

    fn forward_embeds(&self, w: &dyn Weights, embeds: &Tensor, batch: &Batch, mode: Mode) -> Result<Logits> {
        let hidden = self.hidden_states_typed(w, embeds, batch.token_types.as_ref(), mode)?;
        let (b, s, h) = hidden.dims3()?;
        let targets = ids_u32(&batch.targets)?;
        if targets.dims() != [b, s] {
            return Err(Error::Model(format!(
                "GPT-2 targets must have the shape of the inputs [{b}, {s}] (next-token ids), got {:?}",
                targets.dims()
            )));
        }
        let flat = hidden.reshape((b * s, h))?;
        let targets = targets.flatten_all()?;
        let (rows, targets) = match &batch.mask {
            Some(m) => {
                let idx = mask_rows(m, b, s)?;
                (flat.index_select(&idx, 0)?, targets.index_select(&idx, 0)?)
            }
            None => (flat, targets),
        };
        Ok(Logits { logits: self.lm_logits(w, &rows)?, targets })
    }

    fn representation(&self, w: &dyn Weights, batch: &Batch, mode: Mode) -> Result<Tensor> {
        let e = self.word_embeddings(w, &batch.inputs)?;
        let hidden = self.hidden_states_typed(w, &e, batch.token_types.as_ref(), mode)?.to_dtype(DType::F32)?;
        let (b, s, _) = hidden.dims3()?;
        let m = match &batch.mask {
            Some(m) => {
                if m.dims() != [b, s] {
                    return Err(Error::Model(format!("GPT-2 mask must have the shape of the inputs [{b}, {s}], got {:?}", m.dims())));
                }
                m.to_dtype(DType::F32)?
            }
            None => Tensor::ones((b, s), DType::F32, hidden.device())?,
        };
        let count = m.sum_keepdim(1)?.clamp(1f32, f32::MAX)?; // [b, 1]
        let sum = hidden.broadcast_mul(&m.unsqueeze(2)?)?.sum(1)?; // [b, h]
        Ok(sum.broadcast_div(&count)?)
    }
}

impl Pretrained for Gpt2 {
    fn config_json(&self) -> serde_json::Value {
        config_out(&self.config.to_json(), Self::ARCHITECTURE, "gpt2", None, params_dtype(&self.params))
    }
    fn dropout_position(&self) -> Result<u128> {
        self.dropout.position()
    }
    fn set_dropout_position(&self, pos: u128) -> Result<()> {
        self.dropout.set_position(pos)
    }
}
