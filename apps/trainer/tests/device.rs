//! Devices in the apps: CUDA names on a build without CUDA are errors that say how to rebuild,
//! and checkpoints carry no device: the device setting is not part of what a resume must match,
//! a checkpoint's tensors load onto the device of the resuming run, and a run resumed with
//! another device setting finishes (bitwise equal to an uninterrupted run where both are the
//! CPU; on CUDA, wherever a GPU is present, within f32 rounding).

mod common;

use common::*;
use serde_json::Value;
use tram_trainer::apps::App;
use tram_trainer::trainer::{self, Control, Outcome, RunSpec};

fn config(out: &std::path::Path, data: &str) -> String {
    format!(
        r#"
model = "{GPT2}"
data = "{data}"
out = "{out}"
seed = 3
device = "cpu"

[optimizer]
name = "tram-noise"
lr = 1e-3

[train]
steps = 4
batch_size = 2
accumulation = 1
eval_every = 2
checkpoint_every = 2
progress = false

[lm]
train_domain = "soc"
test_domains = ["cult"]
block_size = 8

[[runs]]
name = "tram-noise"
"#,
        out = out.display()
    )
}

fn run_one(cfg: &std::path::Path, sets: &[&str], control: &Control) -> Outcome {
    let reg = registry();
    let runs = sources(cfg, sets).resolve(&["tram-noise".to_string()], &reg).unwrap();
    let p = App::Lm.prepare(&runs[0], 3).unwrap();
    let spec = RunSpec { app: "lm", run: &runs[0], row: 0, seed: 3, tokenizer: p.tokenizer.clone(), registry: &reg, collective: None };
    trainer::run(&spec, p.model, p.data, control).unwrap()
}

#[test]
fn cuda_names_on_a_build_without_cuda_say_how_to_rebuild() {
    for name in ["cuda", "cuda:1"] {
        match tram_trainer::device(name) {
            Ok(d) => assert!(d.is_cuda(), "{name}: {d:?}"),
            Err(e) => {
                let e = e.to_string();
                assert!(e.contains("key `device`") && e.contains(&format!("`{name}`")), "{e}");
                if candle_core::utils::cuda_is_available() {
                    assert!(e.contains("unavailable") && e.contains("nvidia-smi"), "{e}");
                } else {
                    assert!(e.contains("built without CUDA") && e.contains("--features cuda") && e.contains("GPU (CUDA)"), "{e}");
                }
            }
        }
    }
    let e = tram_trainer::device("cuda:x").unwrap_err().to_string();
    assert!(e.contains("expected cuda:<gpu index>"), "{e}");
    assert!(tram_trainer::device("").unwrap().is_cpu() && tram_trainer::device("cpu").unwrap().is_cpu());
}

#[test]
fn the_device_is_not_part_of_what_a_resume_must_match() {
    fixtures();
    let dir = scratch("device-fingerprint");
    let cfg = write_config(&dir, &config(&dir.join("out"), &fixtures().m2d2_local.display().to_string()));
    let reg = registry();
    let fp = |sets: &[&str]| -> Value {
        let runs = sources(&cfg, sets).resolve(&["tram-noise".to_string()], &reg).unwrap();
        let opt = trainer::resolved_optimizer(&runs[0], 3, 4);
        trainer::fingerprint("lm", &runs[0], 3, &opt)
    };
    let cpu = fp(&[]);
    assert_eq!(cpu, fp(&["device=cuda:1"]), "the device changed the resume fingerprint");
    assert_eq!(cpu, fp(&["device=\"\""]));
    assert!(cpu.get("device").is_none(), "{cpu}");
    // (A change that matters still does.)
    assert_ne!(cpu, fp(&["optimizer.lr=2e-3"]));
}

#[test]
fn a_run_resumed_with_another_device_setting_matches_an_uninterrupted_run() {
    fixtures();
    let dir = scratch("device-resume");
    let cfg = write_config(&dir, &config(&dir.join("a"), &fixtures().m2d2_local.display().to_string()));
    assert!(matches!(run_one(&cfg, &[], &Control::default()), Outcome::Finished(_)));

    // Interrupted after step 2 on `device = "cpu"`; the checkpoint names no device.
    let b = dir.join("b");
    let set_out = format!("out={}", b.display());
    let stop = Control { stop_after: Some(2), ..Default::default() };
    let checkpoint = match run_one(&cfg, &[&set_out], &stop) {
        Outcome::Interrupted { checkpoint, .. } => checkpoint,
        other => panic!("expected an interruption, got {other:?}"),
    };
    for entry in std::fs::read_dir(&checkpoint).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        if path.extension().is_some_and(|x| x == "json") {
            let text = String::from_utf8(bytes).unwrap();
            assert!(!text.contains("\"device\"") && !text.contains("cuda"), "{} records a device:\n{text}", path.display());
        } else if path.extension().is_some_and(|x| x == "safetensors") {
            // Plain safetensors: a JSON header of names, dtypes, shapes and offsets (8-byte
            // little-endian length first), no device anywhere.
            let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
            let header = std::str::from_utf8(&bytes[8..8 + n]).unwrap();
            assert!(!header.contains("cuda") && !header.contains("cpu") && !header.contains("device"), "{}: {header}", path.display());
        }
    }

    // Resumed with another device setting (`""`, the CPU by another name; CUDA below where
    // there is a GPU): accepted, and bitwise what the uninterrupted run wrote.
    let resume = Control { resume: true, ..Default::default() };
    assert!(matches!(run_one(&cfg, &[&set_out, "device=\"\""], &resume), Outcome::Finished(_)));
    let read = |root: &std::path::Path, f: &str| std::fs::read(root.join("tram-noise/seed-3").join(f)).unwrap();
    let a = dir.join("a");
    assert_eq!(read(&a, "metrics.jsonl"), read(&b, "metrics.jsonl"));
    assert_eq!(read(&a, "model/model.safetensors"), read(&b, "model/model.safetensors"));

    // On a GPU: the same interruption resumed on `cuda`, its tensors loaded there, finishes with
    // the CPU run's final validation loss to f32 rounding of a different summation order.
    let gpu_ok = candle_core::utils::cuda_is_available() && candle_core::Device::new_cuda(0).is_ok();
    if !gpu_ok {
        println!("SKIPPED the CUDA half: no usable CUDA device (a `--features cuda` build on a machine with a GPU runs it)");
        return;
    }
    let c = dir.join("c");
    let set_out = format!("out={}", c.display());
    assert!(matches!(run_one(&cfg, &[&set_out], &stop), Outcome::Interrupted { .. }));
    assert!(matches!(run_one(&cfg, &[&set_out, "device=cuda"], &resume), Outcome::Finished(_)));
    let last_loss = |root: &std::path::Path| -> f64 {
        let text = String::from_utf8(read(root, "metrics.jsonl")).unwrap();
        let v: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        v.iter().rev().find_map(|r| r.get("loss").and_then(Value::as_f64)).expect("a loss in metrics.jsonl")
    };
    let (cpu, gpu) = (last_loss(&a), last_loss(&c));
    assert!((cpu - gpu).abs() <= 1e-4 * cpu.abs().max(1.0), "CPU {cpu}, resumed on CUDA {gpu}");
}
