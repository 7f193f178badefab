//! `docs/writing-a-plugin.md` works verbatim from outside the repository: the plugin crate's
//! files are taken out of the guide (every code block marked `<!-- file: PATH -->`), written
//! into a directory outside the workspace next to a `tram` link to this checkout (the layout
//! the guide's `git clone` makes), with the guide's copied `Cargo.lock`, built by the cargo
//! and rustc running this test (the plugin's compiler must be the host's). Then the crate's own tests (the guide's `tests/plugin.rs`) run, its
//! `cdylib` is built and loaded into this program, and a 3-step training runs with each of
//! its aliases.
//!
//! The build shares this test's target directory, so dependencies are not rebuilt: warm, the
//! test takes about 10 s; after a change to tram about a minute (tram, tram-plugins and the
//! crate compile; see the crate README).

use std::path::{Path, PathBuf};
use std::process::Command;
use tram::{Model, OptimizerConfig};
use tram_tests::{synthetic_batches, workspace_root, ClassifierShape, EmbeddingClassifier};

const GUIDE: &str = "docs/writing-a-plugin.md";
const MARK: &str = "<!-- file: ";

/// The `(path, contents)` of every code block of `guide` preceded by `<!-- file: PATH -->`.
fn files_in(guide: &str) -> Vec<(String, String)> {
    let lines: Vec<&str> = guide.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(path) = line.trim().strip_prefix(MARK).and_then(|r| r.strip_suffix("-->")) else { continue };
        let fence = lines.get(i + 1).copied().unwrap_or_default();
        assert!(fence.starts_with("```"), "{GUIDE}:{}: `{line}` must be followed by a code block", i + 1);
        let body: Vec<&str> = lines[i + 2..].iter().take_while(|l| !l.starts_with("```")).copied().collect();
        out.push((path.trim().to_string(), body.join("\n") + "\n"));
    }
    out
}

/// Writes `contents` unless the file already holds it (an unchanged mtime keeps cargo's build).
fn write_if_changed(path: &Path, contents: &[u8]) {
    if std::fs::read(path).ok().as_deref() != Some(contents) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, contents).unwrap();
    }
}

/// This test binary's target directory (`<target>/<profile>/deps/<binary>`).
fn target_dir() -> PathBuf {
    std::env::current_exe().unwrap().ancestors().nth(3).unwrap().to_path_buf()
}

fn cargo(dir: &Path) -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(dir).env("CARGO_TARGET_DIR", target_dir());
    c
}

fn profile() -> [&'static str; 2] {
    if cfg!(debug_assertions) {
        ["--profile", "test"]
    } else {
        ["--profile", "release"]
    }
}

/// The guide's layout outside the workspace: `<tmp>/tram-guide-<id>/{tram -> checkout,
/// tram-hellinger}`, fixed per checkout so that a rerun builds incrementally.
fn guide_crate() -> PathBuf {
    let root = workspace_root();
    let id = root.to_string_lossy().bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    let base = std::env::temp_dir().join(format!("tram-guide-{id:016x}"));
    assert!(!base.starts_with(&root), "the plugin crate must be outside the workspace");
    std::fs::create_dir_all(&base).unwrap();
    let link = base.join("tram");
    if std::fs::read_link(&link).ok().as_deref() != Some(root.as_path()) {
        let _ = std::fs::remove_file(&link);
        #[cfg(unix)]
        std::os::unix::fs::symlink(&root, &link).unwrap();
    }
    let dir = base.join("tram-hellinger");
    if !dir.join("Cargo.toml").exists() {
        // The guide's `cargo new --lib tram-hellinger` (without a git repository in /tmp).
        let out = cargo(&base).args(["new", "--lib", "--vcs", "none", "tram-hellinger"]).output().unwrap();
        assert!(out.status.success(), "cargo new failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    // The guide's `cp ../tram/Cargo.lock .`
    write_if_changed(&dir.join("Cargo.lock"), &std::fs::read(root.join("Cargo.lock")).unwrap());
    let guide = std::fs::read_to_string(root.join(GUIDE)).unwrap();
    let files = files_in(&guide);
    let paths: Vec<&str> = files.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(paths, ["Cargo.toml", "src/hellinger.rs", "src/dropout.rs", "src/lib.rs", "tests/plugin.rs"], "{GUIDE}'s files");
    for (path, contents) in &files {
        write_if_changed(&dir.join(path), contents.as_bytes());
    }
    dir
}

#[test]
fn the_guides_plugin_crate_builds_outside_the_workspace_passes_its_tests_loads_and_trains() {
    let started = std::time::Instant::now();
    let dir = guide_crate();

    // The crate's own tests, as its author runs them (`cargo test` in the crate).
    let out = cargo(&dir).args(["test", "--quiet"]).output().unwrap();
    assert!(
        out.status.success(),
        "the guide's crate: `cargo test` failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let tested = started.elapsed();

    // The cdylib, loaded into this program (a host built from this checkout).
    let library = tram::testing::build_cdylib(&dir, &profile()).unwrap();
    let mut registry = tram_plugins::registry().unwrap();
    let names = registry.load_plugin(&library).unwrap();
    assert_eq!(names, ["hellinger", "embed-dropout", "tram-noise-hellinger", "tram-dropout"]);
    assert_eq!(registry.find("hellinger").unwrap().origin, library.canonicalize().unwrap().display().to_string());

    // Differentiating through a plugin region's target is refused when the optimizer is built
    // (`tram explain` builds it too), not at the first step.
    let err = tram::Optimizer::new(&registry, OptimizerConfig::new("reg:embed-dropout(through_target=true)+adam", 0.01)).err().unwrap();
    let msg = err.to_string();
    assert!(msg.contains("through_target") && msg.contains("embed-dropout") && msg.contains("statically"), "{msg}");
    tram::Optimizer::new(&registry, OptimizerConfig::new("reg:embed-dropout+adam", 0.01)).unwrap();

    // A 3-step training with each alias; the resolved parameters of the guide's components
    // (which implement no describe()) are recorded.
    let shape = ClassifierShape { vocab: 32, embed: 8, hidden: 16, layers: 1, classes: 4 };
    let data = synthetic_batches(shape, 3, 8, 6, 7, &candle_core::Device::Cpu).unwrap();
    for (alias, region, distance) in [
        ("tram-noise-hellinger", serde_json::json!({"sigma": 1e-2, "sample": "normal"}), serde_json::json!({"weight": 1.0})),
        ("tram-dropout", serde_json::json!({"p": 0.1}), serde_json::json!({"weight": 1.0})),
    ] {
        let model = EmbeddingClassifier::random(shape, 1, &candle_core::Device::Cpu).unwrap();
        let mut opt = tram::Optimizer::new(&registry, OptimizerConfig::new(alias, 0.01).with("noise", "sigma", 1e-2)).unwrap();
        let d = opt.describe();
        assert_eq!((&d["region"]["params"], &d["region"]["distance"]["params"]), (&region, &distance), "{alias}: {d}");
        for (s, batch) in data.iter().enumerate() {
            let r = opt.step(&model, std::slice::from_ref(batch)).unwrap();
            assert!(!r.skipped && r.loss.is_finite(), "{alias} step {s}: {r:?}");
            assert!(r.delta.is_some_and(|d| d.is_finite() && d > 0.0) && r.ascent, "{alias} step {s}: {r:?}");
        }
        assert_eq!(opt.steps(), 3);
        assert!(model.params().iter().all(|p| p
            .var
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .all(|x| x.is_finite())));
    }
    eprintln!(
        "guide crate: cargo test {:.1} s, then build + load + train {:.1} s",
        tested.as_secs_f64(),
        (started.elapsed() - tested).as_secs_f64()
    );
}

#[test]
fn every_file_block_of_the_guide_is_found_with_its_contents() {
    let guide = "text\n<!-- file: src/a.rs -->\n```rust\nfn a() {}\n\nfn b() {}\n```\n\n```sh\nnot a file\n```\n";
    assert_eq!(files_in(guide), [("src/a.rs".to_string(), "fn a() {}\n\nfn b() {}\n".to_string())]);
}
