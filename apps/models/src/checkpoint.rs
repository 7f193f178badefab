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

/// Deserialise `v` into `T`, rejecting a `model_type` outside `accepted` and naming the
/// offending field and the file's `model_type` in every error.
pub(crate) fn parse_config<T: DeserializeOwned>(v: &serde_json::Value, accepted: &[&str], what: &str) -> Result<T> {
    if !v.is_object() {
        return Err(Error::Model(format!("{what} config.json must be a JSON object, got {}", short(v))));
    }
    let mt = model_type(v);
    if let Some(mt) = mt {
        if !accepted.contains(&mt) {
            return Err(Error::Model(format!(
                "config.json has model_type `{mt}`, which is not a {what} model (accepted model_type: {})",
                accepted.join(", ")
            )));
        }
    }
    serde_json::from_value(v.clone())
        .map_err(|e| Error::Model(format!("config.json (model_type `{}`) is not a valid {what} config: {e}", mt.unwrap_or("<missing>"))))
}

fn short(v: &serde_json::Value) -> String {
    let s = v.to_string();
    if s.len() > 60 {
        format!("{}…", &s[..60])
    } else {
        s
    }
}

/// Number of labels: the override in `opts`, else `id2label`'s size, else `num_labels`, else 2
/// (the `transformers` default).
pub(crate) fn num_labels(v: &serde_json::Value, opts: &LoadOptions) -> Result<usize> {
    let n = if let Some(n) = opts.num_labels {
        n
    } else if let Some(m) = v.get("id2label").and_then(|m| m.as_object()) {
        m.len()
    } else if let Some(n) = v.get("num_labels").and_then(|n| n.as_u64()) {
        n as usize
    } else {
        2
    };
    if n == 0 {
        return Err(Error::Model("a classification head needs at least one label (num_labels = 0)".into()));
    }
    Ok(n)
}

/// The `config.json` to save: the original fields with `architectures`, `model_type` and
/// (when the number of labels changed) `id2label` / `label2id` set.
pub(crate) fn config_out(raw: &serde_json::Value, architecture: &str, model_type: &str, labels: Option<usize>) -> serde_json::Value {
    let mut v = raw.clone();
    let Some(obj) = v.as_object_mut() else { return v };
    obj.insert("architectures".into(), serde_json::json!([architecture]));
    obj.insert("model_type".into(), serde_json::json!(model_type));
    if let Some(n) = labels {
        let same = obj.get("id2label").and_then(|m| m.as_object()).is_some_and(|m| m.len() == n);
        if !same {
            let id2label: serde_json::Map<_, _> = (0..n).map(|i| (i.to_string(), serde_json::json!(format!("LABEL_{i}")))).collect();
            let label2id: serde_json::Map<_, _> = (0..n).map(|i| (format!("LABEL_{i}"), serde_json::json!(i))).collect();
            obj.insert("id2label".into(), id2label.into());
            obj.insert("label2id".into(), label2id.into());
        }
        obj.remove("num_labels");
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
        self.used.insert(key);
        self.push(name, &t)
    }

    /// A task-head tensor: read when present, else initialised (and logged). With a
    /// `num_labels` override, a present head of another width is replaced too.
    pub(crate) fn head(&mut self, name: &str, shape: &[usize], init: Init) -> Result<()> {
        if let Some(key) = self.find(name) {
            let t = self.tensors[&key].clone();
            if t.dims() == shape {
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
        let same = config_out(&raw, "BertForSequenceClassification", "bert", Some(2));
        assert_eq!(same["id2label"]["1"], "pos", "existing labels are kept");
        let more = config_out(&raw, "BertForSequenceClassification", "bert", Some(3));
        assert_eq!(more["id2label"].as_object().unwrap().len(), 3);
        assert_eq!(more["architectures"], serde_json::json!(["BertForSequenceClassification"]));
        assert!(more.get("num_labels").is_none());
        let opts = LoadOptions::default();
        assert_eq!(num_labels(&raw, &opts).unwrap(), 2);
        assert_eq!(num_labels(&serde_json::json!({}), &opts).unwrap(), 2);
        assert_eq!(num_labels(&raw, &LoadOptions { num_labels: Some(7), ..opts }).unwrap(), 7);
    }
}
