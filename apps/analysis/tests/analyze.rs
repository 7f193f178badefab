//! `tram analyze` end to end on tiny finished runs made with the trainer (its test fixtures:
//! tiny random XLM-R / GPT-2 and tiny MultiNLI / XNLI / M2D2-like sets, offline).

#[path = "../../trainer/tests/common/mod.rs"]
mod common;

use clap::Parser;
use common::*;
use serde_json::Value;
use std::path::Path;
use tram_analysis::cli::AnalyzeArgs;
use tram_analysis::{analyze_to, AnalyzeOptions, SharpnessConfig};
use tram_trainer::apps::App;
use tram_trainer::cli::run_sources;
use tram_trainer::trainer::Control;

fn xnli_config(out: &Path) -> String {
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
steps = 3
batch_size = 4
eval_every = 3
checkpoint_every = 3
progress = false

[xnli]
test_data = "{XNLI}"
languages = ["en", "de", "fr"]
max_length = 20

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

fn quick() -> AnalyzeOptions {
    AnalyzeOptions {
        sharpness: SharpnessConfig { steps: 3, lr: 1e-2, batch_size: 4, accumulation: 2, ..SharpnessConfig::default() },
        ..AnalyzeOptions::default()
    }
}

fn read_json(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

#[test]
fn analyze_xnli_runs_writes_table_6() {
    fixtures();
    let dir = scratch("analysis-xnli");
    let out = dir.join("out");
    let cfg = write_config(&dir, &xnli_config(&out));
    run_sources(App::Xnli, &sources(&cfg, &[]), &[], false, &Control::default(), &registry()).unwrap();
    let model_file = out.join("adam/seed-0/model/model.safetensors");
    let saved = std::fs::read(&model_file).unwrap();

    // Two run directories given separately (one method each, two seeds found under each).
    let dest = dir.join("analysis");
    let r = analyze_to(&[out.join("adam"), out.join("tram-noise")], &quick(), &dest).unwrap();
    assert_eq!(r.runs.len(), 4);
    for f in tram_analysis::report::FILES {
        assert!(dest.join(f).is_file(), "{f} not written");
    }
    // Per run and language: φ ≥ 0, CKA in (0, 1], L(θ) = the run's own test loss (same sets).
    for run in &r.runs {
        assert!(run.fine_tuned);
        let res = read_json(&run.dir.join("results.json"));
        assert_eq!(run.domains.iter().map(|d| d.label.as_str()).collect::<Vec<_>>(), ["En", "De", "Fr"]);
        assert_eq!(run.domains.iter().map(|d| d.in_domain).collect::<Vec<_>>(), [true, false, false]);
        for (i, d) in run.domains.iter().enumerate() {
            assert!(d.sharpness >= 0.0 && d.sharpness.is_finite(), "{d:?}");
            assert!(d.max_loss >= d.loss);
            assert!(d.cka > 0.0 && d.cka <= 1.0 + 1e-9, "{d:?}");
            assert!(d.cka < 1.0 - 1e-9, "a fine-tuned model differs from the pretrained one: {d:?}");
            assert_eq!(d.examples, 9);
            let own = res["columns"][i]["metrics"]["loss"].as_f64().unwrap();
            assert!((d.loss - own).abs() < 1e-4, "{}: L(θ) {} vs the run's test loss {own}", d.label, d.loss);
        }
    }
    // The saved model is untouched.
    assert_eq!(std::fs::read(&model_file).unwrap(), saved);

    // Table (a): rows per method over two seeds, in-domain / ZS Avg. / Pearson.
    assert_eq!(r.sharpness.iter().map(|s| s.label.as_str()).collect::<Vec<_>>(), ["Adam", "TRAM-x"]);
    for row in &r.sharpness {
        assert_eq!(row.runs, 2);
        let runs: Vec<_> = r.runs.iter().filter(|x| x.label == row.label).collect();
        let en: Vec<f64> = runs.iter().map(|x| x.domains[0].sharpness).collect();
        assert!((row.in_domain.as_ref().unwrap().mean - (en[0] + en[1]) / 2.0).abs() < 1e-12);
        let de = (runs[0].domains[1].sharpness + runs[1].domains[1].sharpness) / 2.0;
        let fr = (runs[0].domains[2].sharpness + runs[1].domains[2].sharpness) / 2.0;
        let zs = row.zero_shot.as_ref().unwrap();
        assert!((zs.mean - (de + fr) / 2.0).abs() < 1e-12);
        assert_eq!(zs.n, 2);
        // Two runs: each language's correlation is ±1, so their mean is -1, 0 or 1.
        let p = row.pearson.as_ref().unwrap();
        assert_eq!(p.n, 2);
        assert!([-1.0, 0.0, 1.0].iter().any(|v| (p.mean - v).abs() < 1e-9), "{p:?}");
    }
    assert!(r.pooled_pearson.is_some());
    let pooled_in: Vec<f64> = r.runs.iter().map(|x| x.domains[0].sharpness).collect();
    let pooled_zs: Vec<f64> = r.runs.iter().map(|x| (x.domains[1].sharpness + x.domains[2].sharpness) / 2.0).collect();
    assert!((r.pooled_pearson.unwrap() - tram_analysis::pearson(&pooled_in, &pooled_zs).unwrap()).abs() < 1e-12);
    // Table (b): CKA per language.
    let cka = &r.cka[0];
    let want = (r.runs[0].domains[1].cka + r.runs[1].domains[1].cka) / 2.0;
    assert!((cka.domains["De"].mean - want).abs() < 1e-12);

    let md = std::fs::read_to_string(dest.join("analysis.md")).unwrap();
    for needle in [
        "## (a) ε-sharpness",
        "| method | En | ZS Avg. | Pearson | runs |",
        "| Adam |",
        "| TRAM-x |",
        "## (b) CKA",
        "| method | En | De | Fr | ZS Avg. | runs |",
        "Pearson over all 4 runs",
    ] {
        assert!(md.contains(needle), "{needle} not in\n{md}");
    }
    let csv = std::fs::read_to_string(dest.join("sharpness.csv")).unwrap();
    assert!(csv.starts_with("method,runs,in_domain,in_domain_std,zs_avg,zs_avg_std,pearson,pearson_std,En,De,Fr,diverged\n"), "{csv}");
    assert_eq!(csv.lines().count(), 3);
    let csv = std::fs::read_to_string(dest.join("cka.csv")).unwrap();
    assert!(csv.starts_with("method,runs,En,De,Fr,zs_avg,zs_avg_std,diverged\n"), "{csv}");
    assert_eq!(std::fs::read_to_string(dest.join("runs.csv")).unwrap().lines().count(), 1 + 4 * 3);
    let json = read_json(&dest.join("analysis.json"));
    assert_eq!(json["runs"].as_array().unwrap().len(), 4);
    assert_eq!(json["options"]["sharpness"]["epsilon"], 1e-3);
    assert_eq!(json["sharpness"][1]["label"], "TRAM-x");

    // Deterministic: the same measurements again from the output directory as a whole.
    let again = analyze_to(std::slice::from_ref(&out), &quick(), &dir.join("analysis2")).unwrap();
    assert_eq!(again.runs.iter().map(|r| &r.domains).collect::<Vec<_>>(), r.runs.iter().map(|r| &r.domains).collect::<Vec<_>>());

    // Without the shared cache of evaluation sets and pretrained representations: the same.
    let (d, res) = tram_analysis::find_runs(&[out.join("tram-noise/seed-1")]).unwrap().remove(0);
    let alone = tram_analysis::analyze_run(&d, &res, &quick()).unwrap();
    assert_eq!(&alone.domains, &r.runs[3].domains);
    // At most one batch of 4 examples per language.
    let one = tram_analysis::analyze_run(&d, &res, &AnalyzeOptions { max_batches: Some(1), ..quick() }).unwrap();
    assert!(one.domains.iter().all(|d| d.examples == 4), "{:?}", one.domains);
    // A single example: no CKA (NaN, null in the JSON), sharpness still measured.
    let single = AnalyzeOptions { max_batches: Some(1), sharpness: SharpnessConfig { batch_size: 1, ..quick().sharpness }, ..quick() };
    let one = tram_analysis::analyze_run(&d, &res, &single).unwrap();
    assert!(one.domains.iter().all(|d| d.examples == 1 && d.cka.is_nan() && d.sharpness.is_finite()), "{:?}", one.domains);

    // The command's arguments: defaults are the paper's, options reach the analysis.
    let args = Cli::parse_from([
        "tram",
        out.to_str().unwrap(),
        "--steps",
        "2",
        "--max-examples",
        "5",
        "--no-cka",
        "--batch-size",
        "4",
        "--lr",
        "0.01",
    ])
    .args;
    let o = args.options();
    assert_eq!((o.sharpness.steps, o.sharpness.batch_size, o.sharpness.accumulation, o.sharpness.epsilon), (2, 4, 4, 1e-3));
    assert!(!o.measure_cka && o.measure_sharpness);
    assert_eq!(args.out_dir(), out.join("analysis"));
    let md = tram_analysis::cli::run(&args).unwrap();
    assert!(md.contains("## (a)") && !md.contains("## (b)"), "{md}");
    let small = read_json(&out.join("analysis/analysis.json"));
    assert_eq!(small["runs"][0]["domains"][0]["examples"], 5);
    assert!(small["runs"][0]["domains"][0]["cka"].is_null());
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: AnalyzeArgs,
}

fn lm_config(out: &Path) -> String {
    format!(
        r#"
model = "{GPT2}"
data = "{M2D2}"
out = "{out}"
seed = 3

[optimizer]
name = "adam"
lr = 1e-3

[train]
steps = 2
batch_size = 2
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
name = "sam"
label = "SAM"
optimizer = {{ name = "sam" }}
"#,
        out = out.display()
    )
}

#[test]
fn analyze_lm_runs_with_a_zero_shot_row_and_a_validation_split() {
    fixtures();
    let dir = scratch("analysis-lm");
    let out = dir.join("out");
    let cfg = write_config(&dir, &lm_config(&out));
    run_sources(App::Lm, &sources(&cfg, &[]), &[], false, &Control::default(), &registry()).unwrap();
    let opts = AnalyzeOptions { split: Some("validation".into()), max_examples: Some(3), ..quick() };
    let r = analyze_to(&[out.join("gpt2/seed-3"), out.join("sam/seed-3")], &opts, &dir.join("analysis")).unwrap();
    assert_eq!(r.runs.len(), 2);
    let zero = &r.runs[0];
    assert_eq!((zero.label.as_str(), zero.fine_tuned), ("GPT-2", false));
    for d in &zero.domains {
        assert!((d.cka - 1.0).abs() < 1e-9, "the pretrained model against itself: {d:?}");
        assert!(d.sharpness >= 0.0);
    }
    let sam = &r.runs[1];
    assert!(sam.fine_tuned);
    assert_eq!(sam.composition, "ball+adam");
    assert_eq!(
        sam.domains.iter().map(|d| (d.label.as_str(), d.in_domain)).collect::<Vec<_>>(),
        [("Soc.", true), ("Cult.", false), ("Hist.", false)]
    );
    for d in &sam.domains {
        assert!(d.cka > 0.0 && d.cka < 1.0, "{d:?}");
        // The default `run_clm` protocol: a block of 8 tokens predicts 7 of them.
        assert!(d.rows > 0 && d.rows % 7 == 0, "token rows of 8-token blocks: {d:?}");
    }
    // One run per method: no per-method correlation, a pooled one over both runs.
    assert!(r.sharpness.iter().all(|s| s.pearson.is_none()));
    assert!(r.markdown.contains("| method | Soc. | ZS Avg. | Pearson | runs |"), "{}", r.markdown);
    assert!(r.markdown.contains("| GPT-2 |") && r.markdown.contains("validation"));

    // The quickstart's call: every run under the output directory, small settings.
    let q = tram_analysis::quick_analysis(std::slice::from_ref(&out), &out.join("analysis")).unwrap();
    assert_eq!(q.runs.len(), 2);
    assert!(q.runs.iter().all(|r| r.domains.iter().all(|d| d.examples <= 2 * 4 && d.rows <= 4 * 8)), "{:?}", q.runs);
    assert!(out.join("analysis/analysis.md").is_file());
    let text = tram_analysis::summary(&q);
    println!("{text}");
    for needle in ["method", "φ Soc.", "φ ZS Avg.", "CKA Soc.", "CKA ZS Avg.", "GPT-2", "SAM", "Pearson r"] {
        assert!(text.contains(needle), "{needle} not in\n{text}");
    }
}

#[test]
fn analyze_errors_name_the_problem() {
    fixtures();
    let dir = scratch("analysis-errors");
    let e = analyze_to(std::slice::from_ref(&dir), &quick(), &dir.join("a")).unwrap_err().to_string();
    assert!(e.contains("no finished runs"), "{e}");
    let e = analyze_to(&[dir.join("missing")], &quick(), &dir.join("a")).unwrap_err().to_string();
    assert!(e.contains("is not a directory"), "{e}");
    let bad = AnalyzeOptions { sharpness: SharpnessConfig { accumulation: 0, ..SharpnessConfig::default() }, ..AnalyzeOptions::default() };
    assert!(analyze_to(std::slice::from_ref(&dir), &bad, &dir.join("a")).unwrap_err().to_string().contains("accumulation"));
}
