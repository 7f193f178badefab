//! Results that must survive: a diverged run is recorded (`"inf"` / `"nan"`, `diverged`) and
//! marked in every table while the other rows still run; a run whose steps were all skipped
//! fails with a clear message but keeps its (marked) row; skipped steps and steps without
//! ascent are counted and marked; evaluation sets cannot be emptied by a setting; overrides
//! cannot make a row's label false; `--dry-run` prints every row; `--table` needs results;
//! invalid UTF-8 in a text split is counted.

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use tram_trainer::apps::App;
use tram_trainer::cli::run_sources;
use tram_trainer::results;
use tram_trainer::trainer::Control;

fn config(out: &Path, rows: &str) -> String {
    format!(
        r#"
model = "{GPT2}"
data = "{M2D2}"
out = "{out}"
seed = 1

[optimizer]
name = "adam"
lr = 1e-3

[train]
steps = 3
batch_size = 2
progress = false

[lm]
train_domain = "soc"
train_label = "Soc."
test_domains = ["cult"]
test_labels = ["Cult."]
block_size = 8
max_eval_blocks = 4

[[runs]]
name = "adam"
label = "Adam"
{rows}
"#,
        out = out.display()
    )
}

fn read_json(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

/// A copy of the tiny GPT-2 (with its tokenizer) in `dir`, every value of `tensor` set to NaN
/// (written into the safetensors bytes directly).
fn nan_model(dir: &Path, tensor: &str) -> PathBuf {
    let snap = fixtures().cache.join("models--tram-test--tiny-gpt2").join("snapshots").join(tram_data::fixtures::FIXTURE_COMMIT);
    let out = dir.join("nan-gpt2");
    std::fs::create_dir_all(&out).unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(snap.join(f), out.join(f)).unwrap();
    }
    let mut bytes = std::fs::read(snap.join("model.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    assert_eq!(header[tensor]["dtype"], "F32");
    let (a, b) =
        (header[tensor]["data_offsets"][0].as_u64().unwrap() as usize, header[tensor]["data_offsets"][1].as_u64().unwrap() as usize);
    for chunk in bytes[8 + n + a..8 + n + b].chunks_mut(4) {
        chunk.copy_from_slice(&f32::NAN.to_le_bytes());
    }
    std::fs::write(out.join("model.safetensors"), bytes).unwrap();
    out
}

#[test]
fn a_diverged_run_is_recorded_and_marked_and_the_other_rows_keep_their_table() {
    fixtures();
    let dir = scratch("results-diverged");
    let out = dir.join("out");
    // Adam at lr 1e6: the first update throws the weights to ±1e6, the logits overflow.
    let rows = r#"
[[runs]]
name = "blowup"
label = "Blow-up"
optimizer = { name = "adam", lr = 1e6 }
"#;
    let cfg = write_config(&dir, &config(&out, rows));
    let summary = run_sources(App::Lm, &sources(&cfg, &[]), &[], false, &Control::default(), &registry()).unwrap();
    assert!(summary.failures.is_empty(), "a diverged run is a result, not a failure: {:?}", summary.failures);
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    assert_eq!(summary.tables, std::slice::from_ref(&md));

    // results.json: the non-finite metrics as strings (never null), and the flag.
    let r = read_json(&out.join("blowup/seed-1/results.json"));
    assert_eq!(r["diverged"], true, "{r:#}");
    let ppl: Vec<&Value> = r["columns"].as_array().unwrap().iter().map(|c| &c["metrics"]["perplexity"]).collect();
    assert!(ppl.iter().all(|p| *p == "inf" || *p == "nan"), "{ppl:?}");
    let adam = read_json(&out.join("adam/seed-1/results.json"));
    assert_eq!(adam["diverged"], false);
    assert!(adam["columns"][0]["metrics"]["perplexity"].as_f64().unwrap().is_finite());

    // Markdown: the diverged row marked with its footnote, its cells `∞` / `diverged`; Adam's numbers.
    let row = md.lines().find(|l| l.starts_with("| Blow-up †")).unwrap_or_else(|| panic!("no marked row in\n{md}"));
    assert!(row.contains("∞") || row.contains("diverged"), "{row}");
    assert!(md.contains("- † Blow-up: diverged"), "{md}");
    let adam_row = md.lines().find(|l| l.starts_with("| Adam |")).unwrap();
    assert!(adam_row.split('|').nth(2).unwrap().trim().parse::<f64>().is_ok(), "{adam_row}");
    // CSV: the status column; JSON: the row's count and the cell as a string.
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    let line = csv.lines().find(|l| l.starts_with("Blow-up,")).unwrap();
    assert!(line.ends_with(",diverged") || line.contains(",diverged;"), "{line}");
    let table = read_json(&out.join("results.json"));
    let trow = table["table"]["rows"].as_array().unwrap().iter().find(|r| r["label"] == "Blow-up").unwrap().clone();
    assert_eq!(trow["diverged"], 1);
    assert!(trow["cells"]["Soc."]["mean"].is_string(), "{trow}");

    // `--table` reads it back, also from a results.json written before the fix (null metrics).
    let text = std::fs::read_to_string(out.join("blowup/seed-1/results.json")).unwrap();
    let legacy = text.replace("\"inf\"", "null").replace("\"nan\"", "null").replace("\"diverged\": true", "\"diverged\": false");
    std::fs::write(out.join("blowup/seed-1/results.json"), legacy).unwrap();
    let again = results::write_table(&App::Lm.table_spec(None), &out).unwrap();
    assert!(again.lines().any(|l| l.starts_with("| Blow-up †") && l.contains("diverged")), "{again}");
}

#[test]
fn a_run_whose_steps_were_all_skipped_fails_after_the_other_rows_and_the_table() {
    fixtures();
    let dir = scratch("results-all-skipped");
    let out = dir.join("out");
    let model = nan_model(&dir, "transformer.ln_f.weight");
    let rows = format!(
        r#"
[[runs]]
name = "broken"
label = "SAM"
model = "{}"
optimizer = {{ name = "sam" }}

[[runs]]
name = "last"
label = "Adam again"
"#,
        model.display()
    );
    let cfg = write_config(&dir, &config(&out, &rows));
    let summary = run_sources(App::Lm, &sources(&cfg, &[]), &[], false, &Control::default(), &registry()).unwrap();
    assert_eq!(summary.failures.len(), 1, "{:?}", summary.failures);
    assert!(summary.failures[0].contains("run `broken`") && summary.failures[0].contains("every one of the 3 steps was skipped"));
    // The row after the failed one ran.
    assert!(out.join("last/seed-1/results.json").is_file());
    let r = read_json(&out.join("broken/seed-1/results.json"));
    assert_eq!((r["skipped_steps"].as_u64(), r["steps"].as_u64()), (Some(3), Some(3)));
    assert!(r["failed"].as_str().unwrap().contains("skipped"), "{r:#}");
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    assert!(md.lines().any(|l| l.starts_with("| SAM ") && l.contains('‡')), "{md}");
    assert!(md.contains("‡ SAM: 3 of 3 steps skipped") && md.contains("FAILED"), "{md}");
    assert!(md.lines().any(|l| l.starts_with("| Adam |")), "{md}");
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    let line = csv.lines().find(|l| l.starts_with("SAM,")).unwrap();
    assert!(line.contains("failed") && line.contains("3/3 skipped"), "{line}");
}

#[test]
fn skipped_and_no_ascent_steps_are_counted_and_marked_in_the_table() {
    fixtures();
    let dir = scratch("results-markers");
    let out = dir.join("out");
    let cfg = write_config(&dir, &config(&out, ""));
    run_sources(App::Lm, &sources(&cfg, &[]), &[], false, &Control::default(), &registry()).unwrap();
    // A second row from the first's result, with counts as the engine records them.
    let mut r = read_json(&out.join("adam/seed-1/results.json"));
    r["run"] = "tram".into();
    r["label"] = "TRAM-x".into();
    r["row"] = 1.into();
    r["skipped_steps"] = 1.into();
    r["no_ascent_steps"] = 2.into();
    std::fs::create_dir_all(out.join("tram/seed-1")).unwrap();
    std::fs::write(out.join("tram/seed-1/results.json"), serde_json::to_vec(&r).unwrap()).unwrap();
    let md = results::write_table(&App::Lm.table_spec(None), &out).unwrap();
    assert!(md.lines().any(|l| l.starts_with("| TRAM-x ‡§ |")), "{md}");
    assert!(md.lines().any(|l| l.starts_with("| Adam |")), "a clean row has no marker:\n{md}");
    assert!(md.contains("- ‡ TRAM-x: 1 of 3 steps skipped") && md.contains("- § TRAM-x: 2 of 3 steps without ascent"), "{md}");
    assert!(!md.contains("FAILED"), "{md}");
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    assert!(csv.lines().next().unwrap().ends_with(",composition,steps,skipped_steps,no_ascent_steps,status"), "{csv}");
    assert!(csv.lines().any(|l| l.starts_with("TRAM-x,") && l.ends_with(",3,1,2,1/3 skipped; 2/3 no ascent")), "{csv}");
}

#[test]
fn settings_that_empty_an_evaluation_set_are_refused_before_any_run() {
    fixtures();
    let dir = scratch("results-empty-eval");
    let out = dir.join("out");
    let cfg = write_config(&dir, &config(&out, ""));
    for (set, key) in [
        ("lm.max_eval_blocks=0", "lm.max_eval_blocks"),
        ("train.max_eval_examples=0", "train.max_eval_examples"),
        ("train.max_train_examples=0", "train.max_train_examples"),
    ] {
        let e = run_sources(App::Lm, &sources(&cfg, &[set]), &[], false, &Control::default(), &registry()).unwrap_err().to_string();
        assert!(e.contains(&format!("key `{key}` = 0")) && e.contains("at least 1"), "{set}: {e}");
        assert!(!out.exists(), "{set}: nothing may run");
    }
}

#[test]
fn overrides_that_change_what_a_labelled_row_is_are_refused() {
    fixtures();
    let dir = scratch("results-labels");
    let out = dir.join("out");
    let rows = r#"
[[runs]]
name = "tram-noise"
label = "TRAM-x"
optimizer = { name = "tram-noise" }

[[runs]]
name = "zero-shot"
label = "Pretrained"
train = { evaluate_only = true }
"#;
    let cfg = write_config(&dir, &config(&out, rows));
    let run_rows = |sets: &[&str], env: Vec<(String, String)>, names: &[String]| {
        let mut s = sources(&cfg, sets);
        s.env = Some(env);
        run_sources(App::Lm, &s, names, true, &Control::default(), &registry())
    };
    let run = |sets: &[&str], env: Vec<(String, String)>| run_rows(sets, env, &[]);
    for (sets, needle) in [
        (&["optimizer.name=\"sgd\""][..], "`optimizer.name` of row `adam`"),
        (&["optimizer={ name = \"sgd\", lr = 1e-3 }"][..], "`optimizer.name` of row `adam`"),
        (&["train.evaluate_only=false"][..], "`train.evaluate_only` of row `zero-shot`"),
        (&["train.steps=0"][..], "`train.steps` of row `adam`"),
        (&["init=\"random\""][..], "`init` of row `adam`"),
        (&["label=\"X\""][..], "the same label `X`"),
    ] {
        let e = run(sets, Vec::new()).unwrap_err().to_string();
        assert!(e.contains(needle), "{sets:?}: {e}");
    }
    let e = run(&[], vec![("TRAM_OPTIMIZER__NAME".into(), "sgd".into())]).unwrap_err().to_string();
    assert!(e.contains("TRAM_OPTIMIZER__NAME=sgd") && e.contains("optimizer.name"), "{e}");
    // Overrides that keep every row what its label says are fine ...
    run(&["optimizer.lr=1e-4", "train.steps=2", "train.evaluate_only=false"], Vec::new()).unwrap_err();
    run(&["optimizer.lr=1e-4", "train.steps=2"], Vec::new()).unwrap();
    run_rows(&["optimizer.name=\"adam\""], Vec::new(), &["adam".to_string()]).unwrap();
    // ... but not one that changes a selected row.
    let e = run_rows(&["optimizer.name=\"adam\""], Vec::new(), &["tram-noise".to_string()]).unwrap_err().to_string();
    assert!(e.contains("from \"tram-noise\" to \"adam\""), "{e}");
    // ... and a config whose rows are named by what they run (no labels) may be overridden.
    let plain = write_config(&dir, &config(&out, "").replace("label = \"Adam\"\n", ""));
    run_sources(App::Lm, &sources(&plain, &["optimizer.name=\"sgd\""]), &[], true, &Control::default(), &registry()).unwrap();
}

#[test]
fn dry_run_prints_the_resolved_configuration_of_every_row() {
    fixtures();
    let dir = scratch("results-dry-run");
    let out = dir.join("out");
    let rows = r#"
[[runs]]
name = "tram-noise"
label = "TRAM-x"
optimizer = { name = "tram-noise" }
"#;
    let cfg = write_config(&dir, &config(&out, rows));
    let runs = sources(&cfg, &[]).resolve(&[], &registry()).unwrap();
    let text = tram_trainer::cli::dry_run_text(&runs).unwrap();
    let parts: Vec<&str> = text.split("# run `").skip(1).collect();
    assert_eq!(parts.len(), 2, "{text}");
    for (part, (name, composition)) in parts.iter().zip([("adam", "adam"), ("tram-noise", "tram-noise")]) {
        assert!(part.starts_with(name), "{part}");
        let body = part.split_once('\n').unwrap().1;
        let t: toml::Table = toml::from_str(body).unwrap_or_else(|e| panic!("{name}: not TOML ({e}):\n{body}"));
        assert_eq!(t["optimizer"]["name"].as_str(), Some(composition), "{body}");
        assert_eq!(t["train"]["steps"].as_integer(), Some(3));
        assert_eq!(t["lm"]["max_eval_blocks"].as_integer(), Some(4));
        assert!(body.contains("# unset: "), "unset optional keys are listed:\n{body}");
    }
    assert!(!out.exists());
}

#[test]
fn a_table_of_a_missing_or_empty_directory_is_an_error_and_creates_nothing() {
    fixtures();
    let dir = scratch("results-table-missing");
    let missing = dir.join("nonexistent");
    let args = tram_trainer::cli::AppArgs { table: Some(missing.clone()), ..Default::default() };
    let e = tram_trainer::cli::run_app(App::Lm, &args, &Control::default(), &registry()).unwrap_err().to_string();
    assert!(e.contains("is not a directory") && e.contains("nonexistent"), "{e}");
    assert!(!missing.exists(), "--table must not create the directory");
    let args = tram_trainer::cli::AppArgs { table: Some(dir.clone()), ..Default::default() };
    let e = tram_trainer::cli::run_app(App::Lm, &args, &Control::default(), &registry()).unwrap_err().to_string();
    assert!(e.contains("no results under"), "{e}");
    assert!(!dir.join("results.md").exists() && !dir.join("results.csv").exists());
}

#[test]
fn invalid_utf8_in_a_text_split_is_counted_in_the_results() {
    fixtures();
    let dir = scratch("results-utf8");
    let data = dir.join("data");
    for (d, (name, topic)) in DOMAINS.iter().enumerate().take(2) {
        std::fs::create_dir_all(data.join(name)).unwrap();
        for split in ["train", "validation", "test"] {
            let mut bytes = documents(topic, 8, d as u64 * 10 + split.len() as u64).join("\n").into_bytes();
            if *name == "cult" && split == "test" {
                // Latin-1 text and a stray binary run: 3 + 4 bytes that are not UTF-8.
                bytes.extend_from_slice(b"\ncaf\xe9 art \xff\xfe music\n\x80\x81\x82\x83 film song\n");
            }
            std::fs::write(data.join(name).join(format!("{split}.txt")), bytes).unwrap();
        }
    }
    let out = dir.join("out");
    let cfg = write_config(
        &dir,
        &config(&out, "")
            .replace(&format!("data = \"{M2D2}\""), &format!("data = \"{}\"", data.display()))
            .replace("label = \"Adam\"", "label = \"Adam\"\ntrain = { evaluate_only = true }"),
    );
    run_sources(App::Lm, &sources(&cfg, &[]), &[], false, &Control::default(), &registry()).unwrap();
    let r = read_json(&out.join("adam/seed-1/results.json"));
    assert_eq!(r["skipped_rows"]["cult/test"]["invalid_utf8_bytes"], 7, "{:#}", r["skipped_rows"]);
    assert!(r["skipped_rows"].get("soc/test").is_none(), "clean splits are not listed: {:#}", r["skipped_rows"]);
}

#[test]
fn an_empty_evaluation_set_is_refused_before_the_first_step() {
    fixtures();
    let dir = scratch("results-empty-set");
    let out = dir.join("out");
    let cfg = write_config(&dir, &config(&out, ""));
    let runs = sources(&cfg, &[]).resolve(&[], &registry()).unwrap();
    let mut prepared = App::Lm.prepare(&runs[0], 1).unwrap();
    // A set that ends up empty for a reason no setting check sees (e.g. every row skipped).
    prepared.data.tests[1].source = Box::new(tram_trainer::task::BatchList(Vec::new(), 0));
    let reg = registry();
    let spec =
        tram_trainer::trainer::RunSpec { app: "lm", run: &runs[0], row: 0, seed: 1, tokenizer: None, registry: &reg, collective: None };
    let e = tram_trainer::trainer::run(&spec, prepared.model, prepared.data, &Control::default()).unwrap_err().to_string();
    assert!(e.contains("the test set `cult` (Cult.) of run `adam` is empty"), "{e}");
    assert!(!runs[0].dir(1).exists(), "nothing is written for a run that cannot be evaluated");
}
