//! Resolution, loading, saving and error tests on fixtures generated at run time in the exact
//! Hugging Face cache layout. No test touches the network: hub options are passed explicitly
//! (the environment-variable path is covered by `tests/env.rs`, alone in its process).

mod common;

use candle_core::{DType, Device, Tensor};
use common::*;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use tram_hub::*;

fn offline(cache: &Path) -> HubOptions {
    HubOptions::offline(cache)
}

/// Hub options that allow downloads from `endpoint`.
fn online(cache: &Path, endpoint: String) -> HubOptions {
    HubOptions { cache_dir: cache.to_path_buf(), offline: false, endpoint, token: None, progress: false }
}

/// A local endpoint whose port is closed (connection refused).
fn closed_endpoint() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    format!("http://127.0.0.1:{port}")
}

/// A stub hub answering every request with `status` (no body), for `n` requests.
fn stub_hub(status: &'static str, n: usize) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in l.incoming().take(n) {
            let Ok(mut s) = stream else { continue };
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            while r.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                if line == "\r\n" {
                    break;
                }
                line.clear();
            }
            let _ = write!(s, "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    format!("http://127.0.0.1:{port}")
}

/// A minimal fake hub serving `files` of `repo` at revision `main` (commit `COMMIT_MAIN`) the
/// way `hf-hub` 0.4 downloads them: `GET …/resolve/main/<file>` with `Range: bytes=0-0` for
/// the metadata (`x-repo-commit`, `etag`, `content-range`), then `Range: bytes=N-` for the
/// content. Unknown files are 404. Returns the endpoint and a request counter.
fn fake_hub(repo: &'static str, files: Vec<(&'static str, Vec<u8>)>) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let count = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = count.clone();
    std::thread::spawn(move || {
        for stream in l.incoming() {
            let Ok(mut s) = stream else { continue };
            counter.fetch_add(1, Ordering::SeqCst);
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut request = String::new();
            let _ = r.read_line(&mut request);
            let mut start = 0usize;
            let mut line = String::new();
            while r.read_line(&mut line).map(|n| n > 0).unwrap_or(false) && line != "\r\n" {
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                    start = v.split('-').next().and_then(|x| x.trim().parse().ok()).unwrap_or(0);
                }
                line.clear();
            }
            let path = request.split_whitespace().nth(1).unwrap_or("");
            let prefix = format!("/{repo}/resolve/main/");
            let file = path.strip_prefix(&prefix).and_then(|f| files.iter().find(|(n, _)| *n == f));
            let Some((_, body)) = file else {
                let _ = write!(s, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                continue;
            };
            let end = if request.contains("bytes=0-0") { 1.min(body.len()) } else { body.len() };
            let chunk = &body[start.min(end)..end];
            let _ = write!(
                s,
                "HTTP/1.1 206 Partial Content\r\nx-repo-commit: {COMMIT_MAIN}\r\netag: \"{}\"\r\ncontent-range: bytes {start}-{}/{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                blob_name(body),
                end.max(1) - 1,
                body.len(),
                chunk.len()
            );
            let _ = s.write_all(chunk);
        }
    });
    (format!("http://127.0.0.1:{port}"), count)
}

#[test]
fn parses_sources() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(ModelSource::parse("org/name").unwrap(), ModelSource::hub_at("org/name", "main"));
    assert_eq!(ModelSource::parse("org/name@v1.0").unwrap(), ModelSource::hub_at("org/name", "v1.0"));
    assert_eq!(
        "openai-community/gpt2@0123456789abcdef0123456789abcdef01234567".parse::<ModelSource>().unwrap(),
        ModelSource::hub_at("openai-community/gpt2", "0123456789abcdef0123456789abcdef01234567")
    );
    assert_eq!(ModelSource::parse("gpt2").unwrap(), ModelSource::hub("gpt2"));
    assert_eq!(ModelSource::parse(dir.path().to_str().unwrap()).unwrap(), ModelSource::local(dir.path()));
    // A relative directory that exists wins over the hub-id reading.
    let rel = dir.path().join("org").join("name");
    std::fs::create_dir_all(&rel).unwrap();
    assert_eq!(ModelSource::parse(rel.to_str().unwrap()).unwrap(), ModelSource::local(&rel));
    assert_eq!(ModelSource::hub_at("a/b", "dev").to_string(), "a/b@dev");

    let missing = dir.path().join("nope");
    let e = ModelSource::parse(missing.to_str().unwrap()).unwrap_err().to_string();
    assert!(e.contains("no such directory") && e.contains("nope"), "{e}");
    let file = dir.path().join("config.json");
    std::fs::write(&file, "{}").unwrap();
    let e = ModelSource::parse(file.to_str().unwrap()).unwrap_err().to_string();
    assert!(e.contains("is a file, not a directory"), "{e}");
    for bad in ["a/b/c", "org/name@", "org//name", "", "org/na me", "org/--x"] {
        let e = ModelSource::parse(bad).unwrap_err().to_string();
        assert!(e.contains("invalid model source"), "{bad}: {e}");
    }
    let e = ModelSource::parse("a/b/c").unwrap_err().to_string();
    assert!(e.contains("org/name@revision") && e.contains("local directory"), "{e}");
}

#[test]
fn resolves_id_and_revision_from_the_cache() {
    let root = tempfile::tempdir().unwrap();
    let cache = standard_cache(root.path());
    let hub = offline(&cache);

    // main → COMMIT_MAIN, through refs/main; the snapshot entries are links into blobs/.
    let files = ModelSource::hub(REPO).files(&hub);
    let config_path = files.config_path().unwrap();
    assert!(config_path.starts_with(repo_dir(&cache, REPO).join("snapshots").join(COMMIT_MAIN)), "{config_path:?}");
    #[cfg(unix)]
    assert!(config_path.symlink_metadata().unwrap().file_type().is_symlink());
    assert_eq!(files.config().unwrap(), bert_config("main"));
    assert_same_tensors(&files.weights(&Device::Cpu, F32).unwrap(), &bert_weights(1));
    assert_eq!(
        files.weight_files().unwrap(),
        WeightFiles::Single(repo_dir(&cache, REPO).join("snapshots").join(COMMIT_MAIN).join("model.safetensors"))
    );

    // A tag, through refs/v1.
    let v1 = ModelSource::parse(&format!("{REPO}@v1")).unwrap().files(&hub);
    assert_eq!(v1.config().unwrap(), bert_config("v1"));
    assert_same_tensors(&v1.weights(&Device::Cpu, F32).unwrap(), &bert_weights(2));

    // A commit hash with no ref: the snapshot directory itself.
    let by_hash = ModelSource::hub_at(REPO, COMMIT_V1).files(&hub);
    assert_eq!(by_hash.config().unwrap()["tram_test_marker"], "v1");

    // A ref file with a trailing newline (as some tools write it).
    std::fs::write(repo_dir(&cache, REPO).join("refs").join("v1"), format!("{COMMIT_V1}\n")).unwrap();
    assert_eq!(v1.config().unwrap()["tram_test_marker"], "v1");

    // The tokenizer resolves and encodes with the fixture vocabulary.
    let tok = files.tokenizer().unwrap();
    let enc = tok.encode("hello world region", true).unwrap();
    assert_eq!(enc.get_ids(), &[2, 4, 5, 7, 3]);

    // Network allowed, but everything cached: no request is made (the endpoint is closed).
    let cached_online = ModelSource::hub(REPO).files(&online(&cache, closed_endpoint()));
    assert_eq!(cached_online.config().unwrap()["tram_test_marker"], "main");
    let ck = cached_online.load(&Device::Cpu, F32).unwrap();
    assert!(ck.tokenizer.is_some());
    assert_same_tensors(&ck.weights, &bert_weights(1));
}

#[test]
fn loads_a_local_directory() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("model");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, bytes) in bert_files(&root.path().join("scratch"), "local", 3) {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    let source = ModelSource::parse(dir.to_str().unwrap()).unwrap();
    assert_eq!(source, ModelSource::Local(dir.clone()));
    // Hub options do not matter for a local directory.
    let files = source.files(&offline(&root.path().join("empty-cache")));
    assert_eq!(files.config().unwrap(), bert_config("local"));
    let w = files.weights(&Device::Cpu, F32).unwrap();
    assert_same_tensors(&w, &bert_weights(3));
    assert_eq!(w["embeddings.position_ids"].dtype(), DType::I64, "integer buffers keep their dtype");
    // Loading in bf16 casts the floating-point tensors only.
    let w16 = files.weights(&Device::Cpu, DType::BF16).unwrap();
    assert_eq!(w16["pooler.dense.weight"].dtype(), DType::BF16);
    assert_eq!(w16["embeddings.position_ids"].dtype(), DType::I64);
    let tok = files.try_tokenizer().unwrap().expect("tokenizer.json is present");
    assert_eq!(tok.encode("trust region aware minimization", true).unwrap().get_ids(), &[2, 6, 7, 8, 9, 3]);
    assert_eq!(tok.encode("unknownword", false).unwrap().get_ids(), &[1]);
}

/// Split the tiny BERT over two shards with an index, as `save_pretrained(max_shard_size=…)`
/// does.
fn sharded_files(seed: u64) -> Vec<(&'static str, Vec<u8>)> {
    let w = bert_weights(seed);
    let (a, b) = w.split_at(w.len() / 2);
    let names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"];
    let mut map = serde_json::Map::new();
    for (shard, part) in names.iter().zip([a, b]) {
        for (n, _) in part {
            map.insert(n.clone(), serde_json::json!(shard));
        }
    }
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": map});
    vec![
        ("config.json", serde_json::to_vec(&bert_config("sharded")).unwrap()),
        ("model.safetensors.index.json", serde_json::to_vec_pretty(&index).unwrap()),
        (names[0], st_bytes(a)),
        (names[1], st_bytes(b)),
    ]
}

#[test]
fn loads_a_sharded_checkpoint() {
    let root = tempfile::tempdir().unwrap();
    let cache = root.path().join("hub");
    write_cache_snapshot(&cache, "tram-test/sharded", COMMIT_MAIN, &["main"], &sharded_files(4));
    let files = ModelSource::hub("tram-test/sharded").files(&offline(&cache));
    match files.weight_files().unwrap() {
        WeightFiles::Sharded { index, shards } => {
            assert!(index.ends_with("model.safetensors.index.json"));
            assert_eq!(shards.len(), 2);
        }
        other => panic!("expected a sharded checkpoint, got {other:?}"),
    }
    assert_same_tensors(&files.weights(&Device::Cpu, F32).unwrap(), &bert_weights(4));
    // No tokenizer: optional lookup gives None, required lookup names the file.
    assert!(files.try_tokenizer().unwrap().is_none());

    // The same as a local directory.
    let dir = root.path().join("local");
    std::fs::create_dir_all(&dir).unwrap();
    for (n, b) in sharded_files(4) {
        std::fs::write(dir.join(n), b).unwrap();
    }
    assert_same_tensors(&ModelSource::local(&dir).files(&offline(&cache)).weights(&Device::Cpu, F32).unwrap(), &bert_weights(4));
}

#[test]
fn missing_files_name_the_file_the_source_and_the_fix() {
    let root = tempfile::tempdir().unwrap();
    let cache = root.path().join("hub");
    let scratch = root.path().join("scratch");
    // A snapshot without tokenizer.json.
    let mut files = bert_files(&scratch, "main", 1);
    files.retain(|(n, _)| *n != "tokenizer.json");
    write_cache_snapshot(&cache, REPO, COMMIT_MAIN, &["main"], &files);
    let hub = offline(&cache);

    let f = ModelSource::hub(REPO).files(&hub);
    let msg = assert_err_contains(
        f.tokenizer(),
        &["`tokenizer.json`", "tram-test/tiny-bert@main", COMMIT_MAIN, "HF_HOME", "HF_HUB_OFFLINE", "local directory"],
    );
    assert!(matches!(f.get("tokenizer.json"), Err(Error::MissingFile { .. })), "{msg}");
    assert!(f.find("tokenizer.json").unwrap().is_none());

    // Repository not cached at all.
    assert_err_contains(
        ModelSource::hub("other-org/absent").files(&hub).config(),
        &["`config.json`", "other-org/absent@main", "models--other-org--absent", "HF_HOME"],
    );
    // Revision not cached.
    assert_err_contains(ModelSource::hub_at(REPO, "v9").files(&hub).config(), &["revision `v9`", "cached refs: main", "HF_HUB_CACHE"]);
    // Dangling snapshot link (blob deleted).
    #[cfg(unix)]
    {
        let rd = repo_dir(&cache, REPO);
        let cfg = rd.join("snapshots").join(COMMIT_MAIN).join("config.json");
        let blob = cfg.parent().unwrap().join(std::fs::read_link(&cfg).unwrap());
        std::fs::remove_file(blob).unwrap();
        assert_err_contains(ModelSource::hub(REPO).files(&hub).config(), &["`config.json`", "dangling link"]);
    }

    // Local directory without config.json / weights.
    let dir = root.path().join("local");
    std::fs::create_dir_all(&dir).unwrap();
    let local = ModelSource::local(&dir).files(&hub);
    assert_err_contains(local.config(), &["`config.json`", "local directory", &dir.display().to_string(), "copy the file"]);
    std::fs::write(dir.join("pytorch_model.bin"), b"not used").unwrap();
    assert_err_contains(local.weights(&Device::Cpu, F32), &["model.safetensors", "model.safetensors.index.json", "PyTorch `.bin`"]);
    // A directory that does not exist (built directly, not parsed).
    assert_err_contains(ModelSource::local(root.path().join("gone")).files(&hub).config(), &["does not exist", "gone"]);
}

#[test]
fn truncated_or_corrupt_safetensors_name_the_file() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("model");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), serde_json::to_vec(&bert_config("t")).unwrap()).unwrap();
    let bytes = st_bytes(&bert_weights(5));
    let path = dir.join("model.safetensors");
    let files = ModelSource::local(&dir).files(&offline(root.path()));
    let shown = path.display().to_string();

    // Truncated in the data section, in the header, and to nothing.
    for cut in [bytes.len() - 7, bytes.len() / 2, 20, 3, 0] {
        std::fs::write(&path, &bytes[..cut]).unwrap();
        assert_err_contains(files.weights(&Device::Cpu, F32), &[&shown, "truncated or corrupt"]);
    }
    // Garbage header.
    let mut garbage = bytes.clone();
    garbage[8..16].copy_from_slice(b"not json");
    std::fs::write(&path, &garbage).unwrap();
    let e = files.weights(&Device::Cpu, F32).unwrap_err();
    assert!(matches!(e, Error::Corrupt { .. }), "{e}");
    assert!(e.to_string().contains(&shown), "{e}");
    // A corrupt config.json names itself too.
    std::fs::write(&path, &bytes).unwrap();
    std::fs::write(dir.join("config.json"), b"{\"model_type\": \"be").unwrap();
    assert_err_contains(files.config(), &["config.json", "not valid JSON"]);
    // And a corrupt tokenizer.json.
    std::fs::write(dir.join("tokenizer.json"), b"{}").unwrap();
    assert_err_contains(files.tokenizer(), &["tokenizer.json", "not a usable tokenizer.json"]);
}

#[test]
fn missing_or_inconsistent_shards_are_reported() {
    let root = tempfile::tempdir().unwrap();
    let cache = root.path().join("hub");
    let mut files = sharded_files(6);
    files.retain(|(n, _)| *n != "model-00002-of-00002.safetensors");
    write_cache_snapshot(&cache, "tram-test/sharded", COMMIT_MAIN, &["main"], &files);
    let f = ModelSource::hub("tram-test/sharded").files(&offline(&cache));
    let msg = assert_err_contains(
        f.weights(&Device::Cpu, F32),
        &["model-00002-of-00002.safetensors", "model.safetensors.index.json", "tram-test/sharded@main", "is missing"],
    );
    assert!(matches!(f.weight_files(), Err(Error::MissingShard { .. })), "{msg}");

    // A shard that lacks a tensor the index maps to it.
    let dir = root.path().join("local");
    std::fs::create_dir_all(&dir).unwrap();
    for (n, b) in sharded_files(6) {
        std::fs::write(dir.join(n), b).unwrap();
    }
    let w = bert_weights(6);
    let first_half = &w[..w.len() / 2];
    std::fs::write(dir.join("model-00001-of-00002.safetensors"), st_bytes(&first_half[1..])).unwrap();
    assert_err_contains(
        ModelSource::local(&dir).files(&offline(&cache)).weights(&Device::Cpu, F32),
        &["model-00001-of-00002.safetensors", &format!("`{}`", first_half[0].0), "does not hold it"],
    );
    // An index without a weight_map.
    std::fs::write(dir.join("model.safetensors.index.json"), b"{\"metadata\": {}}").unwrap();
    assert_err_contains(ModelSource::local(&dir).files(&offline(&cache)).weights(&Device::Cpu, F32), &["index.json", "weight_map"]);
}

#[test]
fn unknown_architecture_lists_the_supported_ones() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("model");
    std::fs::create_dir_all(&dir).unwrap();
    let mut cfg = bert_config("x");
    cfg["model_type"] = "llama".into();
    std::fs::write(dir.join("config.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
    // No weights: the architecture is checked first.
    let opts = tram_models::LoadOptions::default();
    let files = ModelSource::local(&dir).files(&offline(root.path()));
    let msg = load_model_from(&files, &opts).err().expect("llama is not supported").to_string();
    for needle in ["config.json", "`llama`", "gpt2", "vit", "bert", "roberta", "xlm-roberta"] {
        assert!(msg.contains(needle), "lacks {needle}: {msg}");
    }
    cfg.as_object_mut().unwrap().remove("model_type");
    std::fs::write(dir.join("config.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
    let msg = load_model_from(&files, &opts).err().expect("no model_type").to_string();
    assert!(msg.contains("<missing>") && msg.contains("supported model types"), "{msg}");
}

#[test]
fn load_model_builds_bert_from_the_cache() {
    let root = tempfile::tempdir().unwrap();
    let cache = standard_cache(root.path());
    let opts = tram_models::LoadOptions { num_labels: Some(3), ..Default::default() };
    let model = load_model_from(&ModelSource::hub(REPO).files(&offline(&cache)), &opts).unwrap();
    // The base weights come from the checkpoint (under `bert.`), the classifier is new.
    let params = model.params();
    let word = tram::Weights::weight(params, "bert.embeddings.word_embeddings.weight").unwrap();
    let want = &bert_weights(1)[0].1;
    assert!(bitwise_eq(&word, want));
    let classifier = tram::Weights::weight(params, "classifier.weight").unwrap();
    assert_eq!(classifier.dims(), &[3, 8]);

    // save_model → load_model: identical parameters and config.
    let out = root.path().join("saved");
    let tok = repo_dir(&cache, REPO).join("snapshots").join(COMMIT_MAIN).join("tokenizer.json");
    save_model(&out, model.as_ref(), Some(&tok)).unwrap();
    let again = load_model_from(&ModelSource::local(&out).files(&offline(&cache)), &tram_models::LoadOptions::default()).unwrap();
    assert_eq!(again.params().len(), params.len());
    for p in params.iter() {
        let q = tram::Weights::weight(again.params(), &p.name).unwrap();
        assert!(bitwise_eq(&q, p.var.as_tensor()), "{} differs after save/load", p.name);
    }
    assert_eq!(again.config_json(), model.config_json());
    assert_eq!(ModelSource::local(&out).files(&offline(&cache)).tokenizer().unwrap().encode("hello", true).unwrap().get_ids(), &[2, 4, 3]);
}

#[test]
fn save_then_load_round_trips_bitwise() {
    let root = tempfile::tempdir().unwrap();
    let scratch = root.path().join("scratch");
    let tok_bytes = tokenizer_json(&scratch);
    std::fs::write(scratch.join("tokenizer_config.json"), b"{\"do_lower_case\": true}").unwrap();
    let mut tensors = bert_weights(7);
    tensors.push(("extra.bf16".into(), rand_tensor(99, &[3, 5]).to_dtype(DType::BF16).unwrap()));
    tensors.push(("extra.strided".into(), rand_tensor(98, &[4, 6]).t().unwrap()));
    tensors.push(("extra.u8".into(), Tensor::new(&[1u8, 2, 255], &Device::Cpu).unwrap()));
    let mut config = bert_config("saved");
    config["nested"] = serde_json::json!({"id2label": {"0": "neg", "1": "pos"}, "list": [1.5, null, "x"]});

    let out = root.path().join("out").join("checkpoint");
    save_pretrained(&out, &config, &tensors[..], Some(&scratch.join("tokenizer.json"))).unwrap();
    let mut names: Vec<String> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"], "no temp files left behind");
    assert_eq!(std::fs::read(out.join("tokenizer.json")).unwrap(), tok_bytes);

    // transformers reads `format: pt` from the metadata.
    let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(meta.metadata().as_ref().and_then(|m| m.get("format")).map(String::as_str), Some("pt"));

    let files = ModelSource::local(&out).files(&offline(root.path()));
    assert_eq!(files.config().unwrap(), config);
    // Load in the saved dtypes (f32 target leaves bf16 cast: compare it separately).
    let w = files.weights(&Device::Cpu, F32).unwrap();
    for (name, t) in &tensors {
        let g = &w[name];
        if t.dtype() == DType::BF16 {
            assert!(bitwise_eq(&g.to_dtype(DType::BF16).unwrap(), t), "{name}");
        } else {
            assert!(bitwise_eq(g, t), "{name} differs");
        }
    }
    let w16 = files.weights(&Device::Cpu, DType::BF16).unwrap();
    assert!(bitwise_eq(&w16["extra.bf16"], &tensors.iter().find(|(n, _)| n == "extra.bf16").unwrap().1));

    // Saving tram::Params, and overwriting an existing checkpoint atomically.
    let vars: Vec<(String, candle_core::Var)> = bert_weights(8)
        .into_iter()
        .filter(|(_, t)| t.dtype() == F32)
        .map(|(n, t)| (n, candle_core::Var::from_tensor(&t).unwrap()))
        .collect();
    let params = tram::Params::new(vars.clone()).unwrap();
    save_pretrained(&out, &bert_config("params"), &params, None).unwrap();
    let w = files.weights(&Device::Cpu, F32).unwrap();
    assert_eq!(w.len(), vars.len());
    for (n, v) in &vars {
        assert!(bitwise_eq(&w[n], v.as_tensor()), "{n}");
    }
    assert_eq!(files.config().unwrap()["tram_test_marker"], "params");

    // Duplicate names and non-object configs are refused.
    let dup = vec![("a".to_string(), rand_tensor(1, &[2])), ("a".to_string(), rand_tensor(2, &[2]))];
    assert_err_contains(save_pretrained(&root.path().join("dup"), &config, &dup, None), &["`a` appears twice"]);
    assert_err_contains(save_pretrained(&root.path().join("bad"), &serde_json::json!([1]), &dup, None), &["JSON object"]);
    assert_err_contains(save_pretrained(&root.path().join("tok"), &config, &tensors, Some(&scratch.join("absent.json"))), &["absent.json"]);
}

#[test]
fn unreachable_or_refusing_hub_is_reported() {
    let root = tempfile::tempdir().unwrap();
    let cache = root.path().join("hub");
    // Nothing cached, hub unreachable.
    let f = ModelSource::hub("tram-test/nowhere").files(&online(&cache, closed_endpoint()));
    let e = f.config().unwrap_err();
    assert!(matches!(e, Error::HubUnreachable { .. }), "{e}");
    let msg = e.to_string();
    for n in
        ["cannot reach the Hugging Face hub", "`config.json`", "tram-test/nowhere@main", "not in the cache", "HF_HOME", "local directory"]
    {
        assert!(msg.contains(n), "lacks {n}: {msg}");
    }
    // The hub says 404: an absent file (find → None, get → error naming it).
    let f = ModelSource::hub("tram-test/nowhere").files(&online(&cache, stub_hub("404 Not Found", 2)));
    assert!(f.find("tokenizer.json").unwrap().is_none());
    assert_err_contains(f.get("config.json"), &["`config.json`", "HTTP 404", "tram-test/nowhere@main"]);
    // The hub says 401: private, gated or non-existent.
    let f = ModelSource::hub("tram-test/private").files(&online(&cache, stub_hub("401 Unauthorized", 1)));
    assert_err_contains(f.config(), &["HTTP 401", "HF_TOKEN", "tram-test/private@main"]);
}

#[test]
fn downloads_into_the_cache_when_online_then_resolves_offline() {
    let root = tempfile::tempdir().unwrap();
    let cache = root.path().join("hub");
    let files = bert_files(&root.path().join("scratch"), "downloaded", 9);
    let (endpoint, requests) = fake_hub("tram-test/remote", files.clone());
    let online_files = ModelSource::hub("tram-test/remote").files(&online(&cache, endpoint));
    let ck = online_files.load(&Device::Cpu, F32).unwrap();
    assert_eq!(ck.config, bert_config("downloaded"));
    assert_same_tensors(&ck.weights, &bert_weights(9));
    assert_eq!(ck.tokenizer.unwrap().encode("hello", true).unwrap().get_ids(), &[2, 4, 3]);
    // A file the hub does not have is absent, not an error, for optional lookups.
    assert!(online_files.find("generation_config.json").unwrap().is_none());
    let after_download = requests.load(std::sync::atomic::Ordering::SeqCst);
    assert!(after_download >= 6, "{after_download} requests");

    // The cache now has the hub layout: refs/main → commit, snapshot links into blobs/.
    let rd = repo_dir(&cache, "tram-test/remote");
    assert_eq!(std::fs::read_to_string(rd.join("refs").join("main")).unwrap().trim(), COMMIT_MAIN);
    for (name, bytes) in &files {
        let p = rd.join("snapshots").join(COMMIT_MAIN).join(name);
        assert_eq!(&std::fs::read(&p).unwrap(), bytes, "{name}");
        assert!(rd.join("blobs").join(blob_name(bytes)).is_file(), "blob of {name}");
    }
    // Offline, from the populated cache, with no further request.
    let offline_files = ModelSource::hub("tram-test/remote").files(&offline(&cache));
    assert_same_tensors(&offline_files.weights(&Device::Cpu, F32).unwrap(), &bert_weights(9));
    let model = load_model_from(&offline_files, &tram_models::LoadOptions::default()).unwrap();
    assert_eq!(model.config_json()["model_type"], "bert");
    assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), after_download);
}
