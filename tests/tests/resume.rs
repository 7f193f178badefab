//! Checkpointable optimizer state: a run saved and resumed continues bitwise identically to an
//! uninterrupted run, for every composition family; bad checkpoints are clear errors.

mod common;
use common::*;
use tram::Model;

const FAMILIES: &[&str] = &[
    "sgd",
    "adam",
    "adamw",
    "sam+sgd",
    "asam",
    "fsam",
    "tram-prev",
    "tram-pretrained",
    "tram-noise",
    "tram-fisher",
    "trpo",
    "r3f",
    "mesa",
    "asam+r3f",
    "asam+mesa",
];

#[test]
fn resuming_continues_bitwise_like_an_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let data = batches(6, 21);
    for c in FAMILIES {
        let straight = model(20);
        let mut o = optimizer(c);
        for b in &data {
            o.step(&straight, std::slice::from_ref(b)).unwrap();
        }
        let first = model(20);
        let mut o1 = optimizer(c);
        for b in &data[..3] {
            o1.step(&first, std::slice::from_ref(b)).unwrap();
        }
        let path = dir.path().join(format!("{c}.safetensors"));
        o1.save_state(first.params(), &path).unwrap();
        // A fresh process: new model from the saved weights, new optimizer, state loaded.
        let resumed = clone_model(&first);
        drop((first, o1));
        let mut o2 = optimizer(c);
        o2.load_state(resumed.params(), &path).unwrap();
        assert_eq!(o2.steps(), 3);
        for b in &data[3..] {
            o2.step(&resumed, std::slice::from_ref(b)).unwrap();
        }
        assert_bitwise_equal(&straight, &resumed, c);
    }
}

#[test]
fn state_is_saved_by_parameter_name_with_a_format_version() {
    let dir = tempfile::tempdir().unwrap();
    let m = model(22);
    let mut o = optimizer("asam+mesa");
    o.step(&m, &batches(1, 1)).unwrap();
    let path = dir.path().join("s.safetensors");
    o.save_state(m.params(), &path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap();
    assert_eq!(meta["format"], tram::state::FORMAT);
    assert_eq!(meta["version"], tram::state::VERSION.to_string());
    assert_eq!(meta["composition"], "reg:ema+ball(adaptive=true)+adam");
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let names: Vec<String> = st.names().into_iter().map(String::from).collect();
    for want in ["base/exp_avg/fc1.weight", "base/exp_avg_sq/emb.weight", "base/step", "region0/theta_ema/fc2.bias", "engine/step"] {
        assert!(names.contains(&want.to_string()), "{want} not in {names:?}");
    }
    // No temp file is left behind by the atomic write.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn saved_state_is_byte_identical_for_identical_runs() {
    // The metadata (format, version, composition, initialized, noise, ...) was written in a
    // HashMap's random order, so two identical runs gave different optimizer.safetensors bytes.
    for c in ["tram-noise", "asam+mesa", "adam"] {
        let save = || {
            let m = model(23);
            let mut o = optimizer(c);
            for b in &batches(2, 5) {
                o.step(&m, std::slice::from_ref(b)).unwrap();
            }
            o.state_bytes(m.params()).unwrap()
        };
        let first = save();
        for _ in 0..4 {
            let again = save();
            if again != first {
                let n = u64::from_le_bytes(first[..8].try_into().unwrap()) as usize;
                eprintln!("{}\n{}", String::from_utf8_lossy(&first[8..8 + n]), String::from_utf8_lossy(&again[8..8 + n]));
            }
            assert!(again == first, "{c}: two identical runs saved different optimizer state bytes");
        }
        // Still a valid safetensors file whose metadata reads back.
        let (_, meta) = safetensors::SafeTensors::read_metadata(&first).unwrap();
        assert_eq!(meta.metadata().as_ref().unwrap()["format"], tram::state::FORMAT);
        safetensors::SafeTensors::deserialize(&first).unwrap();
    }
}

#[test]
fn a_failed_atomic_write_leaves_no_temporary_file() {
    // The rename fails (a non-empty directory is in the way), as a full disk fails the write:
    // the temporary `.name.tmp<pid>` used to stay forever.
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("state.safetensors");
    std::fs::create_dir_all(target.join("inside")).unwrap();
    assert!(tram::state::write_atomic(&target, b"bytes").is_err());
    let left: Vec<String> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
    assert_eq!(left, ["state.safetensors"], "a temporary file was left behind");
}

#[test]
fn bad_checkpoints_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let m = model(23);
    let mut o = optimizer("tram-prev");
    o.step(&m, &batches(1, 1)).unwrap();
    let path = dir.path().join("s.safetensors");
    o.save_state(m.params(), &path).unwrap();
    let bytes = std::fs::read(&path).unwrap();

    let missing = optimizer("tram-prev").load_state(m.params(), &dir.path().join("nope.safetensors")).unwrap_err().to_string();
    assert!(missing.contains("nope.safetensors") && missing.contains("cannot read"), "{missing}");

    let truncated = dir.path().join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let e = optimizer("tram-prev").load_state(m.params(), &truncated).unwrap_err().to_string();
    assert!(e.contains("truncated or corrupt") || e.contains("cannot decode"), "{e}");

    let garbage = dir.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"definitely not safetensors").unwrap();
    assert!(optimizer("tram-prev").load_state(m.params(), &garbage).unwrap_err().to_string().contains("corrupt"));

    let e = optimizer("sam").load_state(m.params(), &path).unwrap_err().to_string();
    assert!(e.contains("prev+ball+adam") && e.contains("ball+adam") && e.contains("same composition"), "{e}");

    let other_shape =
        tram_tests::EmbeddingClassifier::random(tram_tests::ClassifierShape { hidden: 7, ..SHAPE }, 1, &candle_core::Device::Cpu).unwrap();
    let e = optimizer("tram-prev").load_state(other_shape.params(), &path).unwrap_err().to_string();
    assert!(e.contains("shape") && e.contains("fc1"), "{e}");
}
