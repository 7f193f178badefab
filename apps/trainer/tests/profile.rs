//! `--profile` (`Control::profile`): the phase profile of a run's steps, on the CPU.

mod common;

use common::*;
use serde_json::Value;
use tram_trainer::apps::App;
use tram_trainer::cli::run_sources;
use tram_trainer::trainer::{Control, PROFILE_FILE};

fn config(out: &std::path::Path) -> String {
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
steps = 4
batch_size = 2
eval_every = 2
checkpoint_every = 2
progress = false

[lm]
train_domain = "soc"
test_domains = ["cult"]
block_size = 8

[[runs]]
name = "adam"

[[runs]]
name = "tram-noise"
optimizer = {{ name = "tram-noise" }}
"#,
        out = out.display()
    )
}

fn phase<'a>(p: &'a Value, name: &str) -> Option<&'a Value> {
    p["phases"].as_array().unwrap().iter().find(|x| x["name"] == name)
}

fn calls(p: &Value, name: &str) -> u64 {
    phase(p, name).map(|x| x["calls"].as_u64().unwrap()).unwrap_or(0)
}

#[test]
fn profile_writes_the_phases_of_every_step_and_a_tram_step_shows_its_extra_passes() {
    fixtures();
    let dir = scratch("profile");
    let out = dir.join("out");
    let cfg = write_config(&dir, &config(&out));
    let control = Control { profile: true, ..Default::default() };
    run_sources(App::Lm, &sources(&cfg, &[]), &[], false, &control, &registry()).unwrap();

    for (run, two_pass) in [("adam", false), ("tram-noise", true)] {
        let run_dir = out.join(run).join("seed-3");
        let p: Value = serde_json::from_slice(&std::fs::read(run_dir.join(PROFILE_FILE)).unwrap()).unwrap();
        assert_eq!((p["steps"].as_u64(), p["run"].as_str(), p["device"].as_str()), (Some(4), Some(run), Some("cpu")), "{p:#}");
        // Every step went through the first pass, the update and its guard once.
        for name in ["batch: data, host → device", "forward 1", "backward 1", "gradients 1", "norm, clip", "update", "guard: non-finite"]
        {
            assert_eq!(calls(&p, name), 4, "{name} in {p:#}");
        }
        // A TRAM step's extra passes: the target forward sizing δ, the ascent, the second
        // forward and backward at θ + ε, the restore; Adam has none of them.
        for name in ["forward 1: targets, δ", "ascent: ε", "ascent: perturb θ + ε", "forward 2", "backward 2", "ascent: restore θ"] {
            assert_eq!(calls(&p, name), if two_pass { 4 } else { 0 }, "{name} in {p:#}");
        }
        // Validation and checkpoints are outside the steps (steps 2 and 4; the last checkpoint
        // after the final validation).
        for name in ["eval", "checkpoint"] {
            let ph = phase(&p, name).unwrap_or_else(|| panic!("no {name} in {p:#}"));
            assert_eq!(ph["in_step"], false);
            assert_eq!(ph["calls"].as_u64(), Some(2), "{name}");
        }
        // The phases inside the steps add up to the steps' wall time measured around them
        // (within 2%: the timer's own cost), and the named phases explain at least 90% of it.
        let (total, sum) = (p["step_total_ms"].as_f64().unwrap(), p["phases_in_step_ms"].as_f64().unwrap());
        assert!(total > 0.0 && (sum - total).abs() <= 0.02 * total, "phases {sum} ms, steps {total} ms");
        let other = phase(&p, tram::profile::STEP_OTHER).unwrap()["total_ms"].as_f64().unwrap();
        assert!(other <= 0.10 * total, "unattributed {other} ms of {total} ms in {p:#}");
        let shares: f64 =
            p["phases"].as_array().unwrap().iter().filter(|x| x["in_step"] == true).map(|x| x["share_of_step"].as_f64().unwrap()).sum();
        assert!((shares - 1.0).abs() < 0.02, "shares add up to {shares}");
        // The steps took no longer than the run's training time.
        let results: Value = serde_json::from_slice(&std::fs::read(run_dir.join("results.json")).unwrap()).unwrap();
        assert!(total <= 1e3 * results["train_seconds"].as_f64().unwrap());
    }
}

#[test]
fn without_the_switch_no_profile_is_written_and_force_removes_an_old_one() {
    fixtures();
    let dir = scratch("profile-off");
    let out = dir.join("out");
    let cfg = write_config(&dir, &config(&out));
    let names = ["adam".to_string()];
    run_sources(App::Lm, &sources(&cfg, &["train.steps=1"]), &names, false, &Control { profile: true, ..Default::default() }, &registry())
        .unwrap();
    let file = out.join("adam").join("seed-3").join(PROFILE_FILE);
    assert!(file.is_file());
    assert!(!tram::profile::enabled(), "the profile is taken when the run ends");
    // Trained again (--force) without the switch: the old profile does not stay behind to be
    // mistaken for this run's.
    run_sources(App::Lm, &sources(&cfg, &["train.steps=1"]), &names, false, &Control { force: true, ..Default::default() }, &registry())
        .unwrap();
    assert!(!file.exists());
}
