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

/// A field of the wrong type or of an unsupported shape is named, with the model type, the
/// value found and what is supported (was: "invalid type: sequence, expected usize").
#[test]
fn config_field_errors_name_the_field_the_model_type_and_what_is_supported() {
    let f = fixture("vit");
    let msg = err(VitConfig::from_json(&f.config_with("image_size", json!([16, 32]))));
    println!("{msg}");
    assert_mentions(&msg, &["field `image_size`", "[16,32]", "model_type `vit`", "supported: an integer n or a pair [n, n]"]);
    // transformers accepts a square pair too: it means the same as the integer.
    let c = VitConfig::from_json(&f.config_with("image_size", json!([16, 16]))).unwrap();
    assert_eq!(c.image_size, 16);
    let msg = err(VitConfig::from_json(&f.config_with("patch_size", json!("big"))));
    assert_mentions(&msg, &["field `patch_size`", "\"big\"", "model_type `vit`", "a positive integer or a pair [n, n]"]);

    let cases: [(&str, &str, serde_json::Value, &[&str]); 6] = [
        ("gpt2", "n_embd", json!(32.5), &["a non-negative integer"]),
        ("gpt2", "layer_norm_epsilon", json!("tiny"), &["a number"]),
        ("gpt2", "tie_word_embeddings", json!("no"), &["true or false"]),
        ("bert", "layer_norm_eps", json!(-1.0), &["positive"]),
        ("bert", "classifier_dropout", json!(1.0), &["[0, 1)"]),
        ("xlm-roberta", "pad_token_id", json!([1]), &["a token id"]),
    ];
    for (name, field, value, extra) in cases {
        let fx = fixture(name);
        let v = fx.config_with(field, value);
        let msg = err(if name == "gpt2" { Gpt2Config::from_json(&v).map(|_| ()) } else { EncoderConfig::from_json(&v).map(|_| ()) });
        println!("{msg}");
        assert_mentions(&msg, &[&format!("field `{field}`"), &format!("model_type `{name}`")]);
        assert_mentions(&msg, extra);
    }
    // Through from_config as well, and a non-string model_type.
    let msg = err(tram_models::from_config(&f.config_with("image_size", json!([16, 32])), f.weights.clone(), &LoadOptions::default()));
    assert_mentions(&msg, &["field `image_size`", "model_type `vit`"]);
    let msg = err(VitConfig::from_json(&f.config_with("model_type", json!(3))));
    assert_mentions(&msg, &["field `model_type`", "vit"]);
}

/// Token type ids beyond the model's table, or of the wrong shape, are refused by name; ViT
/// refuses them altogether.
#[test]
fn bad_token_types_are_rejected() {
    let f = fixture("bert");
    let m = Bert::from_weights(EncoderConfig::from_json(&f.config).unwrap(), f.weights.clone(), &LoadOptions::default()).unwrap();
    let ids = f.ids("input_ids");
    let labels = Tensor::zeros(3, DType::U32, &Device::Cpu).unwrap();
    let two = Tensor::full(2u32, (3, 7), &Device::Cpu).unwrap();
    let msg = err(m.forward(m.params(), &Batch::new(ids.clone(), labels.clone()).with_token_types(two), Mode::EVAL));
    assert_mentions(&msg, &["token type id 2", "type_vocab_size = 2"]);
    let short = Tensor::zeros((3, 6), DType::U32, &Device::Cpu).unwrap();
    let msg = err(m.forward(m.params(), &Batch::new(ids, labels.clone()).with_token_types(short), Mode::EVAL));
    assert_mentions(&msg, &["token type ids [3, 6]", "[3, 7]"]);

    // XLM-R has one token type: a tokenizer template that gives the second segment type 1 is
    // an error, not an out-of-range read.
    let f = fixture("xlm-roberta");
    let m = Roberta::from_weights(EncoderConfig::from_json(&f.config).unwrap(), f.weights.clone(), &LoadOptions::default()).unwrap();
    let ones = Tensor::ones((3, 7), DType::U32, &Device::Cpu).unwrap();
    let msg = err(m.forward(m.params(), &Batch::new(f.ids("input_ids"), labels.clone()).with_token_types(ones), Mode::EVAL));
    assert_mentions(&msg, &["token type id 1", "type_vocab_size = 1"]);
    // All-zero type ids are the same as none.
    let zeros = Tensor::zeros((3, 7), DType::U32, &Device::Cpu).unwrap();
    let a = m.forward(m.params(), &Batch::new(f.ids("input_ids"), labels.clone()).with_token_types(zeros), Mode::EVAL).unwrap();
    let b = m.forward(m.params(), &Batch::new(f.ids("input_ids"), labels), Mode::EVAL).unwrap();
    assert_eq!(common::rel_diff(&a.logits, &b.logits), 0.0);

    let f = fixture("vit");
    let m = Vit::from_weights(VitConfig::from_json(&f.config).unwrap(), f.weights.clone(), &LoadOptions::default()).unwrap();
    let batch = Batch::new(f.get("pixel_values"), Tensor::zeros(2, DType::U32, &Device::Cpu).unwrap())
        .with_token_types(Tensor::zeros((2, 5), DType::U32, &Device::Cpu).unwrap());
    assert_mentions(&err(m.forward(m.params(), &batch, Mode::EVAL)), &["ViT", "token_types"]);
}

/// An untied GPT-2 head is never replaced silently: a checkpoint that says
/// `tie_word_embeddings = false` must hold `lm_head.weight` of the right shape.
#[test]
fn untied_gpt2_without_its_head_is_refused() {
    let f = fixture("gpt2-untied");
    let mut w = f.weights.clone();
    w.remove("lm_head.weight");
    let msg = err(Gpt2::from_weights(Gpt2Config::from_json(&f.config).unwrap(), w, &LoadOptions::default()));
    println!("{msg}");
    assert_mentions(&msg, &["lm_head.weight", "[53, 16]", "tie_word_embeddings = false"]);
    let mut w = f.weights.clone();
    w.insert("lm_head.weight".into(), Tensor::zeros((16, 53), DType::F32, &Device::Cpu).unwrap());
    let msg = err(Gpt2::from_weights(Gpt2Config::from_json(&f.config).unwrap(), w, &LoadOptions::default()));
    assert_mentions(&msg, &["lm_head.weight", "[16, 53]", "[53, 16]"]);
}

/// Quantized or pruned checkpoints would be read as plain dense weights: they are refused by
/// name instead.
#[test]
fn quantized_and_pruned_checkpoints_are_refused() {
    let f = fixture("bert");
    let msg =
        err(EncoderConfig::from_json(&f.config_with("quantization_config", json!({"quant_method": "bitsandbytes", "load_in_8bit": true}))));
    assert_mentions(&msg, &["quantization_config", "model_type `bert`", "not supported"]);
    let msg = err(EncoderConfig::from_json(&f.config_with("pruned_heads", json!({"0": [1]}))));
    assert_mentions(&msg, &["pruned_heads", "not supported"]);
    EncoderConfig::from_json(&f.config_with("pruned_heads", json!({}))).unwrap();
    let g = fixture("gpt2");
    let msg = err(Gpt2Config::from_json(&g.config_with("quantization_config", json!({"quant_method": "gptq"}))));
    assert_mentions(&msg, &["quantization_config", "model_type `gpt2`"]);

    // An int8 weight of the right shape is not cast to float without its scales.
    let mut w = f.weights.clone();
    let q = w["bert.encoder.layer.0.attention.self.query.weight"].to_dtype(DType::U8).unwrap();
    w.insert("bert.encoder.layer.0.attention.self.query.weight".into(), q);
    let msg = err(Bert::from_weights(EncoderConfig::from_json(&f.config).unwrap(), w, &LoadOptions::default()));
    assert_mentions(&msg, &["bert.encoder.layer.0.attention.self.query.weight", "U8", "quantized"]);
}
