//! Bad configs, checkpoints and batches give errors that name the problem.

mod common;

use candle_core::{DType, Device, Tensor};
use common::fixture;
use serde_json::json;
use tram::{Batch, Mode, Model};
use tram_models::{Bert, EncoderConfig, Gpt2, Gpt2Config, LoadOptions, Roberta, Vit, VitConfig};

fn err<T>(r: tram::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

fn assert_mentions(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "error `{msg}` does not mention `{p}`");
    }
}

fn removed(v: &serde_json::Value, key: &str) -> serde_json::Value {
    let mut v = v.clone();
    v.as_object_mut().unwrap().remove(key);
    v
}

#[test]
fn missing_config_fields_are_named_with_the_model_type() {
    type Parse = fn(&serde_json::Value) -> String;
    let cases: [(&str, &str, Parse); 4] = [
        ("gpt2", "n_embd", |v| err(Gpt2Config::from_json(v))),
        ("vit", "patch_size", |v| err(VitConfig::from_json(v))),
        ("bert", "num_hidden_layers", |v| err(EncoderConfig::from_json(v))),
        ("xlm-roberta", "hidden_size", |v| err(EncoderConfig::from_json(v))),
    ];
    for (name, field, parse) in cases {
        let f = fixture(name);
        let msg = parse(&removed(&f.config, field));
        println!("{msg}");
        assert_mentions(&msg, &[field, &format!("model_type `{name}`"), "missing field"]);
    }
}

#[test]
fn invalid_configs_are_rejected() {
    let f = fixture("bert");
    let msg = err(Gpt2Config::from_json(&f.config));
    assert_mentions(&msg, &["model_type `bert`", "GPT-2"]);
    let msg = err(EncoderConfig::from_json(&f.config_with("hidden_size", json!(30))));
    assert_mentions(&msg, &["hidden_size 30", "num_attention_heads 4"]);
    let msg = err(EncoderConfig::from_json(&f.config_with("hidden_size", json!("wide"))));
    assert_mentions(&msg, &["model_type `bert`", "invalid type"]);
    let msg = err(EncoderConfig::from_json(&f.config_with("hidden_act", json!("swishy"))));
    assert_mentions(&msg, &["hidden_act", "swishy"]);
    let msg = err(EncoderConfig::from_json(&f.config_with("position_embedding_type", json!("relative_key"))));
    assert_mentions(&msg, &["relative_key"]);
    let msg = err(EncoderConfig::from_json(&f.config_with("hidden_dropout_prob", json!(1.5))));
    assert_mentions(&msg, &["hidden_dropout_prob"]);
    // A BERT config handed to the RoBERTa model and vice versa.
    let msg = err(Roberta::from_weights(EncoderConfig::from_json(&f.config).unwrap(), f.weights.clone(), &LoadOptions::default()));
    assert_mentions(&msg, &["Bert"]);
    let f = fixture("xlm-roberta");
    let msg = err(Bert::from_weights(EncoderConfig::from_json(&f.config).unwrap(), f.weights.clone(), &LoadOptions::default()));
    assert_mentions(&msg, &["Roberta"]);
    let msg = err(tram_models::from_config(&f.config_with("model_type", json!("llama")), f.weights.clone(), &LoadOptions::default()));
    assert_mentions(&msg, &["llama", "gpt2"]);
}

#[test]
fn wrong_tensor_shapes_name_the_tensor_and_both_shapes() {
    let f = fixture("gpt2");
    let mut w = f.weights.clone();
    w.insert("transformer.h.1.attn.c_attn.weight".into(), Tensor::zeros((96, 32), DType::F32, &Device::Cpu).unwrap());
    let msg = err(Gpt2::from_weights(Gpt2Config::from_json(&f.config).unwrap(), w, &LoadOptions::default()));
    println!("{msg}");
    assert_mentions(&msg, &["transformer.h.1.attn.c_attn.weight", "[96, 32]", "[32, 96]"]);

    // Without the prefix, the error names the checkpoint key and the parameter.
    let f = fixture("bert");
    let mut w: tram_models::WeightMap =
        f.weights.iter().map(|(k, v)| (k.strip_prefix("bert.").unwrap_or(k).to_string(), v.clone())).collect();
    w.insert("embeddings.position_embeddings.weight".into(), Tensor::zeros((12, 32), DType::F32, &Device::Cpu).unwrap());
    let msg = err(Bert::from_weights(EncoderConfig::from_json(&f.config).unwrap(), w, &LoadOptions::default()));
    println!("{msg}");
    assert_mentions(&msg, &["embeddings.position_embeddings.weight", "bert.embeddings.position_embeddings.weight", "[12, 32]", "[24, 32]"]);

    // A head of another width without a num_labels override is an error too.
    let f = fixture("vit");
    let mut w = f.weights.clone();
    w.insert("classifier.weight".into(), Tensor::zeros((7, 32), DType::F32, &Device::Cpu).unwrap());
    let msg = err(Vit::from_weights(VitConfig::from_json(&f.config).unwrap(), w, &LoadOptions::default()));
    assert_mentions(&msg, &["classifier.weight", "[7, 32]", "[3, 32]"]);
}

#[test]
fn missing_tensors_are_named() {
    let f = fixture("xlm-roberta");
    let mut w = f.weights.clone();
    w.remove("roberta.encoder.layer.1.output.LayerNorm.bias");
    let msg = err(Roberta::from_weights(EncoderConfig::from_json(&f.config).unwrap(), w, &LoadOptions::default()));
    println!("{msg}");
    assert_mentions(&msg, &["roberta.encoder.layer.1.output.LayerNorm.bias", "[32]"]);

    let f = fixture("vit");
    let mut w = f.weights.clone();
    w.remove("vit.embeddings.cls_token");
    let msg = err(Vit::from_weights(VitConfig::from_json(&f.config).unwrap(), w, &LoadOptions::default()));
    assert_mentions(&msg, &["vit.embeddings.cls_token", "[1, 1, 32]"]);

    // A checkpoint of another architecture.
    let g = fixture("gpt2");
    let msg = err(Bert::from_weights(EncoderConfig::from_json(&fixture("bert").config).unwrap(), g.weights, &LoadOptions::default()));
    assert_mentions(&msg, &["bert.embeddings.word_embeddings.weight"]);
}

#[test]
fn bad_batches_are_rejected() {
    let f = fixture("gpt2");
    let m = Gpt2::from_weights(Gpt2Config::from_json(&f.config).unwrap(), f.weights.clone(), &LoadOptions::default()).unwrap();
    let long = Tensor::zeros((1, 17), DType::U32, &Device::Cpu).unwrap();
    assert_mentions(&err(m.forward(m.params(), &Batch::new(long.clone(), long), Mode::EVAL)), &["n_positions = 16"]);
    let ids = f.ids("input_ids");
    let msg = err(m.forward(m.params(), &Batch::new(ids.clone(), Tensor::zeros(2, DType::U32, &Device::Cpu).unwrap()), Mode::EVAL));
    assert_mentions(&msg, &["targets", "[2, 7]"]);
    let none = Tensor::zeros((2, 7), DType::U32, &Device::Cpu).unwrap();
    let msg = err(m.forward(m.params(), &Batch { inputs: ids.clone(), targets: ids, mask: Some(none), token_types: None }, Mode::EVAL));
    assert_mentions(&msg, &["no positions"]);

    let f = fixture("vit");
    let m = Vit::from_weights(VitConfig::from_json(&f.config).unwrap(), f.weights.clone(), &LoadOptions::default()).unwrap();
    let big = Tensor::zeros((1, 3, 32, 32), DType::F32, &Device::Cpu).unwrap();
    let msg = err(m.forward(m.params(), &Batch::new(big, Tensor::zeros(1, DType::U32, &Device::Cpu).unwrap()), Mode::EVAL));
    assert_mentions(&msg, &["[batch, 3, 16, 16]", "[1, 3, 32, 32]"]);

    let f = fixture("xlm-roberta");
    let m = Roberta::from_weights(EncoderConfig::from_json(&f.config).unwrap(), f.weights.clone(), &LoadOptions::default()).unwrap();
    let long = Tensor::from_vec(vec![5u32; 23], (1, 23), &Device::Cpu).unwrap();
    let msg = err(m.forward(m.params(), &Batch::new(long, Tensor::zeros(1, DType::U32, &Device::Cpu).unwrap()), Mode::EVAL));
    assert_mentions(&msg, &["max_position_embeddings = 24"]);
    let ids = f.ids("input_ids");
    let msg = err(m.forward(m.params(), &Batch::new(ids, Tensor::zeros(2, DType::U32, &Device::Cpu).unwrap()), Mode::EVAL));
    assert_mentions(&msg, &["targets", "[3]"]);
}
