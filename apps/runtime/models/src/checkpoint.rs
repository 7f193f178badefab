//! Shared loading machinery: `config.json` parsing with clear errors, and a checkpoint reader
//! that maps Hugging Face tensor names (with or without the base-model prefix) onto the
//! parameters of a task class, checks shapes, initialises absent heads and reports unused
//! tensors.

use crate::layers::init_normal;
use crate::{LoadOptions, WeightMap};
use candle_core::{DType, Tensor, Var};
use serde::de::DeserializeOwned;
use std::collections::HashSet;
use tram::{Error, Params, Result};

/// The `model_type` of a `config.json`, if it has one.
pub(crate) fn model_type(v: &serde_json::Value) -> Option<&str> {
    v.get("model_type").and_then(|m| m.as_str())
}

/// The fields of a `config.json`, read one by one so that every error names the field, the
/// value found and the model type (`config.json (model_type `vit`): field `image_size` = [16,32]
/// ...`). Create with [`ConfigFields::new`], which also rejects a `model_type` of another
/// architecture.
pub(crate) struct ConfigFields<'a> {
    obj: &'a serde_json::Map<String, serde_json::Value>,
    /// The file's `model_type` (`<missing>` when absent), for messages.
    pub(crate) model_type: String,
    /// The architecture, for messages (`"ViT"`).
    pub(crate) what: &'static str,
}

impl<'a> ConfigFields<'a> {
    /// Read `v` as a `what` config, accepting a `model_type` in `accepted` (or none).
    pub(crate) fn new(v: &'a serde_json::Value, accepted: &[&str], what: &'static str) -> Result<Self> {
        let Some(obj) = v.as_object() else {
            return Err(Error::Model(format!("{what} config.json must be a JSON object, got {}", short(v))));
        };
        let mt = match obj.get("model_type") {
            None => None,
            Some(serde_json::Value::String(s)) => Some(s.as_str()),
            Some(other) => {
                return Err(Error::Model(format!(
                    "{what} config.json: field `model_type` = {} is not a string (accepted model_type: {})",
                    short(other),
                    accepted.join(", ")
                )))
            }
        };
        if let Some(mt) = mt {
            if !accepted.contains(&mt) {
                return Err(Error::Model(format!(
                    "config.json has model_type `{mt}`, which is not a {what} model (accepted model_type: {})",
                    accepted.join(", ")
                )));
            }
        }
        let f = Self { obj, model_type: mt.unwrap_or("<missing>").to_string(), what };
        // Checkpoint-wide features whose weights the models would read as plain dense
        // float weights: refused, never ignored.
        if obj.get("quantization_config").is_some_and(|q| !q.is_null()) {
            return Err(f.error(
                "field `quantization_config` is set: quantized checkpoints are not supported (supported: dense float32 / bfloat16 / \
                 float16 weights; dequantize and save the model with transformers first)",
            ));
        }
        if obj.get("pruned_heads").is_some_and(|p| !(p.is_null() || p.as_object().is_some_and(|m| m.is_empty()))) {
            return Err(f.error(format_args!(
                "field `pruned_heads` = {} is not supported (supported: no pruned heads, `{{}}`)",
                short(&obj["pruned_heads"])
            )));
        }
        Ok(f)
    }

    /// An error about this config: `config.json (model_type `vit`): {msg}`.
    pub(crate) fn error(&self, msg: impl std::fmt::Display) -> Error {
        Error::Model(format!("config.json (model_type `{}`, {}): {msg}", self.model_type, self.what))
    }

    fn parse<T: DeserializeOwned>(&self, key: &str, v: &serde_json::Value, expected: &str) -> Result<T> {
        serde_json::from_value(v.clone()).map_err(|e| self.error(format_args!("field `{key}` = {} is not {expected} ({e})", short(v))))
    }

    /// A field that must be present (and not null).
    pub(crate) fn required<T: DeserializeOwned>(&self, key: &str, expected: &str) -> Result<T> {
        match self.obj.get(key) {
            None | Some(serde_json::Value::Null) => {
                Err(self.error(format_args!("missing field `{key}` ({expected}); the model's dimensions must be given")))
            }
            Some(v) => self.parse(key, v, expected),
        }
    }

    /// A field that may be absent or null (`None` then).
    pub(crate) fn optional<T: DeserializeOwned>(&self, key: &str, expected: &str) -> Result<Option<T>> {
        match self.obj.get(key) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(v) => self.parse(key, v, expected).map(Some),
        }
    }

    /// A field with a `transformers` default, used when it is absent.
    pub(crate) fn or<T: DeserializeOwned>(&self, key: &str, expected: &str, default: T) -> Result<T> {
        match self.obj.get(key) {
            None => Ok(default),
            Some(v) => self.parse(key, v, expected),
        }
    }

    /// The raw value of a field, if present.
    pub(crate) fn raw(&self, key: &str) -> Option<&'a serde_json::Value> {
        self.obj.get(key)
    }

    /// A dropout probability in `[0, 1)`.
    pub(crate) fn probability(&self, key: &str, default: f64) -> Result<f64> {
        let p: f64 = self.or(key, "a number", default)?;
        self.check_probability(key, p)?;
        Ok(p)
    }

    /// Check that `p` (the value of `key`) lies in `[0, 1)`.
    pub(crate) fn check_probability(&self, key: &str, p: f64) -> Result<()> {
        if !(0.0..1.0).contains(&p) {
            return Err(self.error(format_args!("field `{key}` = {p} is outside [0, 1) (a dropout probability)")));
        }
        Ok(())
    }

    /// A positive, finite number (an epsilon or a standard deviation).
    pub(crate) fn positive(&self, key: &str, default: f64) -> Result<f64> {
        let x: f64 = self.or(key, "a number", default)?;
        if !(x.is_finite() && x > 0.0) {
            return Err(self.error(format_args!("field `{key}` = {x} must be a positive finite number")));
        }
        Ok(x)
    }

    /// An activation name the models implement.
    pub(crate) fn activation(&self, key: &str, default: &str) -> Result<String> {
        let a: String = self.or(key, "an activation name", default.to_string())?;
        crate::layers::activation(&a, &Tensor::zeros(1, DType::F32, &candle_core::Device::Cpu)?)
            .map_err(|e| self.error(format_args!("field `{key}`: {e}")))?;
        Ok(a)
    }

    /// Check `hidden` (of `hidden_key`) is a positive multiple of `heads` (of `heads_key`).
    pub(crate) fn check_heads(&self, hidden_key: &str, hidden: usize, heads_key: &str, heads: usize) -> Result<()> {
        if hidden == 0 || heads == 0 || !divides(heads, hidden) {
            return Err(self.error(format_args!("{hidden_key} {hidden} is not a positive multiple of {heads_key} {heads}")));
        }
        Ok(())
    }

    /// A boolean field whose only supported value is `supported` (a feature the models do not
    /// implement, which would otherwise be ignored silently).
    pub(crate) fn only(&self, key: &str, supported: bool, why: &str) -> Result<()> {
        let v: bool = self.or(key, "true or false", supported)?;
        if v != supported {
            return Err(self.error(format_args!("field `{key}` = {v} is not supported (supported: {supported}; {why})")));
        }
        Ok(())
    }
}

fn short(v: &serde_json::Value) -> String {
    let s = v.to_string();
    if s.len() > 60 {
        let cut = (0..=60).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0);
        format!("{}…", &s[..cut])
    } else {
        s
    }
}

/// Number of labels: the override in `opts`, else `id2label`'s size, else `num_labels`, else 2
/// (the `transformers` default). An `id2label` that is not an object or a `num_labels` that is
/// not an integer is an error naming the field (not a silent 2); a `num_labels` that
/// contradicts `id2label` is logged, and `id2label` wins as in `transformers`.
pub(crate) fn num_labels(v: &serde_json::Value, opts: &LoadOptions) -> Result<usize> {
    let mt = model_type(v).unwrap_or("<missing>");
    let bad = |m: String| Err(Error::Model(format!("config.json (model_type `{mt}`): {m}")));
    let id2label = match v.get("id2label") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Object(m)) => Some(m.len()),
        Some(other) => return bad(format!("field `id2label` = {} is not an object of label names", short(other))),
    };
    let declared = match v.get("num_labels") {
        None | Some(serde_json::Value::Null) => None,
        Some(n) => match n.as_u64() {
            Some(n) => Some(n as usize),
            None => return bad(format!("field `num_labels` = {} is not a non-negative integer", short(n))),
        },
    };
    if let (Some(a), Some(b)) = (id2label, declared) {
        if a != b && opts.num_labels.is_none() {
            // transformers keeps id2label too, with the same warning.
            tracing::warn!("config.json (model_type `{mt}`): num_labels = {b} contradicts id2label, which names {a} labels: using {a}");
        }
    }
    let n = opts.num_labels.or(id2label).or(declared).unwrap_or(2);
    if n == 0 {
        return bad("a classification head needs at least one label (num_labels = 0)".into());
    }
    Ok(n)
}

/// The `transformers` name of a parameter dtype (`config.json`'s `dtype` / `torch_dtype`).
pub(crate) fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "float32",
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        DType::F64 => "float64",
        DType::U8 => "uint8",
        DType::U32 => "uint32",
        DType::I64 => "int64",
        _ => "float32",
    }
}

/// The dtype the parameters are saved in (that of the first; f32 for a model without any).
pub(crate) fn params_dtype(params: &Params) -> DType {
    params.iter().next().map(|p| p.var.dtype()).unwrap_or(DType::F32)
}

/// The `config.json` to save: the original fields with `architectures`, `model_type`, the
/// `dtype` the weights are saved in (`torch_dtype` too when the original had it: a float16
/// checkpoint trained and saved in f32 must not claim float16) and, for classifiers, the
/// labels: `id2label` / `label2id` when their number changed, and `problem_type` set to the
/// single-label classification the models train (the task head was trained with
/// cross-entropy whatever the original said).
pub(crate) fn config_out(
    raw: &serde_json::Value,
    architecture: &str,
    model_type: &str,
    labels: Option<usize>,
    dtype: DType,
) -> serde_json::Value {
    let mut v = raw.clone();
    let Some(obj) = v.as_object_mut() else { return v };
    obj.insert("architectures".into(), serde_json::json!([architecture]));
    obj.insert("model_type".into(), serde_json::json!(model_type));
    obj.insert("dtype".into(), serde_json::json!(dtype_name(dtype)));
    if obj.contains_key("torch_dtype") {
        obj.insert("torch_dtype".into(), serde_json::json!(dtype_name(dtype)));
    }
    if let Some(n) = labels {
        let same = obj.get("id2label").and_then(|m| m.as_object()).is_some_and(|m| m.len() == n);
        if !same {
            let id2label: serde_json::Map<_, _> = (0..n).map(|i| (i.to_string(), serde_json::json!(format!("LABEL_{i}")))).collect();
            let label2id: serde_json::Map<_, _> = (0..n).map(|i| (format!("LABEL_{i}"), serde_json::json!(i))).collect();
            obj.insert("id2label".into(), id2label.into());
            obj.insert("label2id".into(), label2id.into());
        }
        obj.remove("num_labels");
        if obj.get("problem_type").is_some_and(|p| !p.is_null()) {
            obj.insert("problem_type".into(), serde_json::json!("single_label_classification"));
        }
    }
    v
}

/// A seed for one new tensor: the load seed mixed with a hash of the tensor's name, so a
/// head's initialisation does not depend on the order tensors are created in.
pub(crate) fn name_seed(seed: u64, name: &str) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in name.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    seed ^ h
}

/// The seed of a model's dropout stream (distinct from every head-initialisation seed).
pub(crate) fn dropout_seed(seed: u64) -> u64 {
    name_seed(seed, "<dropout stream>")
}

/// How a head tensor absent from the checkpoint is initialised.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Init {
    /// `N(0, std²)`.
    Normal(f64),
    /// Zeros (biases).
    Zeros,
}

/// Reads a checkpoint into the parameters of one task class.
pub(crate) struct Loader<'a> {
    tensors: WeightMap,
    opts: &'a LoadOptions,
    /// The base-model prefix of canonical names, with its dot (`"bert."`).
    base: String,
    /// What is being loaded, for messages (`"BertForSequenceClassification"`).
    what: String,
    pairs: Vec<(String, Var)>,
    used: HashSet<String>,
    initialised: Vec<String>,
}

impl<'a> Loader<'a> {
    pub(crate) fn new(tensors: WeightMap, base: &str, opts: &'a LoadOptions, what: &str) -> Result<Self> {
        if !matches!(opts.dtype, DType::F32 | DType::BF16 | DType::F16 | DType::F64) {
            return Err(Error::Model(format!("{what}: unsupported parameter dtype {:?} (use f32 or bf16)", opts.dtype)));
        }
        Ok(Self {
            tensors,
            opts,
            base: format!("{base}."),
            what: what.to_string(),
            pairs: Vec::new(),
            used: HashSet::new(),
            initialised: Vec::new(),
        })
    }

    /// Checkpoint keys that may hold canonical `name`, most specific first.
    fn candidates(&self, name: &str) -> Vec<String> {
        let mut names = vec![name.to_string()];
        if let Some(rest) = name.strip_prefix(&self.base) {
            names.push(rest.to_string());
        }
        // Old BERT-family checkpoints name LayerNorm parameters gamma / beta.
        let legacy: Vec<String> = names
            .iter()
            .filter_map(|n| {
                if n.contains("LayerNorm.") {
                    n.strip_suffix(".weight").map(|s| format!("{s}.gamma")).or_else(|| n.strip_suffix(".bias").map(|s| format!("{s}.beta")))
                } else {
                    None
                }
            })
            .collect();
        names.extend(legacy);
        names
    }

    fn find(&self, name: &str) -> Option<String> {
        self.candidates(name).into_iter().find(|k| self.tensors.contains_key(k))
    }

    fn push(&mut self, name: &str, t: &Tensor) -> Result<()> {
        let t = t.detach().to_dtype(self.opts.dtype)?.to_device(&self.opts.device)?;
        self.pairs.push((name.to_string(), Var::from_tensor(&t)?));
        Ok(())
    }

    fn shape_error(&self, name: &str, key: &str, got: &[usize], want: &[usize]) -> Error {
        let alias = if key != name { format!(" (read as `{name}`)") } else { String::new() };
        Error::Model(format!(
            "{}: checkpoint tensor `{key}`{alias} has shape {got:?}, but the config implies {want:?}; the checkpoint does not match its config.json",
            self.what
        ))
    }

    /// A tensor the checkpoint must contain.
    pub(crate) fn required(&mut self, name: &str, shape: &[usize]) -> Result<()> {
        let Some(key) = self.find(name) else {
            let alts = self.candidates(name)[1..].iter().map(|c| format!("`{c}`")).collect::<Vec<_>>();
            let alts = if alts.is_empty() { String::new() } else { format!(" (nor {})", alts.join(" / ")) };
            return Err(Error::Model(format!(
                "{}: the checkpoint has no tensor `{name}`{alts}, expected shape {shape:?}; it is not a checkpoint of this architecture or it is incomplete",
                self.what
            )));
        };
        let t = self.tensors[&key].clone();
        if t.dims() != shape {
            return Err(self.shape_error(name, &key, t.dims(), shape));
        }
        self.check_float(&key, &t)?;
        self.used.insert(key);
        self.push(name, &t)
    }

    /// A weight stored as integers (a quantized checkpoint) would be cast to floats without
    /// its scales: refused.
    fn check_float(&self, key: &str, t: &Tensor) -> Result<()> {
        if !t.dtype().is_float() {
            return Err(Error::Model(format!(
                "{}: checkpoint tensor `{key}` is stored as {:?}, not as floating point; quantized or integer weights are not \
                 supported (dequantize the checkpoint first)",
                self.what,
                t.dtype()
            )));
        }
        Ok(())
    }

    /// A task-head tensor: read when present, else initialised (and logged). With a
    /// `num_labels` override, a present head of another width is replaced too.
    pub(crate) fn head(&mut self, name: &str, shape: &[usize], init: Init) -> Result<()> {
        if let Some(key) = self.find(name) {
            let t = self.tensors[&key].clone();
            if t.dims() == shape {
                self.check_float(&key, &t)?;
                self.used.insert(key);
                return self.push(name, &t);
            }
            if self.opts.num_labels.is_none() {
                return Err(self.shape_error(name, &key, t.dims(), shape));
            }
            tracing::warn!(
                "{}: checkpoint head tensor `{key}` has shape {:?}, num_labels override needs {shape:?}: replacing it with a new head",
                self.what,
                t.dims()
            );
            self.used.insert(key);
        }
        let t = match init {
            Init::Normal(std) => init_normal(shape, std, name_seed(self.opts.seed, name), self.opts.dtype, &self.opts.device)?,
            Init::Zeros => Tensor::zeros(shape, self.opts.dtype, &self.opts.device)?,
        };
        self.initialised.push(name.to_string());
        self.push(name, &t)
    }

    /// Mark checkpoint tensors as deliberately unused (tied or recomputed buffers) so they are
    /// not reported.
    pub(crate) fn ignore(&mut self, pred: impl Fn(&str) -> bool) {
        let keys: Vec<String> = self.tensors.keys().filter(|k| pred(k)).cloned().collect();
        self.used.extend(keys);
    }

    /// The parameters, in the order they were read; logs initialised heads and unused tensors.
    pub(crate) fn finish(self, init_std: f64) -> Result<(Params, Vec<String>)> {
        if !self.initialised.is_empty() {
            tracing::info!(
                "{}: initialised {} (not in the checkpoint) with N(0, {init_std}²) weights and zero biases, seed {}",
                self.what,
                self.initialised.join(", "),
                self.opts.seed
            );
        }
        let mut unused: Vec<&String> = self.tensors.keys().filter(|k| !self.used.contains(*k)).collect();
        unused.sort();
        if !unused.is_empty() {
            tracing::debug!("{}: ignoring {} checkpoint tensors not used by this model: {unused:?}", self.what, unused.len());
        }
        Ok((Params::new(self.pairs)?, self.initialised))
    }
}

/// `ids` as u32 (token ids may arrive as i64 from Python tooling).
pub(crate) fn ids_u32(ids: &Tensor) -> Result<Tensor> {
    Ok(if ids.dtype() == DType::U32 { ids.clone() } else { ids.to_dtype(DType::U32)? })
}

/// Whether `d` divides `n` (`n.is_multiple_of(d)` needs Rust 1.87; the workspace supports 1.80).
#[allow(unknown_lints, clippy::manual_is_multiple_of)]
pub(crate) fn divides(d: usize, n: usize) -> bool {
    n % d == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn checkpoint_names_resolve_with_and_without_prefix_and_legacy_norms() {
        let opts = LoadOptions::default();
        let l = Loader::new(WeightMap::new(), "bert", &opts, "test").unwrap();
        assert_eq!(
            l.candidates("bert.embeddings.LayerNorm.weight"),
            vec![
                "bert.embeddings.LayerNorm.weight",
                "embeddings.LayerNorm.weight",
                "bert.embeddings.LayerNorm.gamma",
                "embeddings.LayerNorm.gamma"
            ]
        );
        assert_eq!(l.candidates("classifier.bias"), vec!["classifier.bias"]);
        let mut w = WeightMap::new();
        w.insert("embeddings.x".into(), Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap());
        let mut l = Loader::new(w, "bert", &opts, "test").unwrap();
        l.required("bert.embeddings.x", &[2]).unwrap();
        l.head("classifier.weight", &[3, 2], Init::Normal(0.02)).unwrap();
        let (params, initialised) = l.finish(0.02).unwrap();
        assert_eq!(params.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["bert.embeddings.x", "classifier.weight"]);
        assert_eq!(initialised, ["classifier.weight"]);
    }

    #[test]
    fn saved_config_labels_follow_the_head() {
        let raw = serde_json::json!({"model_type": "bert", "id2label": {"0": "neg", "1": "pos"}, "num_labels": 2});
        let same = config_out(&raw, "BertForSequenceClassification", "bert", Some(2), DType::F32);
        assert_eq!(same["id2label"]["1"], "pos", "existing labels are kept");
        let more = config_out(&raw, "BertForSequenceClassification", "bert", Some(3), DType::F32);
        assert_eq!(more["id2label"].as_object().unwrap().len(), 3);
        assert_eq!(more["architectures"], serde_json::json!(["BertForSequenceClassification"]));
        assert!(more.get("num_labels").is_none());
        let opts = LoadOptions::default();
        assert_eq!(num_labels(&raw, &opts).unwrap(), 2);
        assert_eq!(num_labels(&serde_json::json!({}), &opts).unwrap(), 2);
        assert_eq!(num_labels(&raw, &LoadOptions { num_labels: Some(7), ..opts.clone() }).unwrap(), 7);
        // Malformed label fields are errors naming the field, not a silent default of 2.
        let e = num_labels(&serde_json::json!({"model_type": "bert", "num_labels": "3"}), &opts).unwrap_err().to_string();
        assert!(e.contains("field `num_labels`") && e.contains("model_type `bert`"), "{e}");
        let e = num_labels(&serde_json::json!({"model_type": "vit", "id2label": ["a", "b", "c"]}), &opts).unwrap_err().to_string();
        assert!(e.contains("field `id2label`") && e.contains("model_type `vit`"), "{e}");
        assert_eq!(num_labels(&serde_json::json!({"id2label": {"0": "a"}, "num_labels": 3}), &opts).unwrap(), 1);
    }
}
