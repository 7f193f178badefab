//! Every default of every config struct is `transformers`' own: a `config.json` with only
//! `model_type` and the dimensions is parsed, and each field the struct filled in is compared
//! with `tests/fixtures/config_defaults.json`, the `cls().to_dict()` of each `transformers`
//! config class written by `tests/fixtures/generate.py` (transformers 5.24.0).

use serde_json::{json, Value};
use tram_models::{EncoderConfig, Gpt2Config, VitConfig};

/// Fields tram reads that `transformers` 5.24 no longer has, with the value tram assumes:
/// `position_embedding_type` was removed from the BERT family (only absolute positions
/// remain, which is what tram implements; other values are refused).
const TRAM_ONLY: &[(&str, &str)] = &[("position_embedding_type", "absolute")];

fn table() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/config_defaults.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The dimensions tram requires, for each `model_type`.
fn minimal(model_type: &str) -> Value {
    match model_type {
        "gpt2" => json!({"model_type": "gpt2", "vocab_size": 40, "n_positions": 16, "n_embd": 16, "n_layer": 1, "n_head": 2}),
        "vit" => json!({"model_type": "vit", "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                        "intermediate_size": 32, "image_size": 8, "patch_size": 4}),
        mt => json!({"model_type": mt, "vocab_size": 40, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                     "intermediate_size": 32, "max_position_embeddings": 16}),
    }
}

fn parsed(model_type: &str, v: &Value) -> Value {
    match model_type {
        "gpt2" => serde_json::to_value(Gpt2Config::from_json(v).unwrap()).unwrap(),
        "vit" => serde_json::to_value(VitConfig::from_json(v).unwrap()).unwrap(),
        _ => serde_json::to_value(EncoderConfig::from_json(v).unwrap()).unwrap(),
    }
}

fn same(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

#[test]
fn config_defaults_equal_the_transformers_defaults_of_each_class() {
    let t = table();
    assert_eq!(t["transformers"], "5.24.0", "the table records the transformers version it was generated with");
    let classes = t["classes"].as_object().unwrap();
    for mt in tram_models::MODEL_TYPES {
        let entry = classes.get(*mt).unwrap_or_else(|| panic!("config_defaults.json has no class for model_type `{mt}`"));
        let defaults = entry["defaults"].as_object().unwrap();
        let min = minimal(mt);
        let ours = parsed(mt, &min);
        let mut checked = Vec::new();
        for (field, value) in ours.as_object().unwrap() {
            if min.get(field).is_some() {
                continue; // a required dimension
            }
            match defaults.get(field) {
                Some(want) => {
                    assert!(same(value, want), "{mt} ({}): `{field}` defaults to {value} in tram, {want} in transformers", entry["class"]);
                    checked.push(field.as_str());
                }
                None => {
                    let assumed = TRAM_ONLY.iter().find(|(f, _)| f == field);
                    let (_, v) = assumed.unwrap_or_else(|| panic!("{mt}: tram reads `{field}`, which {} does not have", entry["class"]));
                    assert_eq!(value, v, "{mt}: `{field}`");
                }
            }
        }
        println!("{mt}: {} defaults equal {}'s: {checked:?}", checked.len(), entry["class"]);
        assert!(checked.len() >= 7, "{mt}: too few defaults checked: {checked:?}");
    }
}

/// Fields whose non-default value changes the computation in a way tram does not implement
/// are refused, naming the field and the supported value, instead of being ignored.
#[test]
fn unimplemented_non_default_fields_are_refused() {
    for (mt, field) in [("bert", "is_decoder"), ("xlm-roberta", "add_cross_attention"), ("gpt2", "add_cross_attention")] {
        let t = table();
        assert_eq!(t["classes"][mt]["defaults"][field], false, "transformers' default");
        let mut v = minimal(mt);
        v[field] = json!(true);
        let msg = match mt {
            "gpt2" => Gpt2Config::from_json(&v).map(|_| ()),
            _ => EncoderConfig::from_json(&v).map(|_| ()),
        }
        .unwrap_err()
        .to_string();
        println!("{msg}");
        assert!(msg.contains(field) && msg.contains(&format!("model_type `{mt}`")) && msg.contains("supported: false"), "{msg}");
    }
}
