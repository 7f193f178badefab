//! Offline fixtures for the trainer's end-to-end tests: tiny random-weight models (the
//! tram-models parity fixtures) with word-level tokenizers, in the hub cache layout, and tiny
//! datasets (hub parquet or local JSON lines) written with tram-data's fixture helpers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use tram_data::fixtures::{self, TokenizerStyle};
use tram_data::{Field, Record};

pub const GPT2: &str = "tram-test/tiny-gpt2";
pub const XLMR: &str = "tram-test/tiny-xlmr";
pub const VIT: &str = "tram-test/tiny-vit";
pub const M2D2: &str = "tram-test/tiny-m2d2";
pub const MNLI: &str = "tram-test/tiny-mnli";
pub const XNLI: &str = "tram-test/tiny-xnli";
pub const IMAGES: &str = "tram-test/tiny-images";

/// The words of the fixture tokenizers (ids after the special tokens).
pub const WORDS: &[&str] = &[
    "the", "a", "of", "and", "to", "in", "is", "was", "for", "on", "that", "with", "as", "by", "at", "from", "society", "people", "law",
    "state", "city", "art", "music", "film", "song", "history", "war", "king", "empire", "century", "number", "proof", "theorem", "set",
    "group", "field", "space", "function", "is", "not", "yes", "no", "man", "woman", "dog", "cat", "runs", "sleeps", "eats", "red", "blue",
    "green", "big", "small", "house", "car", ".", ",",
];

/// The empty `main` snapshot folder of model repository `repo` in the hub cache `cache`.
pub fn models_snapshot(cache: &Path, repo: &str) -> PathBuf {
    let dir = cache.join(format!("models--{}", repo.replace('/', "--")));
    std::fs::create_dir_all(dir.join("refs")).unwrap();
    std::fs::write(dir.join("refs").join("main"), fixtures::FIXTURE_COMMIT).unwrap();
    let snap = dir.join("snapshots").join(fixtures::FIXTURE_COMMIT);
    std::fs::create_dir_all(&snap).unwrap();
    snap
}

fn model_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../runtime/models/tests/fixtures").join(name)
}

fn put_model(cache: &Path, repo: &str, fixture: &str, tokenizer: Option<TokenizerStyle>) {
    let snap = models_snapshot(cache, repo);
    for f in ["config.json", "model.safetensors"] {
        fixtures::hub_file(&snap, f, &std::fs::read(model_fixture(fixture).join(f)).unwrap()).unwrap();
    }
    if let Some(style) = tokenizer {
        let json = fixtures::word_tokenizer_json(WORDS, style).to_string();
        fixtures::hub_file(&snap, "tokenizer.json", json.as_bytes()).unwrap();
    }
}

/// Deterministic pseudo-random documents over a domain's topic words.
pub fn documents(topic: &[&str], n: usize, seed: u64) -> Vec<String> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut next = move |m: usize| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % m as u64) as usize
    };
    let common = ["the", "a", "of", "and", "is", "in", "."];
    (0..n)
        .map(|_| {
            let len = 12 + next(10);
            (0..len).map(|_| if next(3) == 0 { common[next(common.len())] } else { topic[next(topic.len())] }).collect::<Vec<_>>().join(" ")
        })
        .collect()
}

pub struct Fixtures {
    pub root: PathBuf,
    pub cache: PathBuf,
    /// Local directory copy of the M2D2 fixture (JSON lines).
    pub m2d2_local: PathBuf,
}

/// The domains of the M2D2 fixture: name and topic words.
pub const DOMAINS: &[(&str, &[&str])] = &[
    ("soc", &["society", "people", "law", "state", "city"]),
    ("cult", &["art", "music", "film", "song"]),
    ("hist", &["history", "war", "king", "empire", "century"]),
];

fn m2d2_records(domain: usize, split: &str) -> Vec<Record> {
    let (_, topic) = DOMAINS[domain];
    let n = if split == "train" { 24 } else { 6 };
    let seed = domain as u64 * 100 + split.len() as u64;
    let docs = documents(topic, n, seed);
    let refs: Vec<&str> = docs.iter().map(String::as_str).collect();
    fixtures::text_records("text", &refs)
}

fn nli_rows(lang: &str, n: usize, seed: u64) -> Vec<Record> {
    let subjects = ["man", "woman", "dog", "cat"];
    let verbs = ["runs", "sleeps", "eats"];
    let mut rows = Vec::new();
    for i in 0..n {
        let s = subjects[(i + seed as usize) % 4];
        let v = verbs[(i / 4 + seed as usize) % 3];
        let label = (i % 3) as i64;
        let h = match label {
            0 => format!("a {s} {v}"),
            1 => format!("a {s} {v} in the house"),
            _ => format!("no {s} {v}"),
        };
        let p = format!("the {s} {v} {lang_word}", lang_word = if lang == "en" { "." } else { "," });
        rows.push((p, h, label));
    }
    let refs: Vec<(&str, &str, i64)> = rows.iter().map(|(p, h, l)| (p.as_str(), h.as_str(), *l)).collect();
    fixtures::nli_records(&refs)
}

fn image_rows(n: usize, seed: u64) -> Vec<Record> {
    let colours = [[200u8, 30, 30], [30, 200, 30], [30, 30, 200]];
    let rows: Vec<(Vec<u8>, i64)> = (0..n)
        .map(|i| {
            let label = (i + seed as usize) % 3;
            let mut c = colours[label];
            c[(i + 1) % 3] = c[(i + 1) % 3].wrapping_add((i * 7) as u8);
            (fixtures::png_solid(20, 20, c), label as i64)
        })
        .collect();
    fixtures::image_records("img", "label", &rows)
}

/// Build every fixture once per test process and point the hub environment at it.
pub fn fixtures() -> &'static Fixtures {
    static F: OnceLock<Fixtures> = OnceLock::new();
    F.get_or_init(|| {
        let root = std::env::temp_dir().join(format!("tram-trainer-fixtures-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let home = root.join("hf");
        let cache = home.join("hub");
        put_model(&cache, GPT2, "gpt2", Some(TokenizerStyle::Gpt2));
        put_model(&cache, XLMR, "xlm-roberta", Some(TokenizerStyle::Roberta));
        put_model(&cache, VIT, "vit", None);
        // M2D2-like: one config per domain, parquet in the hub cache; JSON lines locally.
        let snap = fixtures::hub_snapshot(&cache, M2D2, "main", fixtures::FIXTURE_COMMIT).unwrap();
        let local = root.join("m2d2-local");
        for (d, (name, _)) in DOMAINS.iter().enumerate() {
            for split in ["train", "validation", "test"] {
                let recs = m2d2_records(d, split);
                fixtures::hub_file(&snap, &format!("{name}/{split}-00000-of-00001.parquet"), &fixtures::parquet_bytes(&recs).unwrap())
                    .unwrap();
                fixtures::write_json_lines(&local.join(name).join(format!("{split}.jsonl")), &recs).unwrap();
            }
        }
        // MultiNLI-like and XNLI-like.
        let snap = fixtures::hub_snapshot(&cache, MNLI, "main", fixtures::FIXTURE_COMMIT).unwrap();
        fixtures::hub_file(&snap, "data/train-00000-of-00001.parquet", &fixtures::parquet_bytes(&nli_rows("en", 24, 0)).unwrap()).unwrap();
        fixtures::hub_file(
            &snap,
            "data/validation_matched-00000-of-00001.parquet",
            &fixtures::parquet_bytes(&nli_rows("en", 9, 1)).unwrap(),
        )
        .unwrap();
        let snap = fixtures::hub_snapshot(&cache, XNLI, "main", fixtures::FIXTURE_COMMIT).unwrap();
        for (i, lang) in ["en", "de", "fr"].iter().enumerate() {
            fixtures::hub_file(
                &snap,
                &format!("{lang}/test-00000-of-00001.parquet"),
                &fixtures::parquet_bytes(&nli_rows(lang, 9, i as u64 + 2)).unwrap(),
            )
            .unwrap();
        }
        // Images.
        let snap = fixtures::hub_snapshot(&cache, IMAGES, "main", fixtures::FIXTURE_COMMIT).unwrap();
        fixtures::hub_file(&snap, "plain_text/train-00000-of-00001.parquet", &fixtures::parquet_bytes(&image_rows(12, 0)).unwrap())
            .unwrap();
        fixtures::hub_file(&snap, "plain_text/test-00000-of-00001.parquet", &fixtures::parquet_bytes(&image_rows(6, 1)).unwrap()).unwrap();
        std::env::set_var("HF_HOME", &home);
        std::env::remove_var("HF_HUB_CACHE");
        std::env::remove_var("HUGGINGFACE_HUB_CACHE");
        std::env::set_var("HF_HUB_OFFLINE", "1");
        Fixtures { root, cache, m2d2_local: local }
    })
}

/// A fresh directory for one test.
pub fn scratch(name: &str) -> PathBuf {
    let d = fixtures().root.join("scratch").join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Write a config file.
pub fn write_config(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("config.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// Sources from a file and `--set`s, with no environment variables.
pub fn sources(file: &Path, sets: &[&str]) -> tram_trainer::Sources {
    tram_trainer::Sources { file: Some(file.to_path_buf()), sets: sets.iter().map(|s| s.to_string()).collect(), env: Some(Vec::new()) }
}

pub fn registry() -> tram::Registry {
    tram_plugins::registry().unwrap()
}

/// The lines of a metrics file as JSON.
/// Train `run` (seed 0) of the config at `cfg` in one process and as two thread ranks
/// (`distributed.engine = "threads"`, README "Data-parallel training") into `dir`, and check
/// that both recorded the same validation and test metrics: equal rows and accuracies, losses
/// within 1e-5 (the two sum their gradients in another order).
pub fn thread_ranks_equal_one_process(app: tram_trainer::apps::App, dir: &Path, cfg: &Path, run: &str) {
    let (one, two) = (dir.join("one"), dir.join("two"));
    for (out, extra) in [(&one, &[][..]), (&two, &["distributed.engine=\"threads\"", "distributed.ranks=2"][..])] {
        let set = format!("out={}", out.display());
        let mut sets = vec![set.as_str(), "seeds=[0]"];
        sets.extend_from_slice(extra);
        tram_trainer::cli::run_sources(app, &sources(cfg, &sets), &[run.to_string()], false, &Default::default(), &registry()).unwrap();
    }
    let result = |out: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(out.join(run).join("seed-0/results.json")).unwrap()).unwrap()
    };
    let (a, b) = (result(&one), result(&two));
    let close = |x: &serde_json::Value, y: &serde_json::Value, what: &str| {
        let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
        assert!((x - y).abs() <= 1e-5 * x.abs().max(1e-3), "{run}: {what}: one process {x}, two thread ranks {y}");
    };
    // (A run without a validation set records none.)
    assert_eq!(a["valid"].is_null(), b["valid"].is_null());
    if !a["valid"].is_null() {
        assert_eq!(a["valid"]["rows"], b["valid"]["rows"]);
        close(&a["valid"]["loss"], &b["valid"]["loss"], "validation loss");
    }
    let (ca, cb) = (a["columns"].as_array().unwrap(), b["columns"].as_array().unwrap());
    assert_eq!(ca.len(), cb.len());
    assert!(!ca.is_empty());
    for (x, y) in ca.iter().zip(cb) {
        let (mx, my) = (&x["metrics"], &y["metrics"]);
        assert_eq!((&mx["rows"], &mx["accuracy"]), (&my["rows"], &my["accuracy"]), "{run}: column {}", x["label"]);
        close(&mx["loss"], &my["loss"], &format!("test loss of {}", x["label"]));
    }
}

pub fn metrics(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

pub fn field_str(r: &Record, k: &str) -> String {
    match r.get(k) {
        Some(Field::Str(s)) => s.clone(),
        _ => String::new(),
    }
}

/// Send SIG`signal` (`INT`, `TERM`, …) to this process after a few training steps of a
/// `tram-prev` run with the `tram` command's handler installed: the run must stop after the
/// current step with a checkpoint, and `--resume` must finish it with the metrics of a run that
/// was never interrupted. A process installs one handler, so each signal needs its own test
/// binary.
#[cfg(unix)]
pub fn a_signal_stops_the_run_with_a_checkpoint_and_resume_completes_it(signal: &str) {
    use tram_trainer::apps::App;
    use tram_trainer::cli::{install_ctrlc, run_sources};
    use tram_trainer::trainer::Control;
    fixtures();
    let dir = scratch(&format!("signal-{}", signal.to_lowercase()));
    let cfg = write_config(
        &dir,
        &format!(
            r#"
model = "{GPT2}"
data = "{M2D2}"
out = "{out}"
[optimizer]
name = "tram-prev"
lr = 1e-3
[train]
steps = 150
batch_size = 2
progress = false
[lm]
train_domain = "soc"
test_domains = ["cult"]
block_size = 8
"#,
            out = dir.join("out").display()
        ),
    );
    let control = Control::default();
    install_ctrlc(&control).unwrap();
    let metrics = dir.join("out/tram-prev/seed-0/metrics.jsonl");
    let watcher = {
        let metrics = metrics.clone();
        let flag = format!("-{signal}");
        std::thread::spawn(move || {
            // Wait until training has taken a few steps, then interrupt.
            for _ in 0..6000 {
                if std::fs::read_to_string(&metrics).map(|t| t.lines().count() > 3).unwrap_or(false) {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            let pid = std::process::id().to_string();
            assert!(std::process::Command::new("kill").args([flag.as_str(), pid.as_str()]).status().unwrap().success());
        })
    };
    let s = run_sources(App::Lm, &sources(&cfg, &[]), &[], false, &control, &registry()).unwrap();
    watcher.join().unwrap();
    assert!(s.interrupted, "the run finished before SIG{signal} arrived (or the signal killed it)");
    let latest = std::fs::read_to_string(dir.join("out/tram-prev/seed-0/checkpoints/latest")).unwrap();
    let step: u64 = latest.trim().trim_start_matches("step-").parse().unwrap();
    assert!(step > 0 && step < 150, "{latest}");
    // Resume to the end; it matches a run that was never interrupted.
    let resume = Control { resume: true, ..Default::default() };
    let s = run_sources(App::Lm, &sources(&cfg, &[]), &[], false, &resume, &registry()).unwrap();
    assert!(!s.interrupted);
    let other = format!("out={}", dir.join("straight").display());
    run_sources(App::Lm, &sources(&cfg, &[&other]), &[], false, &Control::default(), &registry()).unwrap();
    assert_eq!(
        std::fs::read_to_string(&metrics).unwrap(),
        std::fs::read_to_string(dir.join("straight/tram-prev/seed-0/metrics.jsonl")).unwrap()
    );
}
