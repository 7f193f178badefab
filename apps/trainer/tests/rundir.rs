//! Run directories: results are never overwritten without `--force`, `--resume` keeps the
//! results of the same configuration and refuses another's, one writer at a time (the lock),
//! an edited `trainer.json` is refused, a kill during the final evaluation resumes to the same
//! metrics, stale temporary files are removed, checkpoints are byte-deterministic, and every
//! output path is checked before the first step.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use tram_trainer::apps::App;
use tram_trainer::cli::{run_sources, Summary};
use tram_trainer::trainer::Control;
use tram_trainer::Result;

/// Two rows, four steps each, a checkpoint every two steps, one test domain.
fn config(dir: &Path) -> PathBuf {
    write_config(
        dir,
        &format!(
            r#"
model = "{GPT2}"
data = "{M2D2}"
out = "{out}"
seed = 1

[optimizer]
name = "adam"
lr = 1e-3

[train]
steps = 4
batch_size = 2
eval_every = 3
checkpoint_every = 2
progress = false

[lm]
train_domain = "soc"
test_domains = ["cult"]
block_size = 8

[[runs]]
name = "adam"
label = "Adam"

[[runs]]
name = "tram-noise"
label = "TRAM-x"
optimizer = {{ name = "tram-noise" }}
"#,
            out = dir.join("out").display()
        ),
    )
}

fn run(cfg: &Path, sets: &[&str], names: &[&str], control: &Control) -> Result<Summary> {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    run_sources(App::Lm, &sources(cfg, sets), &names, false, control, &registry())
}

fn resume() -> Control {
    Control { resume: true, ..Default::default() }
}

fn force() -> Control {
    Control { force: true, ..Default::default() }
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Every file under `dir` (relative path → bytes), sorted.
fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    fn walk(root: &Path, d: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.push((p.strip_prefix(root).unwrap().display().to_string(), std::fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

#[test]
fn resume_keeps_finished_results_even_when_the_checkpoints_were_deleted() {
    fixtures();
    let dir = scratch("rundir-keep");
    let cfg = config(&dir);
    run(&cfg, &[], &["adam"], &Control::default()).unwrap();
    let seed = dir.join("out/adam/seed-1");
    let (results, metrics, model) = (read(&seed.join("results.json")), read(&seed.join("metrics.jsonl")), tree(&seed.join("model")));
    std::fs::remove_dir_all(seed.join("checkpoints")).unwrap();
    // Same configuration: reported finished and skipped, nothing rewritten (the recorded
    // timings would differ in a retrained run).
    let s = run(&cfg, &[], &["adam"], &resume()).unwrap();
    assert!(!s.interrupted);
    assert!(read(&seed.join("results.json")) == results, "results.json was rewritten");
    assert!(read(&seed.join("metrics.jsonl")) == metrics, "metrics.jsonl was rewritten");
    assert!(tree(&seed.join("model")) == model, "the model was rewritten");
    assert!(!seed.join("checkpoints").exists(), "the run was trained again");
    // Another configuration: refused, naming the key and --force; the results stay.
    let e = run(&cfg, &["optimizer.lr=2e-3"], &["adam"], &resume()).unwrap_err().to_string();
    assert!(e.contains("different configuration") && e.contains("optimizer.lr") && e.contains("--force"), "{e}");
    let e = run(&cfg, &["train.steps=5"], &["adam"], &resume()).unwrap_err().to_string();
    assert!(e.contains("train.steps"), "{e}");
    assert!(read(&seed.join("results.json")) == results);
    // Only logging settings and the label may change.
    run(&cfg, &["train.log_every=2", "label=Adam (again)"], &["adam"], &resume()).unwrap();
    assert!(read(&seed.join("metrics.jsonl")) == metrics);
    let r: serde_json::Value = serde_json::from_slice(&read(&seed.join("results.json"))).unwrap();
    assert_eq!(r["label"], "Adam (again)");
}

#[test]
fn results_are_never_overwritten_without_force() {
    fixtures();
    let dir = scratch("rundir-force");
    let cfg = config(&dir);
    run(&cfg, &[], &["adam"], &Control::default()).unwrap();
    let seed = dir.join("out/adam/seed-1");
    let results = read(&seed.join("results.json"));
    // With or without checkpoints, a plain run refuses and points at --resume / --force.
    let e = run(&cfg, &[], &["adam"], &Control::default()).unwrap_err().to_string();
    assert!(e.contains("already holds the results") && e.contains("--force") && e.contains("--resume"), "{e}");
    std::fs::remove_dir_all(seed.join("checkpoints")).unwrap();
    let e = run(&cfg, &["optimizer.lr=2e-3"], &["adam"], &Control::default()).unwrap_err().to_string();
    assert!(e.contains("already holds the results"), "{e}");
    assert!(read(&seed.join("results.json")) == results);
    // --force trains again with the new configuration, from the start.
    run(&cfg, &["optimizer.lr=2e-3"], &["adam"], &force()).unwrap();
    let r: serde_json::Value = serde_json::from_slice(&read(&seed.join("results.json"))).unwrap();
    assert_eq!(r["config"]["optimizer"]["lr"], 2e-3);
    let m = metrics(&seed.join("metrics.jsonl"));
    assert_eq!(m.iter().filter(|l| l["type"] == "start").count(), 1, "the old metrics log was kept");
    // --resume and --force together are refused.
    let both = Control { resume: true, force: true, ..Default::default() };
    let e = run(&cfg, &[], &["adam"], &both).unwrap_err().to_string();
    assert!(e.contains("--resume") && e.contains("--force"), "{e}");
}

#[test]
fn rerunning_a_multi_row_config_with_resume_runs_only_the_unfinished_rows() {
    fixtures();
    let dir = scratch("rundir-rows");
    let cfg = config(&dir);
    run(&cfg, &[], &["adam"], &Control::default()).unwrap();
    let adam = read(&dir.join("out/adam/seed-1/results.json"));
    // A plain rerun of every row refuses before training anything.
    let e = run(&cfg, &[], &[], &Control::default()).unwrap_err().to_string();
    assert!(e.contains("adam/seed-1"), "{e}");
    assert!(!dir.join("out/tram-noise").exists(), "a row was trained before the refusal");
    // Finished rows are recognised by their results, not their checkpoints.
    std::fs::remove_dir_all(dir.join("out/adam/seed-1/checkpoints")).unwrap();
    let s = run(&cfg, &[], &[], &resume()).unwrap();
    assert!(read(&dir.join("out/adam/seed-1/results.json")) == adam, "the finished row was trained again");
    assert!(dir.join("out/tram-noise/seed-1/results.json").is_file());
    assert!(s.tables[0].contains("| Adam |") && s.tables[0].contains("| TRAM-x |"), "{}", s.tables[0]);
}

#[test]
fn a_second_writer_into_a_run_directory_is_refused_naming_the_holder() {
    fixtures();
    let dir = scratch("rundir-lock");
    let cfg = config(&dir);
    // Long enough to outlast the three refused attempts (each waits RunLock's patience): the
    // first run is stopped by its flag, not by its step count.
    let long = ["train.steps=100000", "train.checkpoint_every=0", "train.eval_every=0"];
    let first = Control::default();
    let log = dir.join("out/adam/seed-1/metrics.jsonl");
    let handle = {
        let (cfg, first) = (cfg.clone(), first.clone());
        std::thread::spawn(move || run(&cfg, &long, &["adam"], &first).map(|s| s.interrupted))
    };
    for _ in 0..6000 {
        if std::fs::read_to_string(&log).map(|t| t.lines().count() > 1).unwrap_or(false) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    for control in [Control::default(), resume(), force()] {
        let e = run(&cfg, &long, &["adam"], &control).unwrap_err().to_string();
        assert!(e.contains(&format!("pid {}", std::process::id())) && e.contains("in use"), "{e}");
    }
    first.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(handle.join().unwrap().unwrap(), "the first run finished before the second was tried");
    // The first run's log is whole: one start line, then its steps in order.
    let m = metrics(&log);
    assert_eq!(m.iter().filter(|l| l["type"] == "start").count(), 1);
    let steps: Vec<u64> = m.iter().filter(|l| l["type"] == "train").map(|l| l["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, (1..=steps.len() as u64).collect::<Vec<_>>());
    // Released with the run: resuming now works.
    let more = Control { stop_after: Some(steps.len() as u64 + 1), ..resume() };
    assert!(run(&cfg, &long, &["adam"], &more).unwrap().interrupted);
    assert_eq!(metrics(&log).last().unwrap()["step"], steps.len() as u64 + 1);
}

#[test]
fn an_edited_trainer_json_is_refused() {
    fixtures();
    let dir = scratch("rundir-state-hash");
    let cfg = config(&dir);
    let seed = dir.join("out/adam/seed-1");
    let state = seed.join("checkpoints/step-00000002/trainer.json");
    let edits: &[(&str, &str)] = &[
        ("\"step\": 2", "\"step\": 1"),
        ("\"metrics_bytes\": ", "\"metrics_bytes\": 1"),
        ("\"dropout_position\": \"", "\"dropout_position\": \"1"),
        ("\"best\": null", "\"best\": {\"step\": 1, \"loss\": 0.5}"),
    ];
    for (from, to) in edits {
        let _ = std::fs::remove_dir_all(dir.join("out"));
        let s = run(&cfg, &[], &["adam"], &Control { stop_after: Some(2), ..Default::default() }).unwrap();
        assert!(s.interrupted);
        let text = std::fs::read_to_string(&state).unwrap();
        assert!(text.contains(from), "{from} not in {text}");
        std::fs::write(&state, text.replacen(from, to, 1)).unwrap();
        let e = run(&cfg, &[], &["adam"], &resume()).unwrap_err().to_string();
        assert!(e.contains("trainer.json") && e.contains("edited"), "{from}: {e}");
    }
    // The data position too (the first number in it).
    let _ = std::fs::remove_dir_all(dir.join("out"));
    run(&cfg, &[], &["adam"], &Control { stop_after: Some(2), ..Default::default() }).unwrap();
    let text = std::fs::read_to_string(&state).unwrap();
    let at = text.find("\"data_position\"").unwrap();
    let digit = at + text[at..].find(|c: char| c.is_ascii_digit()).unwrap();
    let mut edited = text.clone();
    edited.replace_range(digit..digit + 1, if &text[digit..digit + 1] == "7" { "8" } else { "7" });
    std::fs::write(&state, edited).unwrap();
    let e = run(&cfg, &[], &["adam"], &resume()).unwrap_err().to_string();
    assert!(e.contains("edited"), "{e}");
}

#[test]
fn a_metrics_log_whose_lines_moved_is_refused_on_resume() {
    fixtures();
    let dir = scratch("rundir-metrics-edit");
    let cfg = config(&dir);
    assert!(run(&cfg, &[], &["adam"], &Control { stop_after: Some(2), ..Default::default() }).unwrap().interrupted);
    // One byte less in the first line, and a line written after the checkpoint: the
    // checkpoint's length now falls inside a line, and cutting the log there would splice the
    // resumed lines onto half a line.
    let log = dir.join("out/adam/seed-1/metrics.jsonl");
    let text = std::fs::read_to_string(&log).unwrap();
    let edited = text.replacen("\"type\":\"start\"", "\"type\":\"star\"", 1) + "{\"type\":\"train\",\"step\":3}\n";
    std::fs::write(&log, edited).unwrap();
    let e = run(&cfg, &[], &["adam"], &resume()).unwrap_err().to_string();
    assert!(e.contains("metrics.jsonl") && e.contains("does not end a line"), "{e}");
}

#[test]
fn resume_after_a_kill_during_the_final_evaluation_matches_an_uninterrupted_run() {
    fixtures();
    let dir = scratch("rundir-final-eval");
    let cfg = config(&dir);
    let straight = dir.join("straight");
    run(&cfg, &[&format!("out={}", straight.display())], &["adam"], &Control::default()).unwrap();
    let want = read(&straight.join("adam/seed-1/metrics.jsonl"));
    let want_model = tree(&straight.join("adam/seed-1/model"));
    // What a SIGKILL after the final checkpoint leaves: the checkpoint at the last step (its
    // metrics length covers the final validation), any prefix of the final evaluation's lines
    // (a line cut anywhere), maybe the model, no results.json.
    let seed = dir.join("out/adam/seed-1");
    let state = seed.join("checkpoints/step-00000004/trainer.json");
    let mut cuts = Vec::new();
    for (i, keep_model) in [(0usize, false), (1, true), (2, true), (3, false)] {
        let _ = std::fs::remove_dir_all(dir.join("out"));
        run(&cfg, &[], &["adam"], &Control::default()).unwrap();
        let ck: serde_json::Value = serde_json::from_slice(&read(&state)).unwrap();
        let at = ck["metrics_bytes"].as_u64().unwrap() as usize;
        assert!(at < want.len(), "the final evaluation wrote nothing after the checkpoint");
        // After the checkpoint: the cut at the checkpoint, mid-line, after a line, everything.
        let cut = [at, at + 7, at + 1 + want[at..].iter().position(|b| *b == b'\n').unwrap(), want.len()][i];
        cuts.push(cut);
        let f = std::fs::OpenOptions::new().write(true).open(seed.join("metrics.jsonl")).unwrap();
        f.set_len(cut as u64).unwrap();
        std::fs::remove_file(seed.join("results.json")).unwrap();
        if !keep_model {
            std::fs::remove_dir_all(seed.join("model")).unwrap();
        }
        run(&cfg, &[], &["adam"], &resume()).unwrap();
        let got = read(&seed.join("metrics.jsonl"));
        assert!(
            got == want,
            "cut at byte {cut}: the resumed log differs from an uninterrupted run's:\n{}\n---\n{}",
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&want)
        );
        assert!(tree(&seed.join("model")) == want_model, "cut at byte {cut}: the model differs");
        assert!(seed.join("results.json").is_file());
    }
}

#[cfg(unix)]
#[test]
fn stale_temporary_files_are_removed_and_a_live_processs_are_kept() {
    fixtures();
    let dir = scratch("rundir-temps");
    let cfg = config(&dir);
    let seed = dir.join("out/adam/seed-1");
    run(&cfg, &[], &["adam"], &Control { stop_after: Some(2), ..Default::default() }).unwrap();
    // A pid above Linux's largest (2^22) is no process's.
    let dead = 4_999_999u32;
    let mut live = std::process::Command::new("sleep").arg("60").spawn().unwrap();
    let stale = [
        seed.join(format!(".results.json.tmp{dead}")),
        seed.join(format!("checkpoints/.latest.tmp{dead}")),
        seed.join(format!("checkpoints/.timing.json.tmp{dead}")),
        seed.join(format!("model/.model.safetensors.tmp{dead}")),
        seed.join(format!("checkpoints/.step-00000003.tmp{dead}/model.safetensors")),
        seed.join(format!("checkpoints/.step-00000002.old{dead}/trainer.json")),
        // The table's, in `out` (no lock there: only dead processes' go).
        dir.join(format!("out/.results.md.tmp{dead}")),
    ];
    let kept = [
        seed.join(format!(".results.json.tmp{}", live.id())),
        dir.join(format!("out/.results.md.tmp{}", live.id())),
        seed.join("notes.tmp1"),
    ];
    for p in stale.iter().chain(&kept) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"partial").unwrap();
    }
    run(&cfg, &[], &["adam"], &resume()).unwrap();
    live.kill().unwrap();
    live.wait().unwrap();
    for p in &stale {
        assert!(!p.exists(), "{} survived", p.display());
    }
    assert!(!seed.join(format!("checkpoints/.step-00000003.tmp{dead}")).exists());
    for p in &kept {
        assert!(p.exists(), "{} was removed", p.display());
    }
}

#[test]
fn identical_runs_write_identical_checkpoints_and_models() {
    fixtures();
    let dir = scratch("rundir-deterministic");
    let cfg = config(&dir);
    let mut trees = Vec::new();
    for out in ["a", "b"] {
        // Interrupted (a mid-run checkpoint), then finished (the final checkpoint, the model).
        let o = format!("out={}", dir.join(out).display());
        let s = run(&cfg, &[&o], &["tram-noise"], &Control { stop_after: Some(3), ..Default::default() }).unwrap();
        assert!(s.interrupted);
        let seed = dir.join(out).join("tram-noise/seed-1");
        let mid = tree(&seed.join("checkpoints/step-00000003"));
        run(&cfg, &[&o], &["tram-noise"], &resume()).unwrap();
        trees.push((mid, tree(&seed.join("checkpoints/step-00000004")), tree(&seed.join("model"))));
    }
    let names = |t: &[(String, Vec<u8>)]| t.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(&trees[0].1), ["best.safetensors", "model.safetensors", "optimizer.safetensors", "trainer.json"]);
    for (what, a, b) in [
        ("mid-run checkpoint", &trees[0].0, &trees[1].0),
        ("final checkpoint", &trees[0].1, &trees[1].1),
        ("model", &trees[0].2, &trees[1].2),
    ] {
        assert_eq!(names(a), names(b), "{what}");
        for ((name, x), (_, y)) in a.iter().zip(b) {
            assert!(x == y, "{what}: {name} differs between two identical runs");
        }
    }
}

#[test]
fn output_clashes_are_found_before_the_first_step() {
    fixtures();
    let dir = scratch("rundir-preflight");
    let cfg = config(&dir);
    let out = dir.join("out");
    let untrained = |e: &str| {
        assert!(!out.join("adam/seed-1/metrics.jsonl").exists(), "the first row was trained before: {e}");
    };
    // The same run twice.
    let e = run(&cfg, &[], &["adam", "adam"], &Control::default()).unwrap_err().to_string();
    assert!(e.contains("adam") && e.contains("both write"), "{e}");
    untrained(&e);
    let e = run(&cfg, &["seeds=[1, 1]"], &["adam"], &Control::default()).unwrap_err().to_string();
    assert!(e.contains("seed 1 is listed twice"), "{e}");
    // A file where the second row's model, checkpoints or run directory goes; a directory
    // where its metrics log or results go; a directory where the table goes.
    let second = out.join("tram-noise/seed-1");
    for (path, is_dir, needle) in [
        (second.join("model"), false, "selected model"),
        (second.join("model/config.json"), true, "selected model"),
        (second.join("checkpoints/latest"), true, "latest-checkpoint pointer"),
        (second.join("checkpoints"), false, "training checkpoints"),
        (second.join("results.json"), true, "results"),
        (second.join("metrics.jsonl"), true, "metrics log"),
        (out.join("tram-noise"), false, "run directory"),
        (out.join("results.md"), true, "results table"),
    ] {
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        if is_dir {
            std::fs::create_dir_all(&path).unwrap();
        } else {
            std::fs::write(&path, b"x").unwrap();
        }
        let e = run(&cfg, &[], &[], &Control::default()).unwrap_err().to_string();
        assert!(e.contains(&path.display().to_string()) && e.contains(needle), "{e}");
        untrained(&e);
    }
}
