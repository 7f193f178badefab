//! SIGTERM (what job schedulers send before killing a job): like Ctrl-C, a real SIGTERM sent to
//! the process during training stops it after the current step with a checkpoint (the handler
//! the `tram` command installs); `--resume` finishes the run with the metrics of an
//! uninterrupted one. (A test binary of its own: a process installs one handler.)

mod common;

use common::*;
use tram_trainer::apps::App;
use tram_trainer::cli::{install_ctrlc, run_sources};
use tram_trainer::trainer::Control;

#[cfg(unix)]
#[test]
fn sigterm_writes_a_checkpoint_and_resume_completes_the_run() {
    fixtures();
    let dir = scratch("sigterm");
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
        std::thread::spawn(move || {
            // Wait until training has taken a few steps, then interrupt.
            for _ in 0..6000 {
                if std::fs::read_to_string(&metrics).map(|t| t.lines().count() > 3).unwrap_or(false) {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            let pid = std::process::id().to_string();
            assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        })
    };
    let s = run_sources(App::Lm, &sources(&cfg, &[]), &[], false, &control, &registry()).unwrap();
    watcher.join().unwrap();
    assert!(s.interrupted, "the run finished before the signal arrived (or SIGTERM killed it)");
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
