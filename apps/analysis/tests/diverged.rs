//! `tram analyze` on a folder where one run diverged: the analysis still runs, the diverged
//! row is marked and shows `diverged`, the other rows are measured; turning both measures off
//! is an error, not an empty report.

#[path = "../../trainer/tests/common/mod.rs"]
mod common;

use common::*;
use tram_analysis::{analyze_to, AnalyzeOptions};
use tram_trainer::apps::App;
use tram_trainer::cli::run_sources;
use tram_trainer::trainer::Control;

fn lm_config(out: &std::path::Path) -> String {
    format!(
        r#"
model = "{GPT2}"
data = "{M2D2}"
out = "{out}"

[optimizer]
name = "adam"
lr = 1e-3

[train]
steps = 2
batch_size = 2
progress = false

[lm]
train_domain = "soc"
test_domains = ["cult"]
block_size = 8
max_eval_blocks = 4

[[runs]]
name = "adam"
label = "Adam"

[[runs]]
name = "blowup"
label = "Blow-up"
optimizer = {{ name = "adam", lr = 1e6 }}
"#,
        out = out.display()
    )
}

#[test]
fn a_diverged_run_is_marked_in_the_analysis_and_the_others_are_measured() {
    fixtures();
    let dir = scratch("analysis-diverged");
    let out = dir.join("out");
    let cfg = write_config(&dir, &lm_config(&out));
    run_sources(App::Lm, &sources(&cfg, &[]), &[], false, &Control::default(), &registry()).unwrap();
    let dest = dir.join("analysis");
    let r = analyze_to(std::slice::from_ref(&out), &AnalyzeOptions::quick(1), &dest).unwrap();
    let blowup = r.runs.iter().find(|x| x.run == "blowup").unwrap();
    assert!(blowup.diverged && blowup.domains.iter().all(|d| d.sharpness.is_nan() && d.cka.is_nan()), "{blowup:?}");
    let adam = r.runs.iter().find(|x| x.run == "adam").unwrap();
    assert!(!adam.diverged && adam.domains.iter().all(|d| d.sharpness.is_finite() && d.cka.is_finite()), "{adam:?}");
    let md = std::fs::read_to_string(dest.join("analysis.md")).unwrap();
    let rows: Vec<&str> = md.lines().filter(|l| l.starts_with("| Blow-up †")).collect();
    assert_eq!(blowup.steps, 2);
    assert_eq!(rows.len(), 2, "one row per table:\n{md}");
    assert!(rows.iter().all(|l| l.contains("| diverged |")), "{md}");
    assert!(md.contains("- † Blow-up: 1 of 1 runs diverged"), "{md}");
    if blowup.skipped_steps > 0 {
        assert!(md.contains(&format!("- ‡ Blow-up: {} of 2 training steps skipped", blowup.skipped_steps)), "{md}");
    }
    assert!(md.lines().any(|l| l.starts_with("| Adam |")), "{md}");
    let summary = tram_analysis::summary(&r);
    assert!(summary.contains("Blow-up †") && summary.contains("diverged"), "{summary}");
    let csv = std::fs::read_to_string(dest.join("runs.csv")).unwrap();
    assert!(csv.lines().any(|l| l.starts_with("Blow-up,blowup,") && l.ends_with(",true")), "{csv}");
}

#[test]
fn analysing_with_both_measures_off_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let opts = AnalyzeOptions { measure_sharpness: false, measure_cka: false, ..AnalyzeOptions::default() };
    let dest = dir.path().join("analysis");
    let e = analyze_to(&[dir.path().to_path_buf()], &opts, &dest).unwrap_err().to_string();
    assert!(e.contains("nothing to analyse") && e.contains("--no-sharpness") && e.contains("--no-cka"), "{e}");
    assert!(!dest.exists());
}
