//! `tram lm` end to end on a tiny GPT-2 and a tiny three-domain corpus: training with a TRAM
//! variant and a baseline, metrics, the results table, checkpoints, exact resume, bad inputs.

mod common;

use common::*;
use serde_json::Value;
use tram_trainer::apps::App;
use tram_trainer::cli::run_sources;
use tram_trainer::trainer::{self, Control, Outcome, RunSpec};

fn lm_config(out: &std::path::Path, data: &str) -> String {
    format!(
        r#"
model = "{GPT2}"
data = "{data}"
out = "{out}"
seed = 3

[optimizer]
name = "adam"
lr = 1e-3
schedule = {{ kind = "polynomial", warmup = 2, total = 0 }}

[train]
steps = 6
batch_size = 2
accumulation = 2
eval_every = 2
checkpoint_every = 2
progress = false

[lm]
train_domain = "soc"
train_label = "Soc."
test_domains = ["cult", "hist"]
test_labels = ["Cult.", "Hist."]
block_size = 8

[[runs]]
name = "gpt2"
label = "GPT-2"
train = {{ evaluate_only = true }}

[[runs]]
name = "adam"
label = "Adam"

[[runs]]
name = "tram-noise"
label = "TRAM-x"
optimizer = {{ name = "tram-noise" }}
"#,
        out = out.display()
    )
}

#[test]
fn lm_end_to_end_writes_metrics_and_the_paper_table() {
    fixtures();
    let dir = scratch("lm-e2e");
    let out = dir.join("out");
    let cfg = write_config(&dir, &lm_config(&out, M2D2));
    let summary = run_sources(App::Lm, &sources(&cfg, &[]), &[], false, &Control::default(), &registry()).unwrap();
    assert!(!summary.interrupted);
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    assert_eq!(summary.tables[0], md);
    // Three rows read five splits (soc train, validation, test; cult and hist test): each is
    // tokenised once into the token cache (`<out>/token-cache`) and read from there by every row.
    let cache = out.join("token-cache");
    assert_eq!(tram_data::token_cache::builds_under(&cache), 5);
    let entries = std::fs::read_dir(&cache).unwrap().filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "tok")).count();
    assert_eq!(entries, 5);
    for needle in ["| method | Soc. | Cult. | Hist. | ZS Avg. | seeds |", "| GPT-2 |", "| Adam |", "| TRAM-x |", "noise+ball+adam"] {
        assert!(md.contains(needle), "{needle} not in\n{md}");
    }
    // Row order follows [[runs]].
    assert!(md.find("| GPT-2 |").unwrap() < md.find("| Adam |").unwrap() && md.find("| Adam |").unwrap() < md.find("| TRAM-x |").unwrap());
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    assert!(csv.starts_with("row,runs,seeds,Soc.,Soc. ci95,Cult.,Cult. ci95,Hist.,Hist. ci95,ZS Avg.,ZS Avg. ci95,composition,steps,skipped_steps,no_ascent_steps,status\n"), "{csv}");
    assert_eq!(csv.lines().count(), 4);

    // Per-run results: perplexity = exp(mean NLL), ZS average over the unseen domains.
    let r: Value = serde_json::from_slice(&std::fs::read(out.join("tram-noise/seed-3/results.json")).unwrap()).unwrap();
    assert_eq!(r["optimizer"]["composition"], "noise+ball+adam");
    assert_eq!(r["optimizer"]["region"]["params"]["sigma"], 1e-5);
    assert_eq!(r["steps"], 6);
    let cols = r["columns"].as_array().unwrap();
    assert_eq!(cols.iter().map(|c| c["label"].as_str().unwrap()).collect::<Vec<_>>(), ["Soc.", "Cult.", "Hist."]);
    for c in cols {
        let m = &c["metrics"];
        let (loss, ppl) = (m["loss"].as_f64().unwrap(), m["perplexity"].as_f64().unwrap());
        assert!(loss.is_finite() && (ppl - loss.exp()).abs() < 1e-9 * ppl, "{m}");
        assert!(m["rows"].as_u64().unwrap() > 0);
    }
    let table: Value = serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    let row = table["table"]["rows"].as_array().unwrap().iter().find(|r| r["label"] == "TRAM-x").unwrap().clone();
    let zs = row["zero_shot"]["mean"].as_f64().unwrap();
    let expect = (cols[1]["metrics"]["perplexity"].as_f64().unwrap() + cols[2]["metrics"]["perplexity"].as_f64().unwrap()) / 2.0;
    assert!((zs - expect).abs() < 1e-9, "{zs} vs {expect}");

    // Metrics: one train line per step with δ for TRAM, validations every 2 steps, final tests.
    let lines = metrics(&out.join("tram-noise/seed-3/metrics.jsonl"));
    let train: Vec<&Value> = lines.iter().filter(|l| l["type"] == "train").collect();
    assert_eq!(train.len(), 6);
    assert!(train.iter().all(|l| l["delta"].as_f64().is_some_and(|d| d >= 0.0)));
    assert_eq!(lines.iter().filter(|l| l["type"] == "eval").map(|l| l["step"].as_u64().unwrap()).collect::<Vec<_>>(), [2, 4, 6]);
    assert_eq!(lines.iter().filter(|l| l["type"] == "test").count(), 3);
    // Adam has no δ.
    let adam = metrics(&out.join("adam/seed-3/metrics.jsonl"));
    assert!(adam.iter().filter(|l| l["type"] == "train").all(|l| l["delta"].is_null()));

    // The zero-shot row evaluates the starting model: no training, no checkpoint, no saved model.
    let g: Value = serde_json::from_slice(&std::fs::read(out.join("gpt2/seed-3/results.json")).unwrap()).unwrap();
    assert_eq!(g["steps"], 0);
    assert!(!out.join("gpt2/seed-3/checkpoints").exists());
    // Trained runs save the selected model in hub layout, loadable again.
    let saved = out.join("adam/seed-3/model");
    assert!(saved.join("config.json").is_file() && saved.join("model.safetensors").is_file() && saved.join("tokenizer.json").is_file());
    tram_hub::load_model(&tram_hub::ModelSource::local(&saved), &Default::default()).unwrap();

    // The table can be rebuilt from the results alone.
    let again = tram_trainer::results::write_table(&App::Lm.table_spec(None), &out).unwrap();
    assert!(again.contains("| TRAM-x |"));
}

fn run_one(cfg: &std::path::Path, sets: &[&str], control: &Control) -> Outcome {
    let reg = registry();
    let runs = sources(cfg, sets).resolve(&["tram-noise".to_string()], &reg).unwrap();
    let run = &runs[0];
    let p = App::Lm.prepare(run, 3).unwrap();
    let spec = RunSpec { app: "lm", run, row: 0, seed: 3, tokenizer: p.tokenizer.clone(), registry: &reg, collective: None };
    trainer::run(&spec, p.model, p.data, control).unwrap()
}

fn results(out: &std::path::Path) -> Value {
    let mut r: Value = serde_json::from_slice(&std::fs::read(out.join("tram-noise/seed-3/results.json")).unwrap()).unwrap();
    for k in ["train_seconds", "eval_seconds", "config"] {
        r.as_object_mut().unwrap().remove(k);
    }
    r
}

#[test]
fn lm_resume_after_interrupt_matches_an_uninterrupted_run_bitwise() {
    fixtures();
    let dir = scratch("lm-resume");
    // Local JSON-lines data in place of the hub id; dropout is on, TRAM-x draws noise: every
    // random stream must be restored.
    let data = fixtures().m2d2_local.display().to_string();
    let cfg = write_config(&dir, &lm_config(&dir.join("a"), &data));
    assert!(matches!(run_one(&cfg, &[], &Control::default()), Outcome::Finished(_)));

    // Interrupted after step 3 (between checkpoints), then resumed.
    let b = dir.join("b").display().to_string();
    let set_out = format!("out={b}");
    let stop = Control { stop_after: Some(3), ..Default::default() };
    match run_one(&cfg, &[&set_out], &stop) {
        Outcome::Interrupted { step, checkpoint } => {
            assert_eq!(step, 3);
            assert!(checkpoint.ends_with("step-00000003"), "{}", checkpoint.display());
        }
        other => panic!("expected an interruption, got {other:?}"),
    }
    // Without --resume an existing checkpoint is an error, never a silent restart.
    let reg = registry();
    let runs = sources(&cfg, &[&set_out]).resolve(&["tram-noise".to_string()], &reg).unwrap();
    let p = App::Lm.prepare(&runs[0], 3).unwrap();
    let spec = RunSpec { app: "lm", run: &runs[0], row: 0, seed: 3, tokenizer: None, registry: &reg, collective: None };
    let err = trainer::run(&spec, p.model, p.data, &Control::default()).unwrap_err().to_string();
    assert!(err.contains("--resume"), "{err}");

    let resume = Control { resume: true, ..Default::default() };
    // Resumed with the token cache in another place (rebuilt there): not a configuration change.
    let set_cache = format!("lm.cache_dir={}", dir.join("other-cache").display());
    assert!(matches!(run_one(&cfg, &[&set_out, &set_cache], &resume), Outcome::Finished(_)));
    assert!(dir.join("other-cache").read_dir().unwrap().count() > 0);
    let a = dir.join("a");
    let b = dir.join("b");
    assert_eq!(
        std::fs::read_to_string(a.join("tram-noise/seed-3/metrics.jsonl")).unwrap(),
        std::fs::read_to_string(b.join("tram-noise/seed-3/metrics.jsonl")).unwrap()
    );
    assert_eq!(results(&a), results(&b));
    assert_eq!(
        std::fs::read(a.join("tram-noise/seed-3/model/model.safetensors")).unwrap(),
        std::fs::read(b.join("tram-noise/seed-3/model/model.safetensors")).unwrap()
    );
    // A finished run resumed again is kept as it is.
    assert!(matches!(run_one(&cfg, &[&set_out], &resume), Outcome::Finished(_)));
    assert_eq!(results(&a), results(&b));
}

/// The dtype of every tensor of a safetensors file, by name.
fn safetensors_dtypes(path: &std::path::Path) -> Vec<(String, candle_core::DType)> {
    let map = candle_core::safetensors::load(path, &candle_core::Device::Cpu).unwrap();
    let mut v: Vec<_> = map.into_iter().map(|(k, t)| (k, t.dtype())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn lm_bf16_saves_bf16_weights_and_f32_masters_and_resumes_bitwise() {
    use candle_core::DType;
    fixtures();
    let dir = scratch("lm-bf16-resume");
    let data = fixtures().m2d2_local.display().to_string();
    let cfg = write_config(&dir, &lm_config(&dir.join("a"), &data));
    let bf16 = "dtype=bf16";
    assert!(matches!(run_one(&cfg, &[bf16], &Control::default()), Outcome::Finished(_)));

    let b = dir.join("b");
    let set_out = format!("out={}", b.display());
    let stop = Control { stop_after: Some(3), ..Default::default() };
    let Outcome::Interrupted { checkpoint, .. } = run_one(&cfg, &[bf16, &set_out], &stop) else { panic!("not interrupted") };
    // The checkpoint: the model's weights in the run's dtype, the optimizer on f32 masters.
    let model = safetensors_dtypes(&checkpoint.join("model.safetensors"));
    assert!(!model.is_empty() && model.iter().all(|(_, d)| *d == DType::BF16), "{model:?}");
    let opt = safetensors_dtypes(&checkpoint.join("optimizer.safetensors"));
    let masters: Vec<_> = opt.iter().filter(|(k, _)| k.starts_with("masters/")).collect();
    assert_eq!(masters.len(), model.len(), "{opt:?}");
    for (k, d) in &opt {
        assert!(k.starts_with("engine/") || k.ends_with("/step") || *d == DType::F32, "`{k}` is {d:?}");
    }
    // A resume in f32 is refused (the configuration differs in `dtype`).
    let resume = Control { resume: true, ..Default::default() };
    let reg = registry();
    let runs = sources(&cfg, &["dtype=f32", &set_out]).resolve(&["tram-noise".to_string()], &reg).unwrap();
    let p = App::Lm.prepare(&runs[0], 3).unwrap();
    let spec = RunSpec { app: "lm", run: &runs[0], row: 0, seed: 3, tokenizer: None, registry: &reg, collective: None };
    let err = trainer::run(&spec, p.model, p.data, &resume).unwrap_err().to_string();
    assert!(err.contains("dtype"), "{err}");

    assert!(matches!(run_one(&cfg, &[bf16, &set_out], &resume), Outcome::Finished(_)));
    let a = dir.join("a");
    assert_eq!(
        std::fs::read_to_string(a.join("tram-noise/seed-3/metrics.jsonl")).unwrap(),
        std::fs::read_to_string(b.join("tram-noise/seed-3/metrics.jsonl")).unwrap()
    );
    assert_eq!(results(&a), results(&b));
    let saved = a.join("tram-noise/seed-3/model/model.safetensors");
    assert_eq!(std::fs::read(&saved).unwrap(), std::fs::read(b.join("tram-noise/seed-3/model/model.safetensors")).unwrap());
    // The saved model stays in the run's dtype and loads again.
    assert!(safetensors_dtypes(&saved).iter().all(|(_, d)| *d == DType::BF16));
    tram_hub::load_model(&tram_hub::ModelSource::local(a.join("tram-noise/seed-3/model")), &Default::default()).unwrap();
}

#[test]
fn lm_bad_checkpoints_are_clear_errors() {
    fixtures();
    let dir = scratch("lm-bad-checkpoint");
    let cfg = write_config(&dir, &lm_config(&dir.join("out"), M2D2));
    let stop = Control { stop_after: Some(2), ..Default::default() };
    let Outcome::Interrupted { checkpoint, .. } = run_one(&cfg, &[], &stop) else { panic!("not interrupted") };
    let resume = Control { resume: true, ..Default::default() };
    let reg = registry();
    let try_resume = |sets: &[&str]| -> String {
        let runs = sources(&cfg, sets).resolve(&["tram-noise".to_string()], &reg).unwrap();
        let p = App::Lm.prepare(&runs[0], 3).unwrap();
        let spec = RunSpec { app: "lm", run: &runs[0], row: 0, seed: 3, tokenizer: None, registry: &reg, collective: None };
        trainer::run(&spec, p.model, p.data, &resume).unwrap_err().to_string()
    };
    // A different configuration.
    let err = try_resume(&["optimizer.lr=0.5"]);
    assert!(err.contains("different configuration") && err.contains("optimizer.lr"), "{err}");
    let err = try_resume(&["lm.block_size=4"]);
    assert!(err.contains("lm.block_size"), "{err}");
    // A corrupt model file.
    let model = checkpoint.join("model.safetensors");
    let mut bytes = std::fs::read(&model).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0xff;
    std::fs::write(&model, &bytes).unwrap();
    let err = try_resume(&[]);
    assert!(err.contains("model.safetensors") && err.contains("corrupt"), "{err}");
    // A truncated optimizer state.
    std::fs::write(&model, {
        bytes[n - 3] ^= 0xff;
        &bytes
    })
    .unwrap();
    let opt = checkpoint.join("optimizer.safetensors");
    let b = std::fs::read(&opt).unwrap();
    std::fs::write(&opt, &b[..b.len() / 2]).unwrap();
    let err = try_resume(&[]);
    assert!(err.contains("optimizer.safetensors") && err.contains("truncated"), "{err}");
    // A dangling `latest` pointer.
    std::fs::write(checkpoint.parent().unwrap().join("latest"), "step-00000099").unwrap();
    let err = try_resume(&[]);
    assert!(err.contains("step-00000099") && err.contains("does not exist"), "{err}");
}

#[test]
fn lm_bad_inputs_are_clear_errors() {
    fixtures();
    let dir = scratch("lm-bad-inputs");
    let out = dir.join("out");
    let cfg = write_config(&dir, &lm_config(&out, M2D2));
    let reg = registry();
    let prepare_err = |sets: &[&str]| -> String {
        let runs = sources(&cfg, sets).resolve(&["adam".to_string()], &reg).unwrap();
        match App::Lm.prepare(&runs[0], 0) {
            Ok(_) => panic!("expected an error for {sets:?}"),
            Err(e) => e.to_string(),
        }
    };
    let err = prepare_err(&["lm.test_domains=[\"cult\", \"nope\"]"]);
    assert!(err.contains("nope") && err.contains("cult"), "{err}");
    let err = prepare_err(&["lm.text_column=body"]);
    assert!(err.contains("body") && err.contains("text"), "{err}");
    let err = prepare_err(&["lm.block_size=100000"]);
    assert!(err.contains("lm.block_size"), "{err}");
    let err = prepare_err(&["data=/no/such/dir"]);
    assert!(err.contains("/no/such/dir"), "{err}");
    let err = prepare_err(&["model=tram-test/absent"]);
    assert!(err.contains("tram-test/absent"), "{err}");
    // Empty documents are counted skips, not errors.
    let local = dir.join("data");
    for (d, _) in DOMAINS {
        for split in ["train", "validation", "test"] {
            let src = fixtures().m2d2_local.join(d).join(format!("{split}.jsonl"));
            let mut text = std::fs::read_to_string(src).unwrap();
            text.push_str("{\"text\": \"\"}\n{\"text\": null}\n");
            std::fs::create_dir_all(local.join(d)).unwrap();
            std::fs::write(local.join(d).join(format!("{split}.jsonl")), text).unwrap();
        }
    }
    let data = format!("data={}", local.display());
    let runs = sources(&cfg, &[&data, "lm.protocol=lines"]).resolve(&["adam".to_string()], &reg).unwrap();
    let p = App::Lm.prepare(&runs[0], 0).unwrap();
    assert_eq!(p.data.skipped["soc/train"].empty, 2);
    assert_eq!(p.data.skipped["hist/test"].total(), 2);
    // run_clm (the default) tokenises them to nothing, as transformers does: nothing skipped.
    let runs = sources(&cfg, &[&data]).resolve(&["adam".to_string()], &reg).unwrap();
    let p = App::Lm.prepare(&runs[0], 0).unwrap();
    assert!(p.data.skipped.is_empty(), "{:?}", p.data.skipped.keys().collect::<Vec<_>>());
    // A block size run_clm cannot use (a 1-token block predicts nothing) is refused by key.
    let err = sources(&cfg, &["lm.block_size=1"]).resolve(&["adam".to_string()], &reg).err().unwrap().to_string();
    assert!(err.contains("lm.block_size") && err.contains("run_clm") && err.contains("at least 2"), "{err}");
    sources(&cfg, &["lm.block_size=1", "lm.protocol=lines"]).resolve(&["adam".to_string()], &reg).unwrap();
    // A malformed JSON line is an error naming the file and line.
    std::fs::write(local.join("hist").join("test.jsonl"), "{\"text\": \"the war\"}\n{not json\n").unwrap();
    let runs = sources(&cfg, &[&format!("data={}", local.display())]).resolve(&["adam".to_string()], &reg).unwrap();
    let err = App::Lm.prepare(&runs[0], 0).err().unwrap().to_string();
    assert!(err.contains("test.jsonl") && err.contains("line 2"), "{err}");
}

#[test]
fn lm_same_seed_same_metrics() {
    fixtures();
    let dir = scratch("lm-determinism");
    let cfg = write_config(&dir, &lm_config(&dir.join("a"), M2D2));
    run_one(&cfg, &[], &Control::default());
    let b = format!("out={}", dir.join("b").display());
    run_one(&cfg, &[&b], &Control::default());
    assert_eq!(
        std::fs::read_to_string(dir.join("a/tram-noise/seed-3/metrics.jsonl")).unwrap(),
        std::fs::read_to_string(dir.join("b/tram-noise/seed-3/metrics.jsonl")).unwrap()
    );
    // Another seed gives other metrics.
    let c = format!("out={}", dir.join("c").display());
    let reg = registry();
    let runs = sources(&cfg, &[&c, "seed=4"]).resolve(&["tram-noise".to_string()], &reg).unwrap();
    let p = App::Lm.prepare(&runs[0], 4).unwrap();
    let spec = RunSpec { app: "lm", run: &runs[0], row: 0, seed: 4, tokenizer: None, registry: &reg, collective: None };
    trainer::run(&spec, p.model, p.data, &Control::default()).unwrap();
    assert_ne!(
        std::fs::read_to_string(dir.join("a/tram-noise/seed-3/metrics.jsonl")).unwrap(),
        std::fs::read_to_string(dir.join("c/tram-noise/seed-4/metrics.jsonl")).unwrap()
    );
}

#[test]
fn m2d2_configs_use_the_run_clm_protocol_and_the_quickstart_keeps_lines() {
    use tram_data::lm::Protocol;
    assert_eq!(tram_trainer::config::LmConfig::default().protocol, Protocol::RunClm);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    for (path, want) in [
        ("configs/lm-m2d2-s2orc.toml", "run_clm"),
        ("configs/lm-m2d2-wiki.toml", "run_clm"),
        ("configs/quickstart/finetune.toml", "lines"),
        ("configs/quickstart/pretrain.toml", "lines"),
    ] {
        let v: toml::Value = toml::from_str(&std::fs::read_to_string(root.join(path)).unwrap()).unwrap();
        assert_eq!(v["lm"]["protocol"].as_str(), Some(want), "{path}");
    }
}
