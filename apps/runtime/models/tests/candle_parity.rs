//! Parity with the inference implementations of `candle-transformers` 0.11.1
//! (`models::vit::Model`, `models::xlm_roberta::XLMRobertaForSequenceClassification`) on the
//! same weights: the PyTorch fixtures, and random weights drawn here for other shapes (every
//! parameter random, LayerNorm weights around 1). Logits agree to 1e-5 relative.

mod common;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use candle_transformers::models::{vit, xlm_roberta};
use common::{assert_close, fixture};
use serde_json::json;
use tram::{Batch, Mode, Model};
use tram_models::{EncoderConfig, LoadOptions, Roberta, Vit, VitConfig, WeightMap};

const TOL: f64 = 1e-5;

/// Overwrite every variable of `map` with seeded random values (LayerNorm weights 1 + noise).
fn randomise(map: &VarMap, seed: u64) -> WeightMap {
    let data = map.data().lock().unwrap();
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    let mut state = seed.wrapping_mul(0x9e3779b97f4a7c15) | 1;
    let mut out = WeightMap::new();
    for name in names {
        let var = &data[name];
        let n = var.elem_count();
        let v: Vec<f32> = (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let u = (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
                let is_norm_weight = name.ends_with("weight") && (name.contains("LayerNorm") || name.contains("layernorm"));
                if is_norm_weight {
                    1.0 + 0.3 * u
                } else {
                    0.3 * u
                }
            })
            .collect();
        let t = Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap();
        var.set(&t).unwrap();
        out.insert(name.clone(), t);
    }
    out
}

fn random_pixels(shape: (usize, usize, usize, usize), seed: u64) -> Tensor {
    let mut state = seed | 1;
    let n = shape.0 * shape.1 * shape.2 * shape.3;
    let v: Vec<f32> = (0..n)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn ours_vit(config: &serde_json::Value, weights: WeightMap, pixels: &Tensor) -> Tensor {
    let m = Vit::from_weights(VitConfig::from_json(config).unwrap(), weights, &LoadOptions::default()).unwrap();
    let b = pixels.dim(0).unwrap();
    m.forward(m.params(), &Batch::new(pixels.clone(), Tensor::zeros(b, DType::U32, &Device::Cpu).unwrap()), Mode::EVAL).unwrap().logits
}

#[test]
fn vit_matches_candle_transformers_on_the_fixture() {
    let f = fixture("vit");
    let cfg: vit::Config = serde_json::from_value(f.config.clone()).unwrap();
    let vb = VarBuilder::from_tensors(f.weights.clone(), DType::F32, &Device::Cpu);
    let reference = vit::Model::new(&cfg, 3, vb).unwrap();
    let pixels = f.get("pixel_values");
    let want = reference.forward(&pixels).unwrap();
    assert_close("vit vs candle-transformers (fixture)", &ours_vit(&f.config, f.weights.clone(), &pixels), &want, TOL);
}

#[test]
fn vit_matches_candle_transformers_on_random_weights() {
    for qkv_bias in [true, false] {
        let config = json!({
            "model_type": "vit", "hidden_size": 48, "num_hidden_layers": 3, "num_attention_heads": 3,
            "intermediate_size": 80, "hidden_act": "gelu", "layer_norm_eps": 1e-6, "image_size": 24,
            "patch_size": 8, "num_channels": 3, "qkv_bias": qkv_bias, "num_labels": 4,
        });
        let cfg: vit::Config = serde_json::from_value(config.clone()).unwrap();
        let map = VarMap::new();
        let reference = vit::Model::new(&cfg, 4, VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu)).unwrap();
        let weights = randomise(&map, if qkv_bias { 11 } else { 12 });
        let pixels = random_pixels((3, 3, 24, 24), 13);
        let want = reference.forward(&pixels).unwrap();
        assert_eq!(want.dims(), &[3, 4]);
        assert_close(
            &format!("vit vs candle-transformers (random, qkv_bias {qkv_bias})"),
            &ours_vit(&config, weights, &pixels),
            &want,
            TOL,
        );
    }
}

fn ours_xlmr(config: &serde_json::Value, weights: WeightMap, ids: &Tensor, mask: &Tensor) -> Tensor {
    let m = Roberta::from_weights(EncoderConfig::from_json(config).unwrap(), weights, &LoadOptions::default()).unwrap();
    let b = ids.dim(0).unwrap();
    let batch = Batch {
        inputs: ids.clone(),
        targets: Tensor::zeros(b, DType::U32, &Device::Cpu).unwrap(),
        mask: Some(mask.clone()),
        token_types: None,
    };
    m.forward(m.params(), &batch, Mode::EVAL).unwrap().logits
}

/// candle-transformers' config requires `position_embedding_type`, which transformers 5 no
/// longer writes.
fn candle_xlmr_config(config: &serde_json::Value) -> xlm_roberta::Config {
    let mut c = config.clone();
    c.as_object_mut().unwrap().entry("position_embedding_type").or_insert(json!("absolute"));
    serde_json::from_value(c).unwrap()
}

#[test]
fn xlm_roberta_matches_candle_transformers_on_the_fixture() {
    let f = fixture("xlm-roberta");
    let cfg = candle_xlmr_config(&f.config);
    let vb = VarBuilder::from_tensors(f.weights.clone(), DType::F32, &Device::Cpu);
    let reference = xlm_roberta::XLMRobertaForSequenceClassification::new(3, &cfg, vb).unwrap();
    for prefix in ["", "padded_"] {
        let ids = f.ids(&format!("{prefix}input_ids"));
        let mask = f.ids(&format!("{prefix}attention_mask"));
        let want = reference.forward(&ids, &mask, &ids.zeros_like().unwrap()).unwrap();
        assert_close(
            &format!("xlm-r vs candle-transformers ({prefix}fixture)"),
            &ours_xlmr(&f.config, f.weights.clone(), &ids, &mask),
            &want,
            TOL,
        );
    }
}

#[test]
fn xlm_roberta_matches_candle_transformers_on_random_weights() {
    let config = json!({
        "model_type": "xlm-roberta", "vocab_size": 120, "hidden_size": 48, "num_hidden_layers": 3,
        "num_attention_heads": 6, "intermediate_size": 96, "hidden_act": "gelu", "max_position_embeddings": 40,
        "type_vocab_size": 1, "pad_token_id": 1, "layer_norm_eps": 1e-5, "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1, "position_embedding_type": "absolute", "num_labels": 5,
    });
    let cfg = candle_xlmr_config(&config);
    let map = VarMap::new();
    let reference =
        xlm_roberta::XLMRobertaForSequenceClassification::new(5, &cfg, VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu)).unwrap();
    let weights = randomise(&map, 21);
    // Two rows, the second right-padded with pad_token_id = 1.
    let ids = Tensor::new(&[[0u32, 17, 45, 99, 3, 64, 2, 8, 110, 2], [0, 33, 7, 2, 1, 1, 1, 1, 1, 1]], &Device::Cpu).unwrap();
    let mask = ids.ne(1u32).unwrap().to_dtype(DType::U32).unwrap();
    let want = reference.forward(&ids, &mask, &ids.zeros_like().unwrap()).unwrap();
    assert_eq!(want.dims(), &[2, 5]);
    assert_close("xlm-r vs candle-transformers (random)", &ours_xlmr(&config, weights, &ids, &mask), &want, TOL);
}
