//! Which settings of a config the paper states and which are this project's choices.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Where a config's values come from: keys (dotted paths such as `train.steps`, or
/// `optimizer.<component>.<parameter>` such as `optimizer.ball.rho` for a component default)
/// whose values the paper states, and keys whose values it does not state (our choices).
/// Each run's `results.json` records both with the run's values under `provenance`, and a key
/// of either list that `TRAM_*` variables or `--set` changed under `provenance.changed` (with
/// the source): such a value is neither the paper's nor the config's choice.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Provenance {
    /// Keys whose values come from the paper.
    pub paper: Vec<String>,
    /// Keys whose values the paper does not state: chosen here.
    pub ours: Vec<String>,
    /// Keys of `paper` or `ours` given by `TRAM_*` variables or `--set`, with that source
    /// (filled in when the config is resolved; never read from a file).
    #[serde(skip_deserializing, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub changed: std::collections::BTreeMap<String, String>,
}

impl Provenance {
    /// Whether nothing is marked.
    pub fn is_empty(&self) -> bool {
        self.paper.is_empty() && self.ours.is_empty()
    }

    /// The `provenance` object of a run's `results.json`: `{paper: {key: value}, ours: {key:
    /// value}, changed: {key: {value, was, by}}}`, the values taken from `config` (the run's
    /// config as JSON) or, for a component parameter the config leaves at its default, from
    /// `optimizer` (`Optimizer::describe()`). `Null` when nothing is marked. A key whose
    /// component the run's composition does not use is left out.
    pub fn record(&self, config: &Value, optimizer: &Value) -> Value {
        if self.is_empty() {
            return Value::Null;
        }
        let mut out = serde_json::json!({"paper": {}, "ours": {}});
        let mut changed = serde_json::Map::new();
        for (bucket, keys) in [("paper", &self.paper), ("ours", &self.ours)] {
            for key in keys {
                let Some(value) = lookup(config, key).or_else(|| component_param(optimizer, key)).filter(|v| !v.is_null()) else {
                    continue;
                };
                match self.changed.get(key) {
                    Some(by) => {
                        changed.insert(key.clone(), serde_json::json!({"value": value, "was": bucket, "by": by}));
                    }
                    None => {
                        out[bucket][key] = value;
                    }
                }
            }
        }
        if !changed.is_empty() {
            out["changed"] = Value::Object(changed);
        }
        out
    }
}

/// The value at a dotted key path (`train.steps`, `optimizer.schedule`) of a JSON object.
fn lookup(v: &Value, key: &str) -> Option<Value> {
    let mut node = v;
    for part in key.split('.') {
        node = node.as_object()?.get(part)?;
    }
    (!node.is_null()).then(|| node.clone())
}

/// `optimizer.<component>.<param>` in an optimizer description: the `params` (or penalty
/// settings) of the part named `<component>`.
fn component_param(desc: &Value, key: &str) -> Option<Value> {
    let rest = key.strip_prefix("optimizer.")?;
    let (component, param) = rest.rsplit_once('.')?;
    let component = component.trim_matches('"');
    // `reg:<region>` is a penalty: its weight is in the penalty settings of that region.
    let (name, fields): (&str, &[&str]) = match component.strip_prefix("reg:") {
        Some(region) => (region, &["penalty"]),
        None => (component, &["params", "settings"]),
    };
    fn find(v: &Value, name: &str, fields: &[&str], param: &str) -> Option<Value> {
        match v {
            Value::Object(m) => {
                if m.get("name").and_then(Value::as_str) == Some(name) {
                    if let Some(x) = fields.iter().find_map(|k| m.get(*k).and_then(|p| p.get(param))) {
                        return Some(x.clone());
                    }
                }
                m.values().find_map(|x| find(x, name, fields, param))
            }
            Value::Array(a) => a.iter().find_map(|x| find(x, name, fields, param)),
            _ => None,
        }
    }
    find(desc, name, fields, param)
}
