//! Loading a checkpoint and saving it again keeps what `transformers` needs to read it back as
//! the same model: an untied GPT-2 head is saved (not dropped), and the saved config states
//! the dtype of the saved tensors. The Python side of the round trip is
//! `fixtures/check_transformers_loads.py` (see apps/runtime/hub/README.md).

use candle_core::{DType, Device, Tensor};
use std::path::{Path, PathBuf};
use tram::{Batch, Mode};
use tram_hub::{load_model, save_model, ModelSource};
use tram_models::LoadOptions;

fn models_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tests/fixtures").join(name)
}

fn read_weights(path: &Path) -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn max_rel(a: &Tensor, b: &Tensor) -> f32 {
    let d = a.to_dtype(DType::F32).unwrap().sub(&b.to_dtype(DType::F32).unwrap()).unwrap().abs().unwrap().max_all().unwrap();
    d.to_scalar::<f32>().unwrap() / b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn untied_gpt2_head_survives_save_and_reload() {
    let src = models_fixture("gpt2-untied");
    let original = read_weights(&src.join("model.safetensors"));
    let model = load_model(&ModelSource::local(&src), &LoadOptions::default()).unwrap();
    let out = tempfile::tempdir().unwrap();
    save_model(out.path(), model.as_ref(), None).unwrap();

    let saved = read_weights(&out.path().join("model.safetensors"));
    let head = saved.get("lm_head.weight").expect("the untied head is saved");
    assert_eq!(head.to_vec2::<f32>().unwrap(), original["lm_head.weight"].to_vec2::<f32>().unwrap());
    assert_eq!(saved.len(), original.len(), "every tensor of the checkpoint is saved");
    let config = read_json(&out.path().join("config.json"));
    assert_eq!(config["tie_word_embeddings"], serde_json::json!(false));

    // Reloaded, it gives transformers' logits.
    let again = load_model(&ModelSource::local(out.path()), &LoadOptions::default()).unwrap();
    let reference = read_weights(&src.join("reference.safetensors"));
    let ids = reference["input_ids"].to_dtype(DType::U32).unwrap();
    let (b, s) = ids.dims2().unwrap();
    let logits = again.forward(again.params(), &Batch::new(ids.clone(), ids), Mode::EVAL).unwrap().logits;
    let want = reference["logits"].reshape((b * s, ())).unwrap();
    let rel = max_rel(&logits, &want);
    println!("untied GPT-2 after save and reload: max |diff| / max |ref| = {rel:.2e}");
    assert!(rel < 1e-5, "{rel}");
}

/// A float16 checkpoint loaded in f32 (or bf16) is saved with f32 (bf16) tensors, and its
/// config says so (`dtype` and the legacy `torch_dtype`).
#[test]
fn saved_config_states_the_saved_dtype() {
    let src = models_fixture("gpt2");
    let half_dir = tempfile::tempdir().unwrap();
    let half: Vec<(String, Tensor)> =
        read_weights(&src.join("model.safetensors")).into_iter().map(|(k, v)| (k, v.to_dtype(DType::F16).unwrap())).collect();
    let mut config = read_json(&src.join("config.json"));
    config["dtype"] = serde_json::json!("float16");
    config["torch_dtype"] = serde_json::json!("float16");
    tram_hub::save_pretrained(half_dir.path(), &config, &half, None).unwrap();

    for (dtype, name) in [(DType::F32, "float32"), (DType::BF16, "bfloat16")] {
        let opts = LoadOptions { dtype, ..LoadOptions::default() };
        let model = load_model(&ModelSource::local(half_dir.path()), &opts).unwrap();
        let out = tempfile::tempdir().unwrap();
        save_model(out.path(), model.as_ref(), None).unwrap();
        let saved = read_weights(&out.path().join("model.safetensors"));
        assert!(saved.values().all(|t| t.dtype() == dtype), "{name}: tensors saved in the model's dtype");
        let c = read_json(&out.path().join("config.json"));
        assert_eq!(c["dtype"], serde_json::json!(name));
        assert_eq!(c["torch_dtype"], serde_json::json!(name));
    }
}
