//! The `tram` command as a user meets it: warnings show without any setup (`TRAM_LOG` and
//! `RUST_LOG` choose another filter), a row whose steps were all skipped fails the command
//! after the other rows and the table, `--table` and `tram analyze` refuse to write empty
//! outputs, `--dry-run` prints every row, and the quickstart refuses to relabel its rows.
//! Runs on the bundled quickstart model and a few lines of its corpus.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn tram(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tram"));
    cmd.args(args)
        .env_remove("TRAM_PLUGINS")
        .env_remove("TRAM_LOG")
        .env_remove("RUST_LOG")
        .env("RUST_BACKTRACE", "0")
        .env("CANDLE_NUM_THREADS", "1")
        .env("HF_HUB_OFFLINE", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The first `n` lines of two domains of the bundled corpus, with two bytes of Latin-1 in
/// `novels/test.txt`.
fn corpus(dir: &Path, n: usize) -> PathBuf {
    let data = dir.join("data");
    for d in ["novels", "bible"] {
        std::fs::create_dir_all(data.join(d)).unwrap();
        for split in ["train", "validation", "test"] {
            let src = std::fs::read_to_string(repo().join("data/quickstart").join(d).join(format!("{split}.txt"))).unwrap();
            let mut bytes = src.lines().take(n).collect::<Vec<_>>().join("\n").into_bytes();
            if d == "novels" && split == "test" {
                bytes.extend_from_slice(b"\nthe caf\xe9 on the corner, the na\xefve reader\n");
            }
            std::fs::write(data.join(d).join(format!("{split}.txt")), bytes).unwrap();
        }
    }
    data
}

/// A copy of the bundled model with `transformer.ln_f.weight` all NaN: every loss is NaN.
fn nan_model(dir: &Path) -> PathBuf {
    let src = repo().join("models/quickstart");
    let out = dir.join("nan-model");
    std::fs::create_dir_all(&out).unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(src.join(f), out.join(f)).unwrap();
    }
    let mut bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let t = &header["transformer.ln_f.weight"];
    let (a, b) = (t["data_offsets"][0].as_u64().unwrap() as usize, t["data_offsets"][1].as_u64().unwrap() as usize);
    for c in bytes[8 + n + a..8 + n + b].chunks_mut(4) {
        c.copy_from_slice(&f32::NAN.to_le_bytes());
    }
    std::fs::write(out.join("model.safetensors"), bytes).unwrap();
    out
}

fn config(dir: &Path) -> PathBuf {
    let data = corpus(dir, 30);
    let nan = nan_model(dir);
    let text = format!(
        r#"
model = "{model}"
data = "{data}"
out = "{out}"

[optimizer]
name = "adam"
lr = 3e-4

[train]
steps = 2
batch_size = 2
progress = false

[lm]
train_domain = "novels"
test_domains = ["bible"]
block_size = 32
max_eval_blocks = 2

[[runs]]
name = "zero-shot"
label = "Pretrained"
train = {{ evaluate_only = true }}

[[runs]]
name = "sam"
label = "SAM"
model = "{nan}"
optimizer = {{ name = "sam" }}

[[runs]]
name = "adam"
label = "Adam"
"#,
        model = repo().join("models/quickstart").display(),
        data = data.display(),
        out = dir.join("out").display(),
        nan = nan.display()
    );
    let p = dir.join("config.toml");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn warnings_show_by_default_and_a_row_with_every_step_skipped_fails_after_the_table() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let cfg = cfg.to_str().unwrap();
    let o = tram(&["lm", "--config", cfg], &[]);
    let (out, err) = (text(&o.stdout), text(&o.stderr));
    assert_eq!(o.status.code(), Some(1), "stdout:\n{out}\nstderr:\n{err}");
    // Without RUST_LOG or TRAM_LOG: the skipped steps and the invalid bytes are warned about.
    assert!(err.contains("WARN") && err.contains("step skipped"), "{err}");
    assert!(!err.contains('\u{1b}'), "colour codes in a log that is not a terminal: {err:?}");
    assert!(err.contains("invalid UTF-8"), "{err}");
    assert!(!err.contains("INFO"), "the default filter is `warn`:\n{err}");
    assert!(
        err.contains("1 run(s) failed") && err.contains("run `sam` seed 0 failed") && err.contains("every one of the 2 steps"),
        "{err}"
    );
    // The table of every row was printed and written, the failed row marked.
    for needle in ["| Pretrained |", "| Adam |", "‡ SAM: 2 of 2 steps skipped", "FAILED"] {
        assert!(out.contains(needle), "`{needle}` not in\n{out}");
    }
    assert!(out.lines().any(|l| l.starts_with("| SAM ") && l.contains('‡')), "{out}");
    assert!(dir.path().join("out/results.md").is_file() && dir.path().join("out/adam/seed-0/results.json").is_file());
    let r: Value = serde_json::from_slice(&std::fs::read(dir.path().join("out/zero-shot/seed-0/results.json")).unwrap()).unwrap();
    assert_eq!(r["skipped_rows"]["novels/test"]["invalid_utf8_bytes"], 2, "{:#}", r["skipped_rows"]);

    // TRAM_LOG picks the filter (and wins over RUST_LOG); a bad filter is a clear error.
    let one = |env: &[(&str, &str)], out: &str| tram(&["lm", "--config", cfg, "--run", "zero-shot", "--set", out], env);
    let o = one(&[("TRAM_LOG", "error"), ("RUST_LOG", "info")], &format!("out=\"{}\"", dir.path().join("o1").display()));
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(!text(&o.stderr).contains("WARN") && !text(&o.stderr).contains("INFO"), "{}", text(&o.stderr));
    let o = one(&[("TRAM_LOG", "info")], &format!("out=\"{}\"", dir.path().join("o2").display()));
    assert!(o.status.success() && text(&o.stderr).contains("INFO"), "{}", text(&o.stderr));
    let o = one(&[("RUST_LOG", "info")], &format!("out=\"{}\"", dir.path().join("o3").display()));
    assert!(o.status.success() && text(&o.stderr).contains("INFO"), "{}", text(&o.stderr));
    let o = one(&[("TRAM_LOG", "tram=loud")], "out=\"unused\"");
    assert!(!o.status.success() && text(&o.stderr).contains("TRAM_LOG=`tram=loud` is not a log filter"), "{}", text(&o.stderr));
}

#[test]
fn dry_run_prints_the_resolved_configuration_of_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let o = tram(&["lm", "--config", cfg.to_str().unwrap(), "--dry-run"], &[]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    let rows: Vec<&str> = out.split("# run `").skip(1).collect();
    assert_eq!(rows.len(), 3, "{out}");
    for (row, (name, composition)) in rows.iter().zip([("zero-shot", "adam"), ("sam", "sam"), ("adam", "adam")]) {
        assert!(row.starts_with(name), "{row}");
        let t: toml::Table = toml::from_str(row.split_once('\n').unwrap().1).unwrap();
        assert_eq!(t["optimizer"]["name"].as_str(), Some(composition));
        assert_eq!(t["lm"]["block_size"].as_integer(), Some(32));
    }
    assert!(!dir.path().join("out").exists());
}

#[test]
fn a_table_of_a_missing_directory_and_an_analysis_of_nothing_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nonexistent");
    let o = tram(&["lm", "--table", missing.to_str().unwrap()], &[]);
    assert!(!o.status.success() && text(&o.stderr).contains("is not a directory"), "{}", text(&o.stderr));
    assert!(!missing.exists(), "--table created {}", missing.display());
    let o = tram(&["lm", "--table", dir.path().to_str().unwrap()], &[]);
    assert!(!o.status.success() && text(&o.stderr).contains("no results under"), "{}", text(&o.stderr));
    assert!(!dir.path().join("results.md").exists());
    let o = tram(&["analyze", "--no-sharpness", "--no-cka", dir.path().to_str().unwrap()], &[]);
    assert!(!o.status.success() && text(&o.stderr).contains("nothing to analyse"), "{}", text(&o.stderr));
    assert!(!dir.path().join("analysis").exists());
}

#[test]
fn the_quickstart_refuses_overrides_that_would_mislabel_its_rows() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("q");
    for set in ["optimizer.name=sgd", "optimizer={ name = \"sgd\" }", "train.evaluate_only=true", "label=\"Mine\""] {
        let o = tram(&["quickstart", "-q", "--methods", "adam,sam", "--steps", "1", "--out", out.to_str().unwrap(), "--set", set], &[]);
        let err = text(&o.stderr);
        assert!(!o.status.success(), "{set}: accepted");
        assert!(err.contains("row `adam`") || err.contains("the same label"), "{set}: {err}");
        assert!(!out.join("adam").exists(), "{set}: a row ran");
    }
    let o = tram(&["quickstart", "-q", "--steps", "0", "--out", out.to_str().unwrap()], &[]);
    assert!(!o.status.success() && text(&o.stderr).contains("train.steps"), "{}", text(&o.stderr));
}
