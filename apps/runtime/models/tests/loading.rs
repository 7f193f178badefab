//! Checkpoint loading and model behaviour: base checkpoints without the task prefix, legacy
//! names, new heads, label overrides, saved configs, dropout streams, snapshots, the
//! embedding entry point and representations.

mod common;

use candle_core::{DType, Device, Tensor};
use common::{assert_close, diff, fixture};
use serde_json::json;
use tram::{Batch, Mode, Model, Params};
use tram_models::{Bert, EncoderConfig, Gpt2, Gpt2Config, LoadOptions, Pretrained, Roberta, Vit, VitConfig, WeightMap};

fn strip(weights: &WeightMap, prefix: &str) -> WeightMap {
    weights.iter().map(|(k, v)| (k.strip_prefix(prefix).unwrap_or(k).to_string(), v.clone())).collect()
}

fn without(weights: &WeightMap, prefix: &str) -> WeightMap {
    weights.iter().filter(|(k, _)| !k.starts_with(prefix)).map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn value(params: &Params, name: &str) -> Tensor {
    params.iter().find(|p| p.name == name).unwrap_or_else(|| panic!("no parameter `{name}`")).var.as_detached_tensor()
}

fn same(a: &Tensor, b: &Tensor) -> bool {
    a.dims() == b.dims() && diff(a, b).0 == 0.0
}

fn labels(n: usize) -> Tensor {
    Tensor::zeros(n, DType::U32, &Device::Cpu).unwrap()
}

#[test]
fn gpt2_loads_a_hub_base_checkpoint() {
    // openai-community/gpt2 layout: no `transformer.` prefix, attention-mask buffers, and
    // some exports carry a (tied) lm_head.weight.
    let f = fixture("gpt2");
    let mut base = strip(&f.weights, "transformer.");
    base.insert("h.0.attn.bias".into(), Tensor::ones((1, 1, 16, 16), DType::F32, &Device::Cpu).unwrap());
    base.insert("h.0.attn.masked_bias".into(), Tensor::new(-1e4f32, &Device::Cpu).unwrap());
    base.insert("lm_head.weight".into(), f.weights["transformer.wte.weight"].clone());
    let config = Gpt2Config::from_json(&f.config).unwrap();
    let a = Gpt2::from_weights(config.clone(), f.weights.clone(), &LoadOptions::default()).unwrap();
    let b = Gpt2::from_weights(config, base, &LoadOptions::default()).unwrap();
    let names: Vec<&str> = a.params().iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, b.params().iter().map(|p| p.name.as_str()).collect::<Vec<_>>());
    assert_eq!(names[0], "transformer.wte.weight");
    assert!(!names.contains(&"lm_head.weight"), "the LM head is tied to wte");
    assert_eq!(names.len(), f.weights.len());
    for p in a.params().iter() {
        assert!(same(&p.var.as_detached_tensor(), &value(b.params(), &p.name)), "{}", p.name);
    }
}

#[test]
fn bert_loads_a_sentence_transformers_checkpoint() {
    // sentence-transformers/all-MiniLM-L6-v2 layout: `embeddings.…`, `encoder.…`, `pooler.…`.
    let f = fixture("bert");
    let base = without(&strip(&f.weights, "bert."), "classifier.");
    let m = Bert::from_weights(EncoderConfig::from_json(&f.config).unwrap(), base, &LoadOptions::default()).unwrap();
    for (k, v) in &f.weights {
        if !k.starts_with("classifier.") {
            assert!(same(v, &value(m.params(), k)), "{k}");
        }
    }
    // The new classifier: N(0, 0.02²), zero bias, deterministic in the seed.
    let w = value(m.params(), "classifier.weight");
    assert_eq!(w.dims(), &[3, 32]);
    let std = w.sqr().unwrap().mean_all().unwrap().sqrt().unwrap().to_scalar::<f32>().unwrap();
    assert!((0.01..0.03).contains(&std), "init std {std}");
    assert_eq!(value(m.params(), "classifier.bias").to_vec1::<f32>().unwrap(), vec![0.0; 3]);
    let again =
        Bert::from_weights(EncoderConfig::from_json(&f.config).unwrap(), without(&f.weights, "classifier."), &LoadOptions::default())
            .unwrap();
    assert!(same(&w, &value(again.params(), "classifier.weight")));
    let other_seed = LoadOptions { seed: 1, ..LoadOptions::default() };
    let other = Bert::from_weights(EncoderConfig::from_json(&f.config).unwrap(), without(&f.weights, "classifier."), &other_seed).unwrap();
    assert!(!same(&w, &value(other.params(), "classifier.weight")));
}

#[test]
fn bert_accepts_legacy_gamma_beta_and_ignores_mlm_heads() {
    let f = fixture("bert");
    let mut legacy: WeightMap = f
        .weights
        .iter()
        .map(|(k, v)| (k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"), v.clone()))
        .collect();
    legacy.insert("cls.predictions.bias".into(), Tensor::zeros(99, DType::F32, &Device::Cpu).unwrap());
    legacy.insert("bert.embeddings.position_ids".into(), Tensor::zeros((1, 24), DType::I64, &Device::Cpu).unwrap());
    let m = Bert::from_weights(EncoderConfig::from_json(&f.config).unwrap(), legacy, &LoadOptions::default()).unwrap();
    for (k, v) in &f.weights {
        assert!(same(v, &value(m.params(), k)), "{k}");
    }
}

#[test]
fn vit_and_xlmr_load_base_checkpoints_and_new_heads() {
    let f = fixture("vit");
    // google/vit-base-patch16-224-in21k layout: no `vit.` prefix, a pooler, no classifier.
    let mut base = without(&strip(&f.weights, "vit."), "classifier.");
    base.insert("pooler.dense.weight".into(), Tensor::zeros((32, 32), DType::F32, &Device::Cpu).unwrap());
    let opts = LoadOptions { num_labels: Some(5), ..LoadOptions::default() };
    let m = Vit::from_weights(VitConfig::from_json(&f.config).unwrap(), base, &opts).unwrap();
    assert_eq!(m.num_labels(), 5);
    assert_eq!(value(m.params(), "classifier.weight").dims(), &[5, 32]);
    assert!(same(&f.weights["vit.layernorm.weight"], &value(m.params(), "vit.layernorm.weight")));
    let out = m.forward(m.params(), &Batch::new(f.get("pixel_values"), labels(2)), Mode::EVAL).unwrap();
    assert_eq!(out.logits.dims(), &[2, 5]);
    let cfg = m.config_json();
    assert_eq!(cfg["architectures"], json!(["ViTForImageClassification"]));
    assert_eq!(cfg["id2label"].as_object().unwrap().len(), 5);
    assert_eq!(cfg["label2id"]["LABEL_4"], json!(4));

    let f = fixture("xlm-roberta");
    let mut base = without(&strip(&f.weights, "roberta."), "classifier.");
    base.insert("lm_head.dense.weight".into(), Tensor::zeros((32, 32), DType::F32, &Device::Cpu).unwrap());
    base.insert("lm_head.bias".into(), Tensor::zeros(99, DType::F32, &Device::Cpu).unwrap());
    let m = Roberta::from_weights(EncoderConfig::from_json(&f.config).unwrap(), base, &LoadOptions::default()).unwrap();
    assert_eq!(m.num_labels(), 3);
    assert!(same(&f.weights["roberta.embeddings.word_embeddings.weight"], &value(m.params(), "roberta.embeddings.word_embeddings.weight")));
    for name in ["classifier.dense.weight", "classifier.dense.bias", "classifier.out_proj.weight", "classifier.out_proj.bias"] {
        assert!(m.params().position(name).is_some(), "{name}");
    }
}

#[test]
fn num_labels_override_replaces_a_head_of_another_width() {
    let f = fixture("bert");
    let opts = LoadOptions { num_labels: Some(2), ..LoadOptions::default() };
    let m = Bert::from_weights(EncoderConfig::from_json(&f.config).unwrap(), f.weights.clone(), &opts).unwrap();
    assert_eq!(value(m.params(), "classifier.weight").dims(), &[2, 32]);
    // The pooler of the checkpoint is kept.
    assert!(same(&f.weights["bert.pooler.dense.weight"], &value(m.params(), "bert.pooler.dense.weight")));
}

#[test]
fn saved_configs_name_the_task_class_and_round_trip() {
    let f = fixture("gpt2");
    let m = Gpt2::from_weights(Gpt2Config::from_json(&f.config).unwrap(), f.weights.clone(), &LoadOptions::default()).unwrap();
    let c = m.config_json();
    assert_eq!(c["architectures"], json!(["GPT2LMHeadModel"]));
    assert_eq!(c["model_type"], json!("gpt2"));
    assert_eq!(c["n_inner"], json!(64));
    assert_eq!(c["summary_type"], json!("cls_index"), "unparsed fields are kept");
    Gpt2Config::from_json(&c).unwrap();

    let f = fixture("bert");
    let m = Bert::from_weights(EncoderConfig::from_json(&f.config).unwrap(), f.weights.clone(), &LoadOptions::default()).unwrap();
    let c = m.config_json();
    assert_eq!(c["architectures"], json!(["BertForSequenceClassification"]));
    assert_eq!(c["model_type"], json!("bert"));
    assert_eq!(c["id2label"].as_object().unwrap().len(), 3);
    let back = EncoderConfig::from_json(&c).unwrap();
    assert_eq!(back.hidden_size, 32);

    let f = fixture("xlm-roberta");
    let m = Roberta::from_weights(EncoderConfig::from_json(&f.config).unwrap(), f.weights.clone(), &LoadOptions::default()).unwrap();
    let c = m.config_json();
    assert_eq!(c["architectures"], json!(["XLMRobertaForSequenceClassification"]));
    assert_eq!(c["model_type"], json!("xlm-roberta"));
    let roberta = f.config_with("model_type", json!("roberta"));
    let m = Roberta::from_weights(EncoderConfig::from_json(&roberta).unwrap(), f.weights.clone(), &LoadOptions::default()).unwrap();
    assert_eq!(m.config_json()["architectures"], json!(["RobertaForSequenceClassification"]));

    // The dispatching loader.
    for name in ["gpt2", "vit", "bert", "xlm-roberta"] {
        let f = fixture(name);
        let m = tram_models::from_config(&f.config, f.weights.clone(), &LoadOptions::default()).unwrap();
        assert_eq!(m.config_json()["model_type"], f.config["model_type"]);
        assert_eq!(m.params().len(), f.weights.len(), "{name}");
    }
}

#[test]
fn dropout_only_in_train_mode_and_its_stream_checkpoints() {
    let f = fixture("xlm-roberta");
    let m = Roberta::from_weights(EncoderConfig::from_json(&f.config).unwrap(), f.weights.clone(), &LoadOptions::default()).unwrap();
    let batch =
        Batch { inputs: f.ids("padded_input_ids"), targets: labels(3), mask: Some(f.ids("padded_attention_mask")), token_types: None };
    let w = m.params();
    let eval = m.forward(w, &batch, Mode::EVAL).unwrap().logits;
    assert_close("eval logits", &eval, &f.get("padded_logits"), 1e-5);
    assert_eq!(m.dropout_position().unwrap(), 0, "eval draws nothing");
    let pos = m.dropout_position().unwrap();
    let t1 = m.forward(w, &batch, Mode::TRAIN).unwrap().logits;
    assert!(m.dropout_position().unwrap() > pos);
    let t2 = m.forward(w, &batch, Mode::TRAIN).unwrap().logits;
    assert!(diff(&t1, &eval).0 > 1e-4, "dropout changes train-mode logits");
    assert!(diff(&t1, &t2).0 > 0.0, "successive masks differ");
    m.set_dropout_position(pos).unwrap();
    let again = m.forward(w, &batch, Mode::TRAIN).unwrap().logits;
    assert!(same(&again, &t1), "restoring the stream position replays the masks");
    // The same seed gives the same stream in a fresh model.
    let fresh = Roberta::from_weights(EncoderConfig::from_json(&f.config).unwrap(), f.weights.clone(), &LoadOptions::default()).unwrap();
    assert!(same(&fresh.forward(fresh.params(), &batch, Mode::TRAIN).unwrap().logits, &t1));
}

#[test]
fn snapshots_give_the_same_logits_without_a_graph() {
    let f = fixture("gpt2");
    let m = Gpt2::from_weights(Gpt2Config::from_json(&f.config).unwrap(), f.weights.clone(), &LoadOptions::default()).unwrap();
    let ids = f.ids("input_ids");
    let batch = Batch::new(ids.clone(), ids);
    let live = m.forward(m.params(), &batch, Mode::EVAL).unwrap().logits;
    let snap = m.params().snapshot().unwrap();
    let from_snap = m.forward(&snap, &batch, Mode::EVAL).unwrap().logits;
    assert!(same(&live, &from_snap));
    // A different snapshot gives different logits: the forward reads the weights it is handed.
    let zero_ln: Vec<Tensor> = m
        .params()
        .iter()
        .map(|p| {
            if p.name == "transformer.ln_f.bias" {
                p.var.as_detached_tensor().affine(1.0, 1.0).unwrap()
            } else {
                p.var.as_detached_tensor()
            }
        })
        .collect();
    let other = tram::Snapshot::from_tensors(m.params(), zero_ln).unwrap();
    assert!(!same(&live, &m.forward(&other, &batch, Mode::EVAL).unwrap().logits));
}

#[test]
fn noise_enters_at_the_input_embeddings() {
    let f = fixture("vit");
    let m = Vit::from_weights(VitConfig::from_json(&f.config).unwrap(), f.weights.clone(), &LoadOptions::default()).unwrap();
    let batch = Batch::new(f.get("pixel_values"), labels(2));
    let w = m.params();
    let e = m.embed(w, &batch, Mode::EVAL).unwrap();
    assert_eq!(e.dims(), &[2, 4, 32], "patch projections, without the CLS token");
    let direct = m.forward(w, &batch, Mode::EVAL).unwrap().logits;
    assert!(same(&m.forward_embeds(w, &e, &batch, Mode::EVAL).unwrap().logits, &direct));
    let noisy = e.add(&e.randn_like(0.0, 0.01).unwrap()).unwrap();
    assert!(!same(&m.forward_embeds(w, &noisy, &batch, Mode::EVAL).unwrap().logits, &direct));

    let f = fixture("bert");
    let m = Bert::from_weights(EncoderConfig::from_json(&f.config).unwrap(), f.weights.clone(), &LoadOptions::default()).unwrap();
    let batch = Batch { inputs: f.ids("input_ids"), targets: labels(3), mask: None, token_types: None };
    let e = m.embed(m.params(), &batch, Mode::EVAL).unwrap();
    let table = value(m.params(), "bert.embeddings.word_embeddings.weight");
    let want = table.index_select(&batch.inputs.flatten_all().unwrap(), 0).unwrap().reshape((3, 7, 32)).unwrap();
    assert!(same(&e, &want), "encoder embed = word embedding rows only");
}

#[test]
fn representations_are_the_base_model_outputs() {
    let f = fixture("bert");
    let m = Bert::from_weights(EncoderConfig::from_json(&f.config).unwrap(), f.weights.clone(), &LoadOptions::default()).unwrap();
    let batch =
        Batch { inputs: f.ids("padded_input_ids"), targets: labels(3), mask: Some(f.ids("padded_attention_mask")), token_types: None };
    let r = m.representation(m.params(), &batch, Mode::EVAL).unwrap();
    assert_eq!(r.dims(), &[3, 32]);
    assert_close("bert representation", &r, &f.get("padded_hidden").narrow(1, 0, 1).unwrap().squeeze(1).unwrap(), 1e-5);

    let f = fixture("xlm-roberta");
    let m = Roberta::from_weights(EncoderConfig::from_json(&f.config).unwrap(), f.weights.clone(), &LoadOptions::default()).unwrap();
    let batch =
        Batch { inputs: f.ids("padded_input_ids"), targets: labels(3), mask: Some(f.ids("padded_attention_mask")), token_types: None };
    let r = m.representation(m.params(), &batch, Mode::EVAL).unwrap();
    assert_close("xlm-r representation", &r, &f.get("padded_hidden").narrow(1, 0, 1).unwrap().squeeze(1).unwrap(), 1e-5);

    let f = fixture("vit");
    let m = Vit::from_weights(VitConfig::from_json(&f.config).unwrap(), f.weights.clone(), &LoadOptions::default()).unwrap();
    let r = m.representation(m.params(), &Batch::new(f.get("pixel_values"), labels(2)), Mode::EVAL).unwrap();
    assert_close("vit representation", &r, &f.get("hidden").narrow(1, 0, 1).unwrap().squeeze(1).unwrap(), 1e-5);

    // GPT-2: the mean of the final hidden states over masked positions.
    let f = fixture("gpt2");
    let m = Gpt2::from_weights(Gpt2Config::from_json(&f.config).unwrap(), f.weights.clone(), &LoadOptions::default()).unwrap();
    let ids = f.ids("input_ids");
    let mask = Tensor::new(&[[1u32, 1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0, 0]], &Device::Cpu).unwrap();
    let r = m
        .representation(m.params(), &Batch { inputs: ids.clone(), targets: ids, mask: Some(mask), token_types: None }, Mode::EVAL)
        .unwrap();
    let h = f.get("hidden");
    let want =
        Tensor::stack(&[h.get(0).unwrap().mean(0).unwrap(), h.get(1).unwrap().narrow(0, 0, 2).unwrap().mean(0).unwrap()], 0).unwrap();
    assert_close("gpt2 representation", &r, &want, 1e-5);
}

#[test]
fn parameters_take_the_requested_dtype() {
    let f = fixture("vit");
    let opts = LoadOptions { dtype: DType::BF16, ..LoadOptions::default() };
    let m = Vit::from_weights(VitConfig::from_json(&f.config).unwrap(), f.weights.clone(), &opts).unwrap();
    assert!(m.params().iter().all(|p| p.var.dtype() == DType::BF16));
    let out = m.forward(m.params(), &Batch::new(f.get("pixel_values"), labels(2)), Mode::EVAL).unwrap();
    assert_eq!(out.logits.dtype(), DType::BF16);
    let loss = m.loss(&out).unwrap();
    assert_eq!(loss.dtype(), DType::F32, "the loss is computed in f32");
}

/// A saved config states the dtype the weights are saved in, whatever the checkpoint said
/// (a float16 checkpoint trained in f32 is saved as float32), and a classifier's
/// `problem_type` names what the head was trained for.
#[test]
fn saved_configs_state_the_saved_dtype_and_problem_type() {
    let f = fixture("bert");
    let mut half = f.config_with("torch_dtype", json!("float16"));
    half["dtype"] = json!("float16");
    half["problem_type"] = json!("multi_label_classification");
    for (dtype, name) in [(DType::F32, "float32"), (DType::BF16, "bfloat16")] {
        let opts = LoadOptions { dtype, ..LoadOptions::default() };
        let m = Bert::from_weights(EncoderConfig::from_json(&half).unwrap(), f.weights.clone(), &opts).unwrap();
        let c = m.config_json();
        assert_eq!(c["dtype"], json!(name));
        assert_eq!(c["torch_dtype"], json!(name), "the legacy key is corrected too");
        assert_eq!(c["problem_type"], json!("single_label_classification"));
    }
    for name in ["gpt2", "gpt2-untied", "vit", "xlm-roberta"] {
        let f = fixture(name);
        let opts = LoadOptions { dtype: DType::BF16, ..LoadOptions::default() };
        let m = tram_models::from_config(&f.config_with("dtype", json!("float16")), f.weights.clone(), &opts).unwrap();
        assert_eq!(m.config_json()["dtype"], json!("bfloat16"), "{name}");
        assert!(m.config_json().get("torch_dtype").is_none(), "{name}: no legacy key added");
    }
}

/// An untied GPT-2 reads, keeps and writes back its own head: the parameter is
/// `lm_head.weight` from the checkpoint, and the saved config stays untied.
#[test]
fn gpt2_untied_head_is_loaded_and_kept() {
    let f = fixture("gpt2-untied");
    let m = Gpt2::from_weights(Gpt2Config::from_json(&f.config).unwrap(), f.weights.clone(), &LoadOptions::default()).unwrap();
    assert_eq!(m.params().len(), f.weights.len());
    assert!(same(&value(m.params(), "lm_head.weight"), &f.weights["lm_head.weight"]));
    assert_eq!(m.params().iter().last().unwrap().name, "lm_head.weight", "transformers' state-dict order");
    assert_eq!(m.config_json()["tie_word_embeddings"], json!(false));
    // The tied fixture still ignores a separate lm_head.weight, as transformers does.
    let f = fixture("gpt2");
    let m = Gpt2::from_weights(Gpt2Config::from_json(&f.config).unwrap(), f.weights.clone(), &LoadOptions::default()).unwrap();
    assert_eq!(m.lm_head_name(), "transformer.wte.weight");
    assert_eq!(m.config_json()["tie_word_embeddings"], json!(true));
}
