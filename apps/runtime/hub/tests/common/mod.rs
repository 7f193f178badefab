//! Fixtures built at run time: tiny random checkpoints and a tiny tokenizer, written as a local
//! directory or in the exact Hugging Face cache layout
//! (`<cache>/models--org--name/{blobs/<hash>, snapshots/<commit>/<file> -> ../../blobs/<hash>,
//! refs/<revision>}`).
#![allow(dead_code)]

use candle_core::{DType, Device, Tensor};
use serde_json::json;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

/// The repository the cache fixtures hold.
pub const REPO: &str = "tram-test/tiny-bert";
/// The commit `main` points to.
pub const COMMIT_MAIN: &str = "0123456789abcdef0123456789abcdef01234567";
/// The commit tag `v1` points to.
pub const COMMIT_V1: &str = "89abcdef0123456789abcdef0123456789abcdef";

/// The fixture vocabulary, in id order.
pub const VOCAB: &[&str] = &["[PAD]", "[UNK]", "[CLS]", "[SEP]", "hello", "world", "trust", "region", "aware", "minimization", "the", "a"];

/// A tiny BERT `config.json` (`marker` lets a test tell revisions apart).
pub fn bert_config(marker: &str) -> serde_json::Value {
    json!({
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": VOCAB.len(),
        "hidden_size": 8,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 16,
        "max_position_embeddings": 16,
        "type_vocab_size": 2,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "layer_norm_eps": 1e-12,
        "initializer_range": 0.02,
        "pad_token_id": 0,
        "position_embedding_type": "absolute",
        "tram_test_marker": marker,
    })
}

/// Deterministic pseudo-random values in [-1, 1).
pub fn values(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// A random f32 tensor.
pub fn rand_tensor(seed: u64, shape: &[usize]) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(values(seed, n), shape, &Device::Cpu).unwrap()
}

/// The tensors of a tiny `BertModel` (no `bert.` prefix, as `BertModel.save_pretrained` writes
/// them), plus the integer `embeddings.position_ids` buffer.
pub fn bert_weights(seed: u64) -> Vec<(String, Tensor)> {
    let (v, h, f, p) = (VOCAB.len(), 8, 16, 16);
    let mut shapes: Vec<(String, Vec<usize>)> = vec![
        ("embeddings.word_embeddings.weight".into(), vec![v, h]),
        ("embeddings.position_embeddings.weight".into(), vec![p, h]),
        ("embeddings.token_type_embeddings.weight".into(), vec![2, h]),
        ("embeddings.LayerNorm.weight".into(), vec![h]),
        ("embeddings.LayerNorm.bias".into(), vec![h]),
    ];
    let l = "encoder.layer.0.";
    for m in ["query", "key", "value"] {
        shapes.push((format!("{l}attention.self.{m}.weight"), vec![h, h]));
        shapes.push((format!("{l}attention.self.{m}.bias"), vec![h]));
    }
    for (n, s) in [
        ("attention.output.dense.weight", vec![h, h]),
        ("attention.output.dense.bias", vec![h]),
        ("attention.output.LayerNorm.weight", vec![h]),
        ("attention.output.LayerNorm.bias", vec![h]),
        ("intermediate.dense.weight", vec![f, h]),
        ("intermediate.dense.bias", vec![f]),
        ("output.dense.weight", vec![h, f]),
        ("output.dense.bias", vec![h]),
        ("output.LayerNorm.weight", vec![h]),
        ("output.LayerNorm.bias", vec![h]),
    ] {
        shapes.push((format!("{l}{n}"), s));
    }
    shapes.push(("pooler.dense.weight".into(), vec![h, h]));
    shapes.push(("pooler.dense.bias".into(), vec![h]));
    let mut out: Vec<(String, Tensor)> =
        shapes.into_iter().enumerate().map(|(i, (n, s))| (n, rand_tensor(seed * 1000 + i as u64, &s))).collect();
    out.push(("embeddings.position_ids".into(), Tensor::arange(0i64, p as i64, &Device::Cpu).unwrap().reshape((1, p)).unwrap()));
    out
}

/// safetensors bytes of `tensors` (metadata `format: pt`).
pub fn st_bytes(tensors: &[(String, Tensor)]) -> Vec<u8> {
    tram_hub::safetensors_bytes(tensors).unwrap()
}

/// Build a tiny WordLevel tokenizer with the `tokenizers` crate (whitespace pre-tokenizer,
/// BERT-style `[CLS] … [SEP]` post-processor) and return its `tokenizer.json` bytes.
pub fn tokenizer_json(scratch: &Path) -> Vec<u8> {
    use tokenizers::models::wordlevel::WordLevel;
    use tokenizers::pre_tokenizers::whitespace::Whitespace;
    use tokenizers::processors::bert::BertProcessing;
    std::fs::create_dir_all(scratch).unwrap();
    let vocab_path = scratch.join("vocab.json");
    let vocab: serde_json::Map<String, serde_json::Value> = VOCAB.iter().enumerate().map(|(i, w)| (w.to_string(), json!(i))).collect();
    std::fs::write(&vocab_path, serde_json::to_vec(&vocab).unwrap()).unwrap();
    let model = WordLevel::from_file(vocab_path.to_str().unwrap(), "[UNK]".into()).unwrap();
    let mut tok = tokenizers::Tokenizer::new(model);
    tok.with_pre_tokenizer(Some(Whitespace {}));
    tok.with_post_processor(Some(BertProcessing::new(("[SEP]".into(), 3), ("[CLS]".into(), 2))));
    let path = scratch.join("tokenizer.json");
    tok.save(&path, false).unwrap();
    std::fs::read(path).unwrap()
}

/// A hex name for a blob (the hub uses the git / LFS sha; any stable hex name does here).
pub fn blob_name(bytes: &[u8]) -> String {
    let mut out = String::new();
    for salt in 0u8..3 {
        let mut h = DefaultHasher::new();
        salt.hash(&mut h);
        bytes.hash(&mut h);
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out.truncate(40);
    out
}

/// The cache directory of `repo` (`<cache>/models--org--name`).
pub fn repo_dir(cache: &Path, repo: &str) -> PathBuf {
    cache.join(format!("models--{}", repo.replace('/', "--")))
}

/// Write `files` as snapshot `commit` of `repo` in the hub cache at `cache`, exactly as
/// `huggingface_hub` lays it out: contents in `blobs/`, the snapshot entries relative symlinks
/// to them (copies where symlinks are unavailable), and `refs/<r>` holding the commit hash
/// for each of `refs`.
pub fn write_cache_snapshot(cache: &Path, repo: &str, commit: &str, refs: &[&str], files: &[(&str, Vec<u8>)]) -> PathBuf {
    let rd = repo_dir(cache, repo);
    let blobs = rd.join("blobs");
    let snapshot = rd.join("snapshots").join(commit);
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::create_dir_all(&snapshot).unwrap();
    for (name, bytes) in files {
        let blob = blob_name(bytes);
        std::fs::write(blobs.join(&blob), bytes).unwrap();
        let link = snapshot.join(name);
        if let Some(parent) = link.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        let _ = std::fs::remove_file(&link);
        #[cfg(unix)]
        {
            let depth = name.matches('/').count();
            let target = PathBuf::from("../".repeat(2 + depth)).join("blobs").join(&blob);
            std::os::unix::fs::symlink(target, &link).unwrap();
        }
        #[cfg(not(unix))]
        std::fs::write(&link, bytes).unwrap();
    }
    for r in refs {
        let ref_path = rd.join("refs").join(r);
        std::fs::create_dir_all(ref_path.parent().unwrap()).unwrap();
        std::fs::write(ref_path, commit).unwrap();
    }
    snapshot
}

/// A full tiny-BERT snapshot (config, weights, tokenizer).
pub fn bert_files(scratch: &Path, marker: &str, seed: u64) -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("config.json", serde_json::to_vec_pretty(&bert_config(marker)).unwrap()),
        ("model.safetensors", st_bytes(&bert_weights(seed))),
        ("tokenizer.json", tokenizer_json(scratch)),
    ]
}

/// A cache at `<root>/hub` holding `REPO` with `main` → `COMMIT_MAIN` (marker "main", seed 1)
/// and `v1` → `COMMIT_V1` (marker "v1", seed 2). Returns the cache directory.
pub fn standard_cache(root: &Path) -> PathBuf {
    let cache = root.join("hub");
    let scratch = root.join("scratch");
    write_cache_snapshot(&cache, REPO, COMMIT_MAIN, &["main"], &bert_files(&scratch, "main", 1));
    write_cache_snapshot(&cache, REPO, COMMIT_V1, &["v1"], &bert_files(&scratch, "v1", 2));
    cache
}

/// Bitwise equality of two tensors (dtype, shape and bytes).
pub fn bitwise_eq(a: &Tensor, b: &Tensor) -> bool {
    use safetensors::View;
    a.dtype() == b.dtype() && a.dims() == b.dims() && a.data() == b.data()
}

/// Whether `got` holds exactly the tensors of `want`, bitwise.
pub fn assert_same_tensors(got: &tram_hub::WeightMap, want: &[(String, Tensor)]) {
    assert_eq!(got.len(), want.len(), "tensor count: got {:?}", {
        let mut k: Vec<_> = got.keys().collect();
        k.sort();
        k
    });
    for (name, t) in want {
        let g = got.get(name).unwrap_or_else(|| panic!("missing tensor {name}"));
        assert!(bitwise_eq(g, t), "tensor {name} differs");
    }
}

/// Expect an error whose message contains every one of `needles`.
#[track_caller]
pub fn assert_err_contains<T: std::fmt::Debug>(r: tram_hub::Result<T>, needles: &[&str]) -> String {
    let e = r.expect_err("expected an error");
    let msg = e.to_string();
    eprintln!("expected error: {msg}");
    for n in needles {
        assert!(msg.contains(n), "error message lacks `{n}`:\n{msg}");
    }
    msg
}

/// f32 dtype, CPU.
pub const F32: DType = DType::F32;
