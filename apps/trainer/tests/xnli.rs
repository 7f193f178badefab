//! `tram xnli` end to end on a tiny XLM-R and tiny MultiNLI / XNLI sets: a new head, a TRAM
//! variant and a baseline over two seeds, the per-language table with the zero-shot average,
//! exact resume.

mod common;

use common::*;
use serde_json::Value;
use tram_trainer::apps::App;
use tram_trainer::cli::run_sources;
use tram_trainer::trainer::Control;

fn config(out: &std::path::Path) -> String {
    format!(
        r#"
model = "{XLMR}"
data = "{MNLI}"
out = "{out}"
seeds = [0, 1]

[optimizer]
name = "adam"
lr = 1e-3

[train]
steps = 4
batch_size = 4
eval_every = 2
checkpoint_every = 2
progress = false

[xnli]
test_data = "{XNLI}"
languages = ["en", "de", "fr"]
max_length = 20

[[runs]]
name = "adam"
label = "Adam"

[[runs]]
name = "tram-fisher"
label = "TRAM-Fisher"
optimizer = {{ name = "tram-fisher" }}
"#,
        out = out.display()
    )
}

#[test]
fn xnli_end_to_end_two_seeds_and_resume() {
    fixtures();
    let dir = scratch("xnli-e2e");
    let out = dir.join("out");
    let cfg = write_config(&dir, &config(&out));
    let s = run_sources(App::Xnli, &sources(&cfg, &[]), &[], false, &Control::default(), &registry()).unwrap();
    let md = &s.tables[0];
    for needle in ["| method | En | De | Fr | ZS Avg. | seeds |", "| Adam |", "| TRAM-Fisher |", "noise+fisher+adam"] {
        assert!(md.contains(needle), "{needle} not in\n{md}");
    }
    let table: Value = serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    let row = table["table"]["rows"].as_array().unwrap().iter().find(|r| r["label"] == "TRAM-Fisher").unwrap().clone();
    assert_eq!(row["seeds"], serde_json::json!([0, 1]));
    // The cell is the mean over seeds; the zero-shot average leaves English out.
    let per_seed: Vec<Value> = (0..2)
        .map(|s| serde_json::from_slice(&std::fs::read(out.join(format!("tram-fisher/seed-{s}/results.json"))).unwrap()).unwrap())
        .collect();
    let acc = |r: &Value, i: usize| r["columns"][i]["metrics"]["accuracy"].as_f64().unwrap();
    let de_mean = (acc(&per_seed[0], 1) + acc(&per_seed[1], 1)) / 2.0;
    assert!((row["cells"]["De"]["mean"].as_f64().unwrap() - de_mean).abs() < 1e-9);
    let zs = ((acc(&per_seed[0], 1) + acc(&per_seed[0], 2)) / 2.0 + (acc(&per_seed[1], 1) + acc(&per_seed[1], 2)) / 2.0) / 2.0;
    assert!((row["zero_shot"]["mean"].as_f64().unwrap() - zs).abs() < 1e-9);
    assert_eq!(per_seed[0]["columns"][0]["in_domain"], true);
    assert_eq!(per_seed[0]["columns"][0]["metrics"]["rows"], 9);
    // Selection on English validation loss.
    assert_eq!(per_seed[0]["selection"], "best-validation-loss");
    assert!(per_seed[0]["valid"]["loss"].as_f64().is_some());

    // Interrupt one seed after a step, resume the whole command: identical results.
    let out2 = dir.join("out2");
    let set = format!("out={}", out2.display());
    let stop = Control { stop_after: Some(1), ..Default::default() };
    let s = run_sources(App::Xnli, &sources(&cfg, &[&set]), &["tram-fisher".into()], false, &stop, &registry()).unwrap();
    assert!(s.interrupted);
    let resume = Control { resume: true, ..Default::default() };
    let s = run_sources(App::Xnli, &sources(&cfg, &[&set]), &["tram-fisher".into()], false, &resume, &registry()).unwrap();
    assert!(!s.interrupted);
    for seed in 0..2 {
        let p = format!("tram-fisher/seed-{seed}/metrics.jsonl");
        assert_eq!(std::fs::read_to_string(out.join(&p)).unwrap(), std::fs::read_to_string(out2.join(&p)).unwrap(), "seed {seed}");
    }
}

#[test]
fn xnli_bad_inputs_are_clear_errors() {
    fixtures();
    let dir = scratch("xnli-bad");
    let cfg = write_config(&dir, &config(&dir.join("out")));
    let reg = registry();
    let err = |sets: &[&str]| -> String {
        let runs = sources(&cfg, sets).resolve(&["adam".to_string()], &reg).unwrap();
        App::Xnli.prepare(&runs[0], 0).err().map(|e| e.to_string()).unwrap_or_default()
    };
    let e = err(&["xnli.languages=[\"en\", \"xx\"]"]);
    assert!(e.contains("xx"), "{e}");
    let e = err(&["xnli.premise_column=sentence1"]);
    assert!(e.contains("sentence1") && e.contains("premise"), "{e}");
    let e = err(&["xnli.num_labels=2"]);
    assert!(e.contains("xnli.num_labels"), "{e}");
    let e = err(&["xnli.valid_split=nope"]);
    assert!(e.contains("nope") && e.contains("validation_matched"), "{e}");
}

/// The encoders' padding masks and token types, and the image pipeline, split over thread ranks
/// (each rank its share of the global micro-batch and of every evaluation set).
#[test]
fn xnli_thread_ranks_equal_one_process() {
    fixtures();
    let dir = scratch("xnli-thread-ranks");
    let cfg = write_config(&dir, &config(&dir.join("out")));
    thread_ranks_equal_one_process(App::Xnli, &dir, &cfg, "tram-fisher");
}
