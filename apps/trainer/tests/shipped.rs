//! The shipped configs (`configs/*.toml`) run end to end on fixture repositories that carry the
//! real hub names and layouts: `machelreid/m2d2` with one `<domain>.tar.gz` per domain (S2ORC's
//! `_l1` and capitalised domains, a level-1 archive that also holds level-2 folders, the bare
//! arXiv archives beside them), `nyu-mll/multi_nli`, `facebook/xnli` with per-language
//! `train` / `validation` / `test`, `uoft-cs/cifar100` under its `cifar100/` folder, Stanford
//! Cars in separate train and test repositories with hashed shard names, Oxford Flowers. The
//! tiny fixture models stand in under the real model ids. Only the device, the output folder
//! and sizes (steps, epochs, seeds, block length) are overridden; data ids, domains,
//! languages, subsets and splits are the configs' own.

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use tram_data::fixtures;
use tram_trainer::apps::App;
use tram_trainer::cli::run_sources;
use tram_trainer::trainer::Control;

fn config(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs").join(name)
}

/// The S2ORC level-1 domains of configs/lm-m2d2-s2orc.toml.
const S2ORC: &[&str] =
    &["math_l1", "Art", "astro-ph_l1", "cond-mat_l1", "cs_l1", "econ_l1", "nlin_l1", "Philosophy", "physics_l1", "q-bio_l1", "stat_l1"];
/// The Wikipedia domains of configs/lm-m2d2-wiki.toml (the dataset's spellings).
const WIKI: &[&str] = &[
    "Society_and_social_sciences",
    "Culture_and_the_arts",
    "General_referece",
    "Health_and_fitness",
    "History_and_events",
    "Human_activites",
    "Mathematics_and_logic",
    "Natural_and_physical_sciences",
    "Philosophy_and_thinking",
    "Religion_and_belief_systems",
    "Technology_and_applied_sciences",
];
/// XNLI's languages.
const XNLI_LANGS: &[&str] = &["ar", "bg", "de", "el", "en", "es", "fr", "hi", "ru", "sw", "th", "tr", "ur", "vi", "zh"];
/// Rows of XNLI's English validation fixture (the set the shipped config selects on).
const XNLI_EN_VALID: usize = 7;
/// Rows of MultiNLI's validation_matched fixture (the set it used to select on).
const MNLI_VALID_MATCHED: usize = 9;

/// The tiny fixture model `from` (with its tokenizer) under the real id `to`.
fn alias_model(cache: &Path, from: &str, to: &str) {
    let src = cache.join(format!("models--{}", from.replace('/', "--"))).join("snapshots").join(fixtures::FIXTURE_COMMIT);
    let snap = models_snapshot(cache, to);
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        if let Ok(bytes) = std::fs::read(src.join(f)) {
            fixtures::hub_file(&snap, f, &bytes).unwrap();
        }
    }
}

fn lines(topic: &[&str], n: usize, seed: u64) -> String {
    documents(topic, n, seed).join("\n") + "\n"
}

fn nli_rows(n: usize, seed: usize) -> Vec<tram_data::Record> {
    let subjects = ["man", "woman", "dog", "cat"];
    let verbs = ["runs", "sleeps", "eats"];
    let rows: Vec<(String, String, i64)> = (0..n)
        .map(|i| {
            let (s, v, label) = (subjects[(i + seed) % 4], verbs[(i / 4 + seed) % 3], (i % 3) as i64);
            let h = match label {
                0 => format!("a {s} {v}"),
                1 => format!("a {s} {v} in the house"),
                _ => format!("no {s} {v}"),
            };
            (format!("the {s} {v} ."), h, label)
        })
        .collect();
    fixtures::nli_records(&rows.iter().map(|(p, h, l)| (p.as_str(), h.as_str(), *l)).collect::<Vec<_>>())
}

fn image_rows(image_col: &str, label_col: &str, n: usize, seed: usize, classes: usize) -> Vec<tram_data::Record> {
    let rows: Vec<(Vec<u8>, i64)> = (0..n)
        .map(|i| {
            let label = (i * 7 + seed) % classes;
            let c = [(label * 37 % 256) as u8, (label * 91 % 256) as u8, (i * 13 % 256) as u8];
            (fixtures::png_solid(20, 20, c), label as i64)
        })
        .collect();
    fixtures::image_records(image_col, label_col, &rows)
}

fn parquet(records: &[tram_data::Record]) -> Vec<u8> {
    fixtures::parquet_bytes(records).unwrap()
}

/// The real-layout repositories, added once to the common fixture cache.
fn real_repos() -> &'static Path {
    static DONE: OnceLock<PathBuf> = OnceLock::new();
    DONE.get_or_init(|| {
        let cache = fixtures().cache.clone();
        alias_model(&cache, GPT2, "openai-community/gpt2");
        alias_model(&cache, XLMR, "FacebookAI/xlm-roberta-base");
        alias_model(&cache, VIT, "google/vit-base-patch16-224-in21k");

        // M2D2: `<domain>.tar.gz` holding `<domain>/{train,valid,test}.txt`.
        let snap = fixtures::hub_snapshot(&cache, "machelreid/m2d2", "main", fixtures::FIXTURE_COMMIT).unwrap();
        let topics: [&[&str]; 4] = [
            &["number", "proof", "theorem", "set", "group", "field", "space", "function"],
            &["art", "music", "film", "song"],
            &["society", "people", "law", "state", "city"],
            &["history", "war", "king", "empire", "century"],
        ];
        let archive = |domain: &str, k: usize, nested: &[&str]| {
            let mut members: Vec<(String, String)> = Vec::new();
            for (s, split) in ["train", "valid", "test"].iter().enumerate() {
                let n = if *split == "train" { 30 } else { 10 };
                members.push((format!("{domain}/{split}.txt"), lines(topics[k % 4], n, (k * 10 + s) as u64)));
                for (j, sub) in nested.iter().enumerate() {
                    // Level-2 folders repeat the text (never read).
                    members.push((format!("{domain}/{sub}/{split}.txt"), lines(topics[(k + 1) % 4], 5, (k * 10 + s + j) as u64)));
                }
            }
            let refs: Vec<(&str, &[u8])> = members.iter().map(|(n, t)| (n.as_str(), t.as_bytes())).collect();
            fixtures::hub_file(&snap, &format!("{domain}.tar.gz"), &fixtures::tar_gz_bytes(&refs)).unwrap();
        };
        for (k, d) in S2ORC.iter().enumerate() {
            let nested: &[&str] = match *d {
                "math_l1" => &["math.AG", "math.CO", "math.PR"],
                "astro-ph_l1" => &["astro-ph.CO", "astro-ph.GA"],
                _ => &[],
            };
            archive(d, k, nested);
        }
        for (k, d) in ["astro-ph", "cond-mat", "q-bio", "cs.CL", "math.AG"].iter().enumerate() {
            archive(d, k + 1, &[]); // bare arXiv archives and level-2 ones beside the level-1 domains
        }
        for (k, d) in WIKI.iter().enumerate() {
            archive(d, k + 2, &[]);
        }
        fixtures::hub_file(&snap, "m2d2.py", b"import datasets\n").unwrap();
        fixtures::hub_file(&snap, "m2d2_split_names.py", b"S2ORC_L1 = ['math_l1', 'cs_l1', 'Art', 'Philosophy']\n").unwrap();
        fixtures::hub_file(&snap, "README.md", b"# M2D2\n").unwrap();

        // MultiNLI: `data/<split>-00000-of-00001.parquet`.
        let snap = fixtures::hub_snapshot(&cache, "nyu-mll/multi_nli", "main", fixtures::FIXTURE_COMMIT).unwrap();
        for (split, n) in [("train", 24), ("validation_matched", MNLI_VALID_MATCHED), ("validation_mismatched", 9)] {
            fixtures::hub_file(&snap, &format!("data/{split}-00000-of-00001.parquet"), &parquet(&nli_rows(n, split.len()))).unwrap();
        }
        // XNLI: `<lang>/{train,validation,test}-00000-of-00001.parquet` and `all_languages/`.
        let snap = fixtures::hub_snapshot(&cache, "facebook/xnli", "main", fixtures::FIXTURE_COMMIT).unwrap();
        for (i, lang) in XNLI_LANGS.iter().chain(std::iter::once(&"all_languages")).enumerate() {
            let valid = if *lang == "en" { XNLI_EN_VALID } else { 5 };
            for (split, n) in [("train", 6), ("validation", valid), ("test", 6)] {
                fixtures::hub_file(&snap, &format!("{lang}/{split}-00000-of-00001.parquet"), &parquet(&nli_rows(n, i))).unwrap();
            }
        }

        // CIFAR-100: its only config folder is `cifar100/`.
        let snap = fixtures::hub_snapshot(&cache, "uoft-cs/cifar100", "main", fixtures::FIXTURE_COMMIT).unwrap();
        for (split, n) in [("train", 12), ("test", 6)] {
            let mut rows = image_rows("img", "fine_label", n, split.len(), 100);
            for r in &mut rows {
                let fine = r["fine_label"].as_i64().unwrap();
                r.insert("coarse_label".into(), tram_data::Field::Int(fine / 5));
            }
            fixtures::hub_file(&snap, &format!("cifar100/{split}-00000-of-00001.parquet"), &parquet(&rows)).unwrap();
        }
        fixtures::hub_file(&snap, "README.md", b"# CIFAR-100\n").unwrap();
        // Stanford Cars: train and test in two repositories, hashed shard names.
        let snap = fixtures::hub_snapshot(&cache, "Multimodal-Fatima/StanfordCars_train", "main", fixtures::FIXTURE_COMMIT).unwrap();
        for (i, hash) in ["3b2c9f0e1a7d4c55", "a41f07d2c9e83b10"].iter().enumerate() {
            let rows = image_rows("image", "label", 6, i, 196);
            fixtures::hub_file(&snap, &format!("data/train-0000{i}-of-00002-{hash}.parquet"), &parquet(&rows)).unwrap();
        }
        let snap = fixtures::hub_snapshot(&cache, "Multimodal-Fatima/StanfordCars_test", "main", fixtures::FIXTURE_COMMIT).unwrap();
        fixtures::hub_file(&snap, "data/test-00000-of-00001-5e6d7c8b9a0f1e2d.parquet", &parquet(&image_rows("image", "label", 6, 3, 196)))
            .unwrap();
        // Oxford Flowers: `data/<split>-00000-of-00001-<hash>.parquet`.
        let snap = fixtures::hub_snapshot(&cache, "nelorth/oxford-flowers", "main", fixtures::FIXTURE_COMMIT).unwrap();
        for (split, n) in [("train", 10), ("test", 5)] {
            let rows = image_rows("image", "label", n, split.len(), 102);
            fixtures::hub_file(&snap, &format!("data/{split}-00000-of-00001-0f1e2d3c4b5a6978.parquet"), &parquet(&rows)).unwrap();
        }
        cache
    })
}

fn json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

fn run(app: App, file: &str, runs: &[&str], sets: &[String]) {
    let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
    let names: Vec<String> = runs.iter().map(|s| s.to_string()).collect();
    let s = run_sources(app, &sources(&config(file), &sets), &names, false, &Control::default(), &registry())
        .unwrap_or_else(|e| panic!("{file}: {e}"));
    assert!(!s.interrupted);
}

fn labels(r: &Value) -> Vec<String> {
    r["columns"].as_array().unwrap().iter().map(|c| c["label"].as_str().unwrap().to_string()).collect()
}

#[test]
fn lm_s2orc_config_runs_on_the_real_m2d2_layout() {
    real_repos();
    let out = scratch("shipped-lm-s2orc");
    let sets = vec![
        format!("out={}", out.display()),
        "device=cpu".into(),
        "train.steps=2".into(),
        "lm.block_size=8".into(),
        "lm.max_eval_blocks=4".into(),
    ];
    run(App::Lm, "lm-m2d2-s2orc.toml", &["gpt2", "tram-prev"], &sets);
    let r = json(&out.join("tram-prev/seed-0/results.json"));
    assert_eq!(r["steps"], 2);
    assert_eq!(labels(&r), ["Math", "Art", "Astro", "CondM.", "CS", "Econ.", "NLin.", "Phil.", "Phys.", "QBio", "Stat"]);
    let names: Vec<&str> = r["columns"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, S2ORC);
    assert!(r["columns"].as_array().unwrap().iter().all(|c| c["metrics"]["perplexity"].as_f64().unwrap().is_finite()));
    // Which values are the paper's and which ours, with the run's values; what --set changed.
    let p = &r["provenance"];
    assert_eq!(p["paper"]["lm.train_domain"], "math_l1", "{p}");
    assert_eq!(p["paper"]["train.batch_size"], 16, "{p}");
    assert_eq!(p["ours"]["optimizer.lr"], 3e-5, "{p}");
    assert_eq!(p["ours"]["train.eval_every"], 1000, "{p}");
    assert_eq!(p["changed"]["train.steps"], serde_json::json!({"value": 2, "was": "paper", "by": "--set"}), "{p}");
    assert_eq!(p["changed"]["lm.block_size"]["value"], 8, "{p}");
    assert!(p["paper"].get("train.steps").is_none() && p["paper"].get("lm.block_size").is_none(), "{p}");
    // TRAM-θ_{t-1} on Adam uses the ball neighborhood: its ρ is ours, recorded at its default.
    assert!(p["ours"]["optimizer.ball.rho"].as_f64().is_some(), "{p}");
    assert!(p["ours"].get("optimizer.fisher.rho").is_none(), "a component the run does not use: {p}");
    let z = json(&out.join("gpt2/seed-0/results.json"));
    assert_eq!(z["steps"], 0);
    assert_eq!(labels(&z).len(), 11);
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    assert!(md.contains("| method | Math | Art | Astro |") && md.contains("| GPT-2 |") && md.contains("| TRAM-θ_{t-1} |"), "{md}");
}

#[test]
fn lm_wiki_config_runs_on_the_real_m2d2_layout() {
    real_repos();
    let out = scratch("shipped-lm-wiki");
    let sets = vec![format!("out={}", out.display()), "device=cpu".into(), "lm.block_size=8".into(), "lm.max_eval_blocks=2".into()];
    run(App::Lm, "lm-m2d2-wiki.toml", &["gpt2"], &sets);
    let r = json(&out.join("gpt2/seed-0/results.json"));
    let names: Vec<&str> = r["columns"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, WIKI);
}

#[test]
fn xnli_config_selects_on_xnli_english_validation() {
    real_repos();
    let out = scratch("shipped-xnli");
    let sets = vec![format!("out={}", out.display()), "device=cpu".into(), "train.steps=2".into(), "seeds=[0]".into()];
    run(App::Xnli, "xnli.toml", &["tram-fisher"], &sets);
    let r = json(&out.join("tram-fisher/seed-0/results.json"));
    assert_eq!(r["selection"], "best-validation-loss");
    // XNLI `en` `validation`, not MultiNLI's `validation_matched`.
    assert_eq!(r["valid"]["rows"], XNLI_EN_VALID as u64, "{}", r["valid"]);
    assert_ne!(XNLI_EN_VALID, MNLI_VALID_MATCHED);
    let names: Vec<&str> = r["columns"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["en", "ar", "bg", "de", "el", "es", "fr", "hi", "ru", "sw", "th", "tr", "ur", "vi", "zh"]);
    assert!(r["columns"].as_array().unwrap().iter().all(|c| c["metrics"]["rows"] == 6));
    let p = &r["provenance"];
    assert_eq!(
        (p["paper"]["xnli.valid_data"].as_str(), p["paper"]["xnli.valid_subset"].as_str()),
        (Some("facebook/xnli"), Some("en")),
        "{p}"
    );
    assert_eq!(p["paper"]["train.batch_size"], 32, "{p}");
    assert_eq!(p["ours"]["xnli.max_length"], 128, "{p}");
    assert!(p["ours"]["optimizer.fisher.rho"].as_f64().is_some(), "TRAM-Fisher's ρ: {p}");

    // Any test set can come from another dataset / config / split.
    let out2 = scratch("shipped-xnli-test-sets");
    let sets = vec![
        format!("out={}", out2.display()),
        "device=cpu".into(),
        "train.steps=1".into(),
        "seeds=[0]".into(),
        "xnli.test_sets={ sw = { split = \"validation\" }, de = { data = \"nyu-mll/multi_nli\", subset = \"\", split = \"validation_mismatched\" } }".into(),
    ];
    run(App::Xnli, "xnli.toml", &["adam"], &sets);
    let r = json(&out2.join("adam/seed-0/results.json"));
    let rows = |lang: &str| r["columns"].as_array().unwrap().iter().find(|c| c["name"] == lang).unwrap()["metrics"]["rows"].clone();
    assert_eq!((rows("sw"), rows("de"), rows("fr")), (5.into(), 9.into(), 6.into()));
    let e = run_sources(
        App::Xnli,
        &sources(&config("xnli.toml"), &["device=cpu", "xnli.test_sets={ xx = { split = \"test\" } }"]),
        &["adam".into()],
        false,
        &Control::default(),
        &registry(),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("xnli.test_sets.xx") && e.contains("xnli.languages"), "{e}");
}

#[test]
fn vision_configs_run_on_the_real_cifar_cars_and_flowers_layouts() {
    real_repos();
    for (file, label, test_rows, classes) in
        [("vision-cifar100.toml", "CIFAR-100", 6, 100), ("vision-cars.toml", "Cars", 6, 196), ("vision-flowers.toml", "Flowers", 5, 102)]
    {
        let out = scratch(&format!("shipped-{file}"));
        let sets = vec![format!("out={}", out.display()), "device=cpu".into(), "train.epochs=1".into(), "seeds=[0]".into()];
        run(App::Vision, file, &["tram-prev"], &sets);
        let r = json(&out.join("tram-prev/seed-0/results.json"));
        assert_eq!(labels(&r), [label], "{file}");
        assert_eq!(r["columns"][0]["metrics"]["rows"], test_rows, "{file}");
        assert_eq!(r["steps"], 1, "{file}: one epoch of at most 128 images is one step");
        assert_eq!(r["config"]["vision"]["num_labels"], classes, "{file}");
        let p = &r["provenance"];
        assert_eq!(p["paper"]["train.select"], "last", "{file}: {p}");
        assert_eq!(p["ours"]["train.batch_size"], 128, "{file}: {p}");
        assert_eq!(p["ours"]["vision.hflip"], true, "{file}: {p}");
        assert_eq!(p["changed"]["train.epochs"]["by"], "--set", "{file}: {p}");
    }
}

#[test]
fn provenance_keys_must_be_settings_and_marked_once() {
    let reg = registry();
    let resolve = |sets: &[&str]| sources(&config("xnli.toml"), sets).resolve(&["adam".to_string()], &reg);
    let runs = resolve(&[]).unwrap();
    let p = &runs[0].config.provenance;
    assert!(p.paper.contains(&"xnli.valid_data".to_string()) && p.ours.contains(&"optimizer.lr".to_string()) && p.changed.is_empty());
    let e = resolve(&["provenance.ours=[\"train.stepz\"]"]).unwrap_err().to_string();
    assert!(e.contains("key `provenance`") && e.contains("train.stepz"), "{e}");
    let e = resolve(&["provenance.ours=[\"train.steps\"]"]).unwrap_err().to_string();
    assert!(e.contains("`train.steps` is listed twice"), "{e}");
    // A marked key given by a TRAM_* variable is noted as changed, with the source.
    let s = tram_trainer::Sources {
        file: Some(config("xnli.toml")),
        sets: vec![],
        env: Some(vec![("TRAM_OPTIMIZER__LR".into(), "1e-4".into())]),
    };
    let runs = s.resolve(&["adam".to_string()], &reg).unwrap();
    assert_eq!(runs[0].config.provenance.changed.get("optimizer.lr").map(String::as_str), Some("TRAM_* environment variables"));
}
